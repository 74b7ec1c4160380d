"""API keys: scoped, tenant-bound, stored as SHA-256 digests.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

CURRENT_TENANT = "(SELECT breeze_current_tenant())"


def upgrade() -> None:
    match = f"tenant_id = {CURRENT_TENANT}"
    for sql in (
        """
        CREATE TABLE api_keys (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            tenant_id uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
            name text NOT NULL CONSTRAINT api_keys_name_check
                CHECK (length(name) BETWEEN 1 AND 100),
            prefix text NOT NULL,
            digest bytea NOT NULL CONSTRAINT api_keys_digest_key UNIQUE,
            scopes text[] NOT NULL CONSTRAINT api_keys_scopes_check
                CHECK (cardinality(scopes) > 0
                       AND scopes <@ ARRAY['ai:read', 'ai:write', 'ai:execute']::text[]),
            created_by uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            rate_limit text,
            created_at timestamptz NOT NULL DEFAULT now(),
            expires_at timestamptz,
            last_used_at timestamptz,
            revoked_at timestamptz,
            revoked_by text
        )
        """,
        "CREATE INDEX ix_api_keys_tenant_id ON api_keys (tenant_id)",
        "ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY",
        "ALTER TABLE api_keys FORCE ROW LEVEL SECURITY",
        f"CREATE POLICY api_keys_tenant_select ON api_keys FOR SELECT USING ({match})",
        f"CREATE POLICY api_keys_tenant_insert ON api_keys FOR INSERT WITH CHECK ({match})",
        f"CREATE POLICY api_keys_tenant_update ON api_keys FOR UPDATE USING ({match}) "
        f"WITH CHECK ({match})",
        f"CREATE POLICY api_keys_tenant_delete ON api_keys FOR DELETE USING ({match})",
    ):
        op.execute(sql)


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS api_keys")
