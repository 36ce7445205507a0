"""Redelivery: a request delivered again to another replica (the one that ran it died
before committing its offset) is answered from what its reply partition holds, never run
upstream a second time; a stream its client already partly received ends as `stream_interrupted`
(what the client saw), and so does its record; a request whose client has received
nothing runs normally."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from prometheus_client import REGISTRY

from switchyard.common.bus import BusUnavailableError, InMemoryBus
from switchyard.common.events import (
    ChatChunk,
    ChatCompleted,
    ChatFailed,
    StreamEvent,
    UsageRecorded,
    decode_event,
    encode_event,
)
from switchyard.common.routing import Deployment, ModelRoute, RoutingTable
from switchyard.common.topics import Topics
from switchyard.inference.handlers import ChatRequestHandler
from switchyard.inference.providers import ProviderPool
from switchyard.inference.publishing import PublishRetry, chunk_records
from switchyard.inference.redelivery import (
    USAGE_HEADER,
    LocalOutcomeLog,
    OutcomeIndex,
    Recorded,
)
from switchyard.inference.testing import chat_request

TOPICS = Topics("redelivery")


class SharedLog:
    """The replies topic as every replica reads it back (a fake of `KafkaReplyLog`): every
    record published to it indexed as `KafkaReplyLog` indexes a record (its key, its type,
    its value and its usage header, nothing decoded), and every publish by topic."""

    def __init__(self) -> None:
        self.index = OutcomeIndex(lookback_s=600)
        self.published: list[tuple[str, object]] = []
        self.headers: list[dict[str, bytes] | None] = []
        self.unreadable = False
        self.replied = asyncio.Event()

    async def publish(self, topic, event, *, key=None, partition=None, headers=None) -> None:
        self.published.append((topic, event))
        self.headers.append(dict(headers) if headers else None)
        if topic == TOPICS.replies:
            self.replied.set()
            usage = (headers or {}).get(USAGE_HEADER)
            self.index.add_record(key, event.type.encode(), encode_event(event), usage)

    def on(self, topic: str) -> list:
        return [event for t, event in self.published if t == topic]

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def written(self, event, usage=None) -> None:
        return None  # read back from the topic, as on Kafka

    def settled(self, request_id: str) -> None:
        return None  # another replica may yet be handed the request, as on Kafka

    async def lookup(self, request) -> Recorded | None:
        if self.unreadable:
            raise BusUnavailableError("the replies topic cannot be read")
        return self.index.get(request.request_id, request.tenant)


@pytest.fixture
def routing(simulator) -> RoutingTable:
    deployment = Deployment(
        name="d", provider="openai", model="up-m", base_url=simulator.openai_url, max_retries=0
    )
    return RoutingTable(models={"m": ModelRoute(name="m", deployments=[deployment])})


@pytest.fixture
async def providers() -> AsyncIterator[ProviderPool]:
    pool = ProviderPool()
    yield pool
    await pool.aclose()


def replica(log: SharedLog, routing: RoutingTable, providers: ProviderPool):
    """A fresh handler: another replica, with nothing of its own in memory."""
    return ChatRequestHandler(
        publish=log.publish,
        topics=TOPICS,
        routing=routing,
        providers=providers,
        publish_retry=PublishRetry(0.001, 0.005),
        outcomes=log,
    )


async def test_a_json_request_delivered_again_to_another_replica_is_republished_not_rerun(
    simulator, routing, providers
) -> None:
    log = SharedLog()
    request = chat_request(model="m")
    await replica(log, routing, providers)(request)
    first_reply, first_usage = log.on(TOPICS.replies), log.on(TOPICS.usage)

    await replica(log, routing, providers)(request)  # the first replica died uncommitted

    assert simulator.calls("up-m") == 1
    replies, usages = log.on(TOPICS.replies), log.on(TOPICS.usage)
    assert len(replies) == 2 and replies[1] == first_reply[0]  # same event, same id
    assert isinstance(replies[1], ChatCompleted)
    assert usages[1] == first_usage[0]


async def test_the_reply_record_carries_its_usage_event_and_nothing_else_is_written(
    simulator, routing, providers
) -> None:
    """The record the client waits for is the record a redelivery reads: the terminal
    event holds its usage event in the same record, and no other write precedes it."""
    log = SharedLog()
    await replica(log, routing, providers)(chat_request(model="m"))

    assert [topic for topic, _ in log.published] == [TOPICS.replies, TOPICS.usage]
    reply_headers = log.headers[0]
    assert reply_headers is not None
    assert decode_event(reply_headers[USAGE_HEADER]) == log.on(TOPICS.usage)[0]


async def test_a_stream_delivered_again_after_it_started_ends_as_stream_interrupted(
    simulator, routing, providers
) -> None:
    simulator.latency(200)
    log = SharedLog()
    request = chat_request(model="m", text="one two three four five six", stream=True)
    first = replica(log, routing, providers)
    running = asyncio.create_task(first(request))
    await asyncio.wait_for(log.replied.wait(), timeout=10)  # the client has part of it
    running.cancel()  # the replica dies before the stream ends
    with pytest.raises(asyncio.CancelledError):
        await running
    assert isinstance(log.on(TOPICS.replies)[0], ChatChunk)  # the client has part of it
    calls = simulator.calls("up-m")

    await replica(log, routing, providers)(request)

    assert simulator.calls("up-m") == calls  # not run again
    reply = log.on(TOPICS.replies)[-1]
    assert isinstance(reply, ChatFailed)
    assert reply.data.error.code == "stream_interrupted" and reply.data.error.status == 502
    usage = log.on(TOPICS.usage)[-1]
    assert isinstance(usage, UsageRecorded) and usage.data.status == "failed"


async def test_a_stream_whose_outcome_was_recorded_is_republished_not_interrupted(
    simulator, routing, providers
) -> None:
    log = SharedLog()
    request = chat_request(model="m", text="one two", stream=True)
    await replica(log, routing, providers)(request)

    await replica(log, routing, providers)(request)

    assert simulator.calls("up-m") == 1
    completed = [e for e in log.on(TOPICS.replies) if isinstance(e, ChatCompleted)]
    assert len(completed) == 2 and completed[0] == completed[1]


async def test_a_request_whose_client_got_nothing_runs_again(simulator, routing, providers):
    log = SharedLog()
    request = chat_request(model="m")
    # The first replica died before recording anything: nothing reached the client.

    await replica(log, routing, providers)(request)

    assert simulator.calls("up-m") == 1
    assert isinstance(log.on(TOPICS.replies)[0], ChatCompleted)


async def test_an_unreadable_replies_topic_is_an_outage_not_a_rerun(
    simulator, routing, providers
) -> None:
    log = SharedLog()
    log.unreadable = True

    with pytest.raises(BusUnavailableError):  # the bus retries it once the log is back
        await replica(log, routing, providers)(chat_request(model="m"))

    assert simulator.calls("up-m") == 0


def test_the_index_forgets_outcomes_older_than_its_lookback() -> None:
    index = OutcomeIndex(lookback_s=0.0)
    request = chat_request(model="m")
    first = [StreamEvent(data={"choices": []})]
    marker = chunk_records(request.request_id, request.id, request.tenant, "run")(0, first)
    index.add(marker)
    index.add(marker.model_copy(update={"request_id": "other"}))

    assert index.get(request.request_id, request.tenant) is None


def test_the_index_keeps_its_memory_within_its_byte_budget_oldest_first() -> None:
    """Memory is bounded whatever the traffic: the oldest requests go first."""
    index = OutcomeIndex(lookback_s=600, max_bytes=20_000)
    first = [StreamEvent(data={"choices": [], "pad": "x" * 1_000})]
    ids = [f"req-{n}" for n in range(100)]
    for request_id in ids:
        request = chat_request(model="m").model_copy(update={"request_id": request_id})
        index.add(chunk_records(request_id, request.id, request.tenant, "run")(0, first))

    assert index.bytes <= 20_000
    assert 0 < len(index) < 100
    assert index.get(ids[0], request.tenant) is None  # the oldest went first
    newest = index.get(ids[-1], request.tenant)
    assert newest is not None and newest.stream_started is not None  # decoded on lookup
    assert newest.stream_started.request_id == ids[-1]


async def test_the_local_log_answers_a_retry_after_the_reply_was_written(
    simulator, routing, providers
):
    """A handler stopped after its reply was written (here while its usage event's
    publish hangs) is not done with its event: the in-memory bus hands it over again, and
    that attempt publishes the recorded outcome again instead of calling the upstream."""
    bus = InMemoryBus()
    outcomes = LocalOutcomeLog(lookback_s=600)
    hang_usage = True
    usage_waiting = asyncio.Event()

    async def publish(topic, event, *, key=None, partition=None, headers=None) -> None:
        if topic == TOPICS.usage and hang_usage:
            usage_waiting.set()
            await asyncio.Event().wait()
        await bus.publish(topic, event, key=key, partition=partition, headers=headers)

    def handler() -> ChatRequestHandler:
        # A handler of its own per attempt: nothing but the log remembers the first one.
        return ChatRequestHandler(
            publish=publish, topics=TOPICS, routing=routing, providers=providers, outcomes=outcomes
        )

    request = chat_request(model="m")
    running = asyncio.create_task(handler()(request))
    await asyncio.wait_for(usage_waiting.wait(), timeout=10)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    recorded = await outcomes.lookup(request)
    assert recorded is not None and recorded.answered
    hang_usage = False

    await handler()(request)

    assert simulator.calls("up-m") == 1
    assert len(outcomes.index) == 0  # handled now: forgotten


async def test_the_local_log_forgets_a_request_once_it_is_handled(simulator, routing, providers):
    """Nothing can ask the in-memory bus for a handled event again: its records go at
    once, so embedded mode's memory does not grow with traffic. A copy of the event
    delivered all the same is answered from what the handler published lately."""
    bus = InMemoryBus()
    outcomes = LocalOutcomeLog(lookback_s=600)
    handler = ChatRequestHandler(
        publish=bus.publish, topics=TOPICS, routing=routing, providers=providers, outcomes=outcomes
    )
    requests = [chat_request(model="m", stream=index % 2 == 0) for index in range(6)]
    for request in requests:
        await handler(request)

    assert len(outcomes.index) == 0 and outcomes.index.bytes == 0
    assert await outcomes.lookup(requests[0]) is None
    await handler(requests[0])
    assert simulator.calls("up-m") == len(requests)


async def test_the_local_log_ends_a_stream_retried_after_it_started_as_interrupted(
    simulator, routing, providers
):
    """The in-memory bus retries a failing handler: a stream whose client already holds
    part of it is not run a second time."""
    simulator.latency(200)
    bus = InMemoryBus()
    outcomes = LocalOutcomeLog(lookback_s=600)
    replies: list = []
    started = asyncio.Event()

    async def publish(topic, event, *, key=None, partition=None, headers=None) -> None:
        if topic == TOPICS.replies:
            replies.append(event)
            started.set()
        await bus.publish(topic, event, key=key, partition=partition, headers=headers)

    def handler() -> ChatRequestHandler:
        return ChatRequestHandler(
            publish=publish, topics=TOPICS, routing=routing, providers=providers, outcomes=outcomes
        )

    request = chat_request(model="m", text="one two three four five six", stream=True)
    running = asyncio.create_task(handler()(request))
    await asyncio.wait_for(started.wait(), timeout=10)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    calls = simulator.calls("up-m")

    await handler()(request)

    assert simulator.calls("up-m") == calls
    assert isinstance(replies[-1], ChatFailed)
    assert replies[-1].data.error.code == "stream_interrupted"


async def test_an_event_the_bus_knows_is_new_skips_the_outcomes_lookup(
    simulator, routing, providers
) -> None:
    """The read barrier costs a broker round trip; an event published after this replica
    owned its partition (`delivery_may_repeat` False) cannot be in the log."""
    from switchyard.common.bus import delivery_may_repeat

    log = SharedLog()
    log.unreadable = True  # a lookup would fail: the request runs only if none is made
    token = delivery_may_repeat.set(False)
    try:
        await replica(log, routing, providers)(chat_request(model="m"))
    finally:
        delivery_may_repeat.reset(token)
    assert simulator.calls("up-m") == 1
    assert isinstance(log.on(TOPICS.replies)[-1], ChatCompleted)


def _of_another_tenant(event, request):
    """`event` as a bad producer would copy it under `request`'s id for another tenant."""
    return event.model_copy(update={"tenant": "globex", "request_id": request.request_id})


