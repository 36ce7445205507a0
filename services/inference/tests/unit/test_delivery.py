"""Delivery: a bus that refuses publishes for a while never makes the upstream run twice
(the result is kept and only the publish is retried); a stream that fails before any
content falls back without the client seeing it; every upstream call's tokens count."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from switchyard.common.bus import (
    BusUnavailableError,
    EventTooLargeError,
    InMemoryBus,
    Publication,
)
from switchyard.common.events import ChatChunk, ChatCompleted, ChatFailed, UsageRecorded
from switchyard.common.routing import Deployment, ModelRoute, RoutingTable
from switchyard.common.topics import Topics
from switchyard.inference import calls
from switchyard.inference.handlers import ChatRequestHandler
from switchyard.inference.providers import ProviderPool
from switchyard.inference.publishing import (
    ChunkPublisher,
    PublicationRejectedError,
    PublishRetry,
    ReliablePublisher,
)
from switchyard.inference.reliability import Backoff
from switchyard.inference.testing import Harness, Scripted, chat_request

TOPICS = Topics("delivery")


class FlakyBus:
    """Publishes to an in-memory bus, but refuses the publishes numbered in `failing`
    (1-based, counting every attempt), as a broker outage would."""

    def __init__(self, failing: set[int]) -> None:
        self.bus = InMemoryBus(partitions={TOPICS.replies: 12})
        self.failing = failing
        self.attempts = 0
        self.published: list[Any] = []
        self.together: list[list[str]] = []  # the attempts of publish_in_order

    async def publish(self, topic, event, *, key=None, partition=None, headers=None) -> None:
        self.attempts += 1
        if self.attempts in self.failing:
            raise BusUnavailableError("broker unreachable")
        await self._take(topic, event, key, partition)

    async def publish_in_order(self, publications) -> None:
        """Every publication in one attempt (as the Kafka bus sends them together)."""
        self.attempts += 1
        self.together.append([type(p.event).__name__ for p in publications])
        if self.attempts in self.failing:
            raise BusUnavailableError("broker unreachable")
        for p in publications:
            await self._take(p.topic, p.event, p.key, p.partition)

    async def _take(self, topic, event, key, partition) -> None:
        self.published.append(event)
        await self.bus.publish(topic, event, key=key, partition=partition)


def sim(simulator, name: str, upstream: str, provider: str = "openai") -> Deployment:
    base_url = simulator.openai_url if provider == "openai" else simulator.root
    return Deployment(
        name=name, provider=provider, model=upstream, base_url=base_url, max_retries=0
    )


@pytest.fixture
def routing(simulator) -> RoutingTable:
    return RoutingTable(
        models={
            "m": ModelRoute(name="m", deployments=[sim(simulator, "d", "up-m")]),
            "c": ModelRoute(
                name="c",
                deployments=[
                    sim(simulator, "first", "up-first", "anthropic"),
                    sim(simulator, "second", "up-second", "anthropic"),
                ],
            ),
            "o": ModelRoute(
                name="o",
                deployments=[sim(simulator, "first", "up-o1"), sim(simulator, "second", "up-o2")],
            ),
        }
    )


@pytest.fixture
async def providers() -> AsyncIterator[ProviderPool]:
    pool = ProviderPool()
    yield pool
    await pool.aclose()


def handler_on(bus: FlakyBus, routing: RoutingTable, providers: ProviderPool, together=False):
    return ChatRequestHandler(
        publish=bus.publish,
        publish_in_order=bus.publish_in_order if together else None,
        topics=TOPICS,
        routing=routing,
        providers=providers,
        publish_retry=PublishRetry(0.001, 0.005),
    )


async def test_a_reply_that_cannot_be_published_is_retried_without_calling_the_upstream_again(
    simulator, routing, providers
) -> None:
    bus = FlakyBus(failing={1, 2, 3, 5, 6})  # the reply thrice, then the usage twice
    handler = handler_on(bus, routing, providers)
    request = chat_request(model="m")

    await handler(request)  # returns (and the bus commits) only once both are out

    assert simulator.calls("up-m") == 1
    reply, usage = bus.published
    assert isinstance(reply, ChatCompleted) and isinstance(usage, UsageRecorded)
    assert reply.data.response["choices"][0]["message"]["content"].startswith("Simulated")
    assert usage.data.upstream_calls == 1 and usage.data.usage.output_tokens > 0
    assert handler.publish_failures == 5


async def test_a_reply_and_its_usage_are_handed_to_the_bus_together(
    simulator, routing, providers
) -> None:
    bus = FlakyBus(failing=set())
    handler = handler_on(bus, routing, providers, together=True)

    await handler(chat_request(model="m"))

    assert bus.together == [["ChatCompleted", "UsageRecorded"]]
    assert bus.attempts == 1  # one attempt for both
    assert [type(event) for event in bus.published] == [ChatCompleted, UsageRecorded]


async def test_when_publishing_together_fails_each_event_is_retried_alone_in_order(
    simulator, routing, providers
) -> None:
    bus = FlakyBus(failing={1, 2, 3})  # both together, then the reply alone twice
    handler = handler_on(bus, routing, providers, together=True)

    await handler(chat_request(model="m"))

    assert simulator.calls("up-m") == 1
    assert [type(event) for event in bus.published] == [ChatCompleted, UsageRecorded]
    assert bus.attempts == 5 and handler.publish_failures == 3


def streamed_text(bus: FlakyBus) -> str:
    """The text of the OpenAI chunks the bus took, checking the records' sequence numbers
    run without a gap."""
    chunks = [event for event in bus.published if isinstance(event, ChatChunk)]
    assert [chunk.data.sequence for chunk in chunks] == list(range(len(chunks)))
    return "".join(
        event.data["choices"][0]["delta"].get("content") or ""
        for chunk in chunks
        for event in chunk.data.events
        if event.data.get("choices")
    )


class RefusingBus(FlakyBus):
    """Refuses every `chat.completed` as too large for the bus, as a broker would a record
    over its `max.message.bytes`; takes everything else."""

    async def _take(self, topic, event, key, partition) -> None:
        if isinstance(event, ChatCompleted):
            raise EventTooLargeError("the event is larger than the topic accepts")
        await super()._take(topic, event, key, partition)


@pytest.mark.parametrize("together", [False, True], ids=["one-by-one", "together"])
async def test_a_reply_the_bus_refuses_becomes_an_error_instead_of_holding_the_partition(
    simulator, routing, providers, together
) -> None:
    bus = RefusingBus(failing=set())
    handler = handler_on(bus, routing, providers, together)

    # Returns (so the partition moves on) instead of retrying a publish that cannot succeed.
    await asyncio.wait_for(handler(chat_request(model="m")), timeout=10)

    assert simulator.calls("up-m") == 1
    reply, usage = bus.published
    assert isinstance(reply, ChatFailed) and reply.data.error.code == "response_too_large"
    assert reply.data.error.status == 502
    # The upstream call happened: it is billed, under the status the client got.
    assert isinstance(usage, UsageRecorded) and usage.data.status == "failed"
    assert usage.data.upstream_calls == 1 and usage.data.usage.output_tokens > 0


class RefusingStreamPartBus(FlakyBus):
    """Refuses every `chat.failed` carrying what its stream gave, as a broker with a small
    `max.message.bytes` would one whose stream was long."""

    async def _take(self, topic, event, key, partition) -> None:
        if isinstance(event, ChatFailed) and event.data.response is not None:
            raise EventTooLargeError("the event is larger than the topic accepts")
        await super()._take(topic, event, key, partition)


@pytest.mark.parametrize("together", [False, True], ids=["one-by-one", "together"])
async def test_a_failure_refused_for_its_streams_part_keeps_its_own_status(
    simulator, routing, providers, together
) -> None:
    """Only the part is dropped: the client and history still get the upstream's 500, not
    a 502 `response_too_large` standing in for it."""
    simulator.latency(30)
    simulator.fault(status=500, stream_error_after=3, model="up-m")
    bus = RefusingStreamPartBus(failing=set())
    handler = handler_on(bus, routing, providers, together)

    await asyncio.wait_for(handler(chat_request(model="m", stream=True)), timeout=10)

    reply, usage = bus.published[-2:]
    assert isinstance(reply, ChatFailed) and reply.data.response is None
    assert (reply.data.status, reply.data.error.status) == ("failed", 500)
    assert isinstance(usage, UsageRecorded) and usage.data.status == "failed"
    assert streamed_text(bus)  # what the client was given stays given


async def test_a_failure_keeps_only_the_part_of_its_stream_the_bus_took(
    simulator, routing, providers
) -> None:
    """The broker stalls after the stream's first record: the content queued behind it
    never reaches the client, so the expired request's record does not claim it did."""
    simulator.latency(3000)  # content pieces ~1 s apart

    class StallingBus(FlakyBus):
        async def _take(self, topic, event, key, partition) -> None:
            if isinstance(event, ChatChunk) and event.data.sequence >= 1:
                await asyncio.sleep(3600)  # cancelled when the run ends
            await super()._take(topic, event, key, partition)

    bus = StallingBus(failing=set())
    handler = handler_on(bus, routing, providers)
    request = chat_request(model="m", text="a b c d e f g h", stream=True, deadline_s=2.6)

    await asyncio.wait_for(handler(request), timeout=10)

    reply = next(event for event in bus.published if isinstance(event, ChatFailed))
    assert reply.data.status == "expired"
    given = streamed_text(bus)
    assert given  # the first record carried some content
    assert reply.data.response is not None
    assert reply.data.response["choices"][0]["message"]["content"] == given


