"""Replies waiting for their requests: the gateway replica that published a request
listens to its own partition of the replies topic and hands each reply, or each stream
chunk, to the HTTP request waiting for it.

A stream's records wait in its queue until its client takes them. A client that reads
more slowly than the upstream writes (or not at all, holding its connection open) would
make that queue grow with the whole stream, a few KiB per stream event: so its stream is
cut once more than `max_buffered_events` stream events wait for it and what waits has
waited `READER_STALL_S` without it taking any, or once more than `HARD_LIMIT_FACTOR` times
that many wait while it takes fewer than `max_buffered_events` in `READER_STALL_S` (a
client that reads, but slowly), or once more than `ABSOLUTE_LIMIT_FACTOR` times that many
wait however fast it reads; only when a stream record arrives and its reader is not
waiting for one. A stream that comes faster than a busy gateway relays it (a reader
taking thousands a second, behind all the same) is not cut at the hard limit. A client
that keeps up is
never cut by a burst: records that land at once (one fetch after a pause, or a long first
token) land while its reader waits, and are taken as soon as it runs. What waits is
dropped, the stream ends with an error (408 `client_too_slow`, in its API's format) when
the client reads again, later records are not kept, and the request is treated as one
whose client left (`on_overflow`: inference is asked to stop it, by default). A slow
reader, like a slow upload, cannot hold the gateway's memory: the same reason Redis
closes a client past its output buffer limit.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import Callable
from typing import Any

import structlog
from prometheus_client import Counter

from switchyard.common.errorformat import Vendor, error_type
from switchyard.common.events import (
    ChatChunk,
    ChatCompleted,
    ChatFailed,
    ChatFailedData,
    ErrorInfo,
    Event,
    TerminalStatus,
)

Reply = ChatChunk | ChatCompleted | ChatFailed

log = structlog.get_logger("switchyard.gateway.replies")

# Stream events that may wait for one client before its stream is cut (the default of
# `SWITCHYARD_GATEWAY_STREAM_MAX_BUFFERED_EVENTS`): about ten seconds of a fast model's
# output, a few MiB (four times that, the hard limit, about 10 MiB).
DEFAULT_MAX_BUFFERED_EVENTS = 1024
# How long (s) a client with more than that waiting may take nothing before its stream is
# cut, and how many times that many may wait however it reads.
READER_STALL_S = 5.0
HARD_LIMIT_FACTOR = 4
# How many times `max_buffered_events` may wait for a client that reads steadily (at least
# `max_buffered_events` per `READER_STALL_S`) but falls behind all the same: the bound on
# one stream's memory whoever is slow, the client or the gateway's relay.
ABSOLUTE_LIMIT_FACTOR = 16

SLOW_CLIENT_STREAMS = Counter(
    "switchyard_gateway_slow_client_streams_total",
    "Streams cut because their client read too slowly: more stream events waited for it "
    "than SWITCHYARD_GATEWAY_STREAM_MAX_BUFFERED_EVENTS.",
)


def _events_in(reply: Reply) -> int:
    return len(reply.data.events) if isinstance(reply, ChatChunk) else 0


class ReplyQueue(asyncio.Queue[Reply]):
    """One request's reply events, in arrival order, counting the stream events they hold
    (`events`), noting since when what waits in it has waited without one being taken
    (`stalled_since`, `clock()` seconds: the later of the last take and the moment it
    stopped being empty), and whether its reader waits in `get` (`reader_waiting`: records
    landing then are a burst it will take as soon as the event loop lets it run, not a
    client that stopped reading)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.events = 0
        self.reader_waiting = False
        # Whether the request's outcome (a completion or a failure) is in it already.
        self.answered = False
        self._clock = clock
        self.stalled_since = clock()
        # Stream events taken since the queue opened, and the reader's pace: the window
        # it is judged over starts `READER_STALL_S` to twice that ago (`clock()` seconds,
        # events taken by then), its successor now or more recently.
        self.taken = 0
        self._pace_from = self._pace_next = (self.stalled_since, 0)

    async def get(self) -> Reply:
        """The next reply, waiting for one (asyncio.Queue's), noted in `reader_waiting`.
        A reader that had to wait (nothing was there) was waiting for the stream, not the
        other way round: its pace is judged from then on (`reads_at_least`), not over a
        long first token or a pause in the stream."""
        waited = self.empty()
        self.reader_waiting = True
        try:
            item = await super().get()
        finally:
            self.reader_waiting = False
        if waited:
            self._pace_from = self._pace_next = (self._clock(), self.taken)
        return item

    def _put(self, item: Reply) -> None:
        if not self.qsize():
            self.stalled_since = self._clock()  # nothing waited before it
        super()._put(item)
        self.events += _events_in(item)
        if not isinstance(item, ChatChunk):
            self.answered = True

    def _get(self) -> Reply:
        item = super()._get()
        events = _events_in(item)
        self.events -= events
        self.taken += events
        now = self.stalled_since = self._clock()
        if now - self._pace_next[0] >= READER_STALL_S:
            self._pace_from, self._pace_next = self._pace_next, (now, self.taken)
        return item

    def reads_at_least(self, events: int) -> bool:
        """Whether the reader has taken `events` stream events or more per
        `READER_STALL_S` lately: over the last one to two `READER_STALL_S`, or since it
        last had to wait for the stream when that is more recent."""
        since, taken_then = self._pace_from
        elapsed = self._clock() - since
        return (self.taken - taken_then) * READER_STALL_S >= events * elapsed


