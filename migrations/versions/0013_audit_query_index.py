"""The audit log's reader: an index for walking one tenant's entries by (occurred_at, id).

Pages and exports of the audit log are keyset walks, newest first, over
``(occurred_at, id)`` within a tenant, and a time-range filter is a range of the same key; a
btree read backwards serves the descending order.

Revision ID: 0013
Revises: 0009
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE INDEX ix_audit_log_tenant_occurred_at_id"
               " ON audit_log (tenant_id, occurred_at, id)")


def downgrade() -> None:
    op.execute("DROP INDEX ix_audit_log_tenant_occurred_at_id")