async def _forge_under(log: SharedLog, request, routing, providers, *, stream: bool) -> None:
    """Write under `request`'s key what a run of another tenant's request left on its
    reply partition: a chunk (when `stream`) and a terminal record carrying its usage."""
    other = chat_request(model="m", text="one two", stream=stream).model_copy(
        update={"tenant": "globex"}
    )
    forged = SharedLog()
    await replica(forged, routing, providers)(other)
    for topic, event in forged.published:
        if topic != TOPICS.replies:
            continue
        copy = _of_another_tenant(event, request)
        usage = None
        if not isinstance(event, ChatChunk):
            usage = encode_event(_of_another_tenant(forged.on(TOPICS.usage)[0], request))
        log.index.add_record(request.request_id, copy.type.encode(), encode_event(copy), usage)


@pytest.mark.parametrize("stream", [False, True], ids=["reply", "chunk-and-reply"])
async def test_records_of_another_tenant_under_the_requests_key_do_not_answer_it(
    simulator, routing, providers, stream
) -> None:
    """A bad producer's records under a request's id, written before it is delivered
    again, are not its outcome (nor a sign its stream started): it runs, and its own
    reply and usage are published, never the forged ones."""
    log = SharedLog()
    request = chat_request(model="m")
    await _forge_under(log, request, routing, providers, stream=stream)
    log.published.clear()
    calls = simulator.calls("up-m")

    await replica(log, routing, providers)(request)

    assert simulator.calls("up-m") == calls + 1
    [reply], [usage] = log.on(TOPICS.replies), log.on(TOPICS.usage)
    assert isinstance(reply, ChatCompleted)
    for event in (reply, usage):
        assert (event.tenant, event.request_id) == (request.tenant, request.request_id)


