"""Prometheus counters of the opt-in feature (exposed by /metrics with the others)."""

from __future__ import annotations

from prometheus_client import Counter

OPTIN_EMAILS = Counter(
    "stripesync_optin_emails_total",
    "Opt-in email send attempts by outcome (sent, transient_failure, rejected, failed)",
    ["outcome"],
)
OPTIN_RESPONSES = Counter(
    "stripesync_optin_responses_total",
    "Answers to the opt-in email (confirmed, declined)",
    ["response"],
)
