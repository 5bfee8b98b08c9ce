"""Prometheus metrics. Counters live in the process that counts; gauges that describe
shared state (queue depth, events by state) are read from Redis and Postgres at scrape time.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

WEBHOOK_REQUESTS = Counter(
    "stripesync_webhook_requests_total",
    "Stripe webhook deliveries by outcome",
    ["outcome"],
)
INGEST_LATENCY = Histogram(
    "stripesync_webhook_ingest_seconds",
    "Time from request start to acknowledgement of a Stripe webhook",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
EVENT_LAG = Histogram(
    "stripesync_event_lag_seconds",
    "now - event.created when an event is processed",
    buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 21600, 86400),
)
EVENTS_PROCESSED = Counter(
    "stripesync_events_processed_total",
    "Stripe events by final outcome of a processing try",
    ["outcome"],
)
QUEUE_DEPTH = Gauge("stripesync_queue_depth", "Jobs waiting in the arq queue")
EVENTS_BY_STATE = Gauge("stripesync_events", "Stored Stripe events by state", ["state"])
OLDEST_PENDING_EVENT_AGE = Gauge(
    "stripesync_oldest_pending_event_age_seconds",
    "Age of the oldest stored event not yet processed (0 when none)",
)
PLATFORM_CALLS = Counter(
    "stripesync_platform_calls_total",
    "Constant Contact API calls by endpoint and HTTP status",
    ["endpoint", "status"],
)
RATE_LIMIT_WAIT = Histogram(
    "stripesync_rate_limit_wait_seconds",
    "Time spent waiting for a rate-limit budget",
    ["api"],
)
JOBS_BY_STATE = Gauge("stripesync_jobs", "Jobs by kind and state", ["kind", "state"])
