"""Stripe objects (at STRIPE_API_VERSION) read into the flat snapshots our tables store.

Pure functions: no database, no clock. Emails are normalised and validated here; whether an
address is suppressed is decided by the caller, which can ask the database.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from stripesync.activity.identity import check_email

StripeObject = dict[str, Any]


def ts(value: object) -> datetime | None:
    """A Stripe unix timestamp (seconds) as an aware UTC datetime."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return datetime.fromtimestamp(value, UTC)


def ref(value: object) -> str | None:
    """An expandable reference: the id whether Stripe sent a string or the expanded object."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, dict):
        inner = value.get("id")
        return inner if isinstance(inner, str) else None
    return None


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _country(address: object) -> str | None:
    country = _dict(address).get("country")
    if isinstance(country, str) and len(country) == 2:
        return country.upper()
    return None


def _text(value: object) -> str | None:
    return value.strip() or None if isinstance(value, str) else None


@dataclass(frozen=True)
class CustomerSnapshot:
    stripe_id: str
    email: str | None
    email_problem: str | None
    name: str | None
    country: str | None
    created: datetime | None
    deleted: bool

    @property
    def digest(self) -> str:
        """Stable hash of the stored fields: equal content, equal digest (a no-op re-apply)."""
        fields = [self.email, self.email_problem, self.name, self.country, self.deleted]
        return hashlib.sha256(json.dumps(fields).encode()).hexdigest()


def customer_snapshot(obj: StripeObject, *, deleted: bool = False) -> CustomerSnapshot:
    deleted = deleted or obj.get("deleted") is True
    if deleted:
        # A tombstone keeps no personal data: the customer no longer counts anywhere.
        return CustomerSnapshot(
            str(obj["id"]), None, None, None, None, ts(obj.get("created")), True
        )
    check = check_email(obj.get("email"))
    return CustomerSnapshot(
        stripe_id=str(obj["id"]),
        email=check.email,
        email_problem=check.problem,
        name=_text(obj.get("name")),
        country=_country(obj.get("address")),
        created=ts(obj.get("created")),
        deleted=False,
    )


# A charge's status only moves forward: pending -> succeeded | failed (both final, and one
# charge never reaches both). So the highest rank is the newest state, whatever the order.
PAYMENT_STATUS_RANK = ("pending", "failed", "succeeded")


@dataclass(frozen=True)
class PaymentSnapshot:
    charge_id: str
    payment_intent_id: str | None
    invoice_id: str | None
    customer_id: str | None
    guest_email: str | None
    billing_name: str | None
    billing_country: str | None
    amount: int
    amount_refunded: int
    currency: str
    status: str
    created: datetime
    charge_seen: bool  # from the charge itself (canonical) or from an intent / invoice
    refunded_at: datetime | None


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def charge_snapshot(obj: StripeObject, observed_at: datetime) -> PaymentSnapshot | None:
    status = obj.get("status")
    created = ts(obj.get("created"))
    if status not in PAYMENT_STATUS_RANK or created is None or not obj.get("currency"):
        return None
    billing = _dict(obj.get("billing_details"))
    email = check_email(billing.get("email")).email or check_email(obj.get("receipt_email")).email
    refunded = _int(obj.get("amount_refunded"))
    refunded_at = None
    if refunded > 0:
        # Webhook payloads at our version carry no refund list; an expanded one (imports)
        # gives the exact time, else the observation time is the best bound we have.
        refunds = [ts(r.get("created")) for r in _dict(obj.get("refunds")).get("data") or [] if r]
        known = [t for t in refunds if t is not None]
        refunded_at = max(known) if known else observed_at
    return PaymentSnapshot(
        charge_id=str(obj["id"]),
        payment_intent_id=ref(obj.get("payment_intent")),
        invoice_id=ref(obj.get("invoice")),
        customer_id=ref(obj.get("customer")),
        guest_email=email,
        billing_name=_text(billing.get("name")),
        billing_country=_country(billing.get("address")),
        amount=_int(obj.get("amount")),
        amount_refunded=refunded,
        currency=str(obj["currency"]).lower(),
        status=str(status),
        created=created,
        charge_seen=True,
        refunded_at=refunded_at,
    )


def payment_intent_snapshot(obj: StripeObject) -> PaymentSnapshot | None:
    """What a payment intent says about its latest charge, or None when it names no charge
    (the charge's own event then carries the payment)."""
    latest = obj.get("latest_charge")
    charge_id = ref(latest)
    created = ts(obj.get("created"))
    if charge_id is None or created is None or not obj.get("currency"):
        return None
    status = obj.get("status")
    error_charge = ref(_dict(obj.get("last_payment_error")).get("charge"))
    if status == "succeeded":
        payment_status, amount = "succeeded", _int(obj.get("amount_received"))
    elif error_charge == charge_id:
        payment_status, amount = "failed", _int(obj.get("amount"))
    elif status == "processing":
        payment_status, amount = "pending", _int(obj.get("amount"))
    else:
        return None
    email = check_email(obj.get("receipt_email")).email
    if email is None and isinstance(latest, dict):
        email = check_email(_dict(latest.get("billing_details")).get("email")).email
    return PaymentSnapshot(
        charge_id=charge_id,
        payment_intent_id=str(obj["id"]),
        invoice_id=ref(obj.get("invoice")),
        customer_id=ref(obj.get("customer")),
        guest_email=email,
        billing_name=None,
        billing_country=None,
        amount=amount,
        amount_refunded=0,
        currency=str(obj["currency"]).lower(),
        status=payment_status,
        created=created,
        charge_seen=False,
        refunded_at=None,
    )


def invoice_snapshot(obj: StripeObject) -> PaymentSnapshot | None:
    """The payment an invoice names through `charge`: paid -> that charge succeeded;
    attempted and unpaid -> that charge failed. No charge (free or paid out of band): None."""
    charge_id = ref(obj.get("charge"))
    if charge_id is None or not obj.get("currency"):
        return None
    transitions = _dict(obj.get("status_transitions"))
    if obj.get("paid") is True or obj.get("status") == "paid":
        status, amount = "succeeded", _int(obj.get("amount_paid"))
        created = ts(transitions.get("paid_at")) or ts(obj.get("created"))
    elif obj.get("attempted") is True:
        status, amount = "failed", _int(obj.get("amount_due"))
        created = ts(obj.get("created"))
    else:
        return None
    if created is None:
        return None
    return PaymentSnapshot(
        charge_id=charge_id,
        payment_intent_id=ref(obj.get("payment_intent")),
        invoice_id=str(obj["id"]),
        customer_id=ref(obj.get("customer")),
        guest_email=check_email(obj.get("customer_email")).email,
        billing_name=None,
        billing_country=None,
        amount=amount,
        amount_refunded=0,
        currency=str(obj["currency"]).lower(),
        status=status,
        created=created,
        charge_seen=False,
        refunded_at=None,
    )


@dataclass(frozen=True)
class SubscriptionSnapshot:
    stripe_id: str
    customer_id: str
    status: str
    created: datetime | None


def subscription_snapshot(obj: StripeObject, *, deleted: bool = False) -> SubscriptionSnapshot:
    customer = ref(obj.get("customer"))
    status = "canceled" if deleted else str(obj.get("status") or "incomplete")
    return SubscriptionSnapshot(str(obj["id"]), customer or "", status, ts(obj.get("created")))


@dataclass(frozen=True)
class CheckoutSnapshot:
    stripe_id: str
    customer_id: str | None
    payment_intent_id: str | None
    email: str | None
    email_problem: str | None
    promotions: str | None
    created: datetime | None


def checkout_snapshot(obj: StripeObject) -> CheckoutSnapshot:
    details = _dict(obj.get("customer_details"))
    check = check_email(details.get("email") or obj.get("customer_email"))
    promotions = _dict(obj.get("consent")).get("promotions")
    return CheckoutSnapshot(
        stripe_id=str(obj["id"]),
        customer_id=ref(obj.get("customer")),
        payment_intent_id=ref(obj.get("payment_intent")),
        email=check.email,
        email_problem=check.problem,
        promotions=promotions if promotions in ("opt_in", "opt_out") else None,
        created=ts(obj.get("created")),
    )
