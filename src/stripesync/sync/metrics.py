"""Metrics of the sync engine (platform calls and rate-limit waits are counted by the client
and the limiter)."""

from __future__ import annotations

from prometheus_client import Counter

SYNC_CONTACTS = Counter(
    "stripesync_sync_contacts_total",
    "Contacts handled by sync runs, by outcome (synced, skipped, error, deferred)",
    ["outcome"],
)
