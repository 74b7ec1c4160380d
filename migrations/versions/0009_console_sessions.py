"""The web console's session state: the organization a session acts in, and when its person
last confirmed who they are (step-up before a Tier 3 action).

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE web_sessions ADD COLUMN console_tenant_id uuid"
               " CONSTRAINT web_sessions_console_tenant_id_fkey"
               " REFERENCES tenants(id) ON DELETE SET NULL")
    op.execute("ALTER TABLE web_sessions ADD COLUMN stepped_up_at timestamptz")


def downgrade() -> None:
    op.execute("ALTER TABLE web_sessions DROP COLUMN stepped_up_at")
    op.execute("ALTER TABLE web_sessions DROP COLUMN console_tenant_id")