async def test_stream_records_that_cannot_be_published_are_retried_in_order(
    simulator, routing, providers
) -> None:
    simulator.latency(40)
    bus = FlakyBus(failing={2, 3, 5})
    handler = handler_on(bus, routing, providers)
    request = chat_request(model="m", text="one two three four", stream=True)

    await handler(request)

    assert simulator.calls("up-m") == 1
    assert streamed_text(bus) == "Simulated reply to: one two three four"
    assert isinstance(bus.published[-2], ChatCompleted)
    assert isinstance(bus.published[-1], UsageRecorded)


@pytest.mark.parametrize(("model", "api"), [("c", "anthropic.messages"), ("o", None)])
async def test_a_stream_failing_after_only_its_opening_event_falls_back_unseen(
    simulator, routing, providers, model, api
) -> None:
    upstream = "up-first" if model == "c" else "up-o1"
    simulator.fault(stream_error_after=1, model=upstream)  # message_start / role chunk only
    harness = await Harness.start(
        TOPICS, routing=routing, providers=providers, backoff=Backoff(0.01, 0.01)
    )
    options = {"api": api} if api else {}
    request = chat_request(model=model, text="hello there", stream=True, **options)

    reply = await harness.handle(request)
    usage = await harness.usage_of(request.request_id)
    await harness.stop()

    assert isinstance(reply, ChatCompleted) and reply.data.deployment == "second"
    events = harness.stream_of(request.request_id)
    if model == "c":
        kinds = [event.event for event in events]
        assert kinds.count("message_start") == 1 and "error" not in kinds
    else:
        assert len({event.data["id"] for event in events}) == 1  # one upstream's stream
        roles = [
            e for e in events if e.data["choices"] and e.data["choices"][0]["delta"].get("role")
        ]
        assert len(roles) == 1
    # Both calls happened and both count.
    assert usage.data.upstream_calls == 2
    if model == "c":  # the first one had reported its input tokens before failing
        assert usage.data.usage.input_tokens == 2 * reply.data.usage.input_tokens


