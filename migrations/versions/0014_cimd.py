"""Client ID Metadata Documents: clients whose id is the URL of their metadata document.

Such a client is a row of ``oauth_clients`` keyed by its URL, written only from a validated
copy of its document, with the copy's cache state beside it (fetched, fresh until, usable
while its host is down until); its keys for ``private_key_jwt`` (the document's ``jwks``, or
the set last fetched from its ``jwks_uri``) likewise. ``private_key_jwt`` joins the
authentication methods; only the shared-secret methods carry a secret. A global table
(``oauth_client_assertions``) remembers the ``jti`` of every client assertion until it
expires, so an assertion is used once, whichever instance sees it.

Revision ID: 0014
Revises: 0012
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for sql in (
        "ALTER TABLE oauth_clients DROP CONSTRAINT oauth_clients_auth_method_check",
        "ALTER TABLE oauth_clients DROP CONSTRAINT oauth_clients_secret_check",
        "ALTER TABLE oauth_clients ADD CONSTRAINT oauth_clients_auth_method_check CHECK"
        " (token_endpoint_auth_method IN ('none', 'client_secret_post', 'client_secret_basic',"
        " 'private_key_jwt'))",
        "ALTER TABLE oauth_clients ADD CONSTRAINT oauth_clients_secret_check CHECK"
        " ((token_endpoint_auth_method IN ('client_secret_post', 'client_secret_basic'))"
        " = (secret_digest IS NOT NULL))",
        "ALTER TABLE oauth_clients ADD COLUMN none_fallback boolean NOT NULL DEFAULT false",
        "ALTER TABLE oauth_clients ADD COLUMN document_fetched_at timestamptz",
        "ALTER TABLE oauth_clients ADD COLUMN document_fresh_until timestamptz",
        "ALTER TABLE oauth_clients ADD COLUMN document_stale_until timestamptz",
        "ALTER TABLE oauth_clients ADD COLUMN jwks_uri text",
        "ALTER TABLE oauth_clients ADD COLUMN jwks jsonb",
        "ALTER TABLE oauth_clients ADD COLUMN jwks_fetched_at timestamptz",
        "ALTER TABLE oauth_clients ADD COLUMN jwks_fresh_until timestamptz",
        "ALTER TABLE oauth_clients ADD CONSTRAINT oauth_clients_document_check CHECK"
        " ((document_fetched_at IS NULL) = (document_fresh_until IS NULL)"
        " AND (document_fetched_at IS NULL) = (document_stale_until IS NULL))",
        """
        CREATE TABLE oauth_client_assertions (
            client_id text NOT NULL,
            jti_digest bytea NOT NULL,
            expires_at timestamptz NOT NULL,
            PRIMARY KEY (client_id, jti_digest)
        )
        """,
    ):
        op.execute(sql)


def downgrade() -> None:
    for sql in (
        "DROP TABLE oauth_client_assertions",
        "DELETE FROM oauth_clients WHERE document_fetched_at IS NOT NULL"
        " OR token_endpoint_auth_method = 'private_key_jwt'",
        "ALTER TABLE oauth_clients DROP CONSTRAINT oauth_clients_document_check",
        *(f"ALTER TABLE oauth_clients DROP COLUMN {column}" for column in (
            "none_fallback", "document_fetched_at", "document_fresh_until",
            "document_stale_until", "jwks_uri", "jwks", "jwks_fetched_at",
            "jwks_fresh_until")),
        "ALTER TABLE oauth_clients DROP CONSTRAINT oauth_clients_auth_method_check",
        "ALTER TABLE oauth_clients DROP CONSTRAINT oauth_clients_secret_check",
        "ALTER TABLE oauth_clients ADD CONSTRAINT oauth_clients_auth_method_check CHECK"
        " (token_endpoint_auth_method IN ('none', 'client_secret_post', 'client_secret_basic'))",
        "ALTER TABLE oauth_clients ADD CONSTRAINT oauth_clients_secret_check CHECK"
        " ((token_endpoint_auth_method = 'none') = (secret_digest IS NULL))",
    ):
        op.execute(sql)
