"""Table definitions (SQLAlchemy Core), mirroring the Alembic migrations.

A test compares this metadata with the migrated database, so the two cannot drift apart.
Every table with a ``tenant_id`` column is row-level-security protected by the migrations;
:mod:`breeze_mcp.db.catalog` checks the database for every such table, including ones added
later.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, BYTEA, INET, JSONB

__all__ = [
    "ALERT_SEVERITIES",
    "ALERT_STATUSES",
    "AUDIT_ACTOR_TYPES",
    "AUDIT_AUTH_PATHS",
    "AUDIT_DECISIONS",
    "AUDIT_OUTCOMES",
    "DEVICE_STATUSES",
    "JOB_STATUSES",
    "MAIL_LINK_PURPOSES",
    "ROLES",
    "TENANT_STATUSES",
    "alerts",
    "api_keys",
    "audit_chain",
    "audit_log",
    "billing_events",
    "device_notes",
    "devices",
    "invitations",
    "isolation_events",
    "mail_links",
    "memberships",
    "metadata",
    "mfa_recovery_codes",
    "mfa_totp",
    "patch_jobs",
    "script_runs",
    "tenants",
    "users",
]

metadata = sa.MetaData()

TENANT_STATUSES = ("pending_verification", "pending_payment", "active", "suspended")
ROLES = ("owner", "admin", "technician", "readonly")
DEVICE_STATUSES = ("online", "offline", "maintenance")
ALERT_SEVERITIES = ("info", "warning", "critical")
ALERT_STATUSES = ("open", "acknowledged", "resolved", "suppressed")
JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
AUDIT_ACTOR_TYPES = ("user", "oauth_client", "api_key", "system")
AUDIT_AUTH_PATHS = ("session", "oauth", "api_key", "cli", "system")
AUDIT_DECISIONS = ("allowed", "denied")
AUDIT_OUTCOMES = ("success", "error", "blocked", "rate_limited")


def _now() -> sa.TextClause:
    return sa.text("now()")


def _uuid_pk() -> sa.Column[object]:
    return sa.Column("id", sa.Uuid, primary_key=True, server_default=sa.text("gen_random_uuid()"))


def _tenant_fk() -> sa.Column[object]:
    return sa.Column(
        "tenant_id",
        sa.Uuid,
        sa.ForeignKey("tenants.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    )


def _check_in(column: str, values: tuple[str, ...], name: str) -> sa.CheckConstraint:
    quoted = ", ".join(f"'{v}'" for v in values)
    return sa.CheckConstraint(f"{column} IN ({quoted})", name=name)


tenants = sa.Table(
    "tenants",
    metadata,
    _uuid_pk(),
    sa.Column("slug", sa.Text, nullable=False, unique=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False, server_default="pending_verification"),
    sa.Column("email_verified_at", sa.TIMESTAMP(timezone=True)),
    sa.Column("payment_method_at", sa.TIMESTAMP(timezone=True)),
    sa.Column("activated_at", sa.TIMESTAMP(timezone=True)),
    sa.Column("mfa_required_roles", ARRAY(sa.Text), nullable=False, server_default="{}"),
    sa.Column("created_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=_now()),
    _check_in("status", TENANT_STATUSES, "tenants_status_check"),
    sa.CheckConstraint("slug ~ '^[a-z0-9][a-z0-9-]{0,62}$'", name="tenants_slug_check"),
)

users = sa.Table(
    "users",
    metadata,
    _uuid_pk(),
    sa.Column("email", sa.Text, nullable=False),
    sa.Column("display_name", sa.Text),
    sa.Column("password_hash", sa.Text),
    sa.Column("email_verified_at", sa.TIMESTAMP(timezone=True)),
    sa.Column("disabled_at", sa.TIMESTAMP(timezone=True)),
    sa.Column("created_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=_now()),
    # The tenant whose owner or admin suspended the person (NULL: the operator, or not
    # suspended); only that tenant may lift it. Not named tenant_id: users is not a tenant
    # table.
    sa.Column("suspended_from_tenant_id", sa.Uuid,
              sa.ForeignKey("tenants.id", ondelete="SET NULL")),
    sa.Index("users_email_lower_key", sa.text("lower(email)"), unique=True),
)

memberships = sa.Table(
    "memberships",
    metadata,
    sa.Column("tenant_id", sa.Uuid, sa.ForeignKey("tenants.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("user_id", sa.Uuid, sa.ForeignKey("users.id", ondelete="CASCADE"),
              primary_key=True, index=True),
    sa.Column("role", sa.Text, nullable=False),
    sa.Column("created_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=_now()),
    _check_in("role", ROLES, "memberships_role_check"),
)

devices = sa.Table(
    "devices",
    metadata,
    _uuid_pk(),
    _tenant_fk(),
    sa.Column("hostname", sa.Text, nullable=False),
    sa.Column("site", sa.Text, nullable=False, server_default="default"),
    sa.Column("os_family", sa.Text, nullable=False),
    sa.Column("os_version", sa.Text, nullable=False),
    sa.Column("agent_version", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False, server_default="online"),
    sa.Column("ip_address", INET),
    sa.Column("tags", ARRAY(sa.Text), nullable=False, server_default="{}"),
    sa.Column("metrics", JSONB, nullable=False, server_default="{}"),
    sa.Column("last_seen_at", sa.TIMESTAMP(timezone=True)),
    sa.Column("created_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=_now()),
    sa.UniqueConstraint("tenant_id", "id", name="devices_tenant_id_id_key"),
    sa.UniqueConstraint("tenant_id", "hostname", name="devices_tenant_id_hostname_key"),
    _check_in("status", DEVICE_STATUSES, "devices_status_check"),
)


def _device_fk(table: str) -> sa.ForeignKeyConstraint:
    # Composite key: a row can only name a device of its own tenant, even though
    # foreign-key checks themselves run without row-level security.
    return sa.ForeignKeyConstraint(
        ["tenant_id", "device_id"],
        ["devices.tenant_id", "devices.id"],
        ondelete="CASCADE",
        name=f"{table}_device_fkey",
    )


alerts = sa.Table(
    "alerts",
    metadata,
    _uuid_pk(),
    _tenant_fk(),
    sa.Column("device_id", sa.Uuid, nullable=False, index=True),
    sa.Column("severity", sa.Text, nullable=False),
    sa.Column("title", sa.Text, nullable=False),
    sa.Column("message", sa.Text, nullable=False, server_default=""),
    sa.Column("status", sa.Text, nullable=False, server_default="open"),
    sa.Column("created_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=_now()),
    sa.Column("updated_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=_now()),
    sa.Column("updated_by", sa.Text),
    sa.Column("suppressed_until", sa.TIMESTAMP(timezone=True)),
    _device_fk("alerts"),
    _check_in("severity", ALERT_SEVERITIES, "alerts_severity_check"),
    _check_in("status", ALERT_STATUSES, "alerts_status_check"),
)

device_notes = sa.Table(
    "device_notes",
    metadata,
    _uuid_pk(),
    _tenant_fk(),
    sa.Column("device_id", sa.Uuid, nullable=False, index=True),
    sa.Column("author", sa.Text, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("created_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=_now()),
    _device_fk("device_notes"),
)


def _job_table(name: str, *columns: sa.Column[object]) -> sa.Table:
    return sa.Table(
        name,
        metadata,
        _uuid_pk(),
        _tenant_fk(),
        sa.Column("device_id", sa.Uuid, nullable=False, index=True),
        *columns,
        sa.Column("status", sa.Text, nullable=False, server_default="queued"),
        sa.Column("requested_by", sa.Text, nullable=False),
        sa.Column("requested_at", sa.TIMESTAMP(timezone=True), nullable=False,
                  server_default=_now()),
        sa.Column("finished_at", sa.TIMESTAMP(timezone=True)),
        _device_fk(name),
        _check_in("status", JOB_STATUSES, f"{name}_status_check"),
    )


script_runs = _job_table(
    "script_runs",
    sa.Column("interpreter", sa.Text, nullable=False),
    sa.Column("script", sa.Text, nullable=False),
    sa.Column("timeout_seconds", sa.Integer, nullable=False, server_default="300"),
)

patch_jobs = _job_table(
    "patch_jobs",
    sa.Column("patches", ARRAY(sa.Text), nullable=False),
    sa.Column("reboot", sa.Text, nullable=False, server_default="if_required"),
)

isolation_events = _job_table(
    "isolation_events",
    sa.Column("action", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
    sa.Column("occurred_at", sa.TIMESTAMP(timezone=True), nullable=False,
              server_default=sa.text("clock_timestamp()")),
    sa.Column("request_id", sa.Text),
    # NULL for events before any tenant is known (e.g. a failed login of an unknown email).
    sa.Column("tenant_id", sa.Uuid, sa.ForeignKey("tenants.id", ondelete="RESTRICT")),
    sa.Column("actor_type", sa.Text, nullable=False),
    sa.Column("actor_id", sa.Text),
    sa.Column("acting_user_id", sa.Uuid),
    sa.Column("auth_path", sa.Text, nullable=False),
    sa.Column("credential_id", sa.Text),
    sa.Column("client_id", sa.Text),
    sa.Column("action", sa.Text, nullable=False),
    sa.Column("parameters", JSONB, nullable=False, server_default="{}"),
    sa.Column("risk_tier", sa.SmallInteger),
    sa.Column("scopes", ARRAY(sa.Text), nullable=False, server_default="{}"),
    sa.Column("decision", sa.Text, nullable=False),
    sa.Column("deny_reason", sa.Text),
    sa.Column("outcome", sa.Text, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("client_ip", INET),
    sa.Column("user_agent", sa.Text),
    sa.Column("duration_ms", sa.Float),
    _check_in("actor_type", AUDIT_ACTOR_TYPES, "audit_log_actor_type_check"),
    _check_in("auth_path", AUDIT_AUTH_PATHS, "audit_log_auth_path_check"),
    _check_in("decision", AUDIT_DECISIONS, "audit_log_decision_check"),
    _check_in("outcome", AUDIT_OUTCOMES, "audit_log_outcome_check"),
    sa.CheckConstraint("risk_tier BETWEEN 1 AND 4", name="audit_log_risk_tier_check"),
    # The audit log's reader walks one tenant's entries by (occurred_at, id), newest first
    # (keyset pages and exports; a time range is a range of this index).
    sa.Index("ix_audit_log_tenant_occurred_at_id", "tenant_id", "occurred_at", "id"),
    # One tenant's entries in id order, from any point (the audit chain's sealer and verifier).
    sa.Index("ix_audit_log_tenant_id_id", "tenant_id", "id"),
)

#: One link of a tenant's audit hash chain per sealed entry (see breeze_mcp/audit_chain.py).
audit_chain = sa.Table(
    "audit_chain",
    metadata,
    # No foreign key: see migration 0010.
    sa.Column("tenant_id", sa.Uuid, primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("entry_id", sa.BigInteger, nullable=False),
    sa.Column("digest", BYTEA, nullable=False),
    sa.Column("sealed_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=_now()),
    sa.UniqueConstraint("entry_id", name="audit_chain_entry_id_key"),
    sa.CheckConstraint("seq > 0", name="audit_chain_seq_check"),
    sa.CheckConstraint("octet_length(digest) = 32", name="audit_chain_digest_check"),
)


api_keys = sa.Table(
    "api_keys",
    metadata,
    _uuid_pk(),
    _tenant_fk(),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("prefix", sa.Text, nullable=False),
    sa.Column("digest", BYTEA, nullable=False, unique=True),
    sa.Column("scopes", ARRAY(sa.Text), nullable=False),
    sa.Column("created_by", sa.Uuid, sa.ForeignKey("users.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("rate_limit", sa.Text),
    sa.Column("created_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=_now()),
    sa.Column("expires_at", sa.TIMESTAMP(timezone=True)),
    sa.Column("last_used_at", sa.TIMESTAMP(timezone=True)),
    sa.Column("revoked_at", sa.TIMESTAMP(timezone=True)),
    sa.Column("revoked_by", sa.Text),
    sa.CheckConstraint("length(name) BETWEEN 1 AND 100", name="api_keys_name_check"),
    sa.CheckConstraint(
        "cardinality(scopes) > 0 AND scopes <@ ARRAY['ai:read', 'ai:write', 'ai:execute']::text[]",
        name="api_keys_scopes_check",
    ),
)

oauth_clients = sa.Table(
    "oauth_clients",
    metadata,
    sa.Column("client_id", sa.Text, primary_key=True),
    sa.Column("secret_digest", BYTEA),
    sa.Column("token_endpoint_auth_method", sa.Text, nullable=False),
    sa.Column("redirect_uris", ARRAY(sa.Text), nullable=False),
    sa.Column("grant_types", ARRAY(sa.Text), nullable=False),
    sa.Column("response_types", ARRAY(sa.Text), nullable=False),
    sa.Column("client_name", sa.Text),
    sa.Column("client_uri", sa.Text),
    sa.Column("logo_uri", sa.Text),
    sa.Column("scope", sa.Text),
    sa.Column("contacts", ARRAY(sa.Text), nullable=False, server_default="{}"),
    sa.Column("software_id", sa.Text),
    sa.Column("software_version", sa.Text),
    sa.Column("registered_ip", INET),
    sa.Column("created_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=_now()),
    sa.Column("expires_at", sa.TIMESTAMP(timezone=True), index=True),
    sa.Column("last_authorized_at", sa.TIMESTAMP(timezone=True)),
    # A client identified by the URL of its metadata document (CIMD) has the copy's cache
    # state here (NULL for a registered client), and its keys for private_key_jwt.
    sa.Column("none_fallback", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("document_fetched_at", sa.TIMESTAMP(timezone=True)),
    sa.Column("document_fresh_until", sa.TIMESTAMP(timezone=True)),
    sa.Column("document_stale_until", sa.TIMESTAMP(timezone=True)),
    sa.Column("jwks_uri", sa.Text),
    sa.Column("jwks", JSONB),
    sa.Column("jwks_fetched_at", sa.TIMESTAMP(timezone=True)),
    sa.Column("jwks_fresh_until", sa.TIMESTAMP(timezone=True)),
    # The one algorithm its assertions must be signed with, when its document names one.
    sa.Column("token_endpoint_auth_signing_alg", sa.Text),
    sa.CheckConstraint(
        "token_endpoint_auth_method IN ('none', 'client_secret_post', 'client_secret_basic',"
        " 'private_key_jwt')",
        name="oauth_clients_auth_method_check",
    ),
    sa.CheckConstraint(
        "(token_endpoint_auth_method IN ('client_secret_post', 'client_secret_basic'))"
        " = (secret_digest IS NOT NULL)",
        name="oauth_clients_secret_check",
    ),
    sa.CheckConstraint(
        "(document_fetched_at IS NULL) = (document_fresh_until IS NULL)"
        " AND (document_fetched_at IS NULL) = (document_stale_until IS NULL)",
        name="oauth_clients_document_check",
    ),
)

#: The ``jti`` (digest) of every client assertion (RFC 7523) until it expires: each is
#: accepted once, on whichever instance.
oauth_client_assertions = sa.Table(
    "oauth_client_assertions",
    metadata,
    sa.Column("client_id", sa.Text, primary_key=True),
    sa.Column("jti_digest", BYTEA, primary_key=True),
    sa.Column("expires_at", sa.TIMESTAMP(timezone=True), nullable=False),
)

web_sessions = sa.Table(
    "web_sessions",
    metadata,
    _uuid_pk(),
    sa.Column("digest", BYTEA, nullable=False, unique=True),
    sa.Column("user_id", sa.Uuid, sa.ForeignKey("users.id", ondelete="CASCADE"),
              nullable=False, index=True),
    sa.Column("created_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=_now()),
    sa.Column("expires_at", sa.TIMESTAMP(timezone=True), nullable=False),
    sa.Column("last_seen_at", sa.TIMESTAMP(timezone=True), nullable=False,
              server_default=_now()),
    sa.Column("revoked_at", sa.TIMESTAMP(timezone=True)),
    sa.Column("client_ip", INET),
    sa.Column("user_agent", sa.Text),
    # The organization the console acts in (one of the person's memberships; chosen at the
    # first console page, switched by the person). Not a tenant wall: the membership is
    # checked in the tenant's own transaction on every request. (Not named tenant_id: every
    # table with that column is a tenant table, walled by row-level security.)
    sa.Column("console_tenant_id", sa.Uuid, sa.ForeignKey("tenants.id", ondelete="SET NULL")),
    sa.Column("stepped_up_at", sa.TIMESTAMP(timezone=True)),
)

oauth_grants = sa.Table(
    "oauth_grants",
    metadata,
    _uuid_pk(),
    _tenant_fk(),
    sa.Column("client_id", sa.Text,
              sa.ForeignKey("oauth_clients.client_id", ondelete="CASCADE"),
              nullable=False, index=True),
    sa.Column("user_id", sa.Uuid, sa.ForeignKey("users.id", ondelete="CASCADE"),
              nullable=False, index=True),
    sa.Column("scopes", ARRAY(sa.Text), nullable=False),
    sa.Column("resource", sa.Text, nullable=False),
    sa.Column("created_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=_now()),
    sa.Column("last_used_at", sa.TIMESTAMP(timezone=True)),
    sa.Column("revoked_at", sa.TIMESTAMP(timezone=True)),
    sa.Column("revoked_reason", sa.Text),
    sa.UniqueConstraint("tenant_id", "id", name="oauth_grants_tenant_id_id_key"),
)


def _grant_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["tenant_id", "grant_id"], ["oauth_grants.tenant_id", "oauth_grants.id"],
        ondelete="CASCADE", name=f"{table}_grant_fkey",
    )


oauth_codes = sa.Table(
    "oauth_codes",
    metadata,
    sa.Column("digest", BYTEA, primary_key=True),
    _tenant_fk(),
    sa.Column("grant_id", sa.Uuid, nullable=False),
    sa.Column("redirect_uri", sa.Text, nullable=False),
    sa.Column("code_challenge", sa.Text, nullable=False),
    sa.Column("resource", sa.Text, nullable=False),
    sa.Column("scopes", ARRAY(sa.Text), nullable=False),
    sa.Column("created_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=_now()),
    sa.Column("expires_at", sa.TIMESTAMP(timezone=True), nullable=False),
    sa.Column("used_at", sa.TIMESTAMP(timezone=True)),
    _grant_fk("oauth_codes"),
)

oauth_refresh_tokens = sa.Table(
    "oauth_refresh_tokens",
    metadata,
    _uuid_pk(),
    _tenant_fk(),
    sa.Column("grant_id", sa.Uuid, nullable=False, index=True),
    sa.Column("digest", BYTEA, nullable=False, unique=True),
    sa.Column("parent_id", sa.Uuid,
              sa.ForeignKey("oauth_refresh_tokens.id", ondelete="CASCADE")),
    sa.Column("scopes", ARRAY(sa.Text), nullable=False),
    sa.Column("created_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=_now()),
    sa.Column("expires_at", sa.TIMESTAMP(timezone=True), nullable=False),
    sa.Column("used_at", sa.TIMESTAMP(timezone=True)),
    sa.Column("revoked_at", sa.TIMESTAMP(timezone=True)),
    # The successor's plaintext, AES-GCM sealed, kept only for the retry grace window.
    sa.Column("successor_sealed", BYTEA),
    sa.Index("ix_oauth_refresh_tokens_parent_id", "parent_id", unique=True),
    _grant_fk("oauth_refresh_tokens"),
)

oauth_access_tokens = sa.Table(
    "oauth_access_tokens",
    metadata,
    _uuid_pk(),
    _tenant_fk(),
    sa.Column("grant_id", sa.Uuid, nullable=False, index=True),
    sa.Column("digest", BYTEA, nullable=False, unique=True),
    sa.Column("scopes", ARRAY(sa.Text), nullable=False),
    sa.Column("created_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=_now()),
    sa.Column("expires_at", sa.TIMESTAMP(timezone=True), nullable=False),
    sa.Column("revoked_at", sa.TIMESTAMP(timezone=True)),
    _grant_fk("oauth_access_tokens"),
)

#: An owner's or admin's bar on one OAuth client in their tenant, until ``until`` (or until
#: lifted). At most one open (unlifted) block per client and tenant.
oauth_client_blocks = sa.Table(
    "oauth_client_blocks",
    metadata,
    _uuid_pk(),
    _tenant_fk(),
    sa.Column("client_id", sa.Text,
              sa.ForeignKey("oauth_clients.client_id", ondelete="CASCADE"), nullable=False),
    sa.Column("until", sa.TIMESTAMP(timezone=True), nullable=False),
    sa.Column("created_by", sa.Uuid, sa.ForeignKey("users.id", ondelete="SET NULL")),
    sa.Column("created_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=_now()),
    sa.Column("lifted_at", sa.TIMESTAMP(timezone=True)),
    sa.Column("lifted_by", sa.Uuid, sa.ForeignKey("users.id", ondelete="SET NULL")),
    sa.CheckConstraint("until > created_at", name="oauth_client_blocks_until_check"),
    sa.Index("ix_oauth_client_blocks_open", "tenant_id", "client_id", unique=True,
             postgresql_where=sa.text("lifted_at IS NULL")),
)


billing_events = sa.Table(
    "billing_events",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    _tenant_fk(),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("received_at", sa.TIMESTAMP(timezone=True), nullable=False,
              server_default=_now()),
    sa.CheckConstraint("id ~ '^evt_[A-Za-z0-9_-]{1,200}$'", name="billing_events_id_check"),
    _check_in("type", ("payment_method.attached", "payment_method.detached"),
              "billing_events_type_check"),
)


#: What a mailed single-use link is for (each purpose's links supersede only each other).
MAIL_LINK_PURPOSES = ("verify_email", "reset_password")

mail_links = sa.Table(
    "mail_links",
    metadata,
    _uuid_pk(),
    sa.Column("digest", BYTEA, nullable=False, unique=True),
    sa.Column("user_id", sa.Uuid, sa.ForeignKey("users.id", ondelete="CASCADE"),
              nullable=False),
    sa.Column("purpose", sa.Text, nullable=False),
    sa.Column("created_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=_now()),
    sa.Column("expires_at", sa.TIMESTAMP(timezone=True), nullable=False),
    sa.Column("used_at", sa.TIMESTAMP(timezone=True)),
    sa.Column("superseded_at", sa.TIMESTAMP(timezone=True)),
    _check_in("purpose", MAIL_LINK_PURPOSES, "mail_links_purpose_check"),
    sa.Index("ix_mail_links_user_id_purpose", "user_id", "purpose"),
)


mfa_totp = sa.Table(
    "mfa_totp",
    metadata,
    sa.Column("user_id", sa.Uuid, sa.ForeignKey("users.id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("secret_sealed", BYTEA, nullable=False),
    sa.Column("created_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=_now()),
    sa.Column("enabled_at", sa.TIMESTAMP(timezone=True)),
    sa.Column("last_step", sa.BigInteger, nullable=False, server_default="0"),
)

mfa_recovery_codes = sa.Table(
    "mfa_recovery_codes",
    metadata,
    _uuid_pk(),
    sa.Column("user_id", sa.Uuid, sa.ForeignKey("users.id", ondelete="CASCADE"),
              nullable=False, index=True),
    sa.Column("digest", BYTEA, nullable=False, unique=True),
    sa.Column("created_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=_now()),
    sa.Column("used_at", sa.TIMESTAMP(timezone=True)),
)


invitations = sa.Table(
    "invitations",
    metadata,
    _uuid_pk(),
    _tenant_fk(),
    sa.Column("email", sa.Text, nullable=False),
    sa.Column("role", sa.Text, nullable=False),
    sa.Column("digest", BYTEA, nullable=False, unique=True),
    sa.Column("invited_by", sa.Uuid, sa.ForeignKey("users.id", ondelete="SET NULL")),
    sa.Column("created_at", sa.TIMESTAMP(timezone=True), nullable=False, server_default=_now()),
    sa.Column("expires_at", sa.TIMESTAMP(timezone=True), nullable=False),
    sa.Column("accepted_at", sa.TIMESTAMP(timezone=True)),
    sa.Column("accepted_by", sa.Uuid, sa.ForeignKey("users.id", ondelete="SET NULL")),
    sa.Column("revoked_at", sa.TIMESTAMP(timezone=True)),
    sa.Column("superseded_at", sa.TIMESTAMP(timezone=True)),
    _check_in("role", ROLES, "invitations_role_check"),
)