def _opening_only(model: str, chunk: ChatChunk) -> bool:
    """Whether a stream record holds only events that open a stream (no content)."""
    if model == "c":
        return all(
            event.event in ("message_start", "ping")
            or (event.event == "content_block_start" and not event.data["content_block"]["text"])
            for event in chunk.data.events
        )
    return all(
        not any(value for key, value in choice["delta"].items() if key != "role")
        for event in chunk.data.events
        for choice in event.data["choices"]
    )


@pytest.mark.parametrize(("model", "api"), [("c", "anthropic.messages"), ("o", None)])
async def test_a_stream_slow_to_its_first_content_is_seen_to_open_meanwhile(
    simulator, routing, providers, monkeypatch, model, api
) -> None:
    """The upstream opens its stream at once and sends content later (a model reasoning
    first): the opening reaches the client after `OPENING_HOLD_S`, not with the content,
    so a gateway's start deadline shorter than the wait is met."""
    monkeypatch.setattr(calls, "OPENING_HOLD_S", 0.05)
    simulator.latency(2400)  # the opening at once, then content pieces about 0.4 s apart
    harness = await Harness.start(TOPICS, routing=routing, providers=providers)
    options = {"api": api} if api else {}
    request = chat_request(model=model, text="hello there", stream=True, **options)
    loop = asyncio.get_running_loop()

    started = loop.time()
    handled = loop.create_task(harness.handle(request))
    first = await harness.first_chunk(request.request_id)
    opened = loop.time() - started
    reply = await handled
    ended = loop.time() - started
    await harness.stop()

    assert isinstance(reply, ChatCompleted)
    assert _opening_only(model, first)
    assert opened < 0.3 < ended - opened
    events = harness.stream_of(request.request_id)
    if model == "c":
        assert [event.event for event in events].count("message_start") == 1