async def test_a_forged_record_after_the_requests_own_does_not_hide_it(
    simulator, routing, providers
) -> None:
    log = SharedLog()
    request = chat_request(model="m")
    await replica(log, routing, providers)(request)
    own_reply = log.on(TOPICS.replies)[0]
    await _forge_under(log, request, routing, providers, stream=False)
    calls = simulator.calls("up-m")

    await replica(log, routing, providers)(request)

    assert simulator.calls("up-m") == calls  # answered from its own record
    assert log.on(TOPICS.replies)[-1] == own_reply


async def test_a_request_event_copying_anothers_id_is_not_answered_with_its_outcome(
    simulator, routing, providers
) -> None:
    """The replica that answered a request remembers its outcome by the request event's
    id: a request of another tenant under that id runs on its own."""
    log = SharedLog()
    handler = replica(log, routing, providers)
    request = chat_request(model="m")
    await handler(request)
    copy = chat_request(model="m").model_copy(update={"id": request.id, "tenant": "globex"})

    await handler(copy)

    assert simulator.calls("up-m") == 2
    reply = log.on(TOPICS.replies)[-1]
    assert (reply.tenant, reply.request_id) == ("globex", copy.request_id)


def _joined() -> float:
    return (
        REGISTRY.get_sample_value("switchyard_inference_redelivered_total", {"action": "joined"})
        or 0.0
    )


