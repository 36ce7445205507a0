"""Prometheus metrics of the event bus, the same for every consumer in every service."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

EVENTS_HANDLED = Counter(
    "switchyard_bus_events_handled_total",
    "Events handed to a consumer's handler, by outcome (ok, retried, deadlettered).",
    ["topic", "group", "outcome"],
)
EVENTS_DEADLETTERED = Counter(
    "switchyard_bus_events_deadlettered_total",
    "Events copied to the dead-letter topic, by the topic they came from.",
    ["topic", "group", "reason"],
)
EVENTS_SKIPPED = Counter(
    "switchyard_bus_events_skipped_total",
    "Records skipped without handling, by why: by a listener (no consumer group: the "
    "topic's group dead-letters them), undecodable, or a carried event that did not decode "
    "or whose handler failed; by a batch consumer group, a type it passes over unread "
    "(unread_type: history and the stream chunks).",
    ["topic", "reason"],
)
CONSUMER_LAG = Gauge(
    "switchyard_bus_consumer_lag_events",
    "Events on a partition not yet consumed by this member (high watermark - position).",
    ["topic", "partition", "group"],
)
EVENTS_PUBLISHED = Counter(
    "switchyard_bus_events_published_total", "Events accepted by the bus.", ["topic"]
)
PUBLISH_FAILURES = Counter(
    "switchyard_bus_publish_failures_total", "Publishes the bus did not accept in time.", ["topic"]
)
