"""Email verification links: single use, expiring, superseded by a newer one, stored as digests.

Global, like users and web sessions: a person verifies their address, not a tenant's.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE email_verifications (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            digest bytea NOT NULL CONSTRAINT email_verifications_digest_key UNIQUE,
            user_id uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            created_at timestamptz NOT NULL DEFAULT now(),
            expires_at timestamptz NOT NULL,
            used_at timestamptz,
            superseded_at timestamptz
        )
    """)
    op.execute("CREATE INDEX ix_email_verifications_user_id ON email_verifications (user_id)")


def downgrade() -> None:
    op.execute("DROP TABLE email_verifications")
