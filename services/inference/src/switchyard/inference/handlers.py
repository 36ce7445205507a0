"""What the inference service does with each `chat.requested` event: wait for a slot of
its priority lane, pick the model's deployments, call them (retrying and falling back)
until one answers, stream the reply's chunks as they arrive, and publish exactly one
terminal reply (`chat.completed` or `chat.failed`) plus one `usage.recorded` — whatever
happened, including a cancellation by the client or the deadline passing.

Knows nothing of Kafka: it gets a `publish` callable (the bus's), the topics, the routing
table and its collaborators. Published events get ids derived from the request event's
id, so a redelivered request produces events with the same ids and consumers deduplicate
them.

Semantics the gateway relies on:
- stream chunks are `chat.completion.chunk` objects in OpenAI's format (whatever the
  provider), published to the reply partition with `sequence` 0, 1, 2, ... in order,
  before the terminal event; the usage-only last chunk is sent only when the request
  asked for `stream_options.include_usage`. The terminal `chat.completed` carries the
  assembled `chat.completion`.
- retries and fallbacks happen only before the first chunk is published: once a client
  has part of a stream, a failure ends it with `chat.failed`.
- a `chat.cancel_requested` on the control topic stops the request on whichever replica
  runs it: the upstream call is cancelled, and `chat.failed` (status `cancelled`, error
  408 `client_disconnected`) and the usage so far are published.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import structlog
from opentelemetry.trace import SpanKind

from switchyard.common import tracing
from switchyard.common.events import (
    ChatCancelRequested,
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
from switchyard.common.translate import CompletionAccumulator
from switchyard.inference import metrics
from switchyard.inference.lanes import LaneGate
from switchyard.inference.pricing import PriceTable, request_cost
from switchyard.inference.providers import (
    ChatProvider,
    ProviderError,
    ProviderPool,
    StreamProgress,
)
from switchyard.inference.reliability import (
    Backoff,
    BreakerPolicy,
    DeploymentState,
    DeploymentStates,
)

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


class PublishFailed(RuntimeError):
    """A stream chunk could not be published: the bus is down. The handler fails (the bus
    then redelivers the request) rather than answer with a hole in the stream."""


@dataclass
class Outcome:
    """How one request ended, before it is turned into events."""

    status: TerminalStatus
    response: dict[str, Any] | None = None
    error: ErrorInfo | None = None
    deployment: Deployment | None = None
    usage: TokenUsage = TokenUsage()
    latency_ms: float = 0.0
    # A failure another deployment could fix (rate limit, outage, timeout).
    retryable: bool = False

    @property
    def provider(self) -> str | None:
        return self.deployment.provider if self.deployment else None

    @property
    def deployment_name(self) -> str | None:
        return self.deployment.name if self.deployment else None


NO_USAGE = TokenUsage()


def expired_outcome(message: str, usage: TokenUsage = NO_USAGE) -> Outcome:
    return Outcome(
        TerminalStatus.EXPIRED,
        error=ErrorInfo(
            status=504, type="timeout_error", code="deadline_exceeded", message=message
        ),
        usage=usage,
    )


def failed_outcome(error: ProviderError, deployment: Deployment | None = None) -> Outcome:
    return Outcome(
        TerminalStatus.FAILED,
        error=error.to_error_info(),
        deployment=deployment,
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
    """A rough prompt size (4 characters a token, plus a few per message), for requests
    stopped before the upstream reported usage."""
    messages = body.get("messages")
    if isinstance(messages, list):
        chars = sum(_text_length(m.get("content")) for m in messages if isinstance(m, dict))
        return math.ceil(chars / 4) + 3 * len(messages)
    embedding_input = body.get("input")
    if isinstance(embedding_input, str):
        return math.ceil(len(embedding_input) / 4)
    if isinstance(embedding_input, list):
        return sum(
            math.ceil(len(item) / 4) if isinstance(item, str) else 1 for item in embedding_input
        )
    return 0


def _has_content(chunk: dict[str, Any]) -> bool:
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("tool_calls") or delta.get("refusal"):
            return True
    return False


# --------------------------------------------------------------------------- streaming


def merge_chunks(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any] | None:
    """One chunk saying what two consecutive text-only chunks say, or None if they are not
    both plain text deltas of the same choice (tool calls, finish reasons, usage and
    logprobs are never merged)."""
    choices_a, choices_b = first.get("choices"), second.get("choices")
    if not choices_a or not choices_b or len(choices_a) != 1 or len(choices_b) != 1:
        return None
    if first.get("usage") or second.get("usage"):
        return None
    a, b = choices_a[0], choices_b[0]
    if a.get("index") != b.get("index") or a.get("finish_reason") or b.get("finish_reason"):
        return None
    if a.get("logprobs") or b.get("logprobs"):
        return None
    delta_a, delta_b = a.get("delta") or {}, b.get("delta") or {}
    text_a, text_b = delta_a.get("content"), delta_b.get("content")
    if not isinstance(text_a, str) or not isinstance(text_b, str):
        return None
    if delta_b.keys() - {"content"} or delta_a.keys() - {"content", "role"}:
        return None
    return {**first, "choices": [{**a, "delta": {**delta_a, "content": text_a + text_b}}]}


class ChunkPublisher:
    """Publishes a stream's chunks in order without making the stream wait for each
    publish: chunks queue up while one is on its way, and a single pump task publishes
    them one after the other (one partition, sequential sends: order is kept).

    When the bus is slower than the upstream (e.g. an instant upstream and Kafka's
    acknowledgement per event), text chunks waiting in the queue are merged into one
    before they are published, so a stream never falls behind by more than one publish;
    with a paced upstream (a real model) every chunk goes out on its own. Sequence
    numbers are given at publication, so they stay consecutive."""

    def __init__(
        self,
        publish: Callable[[EnvelopeFields], Awaitable[None]],
        event: Callable[[int, dict[str, Any]], ChatChunk],
    ) -> None:
        self._publish = publish
        self._event = event
        self._queue: deque[dict[str, Any]] = deque()
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self.sent = 0  # chunks accepted (they will all reach the client)
        self.published = 0  # chunk events published (after merging)

    def send(self, chunk: dict[str, Any]) -> None:
        if self._error is not None:
            raise PublishFailed("could not publish a stream chunk") from self._error
        self._queue.append(chunk)
        self.sent += 1
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._pump())

    async def _pump(self) -> None:
        queue = self._queue
        while queue:
            chunk = queue.popleft()
            while queue and (merged := merge_chunks(chunk, queue[0])) is not None:
                chunk = merged
                queue.popleft()
            try:
                await self._publish(self._event(self.published, chunk))
            except Exception as exc:  # noqa: BLE001 - reported by send() and flush()
                self._error = exc
                queue.clear()
                return
            self.published += 1

    async def flush(self) -> None:
        """Wait until every chunk sent so far is published."""
        if self._task is not None:
            await asyncio.shield(self._task)
        if self._error is not None:
            raise PublishFailed("could not publish a stream chunk") from self._error

    async def aclose(self) -> None:
        """Stop publishing (what is still queued is dropped)."""
        self._queue.clear()
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


# --------------------------------------------------------------------------- registry


@dataclass
class RequestRun:
    """One request being handled: what a cancellation or a deadline needs to know."""

    request: ChatRequested
    started: float = field(default_factory=time.perf_counter)
    cancel_requested: bool = False
    in_lane: bool = False
    upstream_called: bool = False
    deployment: Deployment | None = None
    ttft_ms: float | None = None
    progress: StreamProgress | None = None
    accumulator: CompletionAccumulator | None = None
    publisher: ChunkPublisher | None = None

    @property
    def chunks_sent(self) -> int:
        return self.publisher.sent if self.publisher is not None else 0

    def usage_so_far(self) -> TokenUsage:
        """Tokens of a request stopped midway: what the upstream reported, else estimates."""
        if not self.upstream_called:
            return TokenUsage()
        progress = self.progress or StreamProgress()
        input_tokens = progress.input_tokens
        if input_tokens is None:
            input_tokens = estimate_prompt_tokens(self.request.data.body)
        output_tokens = progress.output_tokens
        if output_tokens is None:
            output_tokens = self.accumulator.deltas if self.accumulator is not None else 0
        return TokenUsage(input_tokens=input_tokens, output_tokens=output_tokens)


class RunningRequests:
    """The requests this replica is handling, by request id, so that a cancellation can
    reach them. A cancellation for a request not (yet) here is remembered for a while, in
    case the request arrives after it (a backlog, a redelivery)."""

    def __init__(self, remember: int = 10_000, ttl_s: float = 600.0) -> None:
        self._running: dict[str, tuple[RequestRun, asyncio.Task[Outcome]]] = {}
        self._early: OrderedDict[str, float] = OrderedDict()
        self._remember = remember
        self._ttl_s = ttl_s

    def __len__(self) -> int:
        return len(self._running)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._running

    def start(self, run: RequestRun, task: asyncio.Task[Outcome]) -> None:
        self._running[run.request.request_id] = (run, task)

    def finish(self, run: RequestRun) -> None:
        entry = self._running.get(run.request.request_id)
        if entry is not None and entry[0] is run:
            del self._running[run.request.request_id]

    def cancel(self, request_id: str) -> bool:
        """Cancel the request if it runs here (True); otherwise remember the cancellation."""
        entry = self._running.get(request_id)
        if entry is None:
            self._early[request_id] = time.monotonic()
            self._early.move_to_end(request_id)
            while len(self._early) > self._remember:
                self._early.popitem(last=False)
            return False
        run, task = entry
        if not run.cancel_requested:
            run.cancel_requested = True
            task.cancel()
        return True

    def cancelled_before_start(self, request_id: str) -> bool:
        cancelled_at = self._early.pop(request_id, None)
        return cancelled_at is not None and time.monotonic() - cancelled_at < self._ttl_s


# --------------------------------------------------------------------------- handler


class _StaticRouting:
    def __init__(self, table: RoutingTable) -> None:
        self.table = table


class _StaticPrices:
    def __init__(self, table: PriceTable) -> None:
        self.table = table


class ChatRequestHandler:
    """The consumer-group handler of the request topics (both lanes)."""

    def __init__(
        self,
        *,
        publish: Publish,
        topics: Topics,
        routing: Any,
        providers: ProviderPool,
        deployments: DeploymentStates | None = None,
        prices: Any = None,
        lanes: LaneGate | None = None,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """`routing` and `prices` are tables, or sources with a current `.table`."""
        self._publish = publish
        self._topics = topics
        self._routing = _StaticRouting(routing) if isinstance(routing, RoutingTable) else routing
        if prices is None:
            prices = PriceTable()
        self._prices = _StaticPrices(prices) if isinstance(prices, PriceTable) else prices
        self._providers = providers
        self._deployments = deployments or DeploymentStates(BreakerPolicy())
        self._lanes = lanes or LaneGate(interactive_capacity=1_000_000, batch_capacity=1_000_000)
        self._backoff = backoff or Backoff()
        self._rng = rng or random.Random()
        self.running = RunningRequests()

    @property
    def routing(self) -> RoutingTable:
        return self._routing.table

    async def __call__(self, event: Event) -> None:
        if not isinstance(event, ChatRequested):
            return  # other event types on these topics are not ours to answer
        with structlog.contextvars.bound_contextvars(request_id=event.request_id):
            run = RequestRun(event)
            outcome = await self._outcome(run)
            outcome.latency_ms = (time.perf_counter() - run.started) * 1000
            await self._publish_outcome(run, outcome)

    async def cancel(self, event: Event) -> None:
        """The control-topic listener: cancel a request if this replica runs it."""
        if isinstance(event, ChatCancelRequested) and self.running.cancel(event.request_id):
            log.info(
                "request cancelled by its client",
                request_id=event.request_id,
                reason=event.data.reason,
            )

    async def _outcome(self, run: RequestRun) -> Outcome:
        request_id = run.request.request_id
        if self.running.cancelled_before_start(request_id):
            run.cancel_requested = True
            return self._cancelled(run)
        task = asyncio.get_running_loop().create_task(self._guarded(run))
        self.running.start(run, task)
        try:
            return await task
        finally:
            self.running.finish(run)

    async def _guarded(self, run: RequestRun) -> Outcome:
        try:
            return await self._serve_within_deadline(run)
        except asyncio.CancelledError:
            if run.cancel_requested:
                return self._cancelled(run)
            raise
        except PublishFailed:
            raise
        except Exception:  # noqa: BLE001 - a bug must still give the client a terminal reply
            log.exception("request handling failed unexpectedly")
            return failed_outcome(
                ProviderError(
                    500,
                    "api_error",
                    "Internal error in the inference service.",
                    code="internal_error",
                ),
                run.deployment,
            )
        finally:
            if run.publisher is not None:
                await run.publisher.aclose()

    def _cancelled(self, run: RequestRun) -> Outcome:
        metrics.CANCELLATIONS.labels(run.request.data.model).inc()
        return Outcome(
            TerminalStatus.CANCELLED,
            error=ErrorInfo(
                status=408,
                type="request_cancelled",
                code="client_disconnected",
                message="The client went away; the request was cancelled.",
            ),
            deployment=run.deployment,
            usage=run.usage_so_far(),
        )

    async def _serve_within_deadline(self, run: RequestRun) -> Outcome:
        data = run.request.data
        remaining = seconds_until(data.deadline)
        if remaining <= 0:
            return expired_outcome("The request's deadline passed before it could be served.")
        try:
            async with asyncio.timeout(remaining) as deadline:
                async with self._lanes.slot(data.priority):
                    run.in_lane = True
                    return await self._serve(run)
        except TimeoutError:
            if not deadline.expired():
                raise
            if not run.in_lane:
                return expired_outcome(
                    "The request's deadline passed while it waited for a lane slot."
                )
            where = (
                "the upstream was answering"
                if run.upstream_called
                else "it waited for a deployment with free capacity"
            )
            outcome = expired_outcome(
                f"The request's deadline passed while {where}.", run.usage_so_far()
            )
            outcome.deployment = run.deployment
            return outcome

    async def _serve(self, run: RequestRun) -> Outcome:
        model = run.request.data.model
        route = self._routing.table.route(model)
        if route is None:
            return failed_outcome(
                ProviderError(
                    404,
                    "invalid_request_error",
                    f"The model '{model}' does not exist.",
                    code="model_not_found",
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
            if run.chunks_sent:
                return outcome  # part of the stream is out: no other deployment can resume it
            assert outcome.error is not None
            metrics.FALLBACKS.labels(model, deployment.name, outcome.error.code or "error").inc()
            log.warning(
                "deployment failed",
                model=model,
                deployment=deployment.name,
                status=outcome.error.status,
                code=outcome.error.code,
            )
        if outcome is not None:
            return outcome
        # Open circuits (or a half-open one already probing): answer now, not after a wait.
        retry_in = max(1, math.ceil(min(state.breaker.retry_in() for state in open_circuits)))
        return failed_outcome(
            ProviderError(
                503,
                "service_unavailable",
                f"Every deployment of model '{model}' is failing; retry in {retry_in} s.",
                code="upstream_unavailable",
                retry_after=retry_in,
            )
        )

    async def _try_deployment(
        self, run: RequestRun, deployment: Deployment, state: DeploymentState
    ) -> Outcome:
        """Call one deployment, retrying it with backoff while that may help."""
        data = run.request.data
        model = data.model
        provider = self._providers.get(model, deployment)
        attempt = 0
        while True:
            attempt += 1
            started = time.perf_counter()
            try:
                async with state.slot(data.priority):
                    response = await self._call(run, deployment, provider)
            except ProviderError as error:
                if error.unhealthy:
                    state.breaker.failure()
                else:
                    state.breaker.success()  # it answered; the request was the problem
                observe_call(model, deployment, error.code or "error", started)
                if error.is_timeout and seconds_until(data.deadline) <= 0:
                    outcome = expired_outcome(
                        "The request's deadline passed while the upstream was answering.",
                        run.usage_so_far(),
                    )
                    outcome.deployment = deployment
                    return outcome
                outcome = failed_outcome(error, deployment)
                if run.chunks_sent:
                    outcome.usage = run.usage_so_far()
                    return outcome
                if not error.retry_same or attempt > deployment.max_retries:
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
                    return outcome  # our failures opened its circuit meanwhile
                continue
            except BaseException:
                # Cancelled, the deadline, or a bug: says nothing about the deployment.
                state.breaker.release()
                observe_call(model, deployment, "interrupted", started)
                raise
            state.breaker.success()
            observe_call(model, deployment, "ok", started)
            return Outcome(
                TerminalStatus.COMPLETED,
                response=response,
                deployment=deployment,
                usage=usage_of(response),
            )

    async def _call(
        self, run: RequestRun, deployment: Deployment, provider: ChatProvider
    ) -> dict[str, Any]:
        data = run.request.data
        timeout_s = min(deployment.timeout_s, max(0.001, seconds_until(data.deadline)))
        run.deployment = deployment
        run.upstream_called = True
        with tracing.span(
            f"{data.operation} {deployment.model}",
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.system": deployment.provider,
                "gen_ai.operation.name": data.operation,
                "gen_ai.request.model": deployment.model,
                "switchyard.model": data.model,
                "switchyard.deployment": deployment.name,
            },
        ) as span:
            if data.operation == "embeddings":
                response = await provider.embeddings(data.body, timeout_s=timeout_s)
            elif data.stream:
                response = await self._stream(run, deployment, provider, timeout_s)
            else:
                response = await provider.chat(data.body, timeout_s=timeout_s)
            if span is not None:
                usage = usage_of(response)
                span.set_attribute("gen_ai.response.model", str(response.get("model", "")))
                span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
                span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
        response["model"] = data.model  # clients see the public name, not the upstream's
        return response

    async def _stream(
        self, run: RequestRun, deployment: Deployment, provider: ChatProvider, timeout_s: float
    ) -> dict[str, Any]:
        data = run.request.data
        options = data.body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        progress = run.progress = StreamProgress()
        accumulator = run.accumulator = CompletionAccumulator()
        if run.publisher is None:
            run.publisher = ChunkPublisher(self._publish_reply_of(run.request), self._chunk_of(run))
        publisher = run.publisher
        stream = provider.stream(data.body, timeout_s=timeout_s, progress=progress)
        try:
            async with contextlib.aclosing(stream):
                async for chunk in stream:
                    accumulator.add(chunk)
                    chunk["model"] = data.model
                    if not include_usage:
                        if "usage" in chunk and not chunk.get("choices"):
                            continue  # the usage chunk the client did not ask for
                        chunk.pop("usage", None)
                    if run.ttft_ms is None and _has_content(chunk):
                        run.ttft_ms = (time.perf_counter() - run.started) * 1000
                        metrics.TIME_TO_FIRST_TOKEN_SECONDS.labels(
                            data.model, deployment.name
                        ).observe(run.ttft_ms / 1000)
                    publisher.send(chunk)
        except ProviderError:
            await publisher.flush()  # what arrived reaches the client before the error
            raise
        await publisher.flush()
        return accumulator.completion()

    # ------------------------------------------------------------------ publishing

    async def _publish_outcome(self, run: RequestRun, outcome: Outcome) -> None:
        request = run.request
        cost = self._cost(request, outcome)
        record_metrics(request.data.model, outcome, cost)
        await self._publish_reply_of(request)(self._terminal_event(request, outcome))
        await self._publish(
            self._topics.usage,
            self._usage_event(run, outcome, cost),
            key=request.request_id,
        )

    def _publish_reply_of(
        self, request: ChatRequested
    ) -> Callable[[EnvelopeFields], Awaitable[None]]:
        reply_to = request.data.reply_to
        partition = reply_to.partition if reply_to else None
        topic = self._topics.replies
        key = request.request_id
        publish = self._publish

        def publish_reply(event: EnvelopeFields) -> Awaitable[None]:
            return publish(topic, event, key=key, partition=partition)

        return publish_reply

    def _chunk_of(self, run: RequestRun) -> Callable[[int, dict[str, Any]], ChatChunk]:
        request = run.request
        envelope = {
            "source": SOURCE,
            "tenant": request.tenant,
            "request_id": request.request_id,
        }
        prefix = f"{request.id}.chunk-"

        def chunk_event(sequence: int, chunk: dict[str, Any]) -> ChatChunk:
            return ChatChunk(
                id=f"{prefix}{sequence}",
                **envelope,
                data=ChatChunkData(sequence=sequence, chunk=chunk),
            )

        return chunk_event

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
            assert outcome.response is not None and outcome.deployment is not None
            return ChatCompleted(
                **envelope,
                data=ChatCompletedData(
                    response=outcome.response,
                    provider=outcome.deployment.provider,
                    deployment=outcome.deployment.name,
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
                deployment=outcome.deployment_name,
                latency_ms=outcome.latency_ms,
            ),
        )

    def _cost(self, request: ChatRequested, outcome: Outcome) -> float:
        usage = outcome.usage
        if not usage.total_tokens:
            return 0.0
        return request_cost(self._prices.table, request.data.model, outcome.deployment, usage)

    def _usage_event(self, run: RequestRun, outcome: Outcome, cost: float) -> UsageRecorded:
        request = run.request
        data = request.data
        return UsageRecorded(
            **self._envelope(request, "usage"),
            data=UsageData(
                model=data.model,
                provider=outcome.provider,
                deployment=outcome.deployment_name,
                user_id=data.user_id,
                api_key_id=data.api_key_id,
                status=outcome.status,
                usage=outcome.usage,
                cost_usd=cost,
                latency_ms=outcome.latency_ms,
                time_to_first_token_ms=run.ttft_ms,
            ),
        )


def observe_call(model: str, deployment: Deployment, outcome: str, started: float) -> None:
    elapsed = time.perf_counter() - started
    metrics.PROVIDER_CALL_SECONDS.labels(model, deployment.name, outcome).observe(elapsed)
    metrics.GEN_AI_OPERATION_DURATION.labels(
        deployment.provider, "chat", deployment.model, "" if outcome == "ok" else outcome
    ).observe(elapsed)


def record_metrics(model: str, outcome: Outcome, cost: float) -> None:
    metrics.REQUESTS.labels(model, outcome.status.value).inc()
    if outcome.error is not None:
        metrics.ERRORS.labels(model, str(outcome.error.status), outcome.error.code or "").inc()
    deployment = outcome.deployment_name
    if deployment and outcome.usage.total_tokens:
        metrics.TOKENS.labels(model, deployment, "input").inc(outcome.usage.input_tokens)
        metrics.TOKENS.labels(model, deployment, "output").inc(outcome.usage.output_tokens)
        provider = outcome.provider or ""
        for token_type, count in (
            ("input", outcome.usage.input_tokens),
            ("output", outcome.usage.output_tokens),
        ):
            metrics.GEN_AI_TOKEN_USAGE.labels(provider, "chat", model, token_type).observe(count)
    if deployment and cost:
        metrics.COST_USD.labels(model, deployment).inc(cost)
