"""OAuth 2.1: registered clients, grants, codes, refresh and access tokens; web sessions.

Clients and web sessions are global (a client registers before any tenant is known; a session
belongs to a person, who may belong to several tenants). Grants and every token of a grant are
tenant rows under forced row-level security, and reference their grant through
(tenant_id, grant_id) so no token can point across the wall.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

CURRENT_TENANT = "(SELECT breeze_current_tenant())"
TENANT_TABLES = ("oauth_grants", "oauth_codes", "oauth_refresh_tokens", "oauth_access_tokens")


def _policies(table: str) -> list[str]:
    match = f"tenant_id = {CURRENT_TENANT}"
    return [
        f"CREATE INDEX ix_{table}_tenant_id ON {table} (tenant_id)",
        f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY",
        f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY",
        f"CREATE POLICY {table}_tenant_select ON {table} FOR SELECT USING ({match})",
        f"CREATE POLICY {table}_tenant_insert ON {table} FOR INSERT WITH CHECK ({match})",
        f"CREATE POLICY {table}_tenant_update ON {table} FOR UPDATE USING ({match}) "
        f"WITH CHECK ({match})",
        f"CREATE POLICY {table}_tenant_delete ON {table} FOR DELETE USING ({match})",
    ]


def upgrade() -> None:
    grant_fk = (
        "CONSTRAINT {t}_grant_fkey FOREIGN KEY (tenant_id, grant_id) "
        "REFERENCES oauth_grants (tenant_id, id) ON DELETE CASCADE"
    )
    statements = [
        """
        CREATE TABLE oauth_clients (
            client_id text PRIMARY KEY,
            secret_digest bytea,
            token_endpoint_auth_method text NOT NULL
                CONSTRAINT oauth_clients_auth_method_check CHECK (token_endpoint_auth_method
                IN ('none', 'client_secret_post', 'client_secret_basic')),
            redirect_uris text[] NOT NULL,
            grant_types text[] NOT NULL,
            response_types text[] NOT NULL,
            client_name text,
            client_uri text,
            logo_uri text,
            scope text,
            contacts text[] NOT NULL DEFAULT '{}',
            software_id text,
            software_version text,
            registered_ip inet,
            created_at timestamptz NOT NULL DEFAULT now(),
            expires_at timestamptz,
            last_authorized_at timestamptz,
            CONSTRAINT oauth_clients_secret_check CHECK (
                (token_endpoint_auth_method = 'none') = (secret_digest IS NULL))
        )
        """,
        "CREATE INDEX ix_oauth_clients_expires_at ON oauth_clients (expires_at)",
        """
        CREATE TABLE web_sessions (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            digest bytea NOT NULL CONSTRAINT web_sessions_digest_key UNIQUE,
            user_id uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            created_at timestamptz NOT NULL DEFAULT now(),
            expires_at timestamptz NOT NULL,
            last_seen_at timestamptz NOT NULL DEFAULT now(),
            revoked_at timestamptz,
            client_ip inet,
            user_agent text
        )
        """,
        "CREATE INDEX ix_web_sessions_user_id ON web_sessions (user_id)",
        """
        CREATE TABLE oauth_grants (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            tenant_id uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
            client_id text NOT NULL REFERENCES oauth_clients(client_id) ON DELETE CASCADE,
            user_id uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            scopes text[] NOT NULL,
            resource text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            last_used_at timestamptz,
            revoked_at timestamptz,
            revoked_reason text,
            CONSTRAINT oauth_grants_tenant_id_id_key UNIQUE (tenant_id, id)
        )
        """,
        "CREATE INDEX ix_oauth_grants_client_id ON oauth_grants (client_id)",
        "CREATE INDEX ix_oauth_grants_user_id ON oauth_grants (user_id)",
        f"""
        CREATE TABLE oauth_codes (
            digest bytea PRIMARY KEY,
            tenant_id uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
            grant_id uuid NOT NULL,
            redirect_uri text NOT NULL,
            code_challenge text NOT NULL,
            resource text NOT NULL,
            scopes text[] NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            expires_at timestamptz NOT NULL,
            used_at timestamptz,
            {grant_fk.format(t="oauth_codes")}
        )
        """,
        f"""
        CREATE TABLE oauth_refresh_tokens (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            tenant_id uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
            grant_id uuid NOT NULL,
            digest bytea NOT NULL CONSTRAINT oauth_refresh_tokens_digest_key UNIQUE,
            parent_id uuid REFERENCES oauth_refresh_tokens(id) ON DELETE CASCADE,
            scopes text[] NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            expires_at timestamptz NOT NULL,
            used_at timestamptz,
            revoked_at timestamptz,
            successor_sealed bytea,
            {grant_fk.format(t="oauth_refresh_tokens")}
        )
        """,
        "CREATE INDEX ix_oauth_refresh_tokens_grant_id ON oauth_refresh_tokens (grant_id)",
        "CREATE UNIQUE INDEX ix_oauth_refresh_tokens_parent_id ON oauth_refresh_tokens "
        "(parent_id)",
        f"""
        CREATE TABLE oauth_access_tokens (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            tenant_id uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
            grant_id uuid NOT NULL,
            digest bytea NOT NULL CONSTRAINT oauth_access_tokens_digest_key UNIQUE,
            scopes text[] NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            expires_at timestamptz NOT NULL,
            revoked_at timestamptz,
            {grant_fk.format(t="oauth_access_tokens")}
        )
        """,
        "CREATE INDEX ix_oauth_access_tokens_grant_id ON oauth_access_tokens (grant_id)",
    ]
    for table in TENANT_TABLES:
        statements += _policies(table)
    for sql in statements:
        op.execute(sql)


def downgrade() -> None:
    for table in ("oauth_access_tokens", "oauth_refresh_tokens", "oauth_codes",
                  "oauth_grants", "web_sessions", "oauth_clients"):
        op.execute(f"DROP TABLE IF EXISTS {table}")
