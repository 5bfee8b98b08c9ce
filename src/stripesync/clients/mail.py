"""Outgoing mail: SMTP through aiosmtplib, or `.eml` files in the dev outbox.

`STRIPESYNC_SMTP_URL` is `smtp://user:pass@host:port` (STARTTLS when the server offers it)
or `smtps://...` (TLS from the first byte). Unset, every message is written to
`{STRIPESYNC_DATA_DIR}/outbox/` instead, so development never mails anyone.

Failures come back as two exceptions the caller can act on: `TransientMailError` (4xx
replies, connection trouble, timeouts: try again later) and `PermanentMailError` (5xx: the
server refused this message for good; retrying would only hurt the sender's reputation).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import unquote, urlsplit

import aiosmtplib

from stripesync.config import Settings


class MailError(Exception):
    """A message could not be handed to the mail server."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class TransientMailError(MailError):
    """Try again later: a 4xx reply, a refused or dropped connection, a timeout."""


class PermanentMailError(MailError):
    """The server refused the message for good (a 5xx reply): do not retry."""


@dataclass(frozen=True)
class SmtpTarget:
    host: str
    port: int
    use_tls: bool
    username: str | None
    password: str | None

    @classmethod
    def parse(cls, url: str) -> SmtpTarget:
        """Read `smtp://user:pass@host:port` or `smtps://...`; raises ValueError otherwise."""
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError("SMTP URL must look like smtp://user:pass@host:port or smtps://...")
        use_tls = parts.scheme == "smtps"
        return cls(
            host=parts.hostname,
            port=parts.port or (465 if use_tls else 25),
            use_tls=use_tls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )


class Mailer:
    """Sends one `EmailMessage` at a time to the configured SMTP server or the dev outbox."""

    def __init__(self, settings: Settings) -> None:
        self.envelope_from = settings.mail_from
        self.timeout = settings.mail_timeout_seconds
        self.outbox = Path(settings.data_dir) / "outbox"
        self.target = (
            SmtpTarget.parse(settings.smtp_url.get_secret_value()) if settings.smtp_url else None
        )

    async def send(self, message: EmailMessage, recipient: str) -> None:
        """Deliver `message` to `recipient` (the envelope recipient).

        Raises `TransientMailError` or `PermanentMailError`; never logs the address.
        """
        if self.target is None:
            await asyncio.to_thread(self._write_eml, message)
            return
        target = self.target
        try:
            errors, _ = await aiosmtplib.send(
                message,
                sender=self.envelope_from,
                recipients=[recipient],
                hostname=target.host,
                port=target.port,
                username=target.username,
                password=target.password,
                use_tls=target.use_tls,
                timeout=self.timeout,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refused = exc.recipients[0] if exc.recipients else None
            raise _classified(refused.code if refused else None, "recipient refused") from None
        except aiosmtplib.SMTPResponseException as exc:
            raise _classified(exc.code, "server refused the message") from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise TransientMailError(f"mail server unreachable: {type(exc).__name__}") from None
        if errors:  # a refusal of the one recipient that did not raise
            code = next(iter(errors.values()))[0]
            raise _classified(code, "recipient refused")

    def _write_eml(self, message: EmailMessage) -> None:
        self.outbox.mkdir(parents=True, exist_ok=True)
        path = self.outbox / f"{uuid.uuid4().hex}.eml"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(bytes(message))
        tmp.replace(path)  # readers never see half a message


def _classified(code: int | None, what: str) -> MailError:
    if code is not None and 500 <= code < 600:
        return PermanentMailError(f"{what} ({code})", code)
    return TransientMailError(f"{what} ({code})", code)
