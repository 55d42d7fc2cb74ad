"""requests limited to some systems (requests.systems)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 10:00:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NULL: every enabled system (all requests made before this revision).
    with op.batch_alter_table('requests', schema=None) as batch_op:
        batch_op.add_column(sa.Column('systems', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('requests', schema=None) as batch_op:
        batch_op.drop_column('systems')
