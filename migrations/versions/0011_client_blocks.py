"""OAuth client blocks: an owner or admin bars one client from their tenant until a time.

While a block is open (not lifted, ``until`` still ahead) the tenant gives the client no new
grant and its codes are not exchanged; blocking revokes its grants in the same transaction.
A tenant row under forced row-level security, like every other. At most one block of a
client per tenant is open at a time (a new block replaces its end); lifted ones stay as
history.

Revision ID: 0011
Revises: 0013
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0013"
branch_labels = None
depends_on = None

CURRENT_TENANT = "(SELECT breeze_current_tenant())"


def upgrade() -> None:
    match = f"tenant_id = {CURRENT_TENANT}"
    table = "oauth_client_blocks"
    for sql in (
        f"""
        CREATE TABLE {table} (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            tenant_id uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
            client_id text NOT NULL
                REFERENCES oauth_clients(client_id) ON DELETE CASCADE,
            until timestamptz NOT NULL,
            created_by uuid REFERENCES users(id) ON DELETE SET NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            lifted_at timestamptz,
            lifted_by uuid REFERENCES users(id) ON DELETE SET NULL,
            CONSTRAINT {table}_until_check CHECK (until > created_at)
        )
        """,
        f"CREATE INDEX ix_{table}_tenant_id ON {table} (tenant_id)",
        f"CREATE UNIQUE INDEX ix_{table}_open ON {table} (tenant_id, client_id)"
        " WHERE lifted_at IS NULL",
        f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY",
        f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY",
        f"CREATE POLICY {table}_tenant_select ON {table} FOR SELECT USING ({match})",
        f"CREATE POLICY {table}_tenant_insert ON {table} FOR INSERT WITH CHECK ({match})",
        f"CREATE POLICY {table}_tenant_update ON {table} FOR UPDATE USING ({match}) "
        f"WITH CHECK ({match})",
        f"CREATE POLICY {table}_tenant_delete ON {table} FOR DELETE USING ({match})",
    ):
        op.execute(sql)


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS oauth_client_blocks")
