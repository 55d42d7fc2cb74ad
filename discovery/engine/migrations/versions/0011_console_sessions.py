"""console sessions (workers/console): one row per login at /ui, keyed by the SHA-256 of its cookie, bound to the
API token that logged in (revoking the token ends them), with its CSRF token, expiry and logout time

Revision ID: 0011
Revises: 0010
Create Date: 2027-01-24 08:00:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'console_sessions',
        sa.Column('id', sa.String(length=64), primary_key=True),
        sa.Column('token_hash', sa.String(length=64), nullable=False, index=True),
        sa.Column('csrf', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_table('console_sessions')
