"""Replies reach the request waiting for them only: a reply naming another tenant than
the request's (not inference's: a bad producer's) is not relayed. A client reading its
stream too slowly has it cut, with its API's error, instead of holding the stream in
memory."""

from __future__ import annotations

import asyncio

import pytest

from switchyard.common.errorformat import Vendor
from switchyard.common.events import (
    ChatChunk,
    ChatChunkData,
    ChatCompleted,
    ChatCompletedData,
    ChatFailed,
    ClientAPI,
    StreamEvent,
    TokenUsage,
)
from switchyard.gateway.replies import (
    ABSOLUTE_LIMIT_FACTOR,
    HARD_LIMIT_FACTOR,
    READER_STALL_S,
    PendingReplies,
    ReplyQueue,
)


def completed(request_id: str, tenant: str, text: str) -> ChatCompleted:
    return ChatCompleted(
        source="inference",
        tenant=tenant,
        request_id=request_id,
        data=ChatCompletedData(
            api=ClientAPI.OPENAI_CHAT_COMPLETIONS,
            response={"text": text},
            provider="openai",
            deployment="d",
            usage=TokenUsage(),
            latency_ms=1,
        ),
    )


async def test_a_reply_naming_another_tenant_is_not_relayed() -> None:
    pending = PendingReplies()
    queue = pending.open("r1", "acme")

    await pending.deliver(completed("r1", "globex", "forged"))
    await pending.deliver(completed("r1", "acme", "real"))

    assert queue.qsize() == 1
    assert queue.get_nowait().data.response == {"text": "real"}
    pending.close("r1")
    await pending.deliver(completed("r1", "acme", "late"))  # nobody waits: dropped
    assert queue.qsize() == 0


def chunk_of(request_id: str, sequence: int, events: int = 1) -> ChatChunk:
    return ChatChunk(
        source="inference",
        tenant="acme",
        request_id=request_id,
        data=ChatChunkData(
            sequence=sequence,
            run="run-1",
            events=[StreamEvent(data={"n": sequence, "i": i}) for i in range(events)],
        ),
    )


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def one_stream(vendor: Vendor = "openai") -> tuple[Clock, PendingReplies, list[str], ReplyQueue]:
    """A stream "r1" whose client may leave 16 events waiting, on a clock the test moves:
    the clock, the replies, the ids cut (as `on_overflow` reports them) and its queue."""
    clock = Clock()
    pending = PendingReplies(max_buffered_events=16, clock=clock)
    cut: list[str] = []
    queue = pending.open("r1", "acme", vendor, on_overflow=lambda: cut.append("r1"))
    return clock, pending, cut, queue


async def test_a_client_that_takes_nothing_has_its_stream_cut() -> None:
    clock, pending, cut, queue = one_stream("anthropic")

    for sequence in range(20):
        await pending.deliver(chunk_of("r1", sequence))
    # More than may wait, but the client took nothing for less than READER_STALL_S yet.
    assert queue.qsize() == 20 and queue.events == 20 and cut == []
    clock.now += READER_STALL_S
    await pending.deliver(chunk_of("r1", 20))

    assert cut == ["r1"]
    assert queue.qsize() == 1 and queue.events == 0
    failure = queue.get_nowait()
    assert isinstance(failure, ChatFailed)
    assert failure.source == "gateway"
    assert failure.data.error.status == 408
    assert failure.data.error.code == "client_too_slow"
    assert failure.data.error.type == "timeout_error"  # Anthropic's word for a 408
    # Nothing more is kept for it, nor is the cut told twice.
    assert not pending.waiting_for("r1")
    await pending.deliver(chunk_of("r1", 21))
    await pending.deliver(completed("r1", "acme", "late"))
    assert queue.qsize() == 0 and cut == ["r1"]


async def test_a_client_reading_more_slowly_than_the_stream_comes_is_cut_at_the_hard_limit() -> (
    None
):
    clock, pending, cut, queue = one_stream()
    sequence = 0
    while not cut:
        for _ in range(10):
            await pending.deliver(chunk_of("r1", sequence))
            sequence += 1
        clock.now += 1.0
        if not cut:
            queue.get_nowait()  # one taken a second: never stalled, always behind
    assert queue.events == 0
    assert 16 * HARD_LIMIT_FACTOR < sequence <= 16 * HARD_LIMIT_FACTOR + 20
    assert queue.get_nowait().data.error.code == "client_too_slow"