def gateway_failure(
    request_id: str, tenant: str, vendor: Vendor, status: int, code: str, message: str
) -> ChatFailed:
    """A `chat.failed` the gateway ends a request with itself (source `gateway`, never
    published), its error of HTTP `status`, `code` and `message` typed in `vendor`'s words."""
    return ChatFailed(
        source="gateway",
        tenant=tenant,
        request_id=request_id,
        data=ChatFailedData(
            status=TerminalStatus.FAILED,
            error=ErrorInfo(
                status=status, type=error_type(vendor, status), code=code, message=message
            ),
        ),
    )


def reply_partition(instance_id: str, partitions: int) -> int:
    """The replies partition this replica reads; stable for its instance id."""
    return zlib.crc32(instance_id.encode()) % max(1, partitions)


class PendingReplies:
    """The requests of this replica waiting for replies, by request id, each with a queue of its
    reply events (chunks, then a completed or failed event)."""

    def __init__(
        self,
        max_buffered_events: int = DEFAULT_MAX_BUFFERED_EVENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_buffered_events = max_buffered_events
        self._clock = clock
        self._waiting: dict[str, ReplyQueue] = {}
        self._tenants: dict[str, str] = {}
        self._vendors: dict[str, Vendor] = {}
        self._on_overflow: dict[str, Callable[[], None]] = {}
        # Who each request is for (what `open` was given as `caller`: the gateway's
        # `Dispatch`), and what to call when the request is ended for it (`fail_where`).
        self._callers: dict[str, Any] = {}
        self._on_ended: dict[str, Callable[[str], None]] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def open(
        self,
        request_id: str,
        tenant: str | None = None,
        vendor: Vendor = "openai",
        on_overflow: Callable[[], None] | None = None,
        caller: Any = None,
        on_ended: Callable[[str], None] | None = None,
    ) -> ReplyQueue:
        """Start collecting the replies of `request_id` (of `tenant`: a reply naming
        another tenant is not this request's, whatever wrote it; asked in the API of
        `vendor`); returns their queue. `on_overflow` is called once if the request's
        stream is cut because its client reads too slowly; `on_ended` once (with the
        failure's code) if it is ended for its `caller` (`fail_where`)."""
        queue = ReplyQueue(self._clock)
        self._waiting[request_id] = queue
        if tenant is not None:
            self._tenants[request_id] = tenant
        self._vendors[request_id] = vendor
        if on_overflow is not None:
            self._on_overflow[request_id] = on_overflow
        if caller is not None:
            self._callers[request_id] = caller
        if on_ended is not None:
            self._on_ended[request_id] = on_ended
        return queue

    def waiting_for(self, request_id: str) -> bool:
        """Whether a request of this replica waits for replies to `request_id` (the key
        of every reply event): the replies listener decodes only those."""
        return request_id in self._waiting

    def close(self, request_id: str) -> None:
        """Stop collecting the replies of `request_id` (later ones are dropped)."""
        self._waiting.pop(request_id, None)
        self._tenants.pop(request_id, None)
        self._vendors.pop(request_id, None)
        self._on_overflow.pop(request_id, None)
        self._callers.pop(request_id, None)
        self._on_ended.pop(request_id, None)

    def fail_all(self, status: int, code: str, message: str) -> int:
        """End every request still waiting as failed here, without its reply: each gets a
        `chat.failed` (source `gateway`, never published: inference still answers it and
        history records that) with an error of HTTP `status`, `code` and `message`, typed
        in its API's own words. Returns how many were waiting."""
        for request_id, queue in self._waiting.items():
            queue.put_nowait(self._failure(request_id, status, code, message))
        return len(self._waiting)

    def fail_where(
        self, matches: Callable[[Any], bool], status: int, code: str, message: str
    ) -> int:
        """End each request waiting whose caller (`open`'s `caller`) `matches` and whose
        outcome is not queued for it already: its client gets what was relayed to it so
        far, then a `chat.failed` (source `gateway`, as in `fail_all`) of HTTP `status`,
        `code` and `message`; later replies are dropped and its `on_ended` is called with
        `code` (to ask inference to stop). Returns how many it ended."""
        ended = [
            request_id
            for request_id, caller in self._callers.items()
            if request_id in self._waiting
            and not self._waiting[request_id].answered  # its outcome came first
            and matches(caller)
        ]
        for request_id in ended:
            self._waiting[request_id].put_nowait(self._failure(request_id, status, code, message))
            on_ended = self._on_ended.get(request_id)
            self.close(request_id)
            if on_ended is not None:
                on_ended(code)
        return len(ended)

    def _failure(self, request_id: str, status: int, code: str, message: str) -> ChatFailed:
        return gateway_failure(
            request_id,
            self._tenants.get(request_id, "unknown"),
            self._vendors.get(request_id, "openai"),
            status,
            code,
            message,
        )

    async def deliver(self, event: Event) -> None:
        """Bus listener: route a reply to its waiting request; ignore anything else
        (replies for other replicas sharing the partition, or for requests given up on)."""
        if isinstance(event, ChatChunk | ChatCompleted | ChatFailed):
            queue = self._waiting.get(event.request_id)
            if queue is None:
                return
            tenant = self._tenants.get(event.request_id)
            if tenant is not None and event.tenant != tenant:
                # Only inference answers, in the request's tenant: anything else on the
                # topic under this request's id (a bad producer's) is not relayed.
                log.warning(
                    "reply of another tenant dropped",
                    request_id=event.request_id,
                    event_type=event.type,
                )
                return
            queue.put_nowait(event)
            if (
                isinstance(event, ChatChunk)
                and queue.events > self.max_buffered_events
                and self._too_slow(queue)
            ):
                self._cut(event.request_id, queue)

    def _too_slow(self, queue: ReplyQueue) -> bool:
        """Whether the client of `queue`, which holds more than `max_buffered_events`,
        reads too slowly (the module's docstring): never while its reader waits for the
        next record, since what landed meanwhile is a burst it is about to take."""
        limit = self.max_buffered_events
        return (
            not queue.reader_waiting
            and queue.qsize() > 1
            and (
                queue.events > ABSOLUTE_LIMIT_FACTOR * limit
                or (queue.events > HARD_LIMIT_FACTOR * limit and not queue.reads_at_least(limit))
                or self._clock() - queue.stalled_since >= READER_STALL_S
            )
        )

    def _cut(self, request_id: str, queue: ReplyQueue) -> None:
        """End the stream of `request_id`, whose client leaves more than
        `max_buffered_events` waiting: drop what waits, queue the failure its client gets
        when it reads again, keep no later record, and call its `on_overflow`."""
        buffered = queue.events
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(
            self._failure(
                request_id,
                408,
                "client_too_slow",
                "The stream was ended because the client read it too slowly: more than "
                f"{self.max_buffered_events} stream events were waiting for it.",
            )
        )
        on_overflow = self._on_overflow.get(request_id)
        self.close(request_id)
        SLOW_CLIENT_STREAMS.inc()
        log.warning(
            "stream cut: its client reads too slowly",
            request_id=request_id,
            buffered_events=buffered,
        )
        if on_overflow is not None:
            on_overflow()
