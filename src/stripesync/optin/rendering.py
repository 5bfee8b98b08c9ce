"""The opt-in email and the public pages, rendered from jinja2 templates.

HTML templates autoescape: whatever the merchant writes (intro, names, address) is text,
never markup. The plain-text part is rendered without escaping, as text. The preview and
the real send go through the same `render_email`, so a preview is the email as sent.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formataddr, make_msgid
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

# Bump when the templates change: it is part of every email version's digest.
TEMPLATE_VERSION = "2026-11-26.1"

_TEMPLATES = Path(__file__).parent / "templates"
_html = Environment(
    loader=FileSystemLoader(_TEMPLATES),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
    keep_trailing_newline=True,
)
_text = Environment(
    loader=FileSystemLoader(_TEMPLATES),
    autoescape=False,  # noqa: S701 - the text/plain part: no markup to escape into
    undefined=StrictUndefined,
    keep_trailing_newline=True,
)


@dataclass(frozen=True)
class EmailContent:
    """Everything of one email version except the recipient's links."""

    merchant_name: str
    postal_address: str | None
    subject: str
    from_name: str
    from_email: str
    reply_to: str
    intro: str | None

    def digest(self) -> str:
        fields = {**self.__dict__, "template_version": TEMPLATE_VERSION}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    html: str
    text: str


def _paragraphs(intro: str | None) -> list[str]:
    if not intro:
        return []
    blocks = [" ".join(block.split()) for block in intro.replace("\r\n", "\n").split("\n\n")]
    return [block for block in blocks if block]


def render_email(content: EmailContent, *, confirm_url: str, decline_url: str) -> RenderedEmail:
    values: dict[str, Any] = {
        "subject": content.subject,
        "merchant_name": content.merchant_name,
        "postal_address": content.postal_address,
        "reply_to": content.reply_to,
        "intro_paragraphs": _paragraphs(content.intro),
        "confirm_url": confirm_url,
        "decline_url": decline_url,
    }
    return RenderedEmail(
        subject=content.subject,
        html=_html.get_template("email.html").render(values),
        text=_text.get_template("email.txt").render(values),
    )


def build_message(
    content: EmailContent,
    rendered: RenderedEmail,
    *,
    recipient: str,
    unsubscribe_url: str,
    envelope_from: str,
) -> EmailMessage:
    """The MIME message: text and HTML alternatives, the merchant's From and Reply-To, a
    Message-ID and one-click List-Unsubscribe (RFC 8058) pointing at the decline link."""
    message = EmailMessage()
    message["Subject"] = rendered.subject
    message["From"] = formataddr((content.from_name, content.from_email))
    if envelope_from.lower() != content.from_email.lower():
        message["Sender"] = envelope_from
    message["Reply-To"] = content.reply_to
    message["To"] = recipient
    domain = envelope_from.rpartition("@")[2] or "localhost"
    message["Message-ID"] = make_msgid(domain=domain)
    message["List-Unsubscribe"] = f"<{unsubscribe_url}>"
    message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(rendered.text)
    message.add_alternative(rendered.html, subtype="html")
    return message


def render_page(
    *,
    title: str,
    heading: str,
    lines: list[str],
    merchant_name: str | None = None,
    postal_address: str | None = None,
    confirm_action: str | None = None,
    decline_action: str | None = None,
    preview: bool = False,
) -> str:
    return _html.get_template("page.html").render(
        title=title,
        heading=heading,
        lines=lines,
        merchant_name=merchant_name,
        postal_address=postal_address,
        actions=confirm_action is not None and decline_action is not None,
        confirm_action=confirm_action,
        decline_action=decline_action,
        preview=preview,
    )