@pytest.mark.parametrize("first_token_s", [0.0, 30.0])
async def test_a_stream_faster_than_a_busy_relay_is_not_cut_while_it_is_relayed_steadily(
    first_token_s,
) -> None:
    """A stream that comes faster than the gateway relays it (a synthetic upstream, a busy
    replica): the reader takes far more than `max_buffered_events` per `READER_STALL_S`
    but falls behind all the same. Not a slow client: it passes the hard limit, and only
    the absolute bound on one stream's memory cuts it; so after a long first token too,
    which the reader spent waiting."""
    clock, pending, cut, queue = one_stream()
    reader = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    clock.now += first_token_s
    await pending.deliver(chunk_of("r1", 0))
    await reader
    sequence, most_waiting = 1, 0
    while not cut:
        for _ in range(40):  # 40 arrive every 10 ms, 30 are taken: 3,000 a second
            most_waiting = max(most_waiting, queue.events)
            await pending.deliver(chunk_of("r1", sequence))
            sequence += 1
        clock.now += 0.01
        for _ in range(30):
            if not cut:
                queue.get_nowait()
    assert most_waiting == 16 * ABSOLUTE_LIMIT_FACTOR > 16 * HARD_LIMIT_FACTOR
    assert queue.get_nowait().data.error.code == "client_too_slow"


async def test_events_are_counted_not_records() -> None:
    clock, pending, cut, queue = one_stream()
    await pending.deliver(chunk_of("r1", 0, events=10))
    clock.now += READER_STALL_S
    await pending.deliver(chunk_of("r1", 1, events=10))
    assert cut == ["r1"]
    assert queue.get_nowait().data.error.code == "client_too_slow"


async def test_a_client_that_keeps_up_is_never_cut_however_long_the_stream() -> None:
    clock, pending, cut, queue = one_stream()
    # A burst landing at once, far over the soft limit, is not a slow client.
    for sequence in range(40):
        await pending.deliver(chunk_of("r1", sequence))
    while not queue.empty():
        queue.get_nowait()
    for sequence in range(40, 2000):
        await pending.deliver(chunk_of("r1", sequence, events=3))
        if sequence % 4 == 0:
            clock.now += 1.0
            while not queue.empty():
                queue.get_nowait()
    assert cut == []
    assert queue.events == sum(len(queue.get_nowait().data.events) for _ in range(queue.qsize()))


async def test_a_burst_landing_while_the_reader_waits_is_never_cut() -> None:
    # One fetch hands its records over back to back, without letting the reader run:
    # after a long first token (a reasoning model), or more than the hard limit at once.
    clock, pending, cut, queue = one_stream()
    reader = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)  # the reader waits for the first record
    clock.now += 60.0
    for sequence in range(16 * HARD_LIMIT_FACTOR + 10):
        await pending.deliver(chunk_of("r1", sequence))

    assert cut == []
    assert (await reader).data.sequence == 0


async def test_the_stall_is_counted_from_when_records_began_to_wait() -> None:
    # An empty queue is no stall: a client idle through a long pause in the stream is
    # not cut when the stream resumes.
    clock, pending, cut, queue = one_stream()
    clock.now += 60.0
    for sequence in range(20):
        await pending.deliver(chunk_of("r1", sequence))
    assert cut == [] and queue.qsize() == 20
    clock.now += READER_STALL_S
    await pending.deliver(chunk_of("r1", 20))
    assert cut == ["r1"]


async def test_a_final_reply_never_cuts_a_stream() -> None:
    clock, pending, cut, queue = one_stream()
    for sequence in range(20):
        await pending.deliver(chunk_of("r1", sequence))
    clock.now += READER_STALL_S
    await pending.deliver(completed("r1", "acme", "done"))
    assert cut == [] and queue.qsize() == 21


async def test_fail_where_ends_the_matching_requests_but_none_whose_outcome_came() -> None:
    # A request of a revoked credential (`Gateway.end_revoked_requests`) gets its failure
    # after what it had; one whose completion is queued already is answered by it.
    pending = PendingReplies()
    ended: list[str] = []
    streaming = pending.open(
        "r1", "acme", caller="revoked", on_ended=lambda code: ended.append(("r1", code))
    )
    answered = pending.open(
        "r2", "acme", caller="revoked", on_ended=lambda code: ended.append(("r2", code))
    )
    other = pending.open(
        "r3", "acme", caller="other", on_ended=lambda code: ended.append(("r3", code))
    )
    await pending.deliver(chunk_of("r1", 0))
    await pending.deliver(chunk_of("r2", 0))
    await pending.deliver(completed("r2", "acme", "whole"))

    assert pending.fail_where(lambda caller: caller == "revoked", 403, "x_revoked", "gone") == 1

    assert ended == [("r1", "x_revoked")]
    assert isinstance(streaming.get_nowait(), ChatChunk)
    failure = streaming.get_nowait()
    assert isinstance(failure, ChatFailed) and failure.data.error.code == "x_revoked"
    assert failure.data.error.status == 403
    assert not pending.waiting_for("r1")  # later replies are dropped
    answered.get_nowait()
    assert isinstance(answered.get_nowait(), ChatCompleted)
    assert pending.waiting_for("r2") and pending.waiting_for("r3") and other.empty()
