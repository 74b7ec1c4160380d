"""Invitations to join a tenant, and who suspended a person.

``invitations`` holds the mailed single-use links (``bzm_``, stored as a digest) that make a
person a member of a tenant with a role: a tenant table under forced row-level security like
every other. ``users.suspended_from_tenant_id`` names the tenant whose owner or admin suspended
the person (NULL: the operator, with the CLI), so that only that tenant's console may lift it.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

CURRENT_TENANT = "(SELECT breeze_current_tenant())"


def upgrade() -> None:
    match = f"tenant_id = {CURRENT_TENANT}"
    for statement in (
        """
        CREATE TABLE invitations (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            tenant_id uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
            email text NOT NULL,
            role text NOT NULL CONSTRAINT invitations_role_check
                CHECK (role IN ('owner', 'admin', 'technician', 'readonly')),
            digest bytea NOT NULL UNIQUE,
            invited_by uuid REFERENCES users(id) ON DELETE SET NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            expires_at timestamptz NOT NULL,
            accepted_at timestamptz,
            accepted_by uuid REFERENCES users(id) ON DELETE SET NULL,
            revoked_at timestamptz,
            superseded_at timestamptz
        )
        """,
        "CREATE INDEX ix_invitations_tenant_id ON invitations (tenant_id)",
        "ALTER TABLE invitations ENABLE ROW LEVEL SECURITY",
        "ALTER TABLE invitations FORCE ROW LEVEL SECURITY",
        f"CREATE POLICY invitations_tenant_select ON invitations FOR SELECT USING ({match})",
        f"CREATE POLICY invitations_tenant_insert ON invitations FOR INSERT WITH CHECK ({match})",
        f"CREATE POLICY invitations_tenant_update ON invitations FOR UPDATE USING ({match}) "
        f"WITH CHECK ({match})",
        f"CREATE POLICY invitations_tenant_delete ON invitations FOR DELETE USING ({match})",
        "ALTER TABLE users ADD COLUMN suspended_from_tenant_id uuid"
        " CONSTRAINT users_suspended_from_tenant_id_fkey"
        " REFERENCES tenants(id) ON DELETE SET NULL",
    ):
        op.execute(statement)


def downgrade() -> None:
    op.execute("ALTER TABLE users DROP COLUMN suspended_from_tenant_id")
    op.execute("DROP TABLE invitations")
