"""One table for the single-use links Breeze mails: email verification and password reset.

``email_verifications`` becomes ``mail_links`` with a ``purpose``; a newer link supersedes the
earlier unused ones of the same person and purpose only.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE email_verifications RENAME TO mail_links")
    op.execute("ALTER TABLE mail_links RENAME CONSTRAINT email_verifications_pkey "
               "TO mail_links_pkey")
    op.execute("ALTER TABLE mail_links RENAME CONSTRAINT email_verifications_digest_key "
               "TO mail_links_digest_key")
    op.execute("ALTER TABLE mail_links RENAME CONSTRAINT email_verifications_user_id_fkey "
               "TO mail_links_user_id_fkey")
    op.execute("DROP INDEX ix_email_verifications_user_id")
    op.execute("ALTER TABLE mail_links ADD COLUMN purpose text NOT NULL DEFAULT 'verify_email'"
               " CONSTRAINT mail_links_purpose_check"
               " CHECK (purpose IN ('verify_email', 'reset_password'))")
    op.execute("ALTER TABLE mail_links ALTER COLUMN purpose DROP DEFAULT")
    op.execute("CREATE INDEX ix_mail_links_user_id_purpose ON mail_links (user_id, purpose)")


def downgrade() -> None:
    op.execute("DELETE FROM mail_links WHERE purpose <> 'verify_email'")
    op.execute("DROP INDEX ix_mail_links_user_id_purpose")
    op.execute("ALTER TABLE mail_links DROP COLUMN purpose")
    op.execute("CREATE INDEX ix_email_verifications_user_id ON mail_links (user_id)")
    op.execute("ALTER TABLE mail_links RENAME CONSTRAINT mail_links_user_id_fkey "
               "TO email_verifications_user_id_fkey")
    op.execute("ALTER TABLE mail_links RENAME CONSTRAINT mail_links_digest_key "
               "TO email_verifications_digest_key")
    op.execute("ALTER TABLE mail_links RENAME CONSTRAINT mail_links_pkey "
               "TO email_verifications_pkey")
    op.execute("ALTER TABLE mail_links RENAME TO email_verifications")
