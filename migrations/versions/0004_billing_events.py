"""Billing events: each webhook event id is processed once.

A tenant row under forced row-level security: the event is recorded in the transaction of the
tenant it names, with the change it made, so a replay (the same id again) changes nothing.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

CURRENT_TENANT = "(SELECT breeze_current_tenant())"


def upgrade() -> None:
    match = f"tenant_id = {CURRENT_TENANT}"
    for statement in (
        """
        CREATE TABLE billing_events (
            id text PRIMARY KEY
                CONSTRAINT billing_events_id_check CHECK (id ~ '^evt_[A-Za-z0-9_-]{1,200}$'),
            tenant_id uuid NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
            type text NOT NULL CONSTRAINT billing_events_type_check CHECK (type IN
                ('payment_method.attached', 'payment_method.detached')),
            received_at timestamptz NOT NULL DEFAULT now()
        )
        """,
        "CREATE INDEX ix_billing_events_tenant_id ON billing_events (tenant_id)",
        "ALTER TABLE billing_events ENABLE ROW LEVEL SECURITY",
        "ALTER TABLE billing_events FORCE ROW LEVEL SECURITY",
        f"CREATE POLICY billing_events_tenant_select ON billing_events FOR SELECT USING ({match})",
        f"CREATE POLICY billing_events_tenant_insert ON billing_events FOR INSERT "
        f"WITH CHECK ({match})",
        f"CREATE POLICY billing_events_tenant_update ON billing_events FOR UPDATE "
        f"USING ({match}) WITH CHECK ({match})",
        f"CREATE POLICY billing_events_tenant_delete ON billing_events FOR DELETE "
        f"USING ({match})",
    ):
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP TABLE billing_events")
