"""request lifecycle: why an operator denied or cancelled a request (close_reason, close_basis), and when a task
that a system asked to wait may run again (tasks.retry_at, and how often it waited: tasks.waits)

Revision ID: 0012
Revises: 0011
Create Date: 2027-01-24 08:00:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('requests', schema=None) as batch_op:
        batch_op.add_column(sa.Column('close_reason', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('close_basis', sa.String(length=32), nullable=True))
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('retry_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('waits', sa.Integer(), nullable=False, server_default='0'))


def downgrade() -> None:
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.drop_column('waits')
        batch_op.drop_column('retry_at')
    with op.batch_alter_table('requests', schema=None) as batch_op:
        batch_op.drop_column('close_basis')
        batch_op.drop_column('close_reason')