@pytest.mark.parametrize(("model", "api"), [("c", "anthropic.messages"), ("o", None)])
async def test_a_prompt_streams_opening_travels_with_its_first_content(
    simulator, routing, providers, model, api
) -> None:
    """Content within `OPENING_HOLD_S` of the opening: one record carries both, and a
    failure before it could still have fallen back unseen."""
    harness = await Harness.start(TOPICS, routing=routing, providers=providers)
    options = {"api": api} if api else {}
    request = chat_request(model=model, text="hello there", stream=True, **options)

    reply = await harness.handle(request)
    await harness.stop()

    assert isinstance(reply, ChatCompleted)
    first = min(harness.chunks_of(request.request_id), key=lambda chunk: chunk.data.sequence)
    assert not _opening_only(model, first)


async def test_in_order_names_the_publication_the_bus_refuses() -> None:
    taken: list[str] = []

    async def publish(topic, event, *, key=None, partition=None, headers=None) -> None:
        if topic == "refused":
            raise EventTooLargeError("larger than the topic accepts")
        taken.append(topic)

    async def publish_in_order(publications) -> None:
        for p in publications:
            await publish(p.topic, p.event)

    publisher = ReliablePublisher(publish, PublishRetry(0.001, 0.005), publish_in_order)
    event = chat_request(model="m")
    with pytest.raises(PublicationRejectedError) as refused:
        await publisher.in_order(
            [Publication("taken", event), Publication("refused", event), Publication("x", event)]
        )
    assert refused.value.index == 1
    # Found one at a time after the attempt together: the first again, never the third.
    assert taken == ["taken", "taken"]


class SlowChunkBus(FlakyBus):
    """Takes each `chat.chunk` record 2 ms after it is published: a bus slower than the
    upstream."""

    async def _take(self, topic, event, key, partition) -> None:
        if isinstance(event, ChatChunk):
            await asyncio.sleep(0.002)
        await super()._take(topic, event, key, partition)


class GatedChunkBus(SlowChunkBus):
    """A SlowChunkBus that takes no `chat.chunk` record until `opened` is set."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.opened = asyncio.Event()

    async def _take(self, topic, event, key, partition) -> None:
        if isinstance(event, ChatChunk):
            await self.opened.wait()
        await super()._take(topic, event, key, partition)


def recorder_routing(recorder) -> RoutingTable:
    """Model `m` served by one OpenAI deployment: the recording upstream, no retries."""
    deployment = Deployment(
        name="d", provider="openai", model="up", base_url=f"{recorder.root}/v1", max_retries=0
    )
    return RoutingTable(models={"m": ModelRoute(name="m", deployments=[deployment])})


def buffered_openai_stream(pieces: int) -> bytes:
    """A whole OpenAI chat stream of `pieces` one-character deltas, as one body."""
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "up"}
    chunks = [{**head, "choices": [{"index": 0, "delta": {"role": "assistant"}}]}]
    chunks += [
        {**head, "choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": None}]}
        for _ in range(pieces)
    ]
    chunks.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    lines = [f"data: {json.dumps(chunk)}\n\n".encode() for chunk in chunks]
    return b"".join(lines) + b"data: [DONE]\n\n"


@pytest.mark.parametrize("backlog", [300, 10**9], ids=["bounded", "unbounded"])
async def test_an_upstream_faster_than_the_bus_is_read_no_faster_than_the_bus_takes_it(
    recorder, providers, monkeypatch, backlog
) -> None:
    """A stream the upstream sends at once, to a bus that takes a record every 2 ms once
    it starts taking: the events waiting for the bus stay within the backlog (the reader
    stops reading until the bus catches up), and every event still arrives, in order.
    Unbounded (the old behaviour), thousands wait.

    The bus starts taking records only once more than min(backlog, 1500) events wait, so
    what is measured is the reader's bound, never how fast this host runs the reader
    against the bus's clock."""
    monkeypatch.setattr(calls, "MAX_BACKLOG", backlog)
    waiting: list[int] = []
    send = ChunkPublisher.send
    bus = GatedChunkBus(failing=set())

    def counting_send(self: ChunkPublisher, event: Any) -> None:
        send(self, event)
        waiting.append(self.backlog)
        if self.backlog > min(backlog, 1500):
            bus.opened.set()

    monkeypatch.setattr(ChunkPublisher, "send", counting_send)
    pieces = 6000
    recorder.script(
        Scripted(chunks=[buffered_openai_stream(pieces)], media_type="text/event-stream")
    )
    handler = handler_on(bus, recorder_routing(recorder), providers)

    await asyncio.wait_for(handler(chat_request(model="m", stream=True)), timeout=60)

    assert streamed_text(bus) == "x" * pieces
    assert isinstance(bus.published[-2], ChatCompleted)
    if backlog == 300:
        assert max(waiting) <= 300 + 2, max(waiting)
    else:
        assert max(waiting) > 1500, max(waiting)


