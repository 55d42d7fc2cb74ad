"""report-back outbox: ticket notes and signed callbacks kept until delivered or expired (discovery/intake/outbox.py),
each with its attempts, next attempt, last error and the claim of the sender holding it

Revision ID: 0013
Revises: 0012
Create Date: 2027-01-25 08:00:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'outbox',
        sa.Column('id', sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column('request_id', sa.String(length=36), sa.ForeignKey('requests.id', ondelete='CASCADE'),
                  nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('event', sa.String(length=32), nullable=False),
        sa.Column('target', sa.String(length=1024), nullable=False),
        sa.Column('payload', sa.Text(), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('claimed_by', sa.String(length=36), nullable=True),
        sa.Column('claimed_until', sa.DateTime(timezone=True), nullable=True),
        sa.Column('last_error', sa.String(length=300), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index('ix_outbox_request_id', 'outbox', ['request_id'])
    op.create_index('ix_outbox_due', 'outbox', ['status', 'next_attempt_at'])


def downgrade() -> None:
    op.drop_index('ix_outbox_due', table_name='outbox')
    op.drop_index('ix_outbox_request_id', table_name='outbox')
    op.drop_table('outbox')
