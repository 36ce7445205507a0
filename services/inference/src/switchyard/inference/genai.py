"""The OpenTelemetry GenAI semantic conventions as inference applies them to each upstream
call: the operation and provider names, the span attributes and the two client metrics
(`gen_ai.client.operation.duration`, `gen_ai.client.token.usage`, in Prometheus naming).

Source: the OpenTelemetry GenAI semantic conventions (attribute registry `gen_ai.*`, the
GenAI metrics and spans documents). Every call site labels the same way:

- `gen_ai.operation.name`: `chat` for chat completions, Messages and Responses,
  `embeddings` for embeddings; Anthropic's token counting and the Responses API's input
  token count, which none of the well-known values describes, are the custom value
  `count_tokens`;
- `gen_ai.provider.name`: the well-known value of the deployment's provider kind
  (`openai`, `anthropic`, `azure.ai.openai`, `aws.bedrock`, `gcp.vertex_ai`, `gcp.gemini`);
- `gen_ai.request.model`: the model the client asked for (Switchyard's public name), the
  same for every deployment a request falls back to;
- `gen_ai.response.model`: the model that answered, the deployment's upstream model id.
"""

from __future__ import annotations

import time

from switchyard.common.events import ClientAPI, TokenUsage
from switchyard.common.routing import Deployment, ProviderKind
from switchyard.inference import metrics

_OPERATIONS: dict[ClientAPI, str] = {
    ClientAPI.OPENAI_CHAT_COMPLETIONS: "chat",
    ClientAPI.OPENAI_RESPONSES: "chat",
    ClientAPI.ANTHROPIC_MESSAGES: "chat",
    ClientAPI.OPENAI_EMBEDDINGS: "embeddings",
    ClientAPI.ANTHROPIC_COUNT_TOKENS: "count_tokens",
    ClientAPI.OPENAI_RESPONSES_INPUT_TOKENS: "count_tokens",
}

_PROVIDERS: dict[ProviderKind, str] = {
    "openai": "openai",
    "anthropic": "anthropic",
    "azure_openai": "azure.ai.openai",
    "bedrock": "aws.bedrock",
    "vertex": "gcp.vertex_ai",
    "gemini": "gcp.gemini",
}


def operation_name(api: ClientAPI) -> str:
    """The `gen_ai.operation.name` of a call made for a request in the client's `api`:
    `chat`, `embeddings` or `count_tokens`."""
    return _OPERATIONS[api]


def provider_name(kind: ProviderKind) -> str:
    """The `gen_ai.provider.name` well-known value of a deployment's provider kind
    (`azure_openai` -> `azure.ai.openai`...)."""
    return _PROVIDERS[kind]


def span_attributes(api: ClientAPI, model: str, deployment: Deployment) -> dict[str, str]:
    """The `gen_ai.*` attributes of the span of one upstream call for a request in `api`
    for the public `model`, served by `deployment`."""
    return {
        "gen_ai.operation.name": operation_name(api),
        "gen_ai.provider.name": provider_name(deployment.provider),
        "gen_ai.request.model": model,
        "gen_ai.response.model": deployment.model,
    }


def span_name(api: ClientAPI, model: str) -> str:
    """The span name the conventions give a client call: `{operation} {request model}`."""
    return f"{operation_name(api)} {model}"


def _metric_labels(api: ClientAPI, model: str, deployment: Deployment) -> dict[str, str]:
    """The labels every GenAI client metric carries (the span attributes' values, under
    their Prometheus names)."""
    return {
        "gen_ai_operation_name": operation_name(api),
        "gen_ai_provider_name": provider_name(deployment.provider),
        "gen_ai_request_model": model,
        "gen_ai_response_model": deployment.model,
    }


def observe_duration(
    api: ClientAPI, model: str, deployment: Deployment, error_type: str, seconds: float
) -> None:
    """Record one upstream call in `gen_ai_client_operation_duration_seconds`.
    `error_type`: empty for a call that answered, else the error's code (`rate_limited`,
    `interrupted`...); `seconds`: the call's wall-clock duration."""
    metrics.GEN_AI_OPERATION_DURATION.labels(
        **_metric_labels(api, model, deployment), error_type=error_type
    ).observe(seconds)


def observe_tokens(api: ClientAPI, model: str, deployment: Deployment, usage: TokenUsage) -> None:
    """Record a request's input and output tokens (`usage`: every upstream call it made)
    in `gen_ai_client_token_usage`, one observation per token type with a count."""
    labels = _metric_labels(api, model, deployment)
    for token_type, count in (("input", usage.input_tokens), ("output", usage.output_tokens)):
        if count:
            metrics.GEN_AI_TOKEN_USAGE.labels(**labels, gen_ai_token_type=token_type).observe(count)


def observe_call(
    api: ClientAPI, model: str, deployment: Deployment, outcome: str, started: float
) -> None:
    """Record one upstream call's duration since `started` (a `time.perf_counter()`
    reading): Switchyard's histogram by public model and deployment, and the GenAI one.
    `outcome`: `ok`, or the error code the call ended with."""
    elapsed = time.perf_counter() - started
    metrics.PROVIDER_CALL_SECONDS.labels(model, deployment.name, outcome).observe(elapsed)
    observe_duration(api, model, deployment, "" if outcome == "ok" else outcome, elapsed)
