"""All SQL of payment activity.

ORDER INDEPENDENCE: the rule. Stripe delivers at least once, in any order, and `created`
has one-second resolution, so no write below trusts arrival order or `created` alone.
Every merge is a join in a semilattice (commutative, associative, idempotent), so any
permutation of any multiset of snapshots ends in the same row:

- Payments (one row per charge): the status only moves up the lattice
  pending < failed < succeeded (both final states are terminal; one charge never reaches
  both); `amount_refunded` only grows (max); `refunded_at` belongs to the largest refunded
  amount (earliest sighting of it); `charge_seen` is an OR, and once the charge itself was
  seen its amount / currency / created win over what an intent or invoice said (those are
  combined with min / max otherwise); ids that never change (customer, intent, invoice,
  billing name / country) are combined with LEAST, which ignores nulls. The guest email
  keeps the value of the latest observation, ties broken by the address itself.
- Customers: a deletion is a tombstone and final (Stripe never reuses ids). Otherwise the
  snapshot with the greater (observed_at, digest) wins: the event's `created` first, and for
  same-second snapshots the content digest, which is arbitrary but the same whatever the
  order. (Stripe customers carry no version field; an import or resync re-fetch corrects a
  same-second tie that picked the older content.)
- Subscriptions: terminal states (canceled, incomplete_expired; `customer.subscription.
  deleted`) win over live ones; otherwise the greater (observed_at, status rank) wins.
- Checkout sessions: immutable once completed; the first stored copy stays.
- Links and contact aggregates are pure functions of these rows (linking.py), recomputed
  after every apply, so they inherit the order independence.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any

from sqlalchemy import BigInteger, String, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession

from stripesync.activity.context import ActivityContext
from stripesync.activity.objects import (
    PAYMENT_STATUS_RANK,
    CheckoutSnapshot,
    CustomerSnapshot,
    PaymentSnapshot,
    SubscriptionSnapshot,
)

_IDS = bindparam("ids", type_=ARRAY(BigInteger))
_HASHES = bindparam("hashes", type_=ARRAY(String))
_EMAILS = bindparam("emails", type_=ARRAY(String))

# Same-second tie-break for live subscription states: the later step of the usual lifecycle.
SUBSCRIPTION_STATUS_RANK = (
    "incomplete",
    "trialing",
    "active",
    "past_due",
    "unpaid",
    "paused",
    "incomplete_expired",
    "canceled",
)
TERMINAL_SUBSCRIPTION = ("canceled", "incomplete_expired")


def _key(ctx: ActivityContext) -> dict[str, Any]:
    return {"account_id": ctx.account_id, "livemode": ctx.livemode}


def _rounds(rows: Sequence[Any], key: Callable[[Any], str]) -> list[list[Any]]:
    """`rows` in key order, split so that no key repeats within a round: one statement may
    not update a row twice (ON CONFLICT DO UPDATE), and since every merge is order
    independent, merging round after round ends where merging one by one does."""
    rounds: list[list[Any]] = []
    seen: dict[str, int] = {}
    for row in sorted(rows, key=key):
        n = seen[key(row)] = seen.get(key(row), -1) + 1
        if n == len(rounds):
            rounds.append([])
        rounds[n].append(row)
    return rounds


def _unnest(columns: Sequence[tuple[str, str]]) -> str:
    """`unnest(...) AS u(...)` over array parameters named after the (column, SQL type)
    pairs: one statement writes a whole batch, each parameter one array."""
    arrays = ", ".join(f"CAST(:{name} AS {kind}[])" for name, kind in columns)
    return f"unnest({arrays}) AS u({', '.join(name for name, _ in columns)})"


def _arrays(columns: Sequence[tuple[str, str]], rows: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """The array parameters of `_unnest`: one list per column, from rows of values."""
    return {name: [row[i] for row in rows] for i, (name, _) in enumerate(columns)}


async def _upsert(
    session: AsyncSession,
    sql: str,
    columns: Sequence[tuple[str, str]],
    rows: Sequence[Sequence[Any]],
    params: dict[str, Any],
) -> None:
    """Write `rows` (values in `columns` order, the first being the key) with `sql` (an
    INSERT selecting from `_unnest(columns)`), in key order: concurrent writers lock rows
    in the same order. A key seen twice merges twice, one round after the other."""
    for batch in _rounds(rows, key=lambda row: row[0]):
        await session.execute(text(sql), {**params, **_arrays(columns, batch)})


_CUSTOMER_COLUMNS = (
    ("stripe_id", "text"),
    ("email", "text"),
    ("email_problem", "text"),
    ("name", "text"),
    ("country", "text"),
    ("created", "timestamptz"),
    ("deleted", "boolean"),
    ("digest", "text"),
)


async def upsert_customers(
    session: AsyncSession, ctx: ActivityContext, snaps: Sequence[CustomerSnapshot]
) -> None:
    await _upsert(
        session,
        f"""
        INSERT INTO stripe_customers AS c (account_id, livemode, stripe_id, email,
            email_problem, name, country, created, deleted, digest, observed_at)
        SELECT :account_id, :livemode, u.*, :observed_at FROM {_unnest(_CUSTOMER_COLUMNS)}
        ON CONFLICT (account_id, livemode, stripe_id) DO UPDATE SET
            email = EXCLUDED.email, email_problem = EXCLUDED.email_problem,
            name = EXCLUDED.name, country = EXCLUDED.country,
            created = LEAST(c.created, EXCLUDED.created), deleted = EXCLUDED.deleted,
            observed_at = EXCLUDED.observed_at, digest = EXCLUDED.digest,
            updated_at = now()
        WHERE NOT c.deleted AND (EXCLUDED.deleted
            OR (EXCLUDED.observed_at, EXCLUDED.digest) > (c.observed_at, c.digest))
        """,  # noqa: S608 - only constants are interpolated
        _CUSTOMER_COLUMNS,
        [
            (
                s.stripe_id,
                s.email,
                s.email_problem,
                s.name,
                s.country,
                s.created,
                s.deleted,
                s.digest,
            )
            for s in snaps
        ],
        {**_key(ctx), "observed_at": ctx.observed_at},
    )


def _status_rank(column: str) -> str:
    values = ",".join(f"'{s}'" for s in PAYMENT_STATUS_RANK)
    return f"array_position(ARRAY[{values}]::text[], {column}::text)"


def _charge_wins(column: str, combine: str) -> str:
    """The charge's own value once it was seen; otherwise combine intent / invoice values."""
    return (
        f"CASE WHEN EXCLUDED.charge_seen AND NOT p.charge_seen THEN EXCLUDED.{column} "
        f"WHEN p.charge_seen AND NOT EXCLUDED.charge_seen THEN p.{column} "
        f"ELSE {combine}(p.{column}, EXCLUDED.{column}) END"
    )


