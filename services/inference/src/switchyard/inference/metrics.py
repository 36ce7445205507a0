"""Prometheus metrics of the inference service. Collectors are registered once per
process (prometheus_client refuses duplicates), so they live at module level; they hold
no connections or state beyond their counts."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

PROVIDER_CALL_SECONDS = Histogram(
    "switchyard_inference_provider_call_seconds",
    "Duration of one call to an upstream deployment, in seconds.",
    ["model", "deployment", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
TOKENS = Counter(
    "switchyard_inference_tokens_total",
    "Tokens reported by upstream deployments.",
    ["model", "deployment", "direction"],
)
ERRORS = Counter(
    "switchyard_inference_errors_total",
    "Requests that ended in a failure, by the status the client gets.",
    ["model", "status", "code"],
)
REQUESTS = Counter(
    "switchyard_inference_requests_total",
    "Chat requests handled, by terminal status.",
    ["model", "status"],
)
