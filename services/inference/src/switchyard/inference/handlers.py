"""What the inference service does with each `chat.requested` event: pick the model's
deployments, call them in order until one answers, and publish exactly one terminal
reply (`chat.completed` or `chat.failed`) plus one `usage.recorded` — whatever happened.

Knows nothing of Kafka: it gets a `publish` callable (the bus's), the topics and the
routing table. Published events get ids derived from the request event's id, so a
redelivered request produces events with the same ids and consumers deduplicate them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import structlog

from switchyard.common.events import (
    ChatChunk,
    ChatChunkData,
    ChatCompleted,
    ChatCompletedData,
    ChatFailed,
    ChatFailedData,
    ChatRequested,
    EnvelopeFields,
    ErrorInfo,
    Event,
    TerminalStatus,
    TokenUsage,
    UsageData,
    UsageRecorded,
    utcnow,
)
from switchyard.common.routing import Deployment, RoutingTable
from switchyard.common.topics import Topics
from switchyard.inference import metrics
from switchyard.inference.providers import ProviderError, ProviderPool

log = structlog.get_logger("switchyard.inference.handlers")

SOURCE = "inference"


class Publish(Protocol):
    def __call__(
        self,
        topic: str,
        event: EnvelopeFields,
        *,
        key: str | None = None,
        partition: int | None = None,
    ) -> Awaitable[None]: ...


@dataclass
class Outcome:
    """How one request ended, before it is turned into events."""

    status: TerminalStatus
    response: dict[str, Any] | None = None
    error: ErrorInfo | None = None
    provider: str | None = None
    deployment: str | None = None
    usage: TokenUsage = TokenUsage()
    latency_ms: float = 0.0
    # A failure another deployment could fix (rate limit, outage, timeout).
    retryable: bool = False


def expired_outcome(message: str) -> Outcome:
    return Outcome(
        TerminalStatus.EXPIRED,
        error=ErrorInfo(
            status=504, type="timeout_error", code="deadline_exceeded", message=message
        ),
    )


def failed_outcome(error: ProviderError, deployment: Deployment | None = None) -> Outcome:
    return Outcome(
        TerminalStatus.FAILED,
        error=error.to_error_info(),
        provider=deployment.provider if deployment else None,
        deployment=deployment.name if deployment else None,
        retryable=error.retryable,
    )


def usage_of(response: dict[str, Any]) -> TokenUsage:
    usage = response.get("usage")
    if not isinstance(usage, dict):
        return TokenUsage()
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    return TokenUsage(
        input_tokens=prompt if isinstance(prompt, int) and prompt >= 0 else 0,
        output_tokens=completion if isinstance(completion, int) and completion >= 0 else 0,
    )


def seconds_until(deadline: datetime) -> float:
    return (deadline - utcnow()).total_seconds()


class ChatRequestHandler:
    """The consumer-group handler of the request topics."""

    def __init__(
        self, *, publish: Publish, topics: Topics, routing: RoutingTable, providers: ProviderPool
    ) -> None:
        self._publish = publish
        self._topics = topics
        self._routing = routing
        self._providers = providers

    async def __call__(self, event: Event) -> None:
        if not isinstance(event, ChatRequested):
            return  # other event types on these topics are not ours to answer
        with structlog.contextvars.bound_contextvars(request_id=event.request_id):
            started = time.perf_counter()
            outcome = await self._outcome_or_internal_error(event)
            outcome.latency_ms = (time.perf_counter() - started) * 1000
            await self._publish_outcome(event, outcome)

    async def _outcome_or_internal_error(self, request: ChatRequested) -> Outcome:
        try:
            return await self._serve(request)
        except Exception:  # noqa: BLE001 - a bug must still give the client a terminal reply
            log.exception("request handling failed unexpectedly")
            return failed_outcome(
                ProviderError(
                    500,
                    "api_error",
                    "Internal error in the inference service.",
                    code="internal_error",
                )
            )

    async def _serve(self, request: ChatRequested) -> Outcome:
        data = request.data
        if seconds_until(data.deadline) <= 0:
            return expired_outcome("The request's deadline passed before it could be served.")
        route = self._routing.route(data.model)
        if route is None:
            return failed_outcome(
                ProviderError(
                    404,
                    "invalid_request_error",
                    f"The model '{data.model}' does not exist.",
                    code="model_not_found",
                )
            )
        outcome: Outcome | None = None
        for deployment in route.deployments:
            outcome = await self._try_deployment(request, deployment)
            if not outcome.retryable:
                return outcome
            log.warning(
                "deployment failed",
                model=data.model,
                deployment=deployment.name,
                status=outcome.error.status if outcome.error else None,
            )
        assert outcome is not None  # a route has at least one deployment
        return outcome

    async def _try_deployment(self, request: ChatRequested, deployment: Deployment) -> Outcome:
        model = request.data.model
        remaining = seconds_until(request.data.deadline)
        if remaining <= 0:
            return expired_outcome("The request's deadline passed while it was being served.")
        provider = self._providers.get(model, deployment)
        started = time.perf_counter()
        try:
            # The deadline bounds the whole call, SDK retries included.
            async with asyncio.timeout(remaining):
                response = await provider.chat(
                    request.data.body, timeout_s=min(deployment.timeout_s, remaining)
                )
        except ProviderError as error:
            observe_call(model, deployment, error.code or "error", started)
            if error.is_timeout and seconds_until(request.data.deadline) <= 0:
                return expired_outcome(
                    "The request's deadline passed while the upstream was answering."
                )
            return failed_outcome(error, deployment)
        except TimeoutError:
            observe_call(model, deployment, "deadline", started)
            return expired_outcome(
                "The request's deadline passed while the upstream was answering."
            )
        observe_call(model, deployment, "ok", started)
        response["model"] = model  # clients see the public name, not the upstream's
        return Outcome(
            TerminalStatus.COMPLETED,
            response=response,
            provider=deployment.provider,
            deployment=deployment.name,
            usage=usage_of(response),
        )

    # ------------------------------------------------------------------ publishing

    async def _publish_outcome(self, request: ChatRequested, outcome: Outcome) -> None:
        record_metrics(request.data.model, outcome)
        if outcome.status is TerminalStatus.COMPLETED and request.data.stream:
            await self._publish_reply(request, self._single_chunk(request, outcome))
        await self._publish_reply(request, self._terminal_event(request, outcome))
        await self._publish(
            self._topics.usage, self._usage_event(request, outcome), key=request.request_id
        )

    async def _publish_reply(self, request: ChatRequested, event: EnvelopeFields) -> None:
        reply_to = request.data.reply_to
        await self._publish(
            self._topics.replies,
            event,
            key=request.request_id,
            partition=reply_to.partition if reply_to else None,
        )

    def _envelope(self, request: ChatRequested, suffix: str) -> dict[str, Any]:
        return {
            "id": f"{request.id}.{suffix}",
            "source": SOURCE,
            "tenant": request.tenant,
            "request_id": request.request_id,
        }

    def _terminal_event(self, request: ChatRequested, outcome: Outcome) -> EnvelopeFields:
        envelope = self._envelope(request, "reply")
        if outcome.status is TerminalStatus.COMPLETED:
            assert outcome.response is not None and outcome.provider and outcome.deployment
            return ChatCompleted(
                **envelope,
                data=ChatCompletedData(
                    response=outcome.response,
                    provider=outcome.provider,
                    deployment=outcome.deployment,
                    usage=outcome.usage,
                    latency_ms=outcome.latency_ms,
                ),
            )
        assert outcome.error is not None
        return ChatFailed(
            **envelope,
            data=ChatFailedData(
                status=outcome.status,
                error=outcome.error,
                provider=outcome.provider,
                deployment=outcome.deployment,
                latency_ms=outcome.latency_ms,
            ),
        )

    def _usage_event(self, request: ChatRequested, outcome: Outcome) -> UsageRecorded:
        data = request.data
        return UsageRecorded(
            **self._envelope(request, "usage"),
            data=UsageData(
                model=data.model,
                provider=outcome.provider,
                deployment=outcome.deployment,
                user_id=data.user_id,
                api_key_id=data.api_key_id,
                status=outcome.status,
                usage=outcome.usage,
                latency_ms=outcome.latency_ms,
            ),
        )

    # --- Streaming stand-in (until real upstream streaming lands): the whole reply as one
    # --- chat.completion.chunk, followed by the usual chat.completed.
    def _single_chunk(self, request: ChatRequested, outcome: Outcome) -> ChatChunk:
        assert outcome.response is not None
        return ChatChunk(
            **self._envelope(request, "chunk-0"),
            data=ChatChunkData(sequence=0, chunk=completion_as_chunk(outcome.response)),
        )


def completion_as_chunk(response: dict[str, Any]) -> dict[str, Any]:
    """A chat.completion turned into one chat.completion.chunk carrying all of it."""
    choices = []
    for index, choice in enumerate(response.get("choices") or []):
        message = choice.get("message") or {}
        delta = {"role": message.get("role", "assistant"), "content": message.get("content")}
        if message.get("tool_calls"):
            delta["tool_calls"] = [
                {**call, "index": position} for position, call in enumerate(message["tool_calls"])
            ]
        choices.append(
            {
                "index": choice.get("index", index),
                "delta": delta,
                "finish_reason": choice.get("finish_reason"),
                "logprobs": None,
            }
        )
    return {
        "id": response.get("id"),
        "object": "chat.completion.chunk",
        "created": response.get("created"),
        "model": response.get("model"),
        "choices": choices,
        "usage": response.get("usage"),
    }


def observe_call(model: str, deployment: Deployment, outcome: str, started: float) -> None:
    metrics.PROVIDER_CALL_SECONDS.labels(model, deployment.name, outcome).observe(
        time.perf_counter() - started
    )


def record_metrics(model: str, outcome: Outcome) -> None:
    metrics.REQUESTS.labels(model, outcome.status.value).inc()
    if outcome.error is not None:
        metrics.ERRORS.labels(model, str(outcome.error.status), outcome.error.code or "").inc()
    if outcome.deployment and outcome.usage.total_tokens:
        metrics.TOKENS.labels(model, outcome.deployment, "input").inc(outcome.usage.input_tokens)
        metrics.TOKENS.labels(model, outcome.deployment, "output").inc(outcome.usage.output_tokens)
