"""A small, stateful fake of the Constant Contact V3 endpoints stripesync uses.

A real HTTP server on 127.0.0.1 (random port), run in a thread of the test process
(`with FakeConstantContact() as cc: cc.url`) or as a process of its own
(`python -m tests.fakes.constant_contact --port 0` prints `READY <url>`; the `/_fake/...`
control endpoints then read the request log and inject failures).

It behaves like the platform where our code could get it wrong (external-apis.md):
- at most `requests_per_second` accepted requests per API key in any 1 s window, else 429
  `throttled` (single-object body); a daily quota (UTC day), else 429 `quota_exceeded`;
- contacts by email with ids, explicit vs implicit permission, unsubscribed contacts (and a
  record of every call that would re-subscribe one);
- lists with unique names (409, array body), custom fields (409, single-object body);
- `contacts_json_import` truncates silently beyond 40,000 contacts or 4 MB, like the real one;
  membership calls refuse more than 500 contact ids; bulk calls create activities that go
  initialized → processing → completed (or failed, on demand) as time passes;
- every request is recorded with a monotonic timestamp; 5xx / 429 storms and dropped
  connections can be injected.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeGuard
from urllib.parse import parse_qs, urlsplit

MAX_IMPORT_CONTACTS = 40_000
MAX_IMPORT_BYTES = 4 * 1024 * 1024
MAX_MEMBERSHIP_CONTACTS = 500
MAX_LISTS = 50
MAX_ACCOUNT_LISTS = 1000
MAX_CUSTOM_FIELDS = 100
TOKEN_PATH = "/oauth2/token"


@dataclass
class RecordedRequest:
    at: float  # time.monotonic() of the fake's process when the request arrived
    method: str
    path: str
    query: dict[str, str]
    status: int
    error_key: str | None = None
    body: Any = None
    token: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "status": self.status,
            "error_key": self.error_key,
        }


@dataclass
class FakeContact:
    contact_id: str
    email: str
    permission: str  # explicit | implicit
    status: str = "active"  # active | unsubscribed | deleted
    first_name: str | None = None
    last_name: str | None = None
    list_ids: set[str] = field(default_factory=set)
    custom_fields: dict[str, str] = field(default_factory=dict)  # custom_field_id -> value
    sources: list[str] = field(default_factory=list)  # which calls touched it, in order

    @property
    def permission_to_send(self) -> str:
        return "unsubscribed" if self.status == "unsubscribed" else self.permission


@dataclass
class FakeActivity:
    activity_id: str
    kind: str
    created: float
    done_after: float
    payload: dict[str, Any]
    fail: bool = False
    state: str = "initialized"
    errors: list[str] = field(default_factory=list)
    dropped: int = 0  # import rows silently dropped (over 40,000 contacts or 4 MB)
    # An import's new contacts (by lowercased email) and the custom fields by name they
    # were built with, made off the lock while it runs (see `_prepare_import`).
    prepared: dict[str, FakeContact] | None = None
    prepared_fields: dict[str, str] | None = None


@dataclass
class Injection:
    status: int  # 0 drops the connection without an answer
    count: int
    error_key: str
    path_contains: str | None = None
    shape: str = "array"  # array | object
    retry_after: str | None = None
    method: str | None = None  # only this HTTP method (None: any)
    after_processing: bool = False  # do the work, then drop the connection (answer lost)

    def matches(self, method: str, path: str) -> bool:
        return (
            self.count > 0
            and (self.path_contains is None or self.path_contains in path)
            and (self.method is None or self.method == method)
        )


class FakeConstantContact:
    def __init__(
        self,
        *,
        requests_per_second: int = 4,
        requests_per_day: int = 10_000,
        tokens: set[str] | None = None,
        processing_after: float = 0.05,
        completed_after: float = 0.2,
        seconds_per_import_row: float = 0.0,
        keep_bodies: bool = True,
        max_import_bytes: int = MAX_IMPORT_BYTES,
    ) -> None:
        self.requests_per_second = requests_per_second
        self.requests_per_day = requests_per_day
        self.tokens = tokens  # None: any bearer token is valid
        self.processing_after = processing_after
        self.completed_after = completed_after
        self.seconds_per_import_row = seconds_per_import_row
        self.keep_bodies = keep_bodies
        self.max_import_bytes = max_import_bytes

        self.lock = threading.RLock()
        self.requests: list[RecordedRequest] = []
        self.contacts: dict[str, FakeContact] = {}  # by lowercased email
        self.lists: dict[str, dict[str, Any]] = {}  # by list_id
        self.custom_fields: dict[str, dict[str, Any]] = {}  # by custom_field_id
        self.activities: dict[str, FakeActivity] = {}
        self.injections: list[Injection] = []
        self.fail_next_activities = 0
        self.resubscribe_attempts: list[tuple[str, str]] = []  # (email, endpoint)
        # OAuth token endpoint (`url + TOKEN_PATH`): single-use, rotating refresh tokens.
        self.refresh_tokens: set[str] = set()
        self.token_requests: list[dict[str, str]] = []
        self.token_delay = 0.0
        self._issued = 0
        self._accepted: deque[float] = deque()
        self._day: date | None = None
        self._day_count = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self, port: int = 0) -> FakeConstantContact:
        fake = self

        class Handler(_Handler):
            pass

        Handler.fake = fake
        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeConstantContact:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The API base to configure as `cc_api_base` (the client appends /v3)."""
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # --- test controls -----------------------------------------------------------------------

    def inject(
        self,
        status: int,
        *,
        count: int = 1,
        error_key: str | None = None,
        path_contains: str | None = None,
        shape: str = "array",
        retry_after: str | None = None,
        method: str | None = None,
        after_processing: bool = False,
    ) -> None:
        """Answer the next `count` matching requests with this error (0 drops the connection).

        `after_processing=True` (with status 0): the platform does the work, then the
        connection drops, so the caller never learns that it succeeded."""
        key = error_key or {429: "throttled", 401: "unauthorized"}.get(status, "server_error")
        with self.lock:
            self.injections.append(
                Injection(
                    status, count, key, path_contains, shape, retry_after, method, after_processing
                )
            )

    def unsubscribe(self, email: str) -> FakeContact:
        """The person unsubscribed on the platform (created if unknown)."""
        with self.lock:
            contact = self._contact(email, permission="implicit", source="seed")
            contact.status = "unsubscribed"
            return contact

    def seed_contact(self, email: str, *, permission: str = "implicit") -> FakeContact:
        with self.lock:
            return self._contact(email, permission=permission, source="seed")

    def issue_refresh_token(self, refresh_token: str) -> None:
        """Make `refresh_token` valid once at the token endpoint."""
        with self.lock:
            self.refresh_tokens.add(refresh_token)

    def api_requests(self, path_contains: str = "") -> list[RecordedRequest]:
        with self.lock:
            return [r for r in self.requests if path_contains in r.path]

    def contact(self, email: str) -> FakeContact | None:
        with self.lock:
            self._advance()
            return self.contacts.get(email.lower())

    def settle(self) -> None:
        """Finish every activity now (tests that do not care about timing)."""
        with self.lock:
            for activity in self.activities.values():
                activity.done_after = min(activity.done_after, time.monotonic() - activity.created)
            self._advance()

    # --- request handling (called by the handler thread, under the lock) ---------------------

    def handle(
        self, method: str, raw_path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        now = time.monotonic()
        parts = urlsplit(raw_path)
        path = parts.path
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if (method, path) == ("POST", TOKEN_PATH):
            # Outside the lock while "slow", so concurrent refreshes would overlap visibly.
            time.sleep(self.token_delay)
            with self.lock:
                return self._token(headers, body)
        with self.lock:
            if path.startswith("/_fake/"):
                return self._control(method, path, body)
            status, payload, extra = self._api(method, path, query, headers, body, now)
            error_key = None
            if status >= 400 and payload is not None:
                first = payload[0] if isinstance(payload, list) and payload else payload
                if isinstance(first, dict):
                    error_key = first.get("error_key")
            parsed: Any = None
            if self.keep_bodies and body:
                try:
                    parsed = json.loads(body)
                except ValueError:
                    parsed = None
            token = headers.get("authorization", "").removeprefix("Bearer ") or None
            self.requests.append(
                RecordedRequest(now, method, path, query, status, error_key, parsed, token)
            )
            for injection in self.injections:
                if injection.after_processing and injection.matches(method, path):
                    injection.count -= 1
                    return 0, None, {}
            return status, payload, extra

    def _api(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        headers: dict[str, str],
        body: bytes,
        now: float,
    ) -> tuple[int, Any, dict[str, str]]:
        auth = headers.get("authorization", "")
        if not auth.startswith("Bearer ") or (
            self.tokens is not None and auth.removeprefix("Bearer ") not in self.tokens
        ):
            return 401, [_err("unauthorized", "Unauthorized")], {}

        for injection in self.injections:
            if not injection.after_processing and injection.matches(method, path):
                injection.count -= 1
                extra = {"Retry-After": injection.retry_after} if injection.retry_after else {}
                if injection.status == 0:
                    return 0, None, {}
                error = _err(injection.error_key, f"injected {injection.status}")
                return (
                    injection.status,
                    error if injection.shape == "object" else [error],
                    extra,
                )

        today = datetime.now(UTC).date()
        if today != self._day:
            self._day, self._day_count = today, 0
        if self._day_count >= self.requests_per_day:
            return 429, _err("quota_exceeded", "Daily quota exceeded"), {}
        while self._accepted and self._accepted[0] <= now - 1.0:
            self._accepted.popleft()
        if len(self._accepted) >= self.requests_per_second:
            return 429, _err("throttled", "Too many requests"), {}
        self._accepted.append(now)
        self._day_count += 1

        self._advance()
        data: Any = None
        if body:
            try:
                data = json.loads(body)
            except ValueError:
                return 400, [_err("malformed_json", "Body is not JSON")], {}
        route = (method, path)
        if route == ("POST", "/v3/contacts/sign_up_form"):
            return self._sign_up_form(data)
        if route == ("GET", "/v3/contacts"):
            return self._find_contacts(query)
        if route == ("POST", "/v3/activities/contacts_json_import"):
            return self._json_import(data, body, now)
        if route == ("POST", "/v3/activities/add_list_memberships"):
            return self._memberships("add_list_memberships", data, now)
        if route == ("POST", "/v3/activities/remove_list_memberships"):
            return self._memberships("remove_list_memberships", data, now)
        if method == "GET" and path.startswith("/v3/activities/"):
            return self._activity(path.rsplit("/", 1)[1], now)
        if route == ("POST", "/v3/contact_lists"):
            return self._create_list(data)
        if route == ("GET", "/v3/contact_lists"):
            return self._find_lists(query)
        if method == "DELETE" and path.startswith("/v3/contact_lists/"):
            return self._delete_list(path.rsplit("/", 1)[1], now)
        if route == ("POST", "/v3/contact_custom_fields"):
            return self._create_custom_field(data)
        if route == ("GET", "/v3/contact_custom_fields"):
            return 200, {"custom_fields": list(self.custom_fields.values())}, {}
        return 404, [_err("not_found", f"No route {method} {path}")], {}

    # --- endpoints -----------------------------------------------------------------------------

    def _sign_up_form(self, data: Any) -> tuple[int, Any, dict[str, str]]:
        if not isinstance(data, dict):
            return 400, [_err("invalid_body", "Body must be an object")], {}
        email = data.get("email_address")
        lists = data.get("list_memberships")
        problems = []
        if not isinstance(email, str) or "@" not in email or len(email) > 50:
            problems.append(_err("email_address.invalid", "email_address is not valid"))
        if not isinstance(lists, list) or not 1 <= len(lists) <= MAX_LISTS:
            problems.append(_err("list_memberships.invalid", "1 to 50 list_memberships required"))
        elif unknown := [lid for lid in lists if lid not in self.lists]:
            problems.append(_err("list_memberships.not_found", f"Unknown lists {unknown}"))
        for name in ("first_name", "last_name"):
            if len(data.get(name) or "") > 50:
                problems.append(_err(f"{name}.too_long", f"{name} is longer than 50"))
        if problems:
            return 400, problems, {}
        assert isinstance(email, str) and isinstance(lists, list)
        existed = email.lower() in self.contacts
        contact = self._contact(email, permission="explicit", source="sign_up_form")
        if contact.status == "unsubscribed":
            # The real endpoint re-subscribes: exactly what we must never make it do.
            self.resubscribe_attempts.append((contact.email, "sign_up_form"))
            contact.status = "active"
        contact.permission = "explicit"
        contact.list_ids.update(lists)
        contact.first_name = data.get("first_name", contact.first_name)
        contact.last_name = data.get("last_name", contact.last_name)
        for cf in data.get("custom_fields") or []:
            contact.custom_fields[cf["custom_field_id"]] = cf["value"]
        action = "updated" if existed else "created"
        return (200 if existed else 201), {"contact_id": contact.contact_id, "action": action}, {}

    def _find_contacts(self, query: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
        email = (query.get("email") or "").lower()
        found = []
        contact = self.contacts.get(email) if email else None
        candidates = [contact] if contact else ([] if email else list(self.contacts.values()))
        for c in candidates:
            if c.status == "deleted" and query.get("status") != "all":
                continue
            item: dict[str, Any] = {
                "contact_id": c.contact_id,
                "email_address": {"address": c.email, "permission_to_send": c.permission_to_send},
                "first_name": c.first_name,
                "last_name": c.last_name,
            }
            if "list_memberships" in (query.get("include") or ""):
                item["list_memberships"] = sorted(c.list_ids)
            found.append(item)
        return 200, {"contacts": found, "contacts_count": len(found)}, {}

    def _json_import(self, data: Any, raw: bytes, now: float) -> tuple[int, Any, dict[str, str]]:
        if not isinstance(data, dict) or not isinstance(data.get("import_data"), list):
            return 400, [_err("import_data.required", "import_data is required")], {}
        lists = data.get("list_ids")
        if not isinstance(lists, list) or not 1 <= len(lists) <= MAX_LISTS:
            return 400, [_err("list_ids.invalid", "1 to 50 list_ids required")], {}
        if unknown := [lid for lid in lists if lid not in self.lists]:
            return 400, [_err("list_ids.not_found", f"Unknown lists {unknown}")], {}
        rows: list[Any] = data["import_data"]
        kept = rows[:MAX_IMPORT_CONTACTS]
        if len(raw) > self.max_import_bytes:
            # Like the platform: what does not fit is dropped without a word.
            size, fit = 40 + len(json.dumps(lists)), 0
            for row in kept:
                size += len(json.dumps(row, separators=(",", ":"))) + 1
                if size > self.max_import_bytes:
                    break
                fit += 1
            kept = kept[:fit]
        activity = self._new_activity(
            "contacts_json_import",
            now,
            {"rows": kept, "list_ids": lists},
            extra_seconds=self.seconds_per_import_row * len(kept),
        )
        activity.dropped = len(rows) - len(kept)
        threading.Thread(target=self._prepare_import, args=(activity,), daemon=True).start()
        return 201, self._activity_body(activity), {}

    def _prepare_import(self, activity: FakeActivity) -> None:
        """Build the import's new contacts while it runs, off the lock, so that completing
        it (in whichever request comes next, holding the lock every request takes) only
        files them: like the platform, whose status calls answer at once while it works.
        Building 25,000 contacts at completion held every request up for most of a second.
        What `_apply` does not find prepared, or finds built with other custom fields, it
        builds itself, as before."""
        with self.lock:
            by_name = {f["name"]: fid for fid, f in self.custom_fields.items()}
        lists = set(activity.payload["list_ids"])
        prepared: dict[str, FakeContact] = {}
        for row in activity.payload["rows"]:
            email = row.get("email") if isinstance(row, dict) else None
            if not _importable(email) or email.lower() in prepared:
                continue
            prepared[email.lower()] = FakeContact(
                str(uuid.uuid4()),
                email,
                "implicit",
                first_name=row.get("first_name"),
                last_name=row.get("last_name"),
                list_ids=set(lists),
                custom_fields={
                    by_name[key[3:]]: value
                    for key, value in row.items()
                    if key.startswith("cf:") and key[3:] in by_name
                },
                sources=["import"],
            )
        activity.prepared_fields = by_name
        activity.prepared = prepared

    def _memberships(self, kind: str, data: Any, now: float) -> tuple[int, Any, dict[str, str]]:
        source = (data or {}).get("source") or {}
        ids = source.get("contact_ids")
        lists = (data or {}).get("list_ids")
        if not isinstance(ids, list) or not 1 <= len(ids) <= MAX_MEMBERSHIP_CONTACTS:
            return 400, [_err("source.contact_ids.invalid", "1 to 500 contact_ids")], {}
        if not isinstance(lists, list) or not 1 <= len(lists) <= MAX_LISTS:
            return 400, [_err("list_ids.invalid", "1 to 50 list_ids required")], {}
        activity = self._new_activity(kind, now, {"contact_ids": ids, "list_ids": lists})
        return 201, self._activity_body(activity), {}

    def _activity(self, activity_id: str, now: float) -> tuple[int, Any, dict[str, str]]:
        activity = self.activities.get(activity_id)
        if activity is None:
            return 404, [_err("activity.not_found", "No such activity")], {}
        return 200, self._activity_body(activity, now), {}

    def _create_list(self, data: Any) -> tuple[int, Any, dict[str, str]]:
        name = (data or {}).get("name")
        if not isinstance(name, str) or not name.strip():
            return 400, [_err("name.required", "name is required")], {}
        if any(lst["name"].lower() == name.lower() for lst in self.lists.values()):
            return 409, [_err("conflict", "Validation failed: list name already exists")], {}
        if len(self.lists) >= MAX_ACCOUNT_LISTS:
            return 400, [_err("lists.limit", "At most 1000 lists")], {}
        list_id = str(uuid.uuid4())
        self.lists[list_id] = {
            "list_id": list_id,
            "name": name,
            "description": (data or {}).get("description") or "",
        }
        return 201, dict(self.lists[list_id]), {}

    def _find_lists(self, query: dict[str, str]) -> tuple[int, Any, dict[str, str]]:
        name = query.get("name")
        lists = [lst for lst in self.lists.values() if name is None or lst["name"] == name]
        return 200, {"lists": lists, "lists_count": len(lists)}, {}

    def _delete_list(self, list_id: str, now: float) -> tuple[int, Any, dict[str, str]]:
        if self.lists.pop(list_id, None) is None:
            return 404, [_err("not_found", "No such list")], {}
        for contact in self.contacts.values():
            contact.list_ids.discard(list_id)
        activity = self._new_activity("list_delete", now, {"list_ids": [list_id]})
        return 202, self._activity_body(activity), {}

    def _token(self, headers: dict[str, str], body: bytes) -> tuple[int, Any, dict[str, str]]:
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        self.token_requests.append(form)
        if not headers.get("authorization", "").startswith("Basic "):
            return 401, {"error": "invalid_client"}, {}
        refresh = form.get("refresh_token", "")
        if form.get("grant_type") != "refresh_token" or refresh not in self.refresh_tokens:
            return 400, {"error": "invalid_grant"}, {}
        self.refresh_tokens.discard(refresh)  # single use: it rotates
        self._issued += 1
        access, new_refresh = f"fake-access-{self._issued}", f"fake-refresh-{self._issued}"
        self.refresh_tokens.add(new_refresh)
        if self.tokens is not None:
            self.tokens.add(access)
        body_out = {
            "access_token": access,
            "refresh_token": new_refresh,
            "token_type": "Bearer",
            "expires_in": 86400,
        }
        return 200, body_out, {}

    def _create_custom_field(self, data: Any) -> tuple[int, Any, dict[str, str]]:
        label = (data or {}).get("label")
        type_ = (data or {}).get("type")
        if not isinstance(label, str) or type_ not in ("string", "date", "currency", "number"):
            return 400, _err("custom_field.invalid", "label and a valid type required"), {}
        if any(f["label"] == label for f in self.custom_fields.values()):
            return 409, _err("conflict", "A custom field with this label exists"), {}
        if len(self.custom_fields) >= MAX_CUSTOM_FIELDS:
            return 400, _err("custom_fields.limit", "At most 100 custom fields"), {}
        field_id = str(uuid.uuid4())
        name = re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_")
        self.custom_fields[field_id] = {
            "custom_field_id": field_id,
            "label": label,
            "name": name,
            "type": type_,
        }
        return 201, dict(self.custom_fields[field_id]), {}

    # --- activities ---------------------------------------------------------------------------

    def _new_activity(
        self, kind: str, now: float, payload: dict[str, Any], extra_seconds: float = 0.0
    ) -> FakeActivity:
        activity = FakeActivity(
            activity_id=str(uuid.uuid4()),
            kind=kind,
            created=now,
            done_after=self.completed_after + extra_seconds,
            payload=payload,
        )
        if self.fail_next_activities > 0:
            self.fail_next_activities -= 1
            activity.fail = True
        self.activities[activity.activity_id] = activity
        return activity

    def _activity_body(self, activity: FakeActivity, now: float | None = None) -> dict[str, Any]:
        now = time.monotonic() if now is None else now
        self._advance_one(activity, now)
        elapsed = now - activity.created
        percent = 100 if activity.state in ("completed", "failed") else 0
        if activity.state == "processing":
            percent = min(99, int(100 * elapsed / max(activity.done_after, 1e-9)))
        return {
            "activity_id": activity.activity_id,
            "state": activity.state,
            "percent_done": percent,
            "activity_errors": list(activity.errors),
        }

    def _advance(self) -> None:
        now = time.monotonic()
        for activity in self.activities.values():
            self._advance_one(activity, now)

    def _advance_one(self, activity: FakeActivity, now: float) -> None:
        if activity.state in ("completed", "failed"):
            return
        elapsed = now - activity.created
        if elapsed >= activity.done_after:
            if activity.fail:
                activity.state = "failed"
                activity.errors.append("Activity failed (injected)")
                return
            self._apply(activity)
            activity.state = "completed"
        elif elapsed >= self.processing_after:
            activity.state = "processing"

    def _apply(self, activity: FakeActivity) -> None:
        lists = set(activity.payload["list_ids"])
        if activity.kind == "list_delete":
            return
        if activity.kind == "contacts_json_import":
            by_name = {f["name"]: fid for fid, f in self.custom_fields.items()}
            prepared = activity.prepared if activity.prepared_fields == by_name else None
            for index, row in enumerate(activity.payload["rows"]):
                email = row.get("email") if isinstance(row, dict) else None
                if not _importable(email):
                    activity.errors.append(f"Row {index}: invalid email address")
                    continue
                if prepared is not None:
                    key = email.lower()
                    new = prepared.get(key)
                    if new is not None and key not in self.contacts:
                        self.contacts[key] = new  # a new contact, as built below
                        continue
                contact = self._contact(email, permission="implicit", source="import")
                if contact.status == "unsubscribed":
                    # The platform keeps them unsubscribed; we note that we tried.
                    self.resubscribe_attempts.append((contact.email, "contacts_json_import"))
                    continue
                contact.list_ids |= lists
                contact.first_name = row.get("first_name", contact.first_name)
                contact.last_name = row.get("last_name", contact.last_name)
                for key, value in row.items():
                    if key.startswith("cf:") and key[3:] in by_name:
                        contact.custom_fields[by_name[key[3:]]] = value
            return
        by_id = {c.contact_id: c for c in self.contacts.values()}
        for contact_id in activity.payload["contact_ids"]:
            found = by_id.get(contact_id)
            if found is None:
                activity.errors.append(f"Contact {contact_id} not found")
            elif activity.kind == "add_list_memberships":
                if found.status == "unsubscribed":
                    self.resubscribe_attempts.append((found.email, "add_list_memberships"))
                    continue
                found.list_ids |= lists
                found.sources.append("add_list_memberships")
            else:
                found.list_ids -= lists
                found.sources.append("remove_list_memberships")

    def _contact(self, email: str, *, permission: str, source: str) -> FakeContact:
        key = email.lower()
        contact = self.contacts.get(key)
        if contact is None:
            contact = FakeContact(str(uuid.uuid4()), email, permission)
            self.contacts[key] = contact
        contact.sources.append(source)
        return contact

    # --- control endpoints (subprocess mode) --------------------------------------------------

    def _control(self, method: str, path: str, body: bytes) -> tuple[int, Any, dict[str, str]]:
        if (method, path) == ("GET", "/_fake/requests"):
            return 200, [r.as_json() for r in self.requests], {}
        if (method, path) == ("POST", "/_fake/inject"):
            spec = json.loads(body or b"{}")
            self.inject(
                int(spec["status"]),
                count=int(spec.get("count", 1)),
                error_key=spec.get("error_key"),
                path_contains=spec.get("path_contains"),
                shape=spec.get("shape", "array"),
            )
            return 204, None, {}
        if (method, path) == ("GET", "/_fake/state"):
            self._advance()
            return (
                200,
                {
                    "contacts": len(self.contacts),
                    "lists": len(self.lists),
                    "activities": {a.activity_id: a.state for a in self.activities.values()},
                    # When each activity was accepted and when it is (or was) done, on this
                    # process's monotonic clock (the requests' `at`): a benchmark's timeline.
                    "activity_times": [
                        {
                            "activity_id": a.activity_id,
                            "kind": a.kind,
                            "created": a.created,
                            "done_at": a.created + a.done_after,
                            "rows": len(a.payload.get("rows", ())),
                        }
                        for a in self.activities.values()
                    ],
                    "resubscribe_attempts": self.resubscribe_attempts,
                },
                {},
            )
        return 404, [_err("not_found", path)], {}


class _Handler(BaseHTTPRequestHandler):
    fake: FakeConstantContact
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, payload, extra = self.fake.handle(self.command, self.path, headers, body)
        if status == 0:
            self.close_connection = True
            self.connection.close()
            return
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    do_GET = _serve
    do_POST = _serve
    do_DELETE = _serve


def _importable(email: Any) -> TypeGuard[str]:
    """An import row's email that the platform takes (others are the activity's errors)."""
    return isinstance(email, str) and "@" in email and len(email) <= 80


def _err(key: str, message: str) -> dict[str, str]:
    return {"error_key": key, "error_message": message}


def max_in_window(times: list[float], window: float = 1.0) -> int:
    """The most timestamps that fall in any half-open window [t, t + window)."""
    ordered = sorted(times)
    best, j = 0, 0
    for i, start in enumerate(ordered):
        j = max(j, i)
        while j < len(ordered) and ordered[j] < start + window:
            j += 1
        best = max(best, j - i)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description="Fake Constant Contact V3 server")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--rps", type=int, default=4)
    parser.add_argument("--per-day", type=int, default=10_000)
    parser.add_argument("--completed-after", type=float, default=0.2)
    parser.add_argument("--seconds-per-import-row", type=float, default=0.0)
    parser.add_argument("--no-bodies", action="store_true")
    args = parser.parse_args()
    fake = FakeConstantContact(
        requests_per_second=args.rps,
        requests_per_day=args.per_day,
        completed_after=args.completed_after,
        seconds_per_import_row=args.seconds_per_import_row,
        keep_bodies=not args.no_bodies,
    ).start(args.port)
    print(f"READY {fake.url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()
        sys.exit(0)


if __name__ == "__main__":
    main()