_NEWER_GUEST_EMAIL = (
    "EXCLUDED.guest_email IS NOT NULL AND (p.guest_email IS NULL OR "
    "(EXCLUDED.guest_email_at, EXCLUDED.guest_email) > (p.guest_email_at, p.guest_email))"
)


_PAYMENT_COLUMNS = (
    ("charge_id", "text"),
    ("payment_intent_id", "text"),
    ("invoice_id", "text"),
    ("customer_id", "text"),
    ("guest_email", "text"),
    ("guest_email_at", "timestamptz"),
    ("billing_name", "text"),
    ("billing_country", "text"),
    ("amount", "bigint"),
    ("amount_refunded", "bigint"),
    ("currency", "text"),
    ("status", "text"),
    ("created", "timestamptz"),
    ("charge_seen", "boolean"),
    ("refunded_at", "timestamptz"),
)


async def upsert_payments(
    session: AsyncSession, ctx: ActivityContext, snaps: Sequence[PaymentSnapshot]
) -> None:
    await _upsert(
        session,
        f"""
        INSERT INTO payments AS p (account_id, livemode, charge_id, payment_intent_id,
            invoice_id, customer_id, guest_email, guest_email_at, billing_name,
            billing_country, amount, amount_refunded, currency, status, created,
            charge_seen, refunded_at, contact_id)
        SELECT CAST(:account_id AS varchar), CAST(:livemode AS boolean), u.*, (
            -- A new payment starts on its customer's contact when that is already known,
            -- saving the relink an UPDATE of the row; the relink that follows derives
            -- every link anyway (linking.relink_payments).
            SELECT cu.contact_id FROM stripe_customers cu
            WHERE cu.account_id = CAST(:account_id AS varchar)
                AND cu.livemode = CAST(:livemode AS boolean)
                AND cu.stripe_id = u.customer_id AND NOT cu.deleted)
        FROM {_unnest(_PAYMENT_COLUMNS)}
        ON CONFLICT (account_id, livemode, charge_id) DO UPDATE SET
            payment_intent_id = LEAST(p.payment_intent_id, EXCLUDED.payment_intent_id),
            invoice_id = LEAST(p.invoice_id, EXCLUDED.invoice_id),
            customer_id = LEAST(p.customer_id, EXCLUDED.customer_id),
            guest_email = CASE WHEN {_NEWER_GUEST_EMAIL}
                THEN EXCLUDED.guest_email ELSE p.guest_email END,
            guest_email_at = CASE WHEN {_NEWER_GUEST_EMAIL}
                THEN EXCLUDED.guest_email_at ELSE p.guest_email_at END,
            billing_name = LEAST(p.billing_name, EXCLUDED.billing_name),
            billing_country = LEAST(p.billing_country, EXCLUDED.billing_country),
            amount = {_charge_wins("amount", "GREATEST")},
            currency = {_charge_wins("currency", "LEAST")},
            created = {_charge_wins("created", "LEAST")},
            amount_refunded = GREATEST(p.amount_refunded, EXCLUDED.amount_refunded),
            refunded_at = CASE
                WHEN EXCLUDED.amount_refunded > p.amount_refunded THEN EXCLUDED.refunded_at
                WHEN EXCLUDED.amount_refunded < p.amount_refunded THEN p.refunded_at
                ELSE LEAST(p.refunded_at, EXCLUDED.refunded_at) END,
            status = CASE WHEN {_status_rank("EXCLUDED.status")} > {_status_rank("p.status")}
                THEN EXCLUDED.status ELSE p.status END,
            charge_seen = p.charge_seen OR EXCLUDED.charge_seen,
            updated_at = now()
        """,  # noqa: S608 - only constants are interpolated
        _PAYMENT_COLUMNS,
        [
            (
                s.charge_id,
                s.payment_intent_id,
                s.invoice_id,
                s.customer_id,
                s.guest_email,
                ctx.observed_at if s.guest_email else None,
                s.billing_name,
                s.billing_country,
                s.amount,
                s.amount_refunded,
                s.currency,
                s.status,
                s.created,
                s.charge_seen,
                s.refunded_at,
            )
            for s in snaps
        ],
        _key(ctx),
    )


