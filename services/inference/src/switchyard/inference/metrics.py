"""Prometheus metrics of the inference service. Collectors are registered once per
process (prometheus_client refuses duplicates), so they live at module level; they hold
no connections or state beyond their counts."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
TIME_TO_FIRST_TOKEN_SECONDS = Histogram(
    "switchyard_inference_time_to_first_token_seconds",
    "Streaming requests: from receiving the request to publishing its first content chunk.",
    ["model", "deployment"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RETRIES = Counter(
    "switchyard_inference_retries_total",
    "Upstream calls retried on the same deployment after a backoff.",
    ["model", "deployment", "code"],
)
FALLBACKS = Counter(
    "switchyard_inference_fallbacks_total",
    "Requests moved on from a deployment to the next one.",
    ["model", "deployment", "reason"],
)
CIRCUIT_STATE = Gauge(
    "switchyard_inference_circuit_state",
    "Circuit breaker of each deployment: 0 closed, 1 open, 2 half-open.",
    ["model", "deployment"],
)
LANE_IN_FLIGHT = Gauge(
    "switchyard_inference_lane_in_flight",
    "Requests in progress on this replica, by priority lane.",
    ["lane"],
)
OUTPUT_OVER_CAP = Counter(
    "switchyard_inference_output_over_cap_total",
    "Requests whose upstreams reported more output tokens than the request's cap allows "
    "(max_tokens, max_completion_tokens or max_output_tokens, times n): billed as "
    "reported, beyond what budgets reserved for them.",
    ["model", "deployment"],
)
CANCELLATIONS = Counter(
    "switchyard_inference_cancellations_total",
    "Requests stopped because their client went away.",
    ["model"],
)
REDELIVERED = Counter(
    "switchyard_inference_redelivered_total",
    "Requests delivered again after their outcome, or part of their stream, was recorded "
    "in their reply partition, by what was done instead of running them again (`republished`, "
    "`stream_interrupted`), or while this replica still ran them (`joined`: the copy waited "
    "for that run).",
    ["action"],
)
COST_USD = Counter(
    "switchyard_inference_cost_usd_total",
    "Cost of served requests from the price table, in US dollars.",
    ["model", "deployment"],
)
CONFIG_RELOADS = Counter(
    "switchyard_inference_config_reloads_total",
    "Reloads of the routing and price files, by file and result.",
    ["file", "result"],
)

# The OpenTelemetry GenAI semantic-convention metrics, in Prometheus naming
# (gen_ai.client.operation.duration and gen_ai.client.token.usage); `genai` says what
# each label holds.
GEN_AI_OPERATION_DURATION = Histogram(
    "gen_ai_client_operation_duration_seconds",
    "GenAI operation duration (OpenTelemetry semantic conventions).",
    [
        "gen_ai_operation_name",
        "gen_ai_provider_name",
        "gen_ai_request_model",
        "gen_ai_response_model",
        "error_type",
    ],
    buckets=(
        0.01,
        0.02,
        0.04,
        0.08,
        0.16,
        0.32,
        0.64,
        1.28,
        2.56,
        5.12,
        10.24,
        20.48,
        40.96,
        81.92,
    ),
)
GEN_AI_TOKEN_USAGE = Histogram(
    "gen_ai_client_token_usage",
    "Tokens used per GenAI operation (OpenTelemetry semantic conventions).",
    [
        "gen_ai_operation_name",
        "gen_ai_provider_name",
        "gen_ai_request_model",
        "gen_ai_response_model",
        "gen_ai_token_type",
    ],
    buckets=(1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304),
)
