"""A metadata-document client's ``token_endpoint_auth_signing_alg``.

RFC 7591 section 2: the JWS algorithm that MUST be used to sign the client's assertions at the
token endpoint. A document that names one has it stored with the rest of its copy, and an
assertion signed with any other algorithm is refused.

Revision ID: 0015
Revises: 0010
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0015"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE oauth_clients ADD COLUMN token_endpoint_auth_signing_alg text")


def downgrade() -> None:
    op.execute("ALTER TABLE oauth_clients DROP COLUMN token_endpoint_auth_signing_alg")
