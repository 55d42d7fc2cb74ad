"""provenance of learned identifiers, records left alone as not the subject's, confirmed changes to others

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 06:10:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('identities', schema=None) as batch_op:
        batch_op.add_column(sa.Column('via', sa.Text(), nullable=True))
    with op.batch_alter_table('system_hits', schema=None) as batch_op:
        batch_op.add_column(sa.Column('skipped', sa.JSON(), nullable=True))
    with op.batch_alter_table('requests', schema=None) as batch_op:
        batch_op.add_column(sa.Column('confirm_others', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('requests', schema=None) as batch_op:
        batch_op.drop_column('confirm_others')
    with op.batch_alter_table('system_hits', schema=None) as batch_op:
        batch_op.drop_column('skipped')
    with op.batch_alter_table('identities', schema=None) as batch_op:
        batch_op.drop_column('via')
