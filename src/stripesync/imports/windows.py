"""What an import reads: Stripe lists cut into `created` windows, read newest first.

Each window is read page by page (`limit=100`, `starting_after`); several windows are read
at once under the connection's request budget. The plan starts with a few equal windows
per list; when a reader finds nothing left to claim, it splits the window with the most
time left in two (work stealing), so a history that is dense in its recent months still
keeps every reader busy.

A window's checkpoint (`cursor`, `oldest_created`) advances only with the transaction that
applies a page; the reader's own position (`fetch_*`) may run a few pages ahead of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from stripesync.models import ConnectionMode, ImportWindow

# Before Stripe's first live charges: every account's history starts after this.
HISTORY_START = 1_293_840_000  # 2011-01-01T00:00:00Z
# Opt-in mode reads customers created in the last 6 months (optin.service.ELIGIBLE_DAYS).
OPTIN_CUSTOMER_DAYS = 183
# A window is split only when what is left of it likely fills a few pages on each side:
# every window costs at least one request, so tiny windows waste the budget.
MIN_SPLIT_SECONDS = 60
MIN_SPLIT_OBJECTS = 400


@dataclass(frozen=True)
class ListSpec:
    resource: str
    path: str
    params: dict[str, Any] = field(default_factory=dict)


# In the order readers claim them: customers first, so payments find their customer stored.
LISTS: tuple[ListSpec, ...] = (
    ListSpec("customers", "/v1/customers"),
    ListSpec("charges", "/v1/charges"),
    ListSpec("checkout_sessions", "/v1/checkout/sessions", {"status": "complete"}),
    # The default list leaves out canceled subscriptions; their history still counts.
    ListSpec("subscriptions", "/v1/subscriptions", {"status": "all"}),
)
LIST_BY_RESOURCE = {spec.resource: spec for spec in LISTS}
PRIORITY = {spec.resource: i for i, spec in enumerate(LISTS)}


@dataclass
class Window:
    """One window in memory: its persisted checkpoint plus the reader's position."""

    id: int
    resource: str
    gte: int
    lt: int
    cursor: str | None = None
    oldest_created: int | None = None
    objects: int = 0
    pages: int = 0
    done: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    # The reader's side (not persisted): claimed by a reader, its next cursor, how far back
    # it has read, and whether it saw the last page.
    claimed: bool = False
    fetch_cursor: str | None = None
    fetch_oldest: int | None = None
    fetch_done: bool = False
    fetched: int = 0

    @classmethod
    def from_row(cls, row: ImportWindow) -> Window:
        return cls(
            id=row.id,
            resource=row.resource,
            gte=row.created_gte,
            lt=row.created_lt,
            cursor=row.cursor,
            oldest_created=row.oldest_created,
            objects=row.objects,
            pages=row.pages,
            done=row.done,
            counts=dict(row.counts or {}),
            fetch_cursor=row.cursor,
            fetch_oldest=row.oldest_created,
            fetch_done=row.done,
        )

    @property
    def spec(self) -> ListSpec:
        return LIST_BY_RESOURCE[self.resource]

    def unread_span(self) -> int:
        """Seconds of the window the reader has not reached yet."""
        upper = self.fetch_oldest if self.fetch_oldest is not None else self.lt
        return max(0, upper - self.gte)

    def unread_estimate(self) -> float:
        """Objects likely left in the unread span, at the density read so far."""
        if self.fetch_oldest is None or not self.fetched:
            return 0.0
        density = self.fetched / max(1, self.lt - self.fetch_oldest)
        return density * self.unread_span()


def initial_plan(
    mode: str, started_at: datetime, windows_per_list: int
) -> list[tuple[str, int, int]]:
    """(resource, created_gte, created_lt) of a new import's windows.

    Everything up to the job's start (objects created later arrive as webhook events):
    all history, except customers in opt-in mode, who are read from the last 183 days
    (customers who paid recently but were created earlier are fetched by id afterwards).
    """
    end = int(started_at.timestamp()) + 1
    plan: list[tuple[str, int, int]] = []
    for spec in LISTS:
        start = HISTORY_START
        if spec.resource == "customers" and mode == ConnectionMode.OPTIN:
            start = int((started_at - timedelta(days=OPTIN_CUSTOMER_DAYS)).timestamp())
        plan.extend(
            (spec.resource, gte, lt) for gte, lt in split_evenly(start, end, windows_per_list)
        )
    return plan


def split_evenly(start: int, end: int, parts: int) -> list[tuple[int, int]]:
    parts = max(1, min(parts, end - start))
    step = (end - start) / parts
    bounds = [start + round(step * i) for i in range(parts)] + [end]
    return [(bounds[i], bounds[i + 1]) for i in range(parts) if bounds[i] < bounds[i + 1]]


def next_to_claim(windows: list[Window]) -> Window | None:
    """The first unclaimed, unfinished window in list priority order (newest first)."""
    free = [w for w in windows if not w.claimed and not w.fetch_done]
    if not free:
        return None
    return min(free, key=lambda w: (PRIORITY[w.resource], -w.lt))


def split_point(windows: list[Window]) -> tuple[Window, int] | None:
    """The claimed window with the most objects likely left and where to cut it, if that
    is worth a window of its own.

    The cut lies strictly below everything its reader fetched so far, so the pages already
    read (and maybe not yet applied) all stay in the old window's part.
    """
    busy = [w for w in windows if w.claimed and not w.fetch_done]
    if not busy:
        return None
    widest = max(busy, key=lambda w: w.unread_estimate())
    if widest.unread_estimate() < MIN_SPLIT_OBJECTS or widest.unread_span() < MIN_SPLIT_SECONDS:
        return None
    upper = widest.fetch_oldest if widest.fetch_oldest is not None else widest.lt
    return widest, (widest.gte + upper) // 2


def estimate(windows: list[Window]) -> tuple[int, int]:
    """(done, total): objects applied, and a total extrapolated from each list's density.

    A window partly read holds about as many objects per second in its unread part as in
    its read part; a window not started, the density of its list's read windows.
    """
    done = sum(w.objects for w in windows)
    density: dict[str, tuple[int, int]] = {}
    for w in windows:
        if w.oldest_created is None:
            continue
        covered = (w.gte if w.done else w.oldest_created), w.lt
        n, span = density.get(w.resource, (0, 0))
        density[w.resource] = (n + w.objects, span + max(1, covered[1] - covered[0]))
    total = 0.0
    for w in windows:
        if w.done:
            total += w.objects
            continue
        n, span = density.get(w.resource, (0, 0))
        rate = n / span if span else 0.0
        if w.oldest_created is not None:
            own_span = max(1, w.lt - w.oldest_created)
            rate = w.objects / own_span
            total += w.objects + rate * max(0, w.oldest_created - w.gte)
        else:
            total += rate * (w.lt - w.gte)
    return done, max(done, round(total))


def phase(windows: list[Window]) -> str:
    """The list being read: the first one (in claim order) with unfinished windows."""
    pending = [w.resource for w in windows if not w.done]
    if not pending:
        return "finishing"
    return min(pending, key=lambda r: PRIORITY[r])
