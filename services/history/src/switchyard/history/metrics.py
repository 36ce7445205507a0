"""Prometheus metrics of the history service (exposed on `/metrics`)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

EVENTS_PERSISTED = Counter(
    "switchyard_history_events_persisted_total",
    "Events newly written to the event store (redeliveries not counted).",
    ["type"],
)
EVENTS_DUPLICATE = Counter(
    "switchyard_history_events_duplicate_total",
    "Events received again (redelivery or replay) and skipped because they were already stored.",
)
BATCHES = Counter(
    "switchyard_history_batches_total",
    "Batches of events committed to the database.",
)
PERSIST_FAILURES = Counter(
    "switchyard_history_persist_failures_total",
    "Batches whose transaction failed (e.g. database down); the bus retries them.",
)
PERSIST_SECONDS = Histogram(
    "switchyard_history_persist_seconds",
    "Time to write one batch of events and its projection updates, until commit.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
OUTCOMES_SUPERSEDED = Counter(
    "switchyard_history_outcomes_superseded_total",
    "Terminal events not stored because their request already had its outcome, by why: "
    "'outcome_known' (a real outcome was recorded first), 'replied' (history's own expiry "
    "came after a real outcome); and provisional expiries replaced by a real outcome "
    "('expiry_replaced').",
    ["reason"],
)
EVENT_ID_COLLISIONS = Counter(
    "switchyard_history_event_id_collisions_total",
    "Events whose id was already taken by an event of another tenant or request (a producer "
    "writing under ids it predicted or copied): stored under an id derived from theirs.",
    ["type"],
)
