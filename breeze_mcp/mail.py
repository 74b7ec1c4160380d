"""Outgoing mail: SMTP through aiosmtplib, or, with no SMTP host configured (development),
an ``.eml`` file per message in ``<state dir>/outbox/`` with its link logged, so ``make run``
needs nothing else.

Messages are plain text with the links the reader needs, built on the public URL. A failure to
deliver is raised to the caller, which decides what the person is told (a sign-up still
succeeds and offers a resend).
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

import aiosmtplib
from starlette.background import BackgroundTask

from breeze_mcp.config import Settings

__all__ = ["MailError", "Mailer", "message"]

log = logging.getLogger(__name__)

_LINK = re.compile(r"https?://\S+")


class MailError(Exception):
    """The message could not be handed to the SMTP server (nothing about the recipient)."""


def message(settings: Settings, to: str, subject: str, text: str) -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = settings.smtp_from
    mail["To"] = to
    mail["Subject"] = subject
    mail["Date"] = formatdate(localtime=False)
    domain = settings.smtp_from.rsplit("@", 1)[-1].strip(">").strip() or "localhost"
    mail["Message-ID"] = make_msgid(domain=domain)
    mail.set_content(text)
    return mail


class Mailer:
    """Sends with the configured SMTP server, or writes to the outbox."""

    def __init__(self, settings: Settings, outbox: Path) -> None:
        self._settings = settings
        self._outbox = outbox

    async def send(self, mail: EmailMessage) -> None:
        settings = self._settings
        if not settings.smtp_host:
            self._to_outbox(mail)
            return
        implicit = settings.smtp_port == 465
        try:
            await aiosmtplib.send(
                mail, hostname=settings.smtp_host, port=settings.smtp_port,
                username=settings.smtp_username,
                password=settings.smtp_password.get_secret_value()
                if settings.smtp_password else None,
                use_tls=implicit and settings.smtp_starttls,
                start_tls=(settings.smtp_starttls and not implicit) or False,
                timeout=15)
        except (aiosmtplib.SMTPException, OSError) as exc:
            log.warning("mail to the SMTP server %s:%s failed: %s", settings.smtp_host,
                        settings.smtp_port, type(exc).__name__)
            raise MailError(f"the mail server did not accept the message ({type(exc).__name__})"
                            ) from None

    def after_response(self, mail: EmailMessage | None) -> BackgroundTask | None:
        """A task sending ``mail`` once the response is out, its failure logged: for answers
        that must not say, even by their timing, whether a mail was due."""
        return None if mail is None else BackgroundTask(self._send_logged, mail)

    async def _send_logged(self, mail: EmailMessage) -> None:
        try:
            await self.send(mail)
        except MailError as exc:
            log.warning("a mail sent after its response was lost: %s", exc)

    def _to_outbox(self, mail: EmailMessage) -> None:
        self._outbox.mkdir(parents=True, exist_ok=True, mode=0o700)
        name = f"{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(4)}.eml"
        path = self._outbox / name
        path.write_bytes(bytes(mail))
        path.chmod(0o600)
        body = mail.get_content() if not mail.is_multipart() else ""
        links = _LINK.findall(body)
        log.warning("no SMTP host configured: mail to %s written to %s%s", mail["To"], path,
                    f"; its link: {links[0]}" if links else "")
