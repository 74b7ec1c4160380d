"""Foundation: tenants, users, memberships, RMM domain tables, audit log, row-level security.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Tables carrying tenant_id, protected by row-level security (audit_log is handled on its own).
DOMAIN_TABLES = (
    "memberships",
    "devices",
    "alerts",
    "device_notes",
    "script_runs",
    "patch_jobs",
    "isolation_events",
)

CURRENT_TENANT = "(SELECT breeze_current_tenant())"


def tenant_policies(table: str, *, select_extra: str = "") -> list[str]:
    """RLS enabled and forced, one policy per command, keyed on the transaction's tenant."""
    match = f"tenant_id = {CURRENT_TENANT}"
    return [
        f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY",
        f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY",
        f"CREATE POLICY {table}_tenant_select ON {table} FOR SELECT "
        f"USING ({match}{select_extra})",
        f"CREATE POLICY {table}_tenant_insert ON {table} FOR INSERT WITH CHECK ({match})",
        f"CREATE POLICY {table}_tenant_update ON {table} FOR UPDATE "
        f"USING ({match}) WITH CHECK ({match})",
        f"CREATE POLICY {table}_tenant_delete ON {table} FOR DELETE USING ({match})",
    ]


def upgrade() -> None:
    statements = [
        # The tenant and actor of the current transaction, set by db.tenant_transaction with
        # set_config(..., true). Unset (or after the transaction) they read as '' -> NULL, and
        # NULL matches no row: fail closed.
        """
        CREATE FUNCTION breeze_current_tenant() RETURNS uuid
        LANGUAGE sql STABLE PARALLEL SAFE
        AS $$ SELECT nullif(current_setting('breeze.tenant_id', true), '')::uuid $$
        """,
        """
        CREATE FUNCTION breeze_current_user() RETURNS uuid
        LANGUAGE sql STABLE PARALLEL SAFE
        AS $$ SELECT nullif(current_setting('breeze.user_id', true), '')::uuid $$
        """,
        """
        CREATE TABLE tenants (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            slug text NOT NULL UNIQUE
                CONSTRAINT tenants_slug_check CHECK (slug ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
            name text NOT NULL,
            status text NOT NULL DEFAULT 'pending_verification'
                CONSTRAINT tenants_status_check CHECK (status IN
                ('pending_verification', 'pending_payment', 'active', 'suspended')),
            email_verified_at timestamptz,
            payment_method_at timestamptz,
            activated_at timestamptz,
            created_at timestamptz NOT NULL DEFAULT now()
        )
        """,
        """
        CREATE TABLE users (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            email text NOT NULL,
            display_name text,
            password_hash text,
            email_verified_at timestamptz,
            disabled_at timestamptz,
            created_at timestamptz NOT NULL DEFAULT now()
        )
        """,
        "CREATE UNIQUE INDEX users_email_lower_key ON users (lower(email))",
        """
        CREATE TABLE memberships (
            tenant_id uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
            user_id uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
            role text NOT NULL CONSTRAINT memberships_role_check
                CHECK (role IN ('owner', 'admin', 'technician', 'readonly')),
            created_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (tenant_id, user_id)
        )
        """,
        "CREATE INDEX ix_memberships_user_id ON memberships (user_id)",
        """
        CREATE TABLE devices (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            tenant_id uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
            hostname text NOT NULL,
            site text NOT NULL DEFAULT 'default',
            os_family text NOT NULL,
            os_version text NOT NULL,
            agent_version text NOT NULL,
            status text NOT NULL DEFAULT 'online' CONSTRAINT devices_status_check
                CHECK (status IN ('online', 'offline', 'maintenance')),
            ip_address inet,
            tags text[] NOT NULL DEFAULT '{}',
            metrics jsonb NOT NULL DEFAULT '{}',
            last_seen_at timestamptz,
            created_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT devices_tenant_id_id_key UNIQUE (tenant_id, id),
            CONSTRAINT devices_tenant_id_hostname_key UNIQUE (tenant_id, hostname)
        )
        """,
        "CREATE INDEX ix_devices_tenant_id ON devices (tenant_id)",
    ]

    def device_child(table: str, columns: str, status: bool = False) -> list[str]:
        status_sql = (
            "status text NOT NULL DEFAULT 'queued' CONSTRAINT "
            f"{table}_status_check CHECK (status IN "
            "('queued', 'running', 'succeeded', 'failed', 'cancelled')),"
            "requested_by text NOT NULL,"
            "requested_at timestamptz NOT NULL DEFAULT now(),"
            "finished_at timestamptz,"
            if status
            else ""
        )
        return [
            f"""
            CREATE TABLE {table} (
                id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
                tenant_id uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
                device_id uuid NOT NULL,
                {columns}
                {status_sql}
                CONSTRAINT {table}_device_fkey FOREIGN KEY (tenant_id, device_id)
                    REFERENCES devices (tenant_id, id) ON DELETE CASCADE
            )
            """,
            f"CREATE INDEX ix_{table}_tenant_id ON {table} (tenant_id)",
            f"CREATE INDEX ix_{table}_device_id ON {table} (device_id)",
        ]

    statements += device_child(
        "alerts",
        """
        severity text NOT NULL CONSTRAINT alerts_severity_check
            CHECK (severity IN ('info', 'warning', 'critical')),
        title text NOT NULL,
        message text NOT NULL DEFAULT '',
        status text NOT NULL DEFAULT 'open' CONSTRAINT alerts_status_check
            CHECK (status IN ('open', 'acknowledged', 'resolved', 'suppressed')),
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        updated_by text,
        suppressed_until timestamptz,
        """,
    )
    statements += device_child(
        "device_notes",
        """
        author text NOT NULL,
        body text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        """,
    )
    statements += device_child(
        "script_runs",
        """
        interpreter text NOT NULL,
        script text NOT NULL,
        timeout_seconds integer NOT NULL DEFAULT 300,
        """,
        status=True,
    )
    statements += device_child(
        "patch_jobs",
        """
        patches text[] NOT NULL,
        reboot text NOT NULL DEFAULT 'if_required',
        """,
        status=True,
    )
    statements += device_child(
        "isolation_events",
        """
        action text NOT NULL,
        reason text NOT NULL,
        """,
        status=True,
    )
    statements += [
        """
        CREATE TABLE audit_log (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            occurred_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            request_id text,
            tenant_id uuid REFERENCES tenants(id) ON DELETE RESTRICT,
            actor_type text NOT NULL CONSTRAINT audit_log_actor_type_check
                CHECK (actor_type IN ('user', 'oauth_client', 'api_key', 'system')),
            actor_id text,
            acting_user_id uuid,
            auth_path text NOT NULL CONSTRAINT audit_log_auth_path_check
                CHECK (auth_path IN ('session', 'oauth', 'api_key', 'cli', 'system')),
            credential_id text,
            client_id text,
            action text NOT NULL,
            parameters jsonb NOT NULL DEFAULT '{}',
            risk_tier smallint CONSTRAINT audit_log_risk_tier_check
                CHECK (risk_tier BETWEEN 1 AND 4),
            scopes text[] NOT NULL DEFAULT '{}',
            decision text NOT NULL CONSTRAINT audit_log_decision_check
                CHECK (decision IN ('allowed', 'denied')),
            deny_reason text,
            outcome text NOT NULL CONSTRAINT audit_log_outcome_check
                CHECK (outcome IN ('success', 'error', 'blocked', 'rate_limited')),
            error text,
            client_ip inet,
            user_agent text,
            duration_ms double precision
        )
        """,
        "CREATE INDEX ix_audit_log_tenant_id ON audit_log (tenant_id)",
        # Append-only, even for the table owner: the trigger refuses UPDATE, DELETE and
        # TRUNCATE; the runtime role is additionally granted only INSERT and SELECT.
        """
        CREATE FUNCTION breeze_audit_log_append_only() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END
        $$
        """,
        # Statement-level, so the statement fails even when RLS leaves it no row to touch.
        "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON audit_log "
        "FOR EACH STATEMENT EXECUTE FUNCTION breeze_audit_log_append_only()",
        "ALTER TABLE audit_log ENABLE ROW LEVEL SECURITY",
        "ALTER TABLE audit_log FORCE ROW LEVEL SECURITY",
        f"CREATE POLICY audit_log_tenant_select ON audit_log FOR SELECT "
        f"USING (tenant_id = {CURRENT_TENANT})",
        # A tenant's events go to that tenant; pre-tenant events (tenant_id NULL) are allowed.
        f"CREATE POLICY audit_log_tenant_insert ON audit_log FOR INSERT "
        f"WITH CHECK (tenant_id IS NULL OR tenant_id = {CURRENT_TENANT})",
        "CREATE POLICY audit_log_tenant_update ON audit_log FOR UPDATE USING (false)",
        "CREATE POLICY audit_log_tenant_delete ON audit_log FOR DELETE USING (false)",
    ]
    for table in DOMAIN_TABLES:
        extra = ""
        if table == "memberships":
            # A signed-in user may read their own memberships before a tenant is chosen.
            extra = " OR user_id = (SELECT breeze_current_user())"
        statements += tenant_policies(table, select_extra=extra)
    for sql in statements:
        op.execute(sql)


def downgrade() -> None:
    for table in (
        "audit_log",
        "isolation_events",
        "patch_jobs",
        "script_runs",
        "device_notes",
        "alerts",
        "devices",
        "memberships",
        "users",
        "tenants",
    ):
        op.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
    op.execute("DROP FUNCTION IF EXISTS breeze_audit_log_append_only()")
    op.execute("DROP FUNCTION IF EXISTS breeze_current_user()")
    op.execute("DROP FUNCTION IF EXISTS breeze_current_tenant()")