class RefusingOneChunkBus(SlowChunkBus):
    """Refuses the `chat.chunk` record with sequence 1 as larger than it takes (a record
    of a huge delta), taking every other record."""

    async def _take(self, topic, event, key, partition) -> None:
        if isinstance(event, ChatChunk) and event.data.sequence == 1:
            raise EventTooLargeError("the record is larger than the topic accepts")
        await super()._take(topic, event, key, partition)


async def test_a_stream_record_the_bus_refuses_ends_the_stream_without_a_gap(
    recorder, providers
) -> None:
    """The refused record is never skipped: the client has the records before it, then a
    502 `response_too_large`; no record after it is published, and nothing is lost
    silently (the stream does not end as completed)."""
    recorder.script(Scripted(chunks=[buffered_openai_stream(3000)], media_type="text/event-stream"))
    bus = RefusingOneChunkBus(failing=set())
    handler = handler_on(bus, recorder_routing(recorder), providers)

    await asyncio.wait_for(handler(chat_request(model="m", stream=True)), timeout=60)

    chunks = [event for event in bus.published if isinstance(event, ChatChunk)]
    assert [chunk.data.sequence for chunk in chunks] == [0]
    reply, usage = bus.published[-2:]
    assert isinstance(reply, ChatFailed), reply
    assert (reply.data.error.status, reply.data.error.code) == (502, "response_too_large")
    assert isinstance(usage, UsageRecorded) and usage.data.upstream_calls == 1
    assert len(recorder.requests) == 1  # not called again


class SmallRecordsBus(SlowChunkBus):
    """Refuses a `chat.chunk` record of more than 20 events as larger than it takes, as a
    bus refuses one over its byte limit when the events are large."""

    async def _take(self, topic, event, key, partition) -> None:
        if isinstance(event, ChatChunk) and len(event.data.events) > 20:
            raise EventTooLargeError("the record is larger than the topic accepts")
        await super()._take(topic, event, key, partition)


async def test_a_record_of_many_events_the_bus_refuses_is_sent_in_smaller_records(
    recorder, providers
) -> None:
    """Records are cut by count: one the bus refuses for its size is split until each
    part fits, and the stream arrives whole, in order."""
    recorder.script(Scripted(chunks=[buffered_openai_stream(3000)], media_type="text/event-stream"))
    bus = SmallRecordsBus(failing=set())
    handler = handler_on(bus, recorder_routing(recorder), providers)

    await asyncio.wait_for(handler(chat_request(model="m", stream=True)), timeout=60)

    assert streamed_text(bus) == "x" * 3000
    chunks = [event for event in bus.published if isinstance(event, ChatChunk)]
    assert max(len(chunk.data.events) for chunk in chunks) <= 20
    assert isinstance(bus.published[-2], ChatCompleted)