_SUBSCRIPTION_COLUMNS = (
    ("stripe_id", "text"),
    ("customer_id", "text"),
    ("status", "text"),
    ("created", "timestamptz"),
)


def _subscription_order(alias: str) -> str:
    ranks = ",".join(f"'{s}'" for s in SUBSCRIPTION_STATUS_RANK)
    terminal = ",".join(f"'{s}'" for s in TERMINAL_SUBSCRIPTION)
    return (
        f"({alias}.status IN ({terminal}), {alias}.observed_at, "
        f"coalesce(array_position(ARRAY[{ranks}]::text[], {alias}.status::text), 0))"
    )


async def upsert_subscriptions(
    session: AsyncSession, ctx: ActivityContext, snaps: Sequence[SubscriptionSnapshot]
) -> None:
    await _upsert(
        session,
        f"""
        INSERT INTO subscriptions AS s (account_id, livemode, stripe_id, customer_id,
            status, created, observed_at)
        SELECT :account_id, :livemode, u.*, :observed_at
        FROM {_unnest(_SUBSCRIPTION_COLUMNS)}
        ON CONFLICT (account_id, livemode, stripe_id) DO UPDATE SET
            customer_id = EXCLUDED.customer_id, status = EXCLUDED.status,
            created = LEAST(s.created, EXCLUDED.created),
            observed_at = EXCLUDED.observed_at, updated_at = now()
        WHERE {_subscription_order("EXCLUDED")} > {_subscription_order("s")}
        """,  # noqa: S608 - only constants are interpolated
        _SUBSCRIPTION_COLUMNS,
        [(s.stripe_id, s.customer_id, s.status, s.created) for s in snaps],
        {**_key(ctx), "observed_at": ctx.observed_at},
    )


