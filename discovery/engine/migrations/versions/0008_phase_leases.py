"""a lease for a request's discover and merge phases (held and renewed by the process doing the work), and when a
task's transient failures began (worker.system_retry_budget bounds the time spent retrying it)

Revision ID: 0008
Revises: 0007
Create Date: 2027-01-10 08:00:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('requests', schema=None) as batch_op:
        batch_op.add_column(sa.Column('lease_until', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('lease_owner', sa.String(length=36), nullable=True))
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('retrying_since', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.drop_column('retrying_since')
    with op.batch_alter_table('requests', schema=None) as batch_op:
        batch_op.drop_column('lease_owner')
        batch_op.drop_column('lease_until')
