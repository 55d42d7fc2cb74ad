"""periodic jobs of `dsar scheduler` (sweeps, bundle expiry, ledger purge): one row per job, its lock and next run

Revision ID: 0010
Revises: 0009
Create Date: 2027-01-21 08:00:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'periodic_runs',
        sa.Column('name', sa.String(length=64), primary_key=True),
        sa.Column('next_due_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=True),
        sa.Column('worker', sa.String(length=128), nullable=True),
        sa.Column('last_started_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('last_finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('counts', sa.JSON(), nullable=True),
        sa.Column('error', sa.Text(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table('periodic_runs')