_CHECKOUT_COLUMNS = (
    ("stripe_id", "text"),
    ("customer_id", "text"),
    ("payment_intent_id", "text"),
    ("email", "text"),
    ("promotions", "text"),
    ("created", "timestamptz"),
)


async def upsert_checkouts(
    session: AsyncSession, ctx: ActivityContext, snaps: Sequence[CheckoutSnapshot]
) -> None:
    await _upsert(
        session,
        f"""
        INSERT INTO checkout_sessions (account_id, livemode, stripe_id, customer_id,
            payment_intent_id, email, promotions, created)
        SELECT :account_id, :livemode, u.* FROM {_unnest(_CHECKOUT_COLUMNS)}
        ON CONFLICT (account_id, livemode, stripe_id) DO NOTHING
        """,  # noqa: S608 - only constants are interpolated
        _CHECKOUT_COLUMNS,
        [
            (s.stripe_id, s.customer_id, s.payment_intent_id, s.email, s.promotions, s.created)
            for s in snaps
        ],
        _key(ctx),
    )


# --- links -----------------------------------------------------------------------------
_SIDS = bindparam("sids", type_=ARRAY(String))


async def _locked_by_stripe_id(
    session: AsyncSession, ctx: ActivityContext, table: str, stripe_ids: Collection[str]
) -> list[Any]:
    """The rows of these ids in `table` (a constant), locked in id order."""
    result = await session.execute(
        text(
            f"""
            SELECT * FROM {table}
            WHERE account_id = :account_id AND livemode = :livemode AND stripe_id = ANY(:sids)
            ORDER BY stripe_id
            FOR UPDATE
            """  # noqa: S608 - the table name is a constant
        ).bindparams(_SIDS),
        {**_key(ctx), "sids": sorted(stripe_ids)},
    )
    return list(result.all())


async def _set_contacts(
    session: AsyncSession,
    ctx: ActivityContext,
    table: str,
    links: Sequence[tuple[str, int | None]],
) -> None:
    """(stripe_id, contact_id) pairs of `table` (a constant), written in one statement."""
    if not links:
        return
    await session.execute(
        text(
            f"""
            UPDATE {table} t SET contact_id = v.cid
            FROM unnest(CAST(:sids AS text[]), CAST(:cids AS bigint[])) AS v(sid, cid)
            WHERE t.account_id = :account_id AND t.livemode = :livemode AND t.stripe_id = v.sid
            """  # noqa: S608 - the table name is a constant
        ),
        {**_key(ctx), "sids": [sid for sid, _ in links], "cids": [cid for _, cid in links]},
    )


async def customer_links(
    session: AsyncSession, ctx: ActivityContext, stripe_ids: Collection[str]
) -> dict[str, tuple[str | None, bool, int | None]]:
    """(email, deleted, contact_id) of each stored customer, locked."""
    rows = await _locked_by_stripe_id(session, ctx, "stripe_customers", stripe_ids)
    return {row.stripe_id: (row.email, row.deleted, row.contact_id) for row in rows}


