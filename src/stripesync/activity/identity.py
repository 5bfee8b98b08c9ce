"""Who a Stripe object belongs to: normalised, validated email addresses and their hashes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

from email_validator import EmailNotValidError, validate_email

# Reasons a Stripe object yields no contact; the import report counts them by these names.
NO_EMAIL = "no_email"
INVALID_EMAIL = "invalid_email"
SUPPRESSED = "suppressed"
MAX_EMAIL_LENGTH = 320


@dataclass(frozen=True)
class EmailCheck:
    email: str | None  # normalised (trimmed, lowercased) and valid, else None
    problem: str | None  # no_email | invalid_email when email is None


def check_email(raw: object) -> EmailCheck:
    """Trim, lowercase and validate (syntax only: no DNS lookups in the event path)."""
    if not isinstance(raw, str) or not raw.strip():
        return EmailCheck(None, NO_EMAIL)
    candidate = raw.strip().lower()
    if len(candidate) > MAX_EMAIL_LENGTH:
        return EmailCheck(None, INVALID_EMAIL)
    return _validated(candidate)


# The same addresses come back again and again (a customer, their charges, their checkout),
# and full validation is the costliest step of applying a page: remember recent answers.
# An import reads a customer's charges from other windows than the customer, minutes apart:
# room for ~130,000 addresses (about 30 MB) lets most of them find their answer.
@lru_cache(maxsize=131_072)
def _validated(candidate: str) -> EmailCheck:
    try:
        result = validate_email(candidate, check_deliverability=False)
    except EmailNotValidError:
        return EmailCheck(None, INVALID_EMAIL)
    return EmailCheck(result.normalized.lower(), None)


def normalise_email(raw: object) -> str | None:
    return check_email(raw).email


def email_hash(email: str) -> str:
    """SHA-256 hex of a normalised email: how the consent ledger and suppressions name a
    person without keeping the address."""
    return hashlib.sha256(email.encode()).hexdigest()


def email_domain(email: str) -> str:
    return email.rsplit("@", 1)[1]
