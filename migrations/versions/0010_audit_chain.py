"""Audit chain: a per-tenant hash chain over the audit log, sealed shortly after commit.

``audit_chain`` holds one link per sealed audit entry: its place in the tenant's chain
(``seq``), the entry, and the digest that covers the entry and the link before it (see
``breeze_mcp/audit_chain.py``). A tenant table under forced row-level security, append-only
like ``audit_log`` (the runtime role may only INSERT and SELECT; a trigger refuses UPDATE,
DELETE and TRUNCATE even for the owner).

``tenant_id`` has no foreign key: its check, a query per inserted link, was the largest part of
sealing's cost, and it would guard nothing: a link is written only in its tenant's transaction
(the INSERT policy), for an entry of that tenant, and audit_log's own key (ON DELETE RESTRICT)
already keeps a tenant with entries from being deleted.

The audit log's tenant index becomes ``(tenant_id, id)``: the same one index per insert, and
it lets the sealer and the verifier read one tenant's entries in id order from any point.

Revision ID: 0010
Revises: 0014
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0014"
branch_labels = None
depends_on = None

CURRENT_TENANT = "(SELECT breeze_current_tenant())"


def upgrade() -> None:
    match = f"tenant_id = {CURRENT_TENANT}"
    for statement in (
        "DROP INDEX ix_audit_log_tenant_id",
        "CREATE INDEX ix_audit_log_tenant_id_id ON audit_log (tenant_id, id)",
        """
        CREATE TABLE audit_chain (
            tenant_id uuid NOT NULL,
            seq bigint NOT NULL CONSTRAINT audit_chain_seq_check CHECK (seq > 0),
            entry_id bigint NOT NULL CONSTRAINT audit_chain_entry_id_key UNIQUE,
            digest bytea NOT NULL
                CONSTRAINT audit_chain_digest_check CHECK (octet_length(digest) = 32),
            sealed_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (tenant_id, seq)
        )
        """,
        # The same refusal as audit_log's, naming the table it guards.
        """
        CREATE FUNCTION breeze_append_only() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END
        $$
        """,
        "CREATE TRIGGER audit_chain_append_only BEFORE UPDATE OR DELETE OR TRUNCATE "
        "ON audit_chain FOR EACH STATEMENT EXECUTE FUNCTION breeze_append_only()",
        "ALTER TABLE audit_chain ENABLE ROW LEVEL SECURITY",
        "ALTER TABLE audit_chain FORCE ROW LEVEL SECURITY",
        f"CREATE POLICY audit_chain_tenant_select ON audit_chain FOR SELECT USING ({match})",
        f"CREATE POLICY audit_chain_tenant_insert ON audit_chain FOR INSERT "
        f"WITH CHECK ({match})",
        "CREATE POLICY audit_chain_tenant_update ON audit_chain FOR UPDATE USING (false)",
        "CREATE POLICY audit_chain_tenant_delete ON audit_chain FOR DELETE USING (false)",
    ):
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP TABLE audit_chain")
    op.execute("DROP FUNCTION breeze_append_only()")
    op.execute("DROP INDEX ix_audit_log_tenant_id_id")
    op.execute("CREATE INDEX ix_audit_log_tenant_id ON audit_log (tenant_id)")