async def set_customer_contacts(
    session: AsyncSession, ctx: ActivityContext, links: Sequence[tuple[str, int | None]]
) -> None:
    await _set_contacts(session, ctx, "stripe_customers", links)


async def payment_links(
    session: AsyncSession,
    ctx: ActivityContext,
    *,
    charge_ids: Collection[str] = (),
    customer_ids: Collection[str] = (),
) -> list[Any]:
    """Rows (id, contact_id, guest_email, has_customer, customer_deleted, customer_contact)
    of the payments of these charges and of these customers, locked in id order."""
    result = await session.execute(
        text(
            """
            SELECT p.id, p.contact_id, p.guest_email, cu.id IS NOT NULL AS has_customer,
                coalesce(cu.deleted, false) AS customer_deleted,
                cu.contact_id AS customer_contact
            FROM payments p
            LEFT JOIN stripe_customers cu ON cu.account_id = p.account_id
                AND cu.livemode = p.livemode AND cu.stripe_id = p.customer_id
            WHERE p.id IN (
                SELECT id FROM payments WHERE account_id = :account_id
                    AND livemode = :livemode AND charge_id = ANY(:charges)
                UNION
                SELECT id FROM payments WHERE account_id = :account_id
                    AND livemode = :livemode AND customer_id = ANY(:customers))
            ORDER BY p.id
            FOR UPDATE OF p
            """
        ).bindparams(
            bindparam("charges", type_=ARRAY(String)), bindparam("customers", type_=ARRAY(String))
        ),
        {**_key(ctx), "charges": sorted(charge_ids), "customers": sorted(customer_ids)},
    )
    return list(result.all())


async def payments_off_their_customer(
    session: AsyncSession, ctx: ActivityContext, after: int, limit: int
) -> list[tuple[int, str]]:
    """(id, charge id) of up to `limit` payments above id `after`, in id order, whose link
    disagrees with their stored customer's: on a deleted customer yet linked, or off the
    contact of a customer that has one. Transactions that applied a payment and its
    customer at the same time leave these (each missed the other's uncommitted row)."""
    rows = await session.execute(
        text(
            """
            SELECT p.id, p.charge_id FROM payments p
            JOIN stripe_customers cu ON cu.account_id = p.account_id
                AND cu.livemode = p.livemode AND cu.stripe_id = p.customer_id
            WHERE p.account_id = :account_id AND p.livemode = :livemode AND p.id > :after
                AND p.contact_id IS DISTINCT FROM
                    CASE WHEN cu.deleted THEN NULL ELSE coalesce(cu.contact_id, p.contact_id) END
            ORDER BY p.id LIMIT :limit
            """
        ),
        {**_key(ctx), "after": after, "limit": limit},
    )
    return [(int(pid), str(charge)) for pid, charge in rows.all()]


async def set_payment_contacts(
    session: AsyncSession, links: Sequence[tuple[int, int | None]]
) -> None:
    """(payment id, contact_id) pairs, written in one statement."""
    if not links:
        return
    await session.execute(
        text(
            "UPDATE payments p SET contact_id = v.cid"
            " FROM unnest(CAST(:ids AS bigint[]), CAST(:cids AS bigint[])) AS v(id, cid)"
            " WHERE p.id = v.id"
        ),
        {"ids": [pid for pid, _ in links], "cids": [cid for _, cid in links]},
    )


async def checkout_links(
    session: AsyncSession, ctx: ActivityContext, stripe_ids: Collection[str]
) -> dict[str, tuple[str | None, int | None, str | None]]:
    """(email, contact_id, promotions) of each stored checkout session, locked."""
    rows = await _locked_by_stripe_id(session, ctx, "checkout_sessions", stripe_ids)
    return {row.stripe_id: (row.email, row.contact_id, row.promotions) for row in rows}


