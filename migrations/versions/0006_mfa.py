"""TOTP MFA: the sealed secret per person, the last time step accepted (replay refused by the
database, whatever instance answers), and one-time recovery codes stored as digests.

Global, like users: a person's second factor, whatever tenants they belong to.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE mfa_totp (
            user_id uuid PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
            secret_sealed bytea NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            enabled_at timestamptz,
            last_step bigint NOT NULL DEFAULT 0
        )
    """)
    op.execute("""
        CREATE TABLE mfa_recovery_codes (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            user_id uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            digest bytea NOT NULL CONSTRAINT mfa_recovery_codes_digest_key UNIQUE,
            created_at timestamptz NOT NULL DEFAULT now(),
            used_at timestamptz
        )
    """)
    op.execute("CREATE INDEX ix_mfa_recovery_codes_user_id ON mfa_recovery_codes (user_id)")


def downgrade() -> None:
    op.execute("DROP TABLE mfa_recovery_codes")
    op.execute("DROP TABLE mfa_totp")
