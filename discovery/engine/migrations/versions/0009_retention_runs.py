"""retention runs (`dsar retention run`: progress per rule for resuming, counts only) and confirmations of
vendor retention settings made by hand (`dsar retention confirm`)

Revision ID: 0009
Revises: 0008
Create Date: 2027-01-20 08:00:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'retention_runs',
        sa.Column('id', sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('as_of', sa.DateTime(timezone=True), nullable=False),
        sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('worker', sa.String(length=128), nullable=False),
        sa.Column('actor', sa.String(length=128), nullable=False),
        sa.Column('scope', sa.String(length=64), nullable=True),
        sa.Column('progress', sa.JSON(), nullable=False),
        sa.Column('error', sa.Text(), nullable=True),
    )
    op.create_index('ix_retention_runs_status', 'retention_runs', ['status'])
    op.create_table(
        'retention_confirmations',
        sa.Column('id', sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column('system', sa.String(length=64), nullable=False),
        sa.Column('entity', sa.String(length=128), nullable=True),
        sa.Column('note', sa.Text(), nullable=False),
        sa.Column('confirmed_by', sa.String(length=128), nullable=False),
        sa.Column('confirmed_at', sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index('ix_retention_confirmations_system', 'retention_confirmations', ['system'])


def downgrade() -> None:
    op.drop_index('ix_retention_confirmations_system', table_name='retention_confirmations')
    op.drop_table('retention_confirmations')
    op.drop_index('ix_retention_runs_status', table_name='retention_runs')
    op.drop_table('retention_runs')