async def set_checkout_contacts(
    session: AsyncSession, ctx: ActivityContext, links: Sequence[tuple[str, int | None]]
) -> None:
    await _set_contacts(session, ctx, "checkout_sessions", links)


async def contacts_of_customers(
    session: AsyncSession, ctx: ActivityContext, stripe_ids: Collection[str]
) -> set[int]:
    rows = await session.scalars(
        text(
            """
            SELECT contact_id FROM stripe_customers WHERE account_id = :account_id
            AND livemode = :livemode AND stripe_id = ANY(:sids) AND NOT deleted
            AND contact_id IS NOT NULL
            """
        ).bindparams(_SIDS),
        {**_key(ctx), "sids": sorted(stripe_ids)},
    )
    return {int(i) for i in rows.all()}


# --- contacts --------------------------------------------------------------------------


async def suppressed_hashes(
    session: AsyncSession, account_id: str, hashes: Collection[str]
) -> set[str]:
    if not hashes:
        return set()
    rows = await session.scalars(
        text(
            "SELECT email_hash FROM suppressions "
            "WHERE account_id = :account_id AND email_hash = ANY(:hashes)"
        ).bindparams(_HASHES),
        {"account_id": account_id, "hashes": list(hashes)},
    )
    return set(rows.all())


async def contact_ids_by_email(
    session: AsyncSession, account_id: str, emails: Collection[str]
) -> dict[str, int]:
    rows = await session.execute(
        text(
            "SELECT email, id FROM contacts WHERE account_id = :account_id AND email = ANY(:emails)"
        ).bindparams(_EMAILS),
        {"account_id": account_id, "emails": list(emails)},
    )
    return {row.email: int(row.id) for row in rows}


async def insert_contacts(
    session: AsyncSession, account_id: str, rows: Iterable[tuple[str, str, str]]
) -> dict[str, int]:
    """Insert (email, domain, consent_state) rows that do not exist yet, in one statement
    (email order); returns the new ids."""
    ordered = sorted(rows)
    if not ordered:
        return {}
    result = await session.execute(
        text(
            """
            INSERT INTO contacts (account_id, email, email_domain, consent_state)
            SELECT :account_id, r.email, r.domain, r.state
            FROM unnest(:emails, :domains, :states) AS r(email, domain, state)
            ORDER BY r.email
            ON CONFLICT (account_id, email) DO NOTHING
            RETURNING id, email
            """
        ).bindparams(
            _EMAILS,
            bindparam("domains", type_=ARRAY(String)),
            bindparam("states", type_=ARRAY(String)),
        ),
        {
            "account_id": account_id,
            "emails": [r[0] for r in ordered],
            "domains": [r[1] for r in ordered],
            "states": [r[2] for r in ordered],
        },
    )
    return {row.email: int(row.id) for row in result}


# Consent states nobody but Stripe activity put there: such a contact disappears with its
# last source. A person's own word (pending, confirmed, declined, unsubscribed) stays.
DISPOSABLE_CONSENT = ("none", "implied")


async def delete_sourceless_contacts(
    session: AsyncSession, account_id: str, ids: Collection[int]
) -> set[int]:
    if not ids:
        return set()
    states = ",".join(f"'{s}'" for s in DISPOSABLE_CONSENT)
    rows = await session.scalars(
        text(
            f"""
            DELETE FROM contacts c
            WHERE c.account_id = :account_id AND c.id = ANY(:ids)
              AND c.consent_state IN ({states})
              AND NOT EXISTS (SELECT 1 FROM stripe_customers s
                              WHERE s.contact_id = c.id AND NOT s.deleted)
              AND NOT EXISTS (SELECT 1 FROM payments p WHERE p.contact_id = c.id)
              AND NOT EXISTS (SELECT 1 FROM checkout_sessions k WHERE k.contact_id = c.id)
            RETURNING c.id
            """  # noqa: S608 - only constants are interpolated
        ).bindparams(_IDS),
        {"account_id": account_id, "ids": list(ids)},
    )
    return {int(i) for i in rows.all()}


