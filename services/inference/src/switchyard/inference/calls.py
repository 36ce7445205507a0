"""One upstream call of a request run, inside its OpenTelemetry client span (`genai`
attributes): the deployment answers in one JSON reply, translated by the adapter, or in
a stream whose client events go to the run's `ChunkPublisher` as they arrive. Events that
only open a stream are held back until the first content, for at most `OPENING_HOLD_S`,
so a stream failing before any content can still be retried or fall back without the
client seeing it, while one whose content is slow to come (a model reasoning first) is
seen to open, and its pings are relayed as they come. An upstream
faster than the bus is read no faster than the publisher takes its events (at most
`MAX_BACKLOG` waiting), and a buffered stream yields to the loop every `YIELD_EVERY`
events. Returns the client's reply and the call's usage; raises the upstream's
ProviderError."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from opentelemetry.trace import SpanKind

from switchyard.common import tracing
from switchyard.common.bus import EventRejectedError
from switchyard.common.events import ClientAPI, StreamEvent, TokenUsage
from switchyard.common.routing import Deployment
from switchyard.inference import genai, metrics
from switchyard.inference.adapters import Adapter, UpstreamCall, with_estimated_usage
from switchyard.inference.errors import ProviderError, response_too_large
from switchyard.inference.publishing import MAX_BACKLOG, ChunkPublisher
from switchyard.inference.runs import RequestRun, seconds_until
from switchyard.inference.upstream import Upstream, invalid_reply
from switchyard.inference.usage import BILLED_APIS, estimate_output_tokens, estimate_prompt_tokens

# Upstream events read between two yields to the event loop when they arrive faster
# than the loop would otherwise switch (a buffered stream).
YIELD_EVERY = 64

# How long the events that only open a stream (Anthropic's `message_start` and pings,
# Chat Completions' role-only chunk, Responses' `response.created`) wait for the first
# content, in seconds. Until then a failure can still be retried or fall back unseen;
# after it the client sees its stream open (the gateway's start deadline is met by the
# opening event), and the call is the one it gets.
OPENING_HOLD_S = 1.0


def undeliverable_stream(reason: EventRejectedError) -> ProviderError:
    """The error ending a stream the bus refused an event of (larger than it carries): the
    client has the events before it and this 502 `response_too_large`, never a stream
    with a gap in it."""
    return response_too_large(reason, "stream")


# The APIs whose calls generate text: a non-streamed reply of theirs comes only once all
# of it is generated, and is waited for up to `response_timeout_s`. Embeddings and token
# counts generate nothing: `timeout_s` bounds them, so a hung upstream is left for the
# next deployment.
GENERATING_APIS = frozenset(
    {ClientAPI.OPENAI_CHAT_COMPLETIONS, ClientAPI.ANTHROPIC_MESSAGES, ClientAPI.OPENAI_RESPONSES}
)


class UpstreamCalls:
    """Makes the upstream calls of request runs; `publisher_of(run)` gives the publisher
    of a run's stream (created at its first streamed call, kept across retries)."""

    def __init__(self, publisher_of: Callable[[RequestRun], ChunkPublisher]) -> None:
        self._publisher_of = publisher_of

    async def call(
        self,
        run: RequestRun,
        deployment: Deployment,
        upstream: Upstream,
        adapter: Adapter,
        call: UpstreamCall,
    ) -> tuple[dict[str, Any], TokenUsage]:
        """Make one `call` (prepared by `adapter`) to `deployment` through `upstream` for
        `run`, within the deployment's timeout and the request's deadline, counting it in
        `run`. Returns the client's reply (for a stream, what its events assemble to) and
        the tokens the upstream reported. Raises ProviderError: the upstream's error, a
        timeout, or a reply of the wrong shape (502 `upstream_invalid_reply`), with the
        deployment's credentials redacted from all its text."""
        try:
            return await self._call(run, deployment, upstream, adapter, call)
        except ProviderError as error:
            # Whichever part made it (the upstream client, or an adapter reading a failed
            # Responses reply), an upstream's error holds its own text in message, type,
            # code and param, and goes to the client, history, logs and metrics.
            error.redact(deployment.secrets())
            raise

    async def _call(
        self,
        run: RequestRun,
        deployment: Deployment,
        upstream: Upstream,
        adapter: Adapter,
        call: UpstreamCall,
    ) -> tuple[dict[str, Any], TokenUsage]:
        data = run.request.data
        # A non-streamed reply comes whole once the upstream has generated all of it: its
        # wait is the generation's length, bounded by `response_timeout_s`; a stream's
        # reads by `timeout_s`, the longest silence between two events.
        generated_whole = not data.stream and data.api in GENERATING_APIS
        limit = deployment.response_timeout_s if generated_whole else deployment.timeout_s
        timeout_s = min(limit, max(0.001, seconds_until(data.deadline)))
        run.deployment = deployment
        run.upstream_calls += 1
        run.calling = True
        with tracing.span(
            genai.span_name(data.api, data.model),
            kind=SpanKind.CLIENT,
            attributes={
                **genai.span_attributes(data.api, data.model, deployment),
                "switchyard.model": data.model,
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
                if not usage.total_tokens and data.api in BILLED_APIS:
                    # A reply without usage (a server that leaves it out) is estimated, as
                    # a stream without it is: never billed as nothing. A translated reply
                    # tells its client the estimate; a relayed one stays as it was sent.
                    usage = TokenUsage(
                        input_tokens=estimate_prompt_tokens(data.body),
                        output_tokens=estimate_output_tokens(response),
                    )
                    if call.api is not data.api:
                        response = with_estimated_usage(response, data.api, usage)
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
        run.delivered = adapter.accumulator()
        if run.publisher is None:
            run.publisher = self._publisher_of(run)
            run.publisher.on_published = run.note_published
        publisher = run.publisher
        held: list[StreamEvent] = []
        hold: asyncio.TimerHandle | None = None
        opened = False  # the opening events went to the client: nothing is held any more
        ttft_histogram = metrics.TIME_TO_FIRST_TOKEN_SECONDS.labels(
            data.model, upstream.deployment.name
        )

        def open_stream() -> None:
            nonlocal hold, opened
            if hold is not None:
                hold.cancel()
                hold = None
            opened = True
            for opening in held:
                publisher.send(opening)
            held.clear()

        def hold_expired() -> None:
            nonlocal hold
            hold = None
            # A refusal of the bus is raised by the stream's next `send` or `flush`.
            with contextlib.suppress(EventRejectedError):
                open_stream()

        def emit(events: list[StreamEvent]) -> None:
            nonlocal hold
            for event in events:
                accumulator.add(event.data)
                if run.ttft_ms is None:
                    if not adapter.is_preamble(event):
                        run.ttft_ms = (time.perf_counter() - run.started) * 1000
                        ttft_histogram.observe(run.ttft_ms / 1000)
                        open_stream()
                    elif not opened:
                        held.append(event)  # sent with the first content, or never
                        if hold is None:
                            hold = asyncio.get_running_loop().call_later(
                                OPENING_HOLD_S, hold_expired
                            )
                        continue
                publisher.send(event)

        stream = upstream.stream(call.path, call.body, call.headers, timeout_s)
        try:
            async with contextlib.aclosing(stream):
                read = 0
                async for sse in stream:
                    emit(translation.feed(sse))
                    read += 1
                    if publisher.backlog > MAX_BACKLOG:
                        await publisher.room(MAX_BACKLOG)
                    elif read % YIELD_EVERY == 0:
                        # Events already buffered are read without a pause: let the pump
                        # and the other requests on this loop run between them.
                        await asyncio.sleep(0)
            emit(translation.finish())
            open_stream()  # a stream with no content at all still opens and closes
        except ProviderError:
            # What the translation held back for order (a call not yet opened, text
            # beside a call's arguments) was sent by the upstream: the client gets it.
            emit(translation.release())
            with contextlib.suppress(EventRejectedError):  # raised below, in its place
                await publisher.flush()  # what arrived reaches the client before the error
            if publisher.failure is not None:
                raise undeliverable_stream(publisher.failure) from None
            raise
        except EventRejectedError as exc:
            raise undeliverable_stream(exc) from None
        finally:
            if hold is not None:  # the call ended or failed first: what it held is dropped
                hold.cancel()
        try:
            await publisher.flush()
        except EventRejectedError as exc:
            raise undeliverable_stream(exc) from None
        usage = translation.usage()
        if not usage.total_tokens:
            # A whole stream without usage (its usage chunk lost, or never sent): estimated
            # as for a stream that failed, never billed as nothing.
            usage = run.in_flight_usage()
        return accumulator.response(), usage
