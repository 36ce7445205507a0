"""Serving one request: the order in which its model's deployments are tried, retries with
backoff on one deployment, fallback to the next, circuit breakers, per-deployment
concurrency; each attempt calls the upstream through the adapter of (client API,
deployment protocol) and, for a stream, hands the client's events to the run's
`ChunkPublisher` as they arrive. The result is an `Outcome`; nothing here publishes a
terminal event.

Rules a client can rely on:
- retries and fallbacks happen only while no stream event has been sent: events that
  only open a stream (`message_start`, `ping`, the role chunk, an empty block start) are
  held back until the first content, so a stream that fails before any content is retried
  or falls back as if it had failed before its first byte;
- a 429 is not an outage: it is retried after its Retry-After (when that fits in the
  deadline) or falls back, and never counts against the circuit breaker;
- the tokens of every upstream call count, also of the calls whose reply was not used.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import structlog
from opentelemetry.trace import SpanKind

from switchyard.common import tracing
from switchyard.common.events import (
    ChatRequested,
    StreamEvent,
    TerminalStatus,
    TokenUsage,
    new_id,
    utcnow,
)
from switchyard.common.routing import Deployment, RoutingError, RoutingTable
from switchyard.inference import genai, metrics
from switchyard.inference.adapters import (
    Accumulator,
    Adapter,
    Adapters,
    StreamTranslation,
    UpstreamCall,
)
from switchyard.inference.errors import ProviderError
from switchyard.inference.genai import observe_call
from switchyard.inference.outcomes import Outcome, expired, failed
from switchyard.inference.platforms import missing_credential
from switchyard.inference.providers import ProviderPool
from switchyard.inference.publishing import ChunkPublisher
from switchyard.inference.reliability import (
    Backoff,
    DeploymentState,
    DeploymentStates,
)
from switchyard.inference.upstream import Upstream, invalid_reply
from switchyard.inference.usage import add_usage

log = structlog.get_logger("switchyard.inference.attempts")


class RoutingSource(Protocol):
    """Anything holding the current routing table (reloaded or fixed)."""

    @property
    def table(self) -> RoutingTable: ...


@dataclass
class FixedRouting:
    table: RoutingTable


def seconds_until(deadline: datetime) -> float:
    return (deadline - utcnow()).total_seconds()


def _text_length(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(
            len(part["text"])
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return 0


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    """A rough prompt size (4 characters a token, plus a few per message), for calls
    stopped before the upstream reported usage."""
    messages = body.get("messages")
    if isinstance(messages, list):
        chars = sum(_text_length(m.get("content")) for m in messages if isinstance(m, dict))
        chars += _text_length(body.get("system"))
        return math.ceil(chars / 4) + 3 * len(messages)
    embedding_input = body.get("input")
    if isinstance(embedding_input, str):
        return math.ceil(len(embedding_input) / 4)
    if isinstance(embedding_input, list):
        return sum(
            math.ceil(len(item) / 4) if isinstance(item, str) else 1 for item in embedding_input
        )
    return 0


@dataclass
class RequestRun:
    """One execution of one request: what retries, a cancellation, the deadline and the
    usage record need to know. `run_id` names the execution in its stream records."""

    request: ChatRequested
    run_id: str = field(default_factory=lambda: new_id()[:16])
    started: float = field(default_factory=time.perf_counter)
    cancel_requested: bool = False
    in_lane: bool = False
    deployment: Deployment | None = None
    ttft_ms: float | None = None
    publisher: ChunkPublisher | None = None
    # Tokens of the upstream calls that ended, and how many calls were made.
    spent: TokenUsage = field(default_factory=TokenUsage)
    upstream_calls: int = 0
    # The call in flight, if any (a stream's translation says what it reported so far).
    calling: bool = False
    translation: StreamTranslation | None = None
    accumulator: Accumulator | None = None

    @property
    def events_sent(self) -> int:
        return self.publisher.sent if self.publisher is not None else 0

    def end_call(self, usage: TokenUsage) -> None:
        self.spent = add_usage(self.spent, usage)
        self.calling = False
        self.translation = None
        self.accumulator = None

    def failed_call_usage(self) -> TokenUsage:
        """Tokens of a call that failed: none if it failed before answering anything (a
        refused call is not billed), else what it reported or streamed."""
        if self.translation is None:
            return TokenUsage()
        reported = self.translation.usage()
        streamed = self.accumulator.deltas if self.accumulator is not None else 0
        if reported.total_tokens or streamed:
            return self.in_flight_usage()
        return TokenUsage()

    def in_flight_usage(self) -> TokenUsage:
        """Tokens of the call in flight: what the upstream reported, else estimates."""
        if not self.calling:
            return TokenUsage()
        reported = self.translation.usage() if self.translation is not None else TokenUsage()
        input_tokens = reported.input_tokens or estimate_prompt_tokens(self.request.data.body)
        output_tokens = reported.output_tokens
        if not output_tokens and self.accumulator is not None:
            output_tokens = self.accumulator.deltas
        return reported.model_copy(
            update={"input_tokens": input_tokens, "output_tokens": output_tokens}
        )

    def usage_so_far(self) -> TokenUsage:
        """Tokens of every call made so far, the one in flight included."""
        return add_usage(self.spent, self.in_flight_usage())


class Attempts:
    """Tries a request's deployments until one answers; returns the Outcome."""

    def __init__(
        self,
        *,
        routing: RoutingSource,
        providers: ProviderPool,
        adapters: Adapters,
        deployments: DeploymentStates,
        backoff: Backoff,
        rng: random.Random,
        publisher_of: Callable[[RequestRun], ChunkPublisher],
    ) -> None:
        self._routing = routing
        self._providers = providers
        self._adapters = adapters
        self._deployments = deployments
        self._backoff = backoff
        self._rng = rng
        self._publisher_of = publisher_of

    async def serve(self, run: RequestRun) -> Outcome:
        model = run.request.data.model
        route = self._routing.table.route(model)
        if route is None:
            return failed(
                ProviderError(
                    404, None, f"The model '{model}' does not exist.", code="model_not_found"
                )
            )
        order = self._deployments.order(model, route.attempt_order(self._rng))
        outcome: Outcome | None = None
        open_circuits: list[DeploymentState] = []
        for deployment in order:
            state = self._deployments.get(model, deployment)
            if not state.breaker.allow():
                open_circuits.append(state)
                metrics.FALLBACKS.labels(model, deployment.name, "circuit_open").inc()
                continue
            outcome = await self._try_deployment(run, deployment, state)
            if outcome.status is not TerminalStatus.FAILED or not outcome.retryable:
                return outcome
            if run.events_sent:
                return outcome  # part of the stream is out: no other deployment can resume it
            assert outcome.error is not None
            metrics.FALLBACKS.labels(model, deployment.name, outcome.error.code or "error").inc()
            # A request this deployment cannot take as sent (a parameter its protocol
            # lacks) is the client's doing, not a failing deployment: no warning.
            client_side = outcome.error.code == "unsupported_parameter"
            (log.info if client_side else log.warning)(
                "deployment cannot take the request" if client_side else "deployment failed",
                model=model,
                deployment=deployment.name,
                status=outcome.error.status,
                code=outcome.error.code,
            )
        if outcome is not None:
            return outcome
        # Open circuits (or a half-open one already probing): answer now, not after a wait.
        retry_in = max(1, math.ceil(min(state.breaker.retry_in() for state in open_circuits)))
        return failed(
            ProviderError(
                503,
                None,
                f"Every deployment of model '{model}' is failing; retry in {retry_in} s.",
                code="upstream_unavailable",
                retry_after=retry_in,
            )
        )

    def _prepare(
        self, run: RequestRun, deployment: Deployment
    ) -> tuple[Adapter, UpstreamCall] | ProviderError:
        data = run.request.data
        try:
            adapter = self._adapters.adapter_for(data.api, deployment, run.request)
            call = adapter.request(data.body, data.headers, deployment, data.stream)
        except ProviderError as error:
            if error.status == 400 and error.code == "unsupported_parameter":
                # Another deployment of the model may speak the client's API.
                error.retryable, error.retry_same, error.unhealthy = True, False, False
            return error
        return adapter, call

    async def _try_deployment(
        self, run: RequestRun, deployment: Deployment, state: DeploymentState
    ) -> Outcome:
        """Call one deployment, retrying it with backoff while that may help."""
        data = run.request.data
        model = data.model
        prepared = self._prepare(run, deployment)
        if isinstance(prepared, ProviderError):
            state.breaker.release()
            return self._failed(run, prepared, deployment)
        adapter, call = prepared
        if call.local is not None:
            # Answered here (a token count estimate): the deployment is not called.
            state.breaker.release()
            response = await asyncio.to_thread(call.local)
            outcome = Outcome(TerminalStatus.COMPLETED, response=response, reply_usage=TokenUsage())
            return self._with_usage(run, outcome, deployment)
        try:
            upstream = self._providers.get(model, deployment)
        except RoutingError as exc:  # a credential it names cannot be read
            state.breaker.release()
            return self._failed(run, missing_credential(deployment, exc), deployment)
        attempt = 0
        while True:
            attempt += 1
            started = time.perf_counter()
            try:
                async with state.slot(data.priority):
                    response, usage = await self._call(run, deployment, upstream, adapter, call)
            except ProviderError as error:
                run.end_call(run.failed_call_usage())
                if error.unhealthy:
                    state.breaker.failure()
                else:
                    state.breaker.success()  # it answered; the request or its rate was the problem
                observe_call(data.api, model, deployment, error.code or "error", started)
                if error.is_timeout and seconds_until(data.deadline) <= 0:
                    outcome = expired(
                        "The request's deadline passed while the upstream was answering."
                    )
                    return self._with_usage(run, outcome, deployment)
                outcome = self._failed(run, error, deployment)
                if run.events_sent or not error.retry_same or attempt > deployment.max_retries:
                    return outcome
                delay = error.retry_after
                if delay is None:
                    delay = self._backoff.delay(attempt, self._rng)
                if delay >= seconds_until(data.deadline):
                    return outcome  # waiting would outlive the request
                metrics.RETRIES.labels(model, deployment.name, error.code or "error").inc()
                log.info(
                    "retrying deployment",
                    model=model,
                    deployment=deployment.name,
                    attempt=attempt,
                    code=error.code,
                    delay_s=round(delay, 3),
                )
                await asyncio.sleep(delay)
                if not state.breaker.allow():
                    return outcome  # failures opened its circuit meanwhile
                continue
            except BaseException:
                # Cancelled, the deadline, or a bug: says nothing about the deployment.
                state.breaker.release()
                observe_call(data.api, model, deployment, "interrupted", started)
                raise
            run.end_call(usage)
            state.breaker.success()
            observe_call(data.api, model, deployment, "ok", started)
            outcome = Outcome(
                TerminalStatus.COMPLETED,
                response=response,
                upstream_api=call.api,
                reply_usage=usage,
            )
            return self._with_usage(run, outcome, deployment)

    def _failed(self, run: RequestRun, error: ProviderError, deployment: Deployment) -> Outcome:
        return self._with_usage(run, failed(error), deployment)

    @staticmethod
    def _with_usage(run: RequestRun, outcome: Outcome, deployment: Deployment) -> Outcome:
        outcome.deployment = deployment
        outcome.usage = run.usage_so_far()
        outcome.upstream_calls = run.upstream_calls
        return outcome

    async def _call(
        self,
        run: RequestRun,
        deployment: Deployment,
        upstream: Upstream,
        adapter: Adapter,
        call: UpstreamCall,
    ) -> tuple[dict[str, Any], TokenUsage]:
        data = run.request.data
        timeout_s = min(deployment.timeout_s, max(0.001, seconds_until(data.deadline)))
        run.deployment = deployment
        run.upstream_calls += 1
        run.calling = True
        with tracing.span(
            genai.span_name(data.api, data.model),
            kind=SpanKind.CLIENT,
            attributes={
                **genai.span_attributes(data.api, data.model, deployment),
                "switchyard.deployment": deployment.name,
                "switchyard.api": data.api.value,
                "switchyard.upstream_api": call.api.value,
            },
        ) as span:
            if data.stream:
                response, usage = await self._stream(run, upstream, adapter, call, timeout_s)
            else:
                native = await upstream.send(call.path, call.body, call.headers, timeout_s)
                try:
                    response, usage = adapter.reply(native, data.model)
                except ProviderError as error:
                    if error.code == "upstream_invalid_reply":
                        raise invalid_reply(deployment.name) from error
                    raise
            if span is not None:
                span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
                span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
        return response, usage

    async def _stream(
        self,
        run: RequestRun,
        upstream: Upstream,
        adapter: Adapter,
        call: UpstreamCall,
        timeout_s: float,
    ) -> tuple[dict[str, Any], TokenUsage]:
        data = run.request.data
        translation = run.translation = adapter.stream(data.body, data.model)
        accumulator = run.accumulator = adapter.accumulator()
        if run.publisher is None:
            run.publisher = self._publisher_of(run)
        publisher = run.publisher
        held: list[StreamEvent] = []
        ttft_histogram = metrics.TIME_TO_FIRST_TOKEN_SECONDS.labels(
            data.model, upstream.deployment.name
        )

        def emit(events: list[StreamEvent]) -> None:
            for event in events:
                accumulator.add(event.data)
                if run.ttft_ms is None:
                    if adapter.is_preamble(event):
                        held.append(event)  # sent with the first content, or never
                        continue
                    run.ttft_ms = (time.perf_counter() - run.started) * 1000
                    ttft_histogram.observe(run.ttft_ms / 1000)
                    for opening in held:
                        publisher.send(opening)
                    held.clear()
                publisher.send(event)

        stream = upstream.stream(call.path, call.body, call.headers, timeout_s)
        try:
            async with contextlib.aclosing(stream):
                async for sse in stream:
                    emit(translation.feed(sse))
            emit(translation.finish())
            for opening in held:  # a stream with no content at all still opens and closes
                publisher.send(opening)
        except ProviderError:
            await publisher.flush()  # what arrived reaches the client before the error
            raise
        await publisher.flush()
        return accumulator.response(), translation.usage()