_COUNTED = "p.status = 'succeeded' AND p.amount_refunded < p.amount"

# Recompute the activity fields of segments.md from stored rows, and write only the contacts
# whose values differ (bumping `version`, the sync engine's change feed). It runs for every
# contact at the end of an import, so each contact's payments are read once (`pay`) and its
# live customers once (`cust`, beside their subscriptions).
_REFRESH_ACTIVITY = f"""
WITH ids AS MATERIALIZED (SELECT DISTINCT unnest(:ids) AS id),
fresh AS (
    SELECT ids.id,
        coalesce(pay.purchase_count, 0)::int AS purchase_count,
        coalesce(spent.total_spent, '{{}}'::jsonb) AS total_spent,
        pay.first_purchase_at, pay.last_purchase_at, pay.last_failed_at,
        coalesce(pay.last_failed_at > pay.last_success_at
                 OR (pay.last_failed_at IS NOT NULL AND pay.last_success_at IS NULL), false)
            AS has_failed_since_last_purchase,
        coalesce(pay.refund_count, 0)::int AS refund_count,
        pay.last_refund_at,
        cust.customer_created_at,
        (ARRAY['active','trialing','past_due','canceled','none'])[coalesce(cust.best, 5)]
            AS subscription_status,
        -- name and country: the newest customer's, else the newest payment's billing details
        -- (a customer's value wins over every payment's)
        coalesce(cust.name, pay.name) AS name,
        coalesce(cust.country, pay.country) AS country
    FROM ids
    -- Each part is a lateral look-up of one contact's rows through the contact_id indexes,
    -- so the plan stays a few index scans per contact however stale the statistics are
    -- (an import grows these tables faster than autovacuum analyses them).
    CROSS JOIN LATERAL (
        SELECT
            count(*) FILTER (WHERE {_COUNTED}) AS purchase_count,
            min(p.created) FILTER (WHERE {_COUNTED}) AS first_purchase_at,
            max(p.created) FILTER (WHERE {_COUNTED}) AS last_purchase_at,
            max(p.created) FILTER (WHERE p.status = 'failed') AS last_failed_at,
            max(p.created) FILTER (WHERE p.status = 'succeeded') AS last_success_at,
            count(*) FILTER (WHERE p.status = 'succeeded' AND p.amount_refunded > 0)
                AS refund_count,
            max(p.refunded_at) FILTER (WHERE p.status = 'succeeded' AND p.amount_refunded > 0)
                AS last_refund_at,
            -- the counted amounts, paired by position with their currencies: `spent` sums
            -- them per currency without reading the payments again
            array_agg(p.currency) FILTER (WHERE {_COUNTED}) AS currencies,
            array_agg(p.amount - p.amount_refunded) FILTER (WHERE {_COUNTED}) AS nets,
            (array_agg(p.billing_name ORDER BY p.created DESC NULLS LAST, p.charge_id)
                FILTER (WHERE p.billing_name IS NOT NULL))[1] AS name,
            (array_agg(p.billing_country ORDER BY p.created DESC NULLS LAST, p.charge_id)
                FILTER (WHERE p.billing_country IS NOT NULL))[1] AS country
        FROM payments p
        WHERE p.contact_id = ids.id AND p.livemode = :livemode
    ) pay
    CROSS JOIN LATERAL (
        SELECT jsonb_object_agg(currency, total) AS total_spent FROM (
            SELECT u.currency, sum(u.net)::bigint AS total
            FROM unnest(pay.currencies, pay.nets) AS u(currency, net)
            GROUP BY u.currency
        ) per_currency
    ) spent
    CROSS JOIN LATERAL (
        -- A customer comes once per subscription here, which changes none of these values
        -- (minimums, and the first value in an order).
        SELECT
            min(cu.created) AS customer_created_at,
            min(CASE sub.status
                WHEN 'active' THEN 1 WHEN 'trialing' THEN 2 WHEN 'past_due' THEN 3
                WHEN 'unpaid' THEN 3 WHEN 'canceled' THEN 4 WHEN 'incomplete_expired' THEN 4
                WHEN 'paused' THEN 4 ELSE 5 END) FILTER (WHERE sub.id IS NOT NULL) AS best,
            (array_agg(cu.name ORDER BY cu.created DESC NULLS LAST, cu.stripe_id)
                FILTER (WHERE cu.name IS NOT NULL))[1] AS name,
            (array_agg(cu.country ORDER BY cu.created DESC NULLS LAST, cu.stripe_id)
                FILTER (WHERE cu.country IS NOT NULL))[1] AS country
        FROM stripe_customers cu
        LEFT JOIN subscriptions sub ON sub.account_id = cu.account_id
            AND sub.livemode = cu.livemode AND sub.customer_id = cu.stripe_id
        WHERE cu.contact_id = ids.id AND NOT cu.deleted AND cu.livemode = :livemode
    ) cust
)
UPDATE contacts c SET
    purchase_count = f.purchase_count, total_spent = f.total_spent,
    first_purchase_at = f.first_purchase_at, last_purchase_at = f.last_purchase_at,
    last_failed_at = f.last_failed_at,
    has_failed_since_last_purchase = f.has_failed_since_last_purchase,
    refund_count = f.refund_count, last_refund_at = f.last_refund_at,
    customer_created_at = f.customer_created_at, subscription_status = f.subscription_status,
    name = f.name, country = f.country,
    version = c.version + 1, updated_at = now()
FROM fresh f
-- c.id = ANY(:ids) as well as the join: the planner then reaches these rows through the
-- primary key, instead of hashing every contact of the account.
WHERE c.id = f.id AND c.id = ANY(:ids) AND c.account_id = :account_id
  AND (c.purchase_count, c.total_spent, c.first_purchase_at, c.last_purchase_at,
       c.last_failed_at, c.has_failed_since_last_purchase, c.refund_count, c.last_refund_at,
       c.customer_created_at, c.subscription_status, c.name, c.country)
  IS DISTINCT FROM
      (f.purchase_count, f.total_spent, f.first_purchase_at, f.last_purchase_at,
       f.last_failed_at, f.has_failed_since_last_purchase, f.refund_count, f.last_refund_at,
       f.customer_created_at, f.subscription_status, f.name, f.country)
RETURNING c.id
"""  # noqa: S608 - only constants are interpolated


