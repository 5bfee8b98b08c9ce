"""The e2e scenario: what each merchant's Stripe holds and does, and what segments.md says
the platform's lists must hold at the end, computed here from the payments themselves.

A merchant has people (one email each; some with two Stripe customers, some paying as
guests only), a history read by the import (customers and charges spread over ~500 days,
kept a day or more away from the 30/90/120/183-day boundaries, so a run of a few minutes
never moves anyone across one), and two phases of live events delivered as webhooks:
A (new customers, payments, failures, refunds) and B (after the opt-in answers: more
payments). Everything is derived from a seed, so a faulty run and a fault-free run of the
same seed must end in the same state.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.stripe_webhooks import charge, customer

DAY = 86_400
CUSTOMER_AGES = (3, 15, 50, 110, 170, 210, 300, 500)  # days
CHARGE_AGES = (1, 5, 10, 20, 40, 60, 100, 140, 160, 200, 250, 400)
AMOUNTS = (1500, 4900, 12000, 30000, 52000)
OPTIN_ELIGIBLE_DAYS = 183

# segments.md built-ins (default thresholds): list name -> rule over a person's activity.
LIST_NAMES = {
    "all": "Stripe - All Customers",
    "prospects": "Stripe - Prospects",
    "first_time": "Stripe - First-time Customers",
    "repeat": "Stripe - Repeat Customers",
    "recent": "Stripe - Recent Customers",
    "lapsed": "Stripe - Lapsed Customers",
    "high_value": "Stripe - High-Value Customers",
    "failed_payment": "Stripe - Failed Payments",
    "refunded": "Stripe - Refunded Customers",
}


@dataclass
class Person:
    email: str
    customers: dict[str, int] = field(default_factory=dict)  # customer id -> created
    answer: str | None = None  # opt-in mode: "confirm" | "decline" | None (never answers)


@dataclass
class Merchant:
    key: str
    account_id: str
    stripe_account: str
    mode: str  # optin | direct
    owner_email: str
    people: dict[str, Person] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    phase_a: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    phase_b: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    charges: dict[str, dict[str, Any]] = field(default_factory=dict)  # final state by id
    charge_email: dict[str, str] = field(default_factory=dict)
    phase_b_charges: set[str] = field(default_factory=set)
    answered: dict[str, str] = field(default_factory=dict)  # what people actually answered

    @property
    def cc_token(self) -> str:
        return f"cc-access-{self.account_id}"

    def event_count(self) -> int:
        return len(self.phase_a) + len(self.phase_b)

    # --- expectations ----------------------------------------------------------------------

    def activity(self, email: str, now: float, *, before_b: bool = False) -> dict[str, Any]:
        mine = [
            c
            for cid, c in self.charges.items()
            if self.charge_email[cid] == email and not (before_b and cid in self.phase_b_charges)
        ]
        succeeded = [c for c in mine if c["status"] == "succeeded"]
        counted = [c for c in succeeded if c["amount_refunded"] < c["amount"]]
        failed = [c for c in mine if c["status"] == "failed"]
        last_purchase = max((c["created"] for c in counted), default=None)
        last_success = max((c["created"] for c in succeeded), default=None)
        last_failed = max((c["created"] for c in failed), default=None)
        total = sum(c["amount"] - c["amount_refunded"] for c in succeeded)
        return {
            "purchase_count": len(counted),
            "total_usd": total,
            "last_purchase_at": last_purchase,
            "failed_since": last_failed is not None
            and (last_success is None or last_failed > last_success),
            "refunded": any(c["amount_refunded"] > 0 for c in succeeded),
        }

    def optin_eligible(self, email: str, now: float, *, before_b: bool = False) -> bool:
        """Gets the one email: a customer created, or a purchase counted, in the last 183 days
        (refunds in this scenario never take away the purchase that made someone eligible).
        `before_b`: as of the end of phase A (phase B's payments make more people eligible)."""
        since = now - OPTIN_ELIGIBLE_DAYS * DAY
        person = self.people[email]
        if person.customers and min(person.customers.values()) >= since:
            return True
        act = self.activity(email, now, before_b=before_b)
        return act["last_purchase_at"] is not None and act["last_purchase_at"] >= since

    def permitted(self, now: float) -> set[str]:
        """Who may be on the platform: everyone in direct mode (the merchant's affirmation),
        only those who confirmed the opt-in email in opt-in mode."""
        if self.mode == "direct":
            return set(self.people)
        return {e for e, answer in self.answered.items() if answer == "confirm"}

    def expected_lists(self, now: float) -> dict[str, set[str]]:
        lists: dict[str, set[str]] = {name: set() for name in LIST_NAMES.values()}
        for email in self.permitted(now):
            a = self.activity(email, now)
            count, last = a["purchase_count"], a["last_purchase_at"]
            keys = ["all"]
            keys += ["prospects"] if count == 0 else []
            keys += ["first_time"] if count == 1 else []
            keys += ["repeat"] if count >= 2 else []
            keys += ["recent"] if last is not None and last >= now - 30 * DAY else []
            keys += ["lapsed"] if count >= 1 and last is not None and last < now - 120 * DAY else []
            keys += ["high_value"] if a["total_usd"] >= 50_000 else []
            keys += ["failed_payment"] if a["failed_since"] else []
            keys += ["refunded"] if a["refunded"] else []
            for key in keys:
                lists[LIST_NAMES[key]].add(email)
        return lists


def build_merchant(
    key: str, mode: str, people: int, *, seed: int, live_share: float = 1.0
) -> Merchant:
    """A merchant of `people` people; `live_share` scales how many live events they cause."""
    rng = random.Random(f"{seed}-{key}")
    now = int(time.time())
    m = Merchant(
        key=key,
        account_id=f"acc_{key}",
        stripe_account=f"acct_{key}_{seed}",
        mode=mode,
        owner_email=f"owner@{key}.example",
    )
    seq = [0]

    def live_time(base: int) -> int:
        seq[0] += 1
        return now - base + 3 * seq[0]

    def new_charge(email: str, cid: str | None, created: int, *, ok: bool = True) -> dict[str, Any]:
        chid = f"ch_{key}_{len(m.charges):05d}"
        obj = charge(
            chid, customer_id=cid, email=email, amount=rng.choice(AMOUNTS), created=created,
            succeeded=ok,
        )  # fmt: skip
        m.charges[chid] = obj
        m.charge_email[chid] = email
        return obj

    domains = ("bluefern.example", "kiln.example", "glaze.example")
    live_customers: list[tuple[str, str]] = []
    for i in range(people):
        email = f"{key}.p{i}@{domains[i % 3]}"
        person = Person(email)
        m.people[email] = person
        if mode == "optin":
            person.answer = ("confirm", "decline", "confirm", None)[i % 4]
        guest = i % 11 == 10
        live = i % 5 == 4 and not guest
        if live:
            live_customers.append((email, f"cus_{key}{i}"))
            continue
        first_created = 0
        if not guest:
            age = rng.choice(CUSTOMER_AGES)
            first_created = now - age * DAY - rng.randrange(3600)
            cid = f"cus_{key}{i}"
            person.customers[cid] = first_created
            m.history.append(customer(cid, email, first_created, name=f"Person {i}"))
            if i % 13 == 6:  # the same person, a second Stripe customer
                second = f"cus_{key}{i}b"
                person.customers[second] = first_created + DAY
                m.history.append(customer(second, email, first_created + DAY))
        else:
            first_created = now - 400 * DAY
        ages = [a for a in CHARGE_AGES if now - a * DAY > first_created + DAY]
        # A guest exists for Stripe only through a payment: at least one, and it succeeded.
        for _ in range(rng.choice((1, 2)) if guest else rng.choice((0, 1, 1, 2, 3))):
            created = now - rng.choice(ages) * DAY - rng.randrange(3600)
            cid = None if guest else next(iter(person.customers))
            ok = guest or rng.random() > 0.15
            m.history.append(new_charge(email, cid, created, ok=ok))

    # Phase A: new customers, payments, failures and refunds, as webhooks.
    for email, cid in live_customers:
        created = live_time(3600)
        m.people[email].customers[cid] = created
        m.phase_a.append(("customer.created", customer(cid, email, created)))
        if rng.random() < 0.7:
            m.phase_a.append(("charge.succeeded", new_charge(email, cid, live_time(3600))))
    for email, person in list(m.people.items()):
        if rng.random() >= live_share:
            continue
        cid = next(iter(person.customers), None)
        roll = rng.random()
        if roll < 0.35:
            m.phase_a.append(("charge.succeeded", new_charge(email, cid, live_time(3600))))
        elif roll < 0.45:
            obj = new_charge(email, cid, live_time(3600), ok=False)
            m.phase_a.append(("charge.failed", obj))
    # Refunds of history charges, only of people whose customer is recent (so a refund
    # never decides whether someone is asked for permission).
    for obj in [h for h in m.history if h["object"] == "charge"]:
        person = m.people[m.charge_email[obj["id"]]]
        recent_customer = person.customers and min(person.customers.values()) >= now - 100 * DAY
        if obj["status"] == "succeeded" and recent_customer and rng.random() < 0.5:
            refunded = dict(obj)
            refunded["amount_refunded"] = (
                obj["amount"] if rng.random() < 0.5 else obj["amount"] // 2
            )
            refunded["refunded"] = refunded["amount_refunded"] == obj["amount"]
            m.charges[obj["id"]] = refunded
            m.phase_a.append(("charge.refunded", refunded))
    # Phase B (after the opt-in answers): more payments move people between lists.
    for email, person in m.people.items():
        if rng.random() < 0.3 * live_share:
            cid = next(iter(person.customers), None)
            obj = new_charge(email, cid, live_time(1200))
            m.phase_b.append(("charge.succeeded", obj))
            m.phase_b_charges.add(obj["id"])
    return m
