"""an identifier's provenance as a Note (msgid + values), for the bundle page in the person's language

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 08:00:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('identities', schema=None) as batch_op:
        batch_op.add_column(sa.Column('via_note', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('identities', schema=None) as batch_op:
        batch_op.drop_column('via_note')