async def refresh_activity(
    session: AsyncSession, ctx: ActivityContext, ids: Collection[int]
) -> set[int]:
    """Recompute the contacts' activity; returns the ids whose fields changed."""
    if not ids:
        return set()
    rows = await session.scalars(
        text(_REFRESH_ACTIVITY).bindparams(_IDS),
        {**_key(ctx), "ids": sorted(ids)},
    )
    return {int(i) for i in rows.all()}


async def lock_contacts(session: AsyncSession, account_id: str, ids: Collection[int]) -> None:
    """Row locks on these contacts in id order (NO KEY UPDATE: rows pointing at them by
    foreign key are not blocked)."""
    if ids:
        await session.execute(
            text(
                "SELECT id FROM contacts WHERE account_id = :account_id AND id = ANY(:ids)"
                " ORDER BY id FOR NO KEY UPDATE"
            ).bindparams(_IDS),
            {"account_id": account_id, "ids": sorted(ids)},
        )


async def existing_contacts(
    session: AsyncSession, account_id: str, ids: Collection[int]
) -> set[int]:
    if not ids:
        return set()
    rows = await session.scalars(
        text(
            "SELECT id FROM contacts WHERE account_id = :account_id AND id = ANY(:ids)"
        ).bindparams(_IDS),
        {"account_id": account_id, "ids": list(ids)},
    )
    return {int(i) for i in rows.all()}