async def _streaming(simulator, routing, providers):
    """A replica streaming a request (200 ms upstream) whose first chunk is out: its log,
    handler, the request and the task running it."""
    simulator.latency(200)
    log = SharedLog()
    handler = replica(log, routing, providers)
    request = chat_request(model="m", text="one two three four five six", stream=True)
    first = asyncio.create_task(handler(request))
    await asyncio.wait_for(log.replied.wait(), timeout=10)  # the stream has started
    return log, handler, request, first


async def test_a_copy_delivered_while_this_replica_still_streams_it_joins_that_run(
    simulator, routing, providers
) -> None:
    """A rebalance revokes every partition of every member; a handler still running past
    the grace keeps running, and its partition may come straight back to this member,
    which then gets the request again. The copy waits for the run: the stream goes on and
    the request gets one outcome, not `stream_interrupted` besides the reply."""
    joined = _joined()
    log, handler, request, first = await _streaming(simulator, routing, providers)

    await asyncio.wait_for(asyncio.gather(first, handler(request)), timeout=30)

    assert simulator.calls("up-m") == 1
    terminals = [e for e in log.on(TOPICS.replies) if not isinstance(e, ChatChunk)]
    assert [type(e) for e in terminals] == [ChatCompleted]
    assert len(log.on(TOPICS.usage)) == 1
    assert _joined() == joined + 1


async def test_a_copy_whose_run_ends_without_an_outcome_is_answered_in_its_place(
    simulator, routing, providers
) -> None:
    """The run the copy waits for is cancelled (its member's partition went elsewhere,
    or the service stops) before its outcome is out: the copy does not take the run's
    end for an answer, and ends the started stream as `stream_interrupted` itself."""
    log, handler, request, first = await _streaming(simulator, routing, providers)
    copy = asyncio.create_task(handler(request))
    await asyncio.sleep(0.05)  # the copy is waiting for the run
    assert not copy.done()

    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(copy, timeout=10)

    assert simulator.calls("up-m") == 1
    terminals = [e for e in log.on(TOPICS.replies) if not isinstance(e, ChatChunk)]
    assert len(terminals) == 1 and isinstance(terminals[0], ChatFailed)
    assert terminals[0].data.error.code == "stream_interrupted"


async def test_another_tenants_request_under_a_running_events_id_does_not_join_it(
    simulator, routing, providers
) -> None:
    """A request event of another tenant copying the id of one still running here (a bad
    producer) runs on its own: it neither waits for that run nor takes its outcome."""
    joined = _joined()
    log, handler, request, first = await _streaming(simulator, routing, providers)
    forged = chat_request(model="m").model_copy(update={"id": request.id, "tenant": "globex"})

    await asyncio.wait_for(asyncio.gather(first, handler(forged)), timeout=30)

    assert simulator.calls("up-m") == 2
    assert _joined() == joined
    terminals = [e for e in log.on(TOPICS.replies) if not isinstance(e, ChatChunk)]
    assert sorted((e.tenant, e.request_id) for e in terminals) == sorted(
        [(request.tenant, request.request_id), ("globex", forged.request_id)]
    )
    assert all(isinstance(e, ChatCompleted) for e in terminals)
