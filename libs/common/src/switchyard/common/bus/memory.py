"""In-process event bus for embedded mode and unit tests.

Same semantics as the Kafka bus where handlers can tell: consumer groups share work,
listeners see everything published after they started, a failing handler is retried and
then dead-lettered (only failures while its dependencies work count, and a failing batch
is split to isolate the event that fails alone), and `consumer_lag` counts what a group
has not finished (an event is "committed" once its handler is done with it).

Stopping is what the Kafka bus does at a clean shutdown: a consumer group member stops
taking events, lets the handlers in progress finish (up to `HANDLER_DRAIN_S`, the Kafka
consumer's `revoke_grace_s`) and only then cancels what still runs, so that a SIGTERM in
embedded mode does not cut a provider call short for it to run again after the restart;
a batch group writes what it holds (`STOP_DRAIN_S`); a listener stops at once.

Events travel as the bytes Kafka would carry: `publish` serialises each event with the bus
codec (`serialise`, refusing what Kafka's publish refuses with EventRejectedError) and
every consumer group and listener decodes its own copy with `decode_event`, as a Kafka
consumer does; an event that does not decode is dead-lettered. So every unit test and
embedded deployment exercises the wire format. Nothing is durable, which is what embedded
mode promises and no more.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, defaultdict, deque
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from opentelemetry import context as otel_context
from typing_extensions import override

from switchyard.common import tracing
from switchyard.common.bus import metrics
from switchyard.common.bus.base import (
    BatchHandler,
    BusUnavailableError,
    Carried,
    EventBus,
    Handler,
    HealthCheck,
    KeyFilter,
    Offsets,
    RetryPolicy,
    Subscription,
    call_with_retry,
    handle_batch_isolating,
    serialise,
)
from switchyard.common.bus.spill import SpillingQueue
from switchyard.common.events import (
    EnvelopeFields,
    Event,
    EventDecodeError,
    decode_event_off_loop,
)
from switchyard.common.tasks import cancel_and_wait

log = structlog.get_logger("switchyard.bus.memory")

# Longest a stopping batch subscription spends handling the events it already holds.
STOP_DRAIN_S = 2.0
# Longest a stopping consumer group member (`subscribe`) waits for the handlers in
# progress before cancelling them: the Kafka consumer's grace (`_GroupSubscription.
# revoke_grace_s` in `kafka.py`, not imported here: Kafka is imported only when used),
# "event handlers in progress get 10 s" (docs/operations.md, "Graceful shutdown").
HANDLER_DRAIN_S = 10.0
# After this long (s) a stopping member still waiting for its handlers says so.
DRAIN_QUIET_S = 0.5
# Dead letters an in-memory bus keeps (the oldest go first); Kafka's are on their topic.
MAX_DEAD_LETTERS = 1000
# Events of a batch group's backlog kept in memory when the bus has a `spill_dir`: a few
# batches' worth (history takes 500 at a time), so the store never waits on the file.
SPILL_AFTER = 2000

# The publisher's W3C trace context in one string: `traceparent`, and after a newline
# `tracestate` when there is one; None while tracing is off or there is none.
Carrier = str | None
# What a listener is handed: the event's bytes, the trace carrier, the record key and the
# record headers (what `Carried` reads; only listeners see them).
# Headers as a tuple of pairs rather than the publisher's dict: tuples of strings and
# bytes leave the garbage collector's tracking, as `_carrier` explains.
_Delivery = tuple[bytes, Carrier, str | None, tuple[tuple[str, bytes], ...]]


def _carrier() -> Carrier:
    """The current trace context, in a form the garbage collector does not track.

    Queued events can pile up by the ten thousand while a slow group (history on
    SQLite) catches up after a burst. CPython never stops tracking a tuple that holds a
    dict (or, until a later collection, one that holds a tuple), so every queued event
    would be one more object each full collection walks, and one more promotion that
    brings the next full collection sooner: the 15 to 25 ms pauses that landed on
    requests right after a burst. A tuple of strings and bytes is untracked at its first
    collection. Like the Kafka bus's record headers, only W3C's two headers travel.
    """
    carrier = tracing.current_trace_carrier()
    traceparent = carrier.get("traceparent")
    if not traceparent:
        return None
    tracestate = carrier.get("tracestate")
    return f"{traceparent}\n{tracestate}" if tracestate else traceparent


def _context(carrier: Carrier) -> otel_context.Context | None:
    """The trace context `_carrier` put in a string, or None."""
    if not carrier:
        return None
    traceparent, _, tracestate = carrier.partition("\n")
    headers = {"traceparent": traceparent}
    if tracestate:
        headers["tracestate"] = tracestate
    return tracing.context_from_carrier(headers)


@dataclass
class DeadLetter:
    """An event no handler could take: its topic, the event (None when its bytes did not
    decode), why (the last error's repr) and the bytes as they travelled."""

    topic: str
    event: EnvelopeFields | None
    error: str
    raw: bytes = b""


@dataclass
class _Group:
    # (topic, the serialised event, trace context of the publisher): only strings, bytes
    # and tuples, see `_carrier`.
    queue: asyncio.Queue[tuple[str, bytes, Carrier]] | SpillingQueue = field(
        default_factory=asyncio.Queue
    )
    members: int = 0
    # Per topic: events published before the group joined, and events it finished handling
    # since (its "committed offset" is their sum).
    joined_at: Counter[str] = field(default_factory=Counter)
    handled: Counter[str] = field(default_factory=Counter)
    # Per topic: events passed over unread (`subscribe_batch`'s `skip_types`), part of
    # the committed offset but neither queued nor handled.
    skipped: Counter[str] = field(default_factory=Counter)
    skip_types: frozenset[str] = frozenset()
    # Events put in the queue since the group joined: see `settled`.
    enqueued: int = 0
    progress: asyncio.Event = field(default_factory=asyncio.Event)
    # A running batch group (`subscribe_batch`): publishing to an admission topic waits
    # while its queue is full; `room` is set when its worker takes events, or stops.
    batch: bool = False
    room: asyncio.Event = field(default_factory=asyncio.Event)

    def mark_handled(self, topics: Sequence[str]) -> None:
        for topic in topics:
            self.handled[topic] += 1
        # Wakes every waiter of `settled`; each looks again whether its target is reached.
        self.progress.set()
        self.progress = asyncio.Event()

    def handled_total(self) -> int:
        return sum(self.handled.values())


async def _first(*events: asyncio.Event) -> None:
    """Return once any of `events` is set."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


async def _wait_unless(
    tasks: Collection[asyncio.Task[None]], timeout_s: float, cut_short: asyncio.Event
) -> None:
    """Wait up to `timeout_s` seconds for every one of `tasks` to end; no longer once
    `cut_short` is set (not at all if it is already)."""
    if not tasks or cut_short.is_set():
        return
    ended = asyncio.ensure_future(asyncio.wait(tasks))
    cut = asyncio.ensure_future(cut_short.wait())
    try:
        await asyncio.wait([ended, cut], timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        ended.cancel()  # only the wait: the tasks run on
        cut.cancel()


class _TaskSubscription(Subscription):
    def __init__(
        self,
        tasks: list[asyncio.Task[None]],
        on_stop: Callable[[], None] | None = None,
        drain: Callable[[], Awaitable[None]] | None = None,
        hurry: Callable[[], None] | None = None,
    ) -> None:
        self._tasks = tasks
        self._on_stop = on_stop
        self._drain = drain
        self._hurry = hurry
        self._stopped = False

    def healthy(self) -> bool:
        return not self._stopped and not any(task.done() for task in self._tasks)

    def hurry(self) -> None:
        if self._hurry is not None:
            self._hurry()

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._drain is not None:
            try:
                await self._drain()
            except asyncio.CancelledError:
                for task in self._tasks:  # the stop itself is cancelled: nothing runs on
                    task.cancel()
                raise
        # What the drain did not see end (a handler past its grace) is cancelled.
        for task in self._tasks:
            await cancel_and_wait(task)
        if self._on_stop:
            self._on_stop()


class InMemoryBus(EventBus):
    """The event bus of embedded mode and unit tests: the `EventBus` contract (consumer
    groups, batches, listeners, retries, dead letters) inside one process, with no broker.

    `partitions` maps a topic to its partition count (default 1); `batch_linger_s` is how
    long (seconds) `subscribe_batch` waits for a batch to fill when not told otherwise.
    A stopping `subscribe` member waits up to `handler_drain_s` seconds for its handlers in
    progress (the Kafka consumer's grace); once `cut_short` is set (embedded mode's second
    Ctrl+C), a stopping subscription waits for nothing: what still runs is cancelled.
    Events pass through the same serialisation as on Kafka; the latest `MAX_DEAD_LETTERS`
    dead-lettered events are kept in `dead_letters` (each is also logged), and `published`
    counts events per topic.

    Memory is the buffer here, but for a batch group's backlog with `spill_dir`: beyond
    `spill_after` events it goes to a temporary file there (`SpillingQueue`; embedded mode
    gives its state directory), in order, as lasting as memory and a kilobyte an event
    lighter on it. New work is held back when a store falls behind:
    publishing to one of `admission_topics` (where requests enter) waits while a batch
    group reading it (a store such as history) holds `max_pending` events or more it has
    not taken yet, and raises BusUnavailableError after `publish_wait_s` seconds, as the
    Kafka bus does when the broker does not take an event (the gateway then refuses the
    request with 503); `wait_for_room(topic)` waits the same way for work entering
    without a request topic (a response cache hit). Every other publish is never held
    back, so what follows an accepted request (its replies, chunks and usage) always flows;
    the store's backlog is then bounded by `max_pending` plus what the work already
    accepted produces."""

    def __init__(
        self,
        partitions: dict[str, int] | None = None,
        batch_linger_s: float = 0.02,
        admission_topics: Collection[str] = (),
        max_pending: int = 50_000,
        publish_wait_s: float = 5.0,
        handler_drain_s: float = HANDLER_DRAIN_S,
        cut_short: asyncio.Event | None = None,
        spill_dir: str | Path | None = None,
        spill_after: int = SPILL_AFTER,
    ) -> None:
        self._partitions = partitions or {}
        self._spill_dir = spill_dir
        self._spill_after = spill_after
        self.handler_drain_s = handler_drain_s
        self._cut_short = cut_short if cut_short is not None else asyncio.Event()
        self.batch_linger_s = batch_linger_s
        self.admission_topics = frozenset(admission_topics)
        self.max_pending = max_pending
        self.publish_wait_s = publish_wait_s
        self._groups: dict[str, _Group] = {}
        self._topic_groups: dict[str, set[str]] = defaultdict(set)
        # topic -> (queue of (event bytes, trace carrier, key, record headers), partitions
        # listened to)
        self._listeners: dict[
            str,
            list[tuple[asyncio.Queue[_Delivery], frozenset[int] | None]],
        ] = defaultdict(list)
        self._subscriptions: list[Subscription] = []
        # Bounded: a process that dead-letters event after event (a store refusing every
        # write) must not grow without end, nor give the collector ever more to walk.
        self.dead_letters: deque[DeadLetter] = deque(maxlen=MAX_DEAD_LETTERS)
        self.published: dict[str, int] = defaultdict(int)

    @override
    async def start(self) -> None:
        return None

    @override
    async def stop(self) -> None:
        for subscription in list(self._subscriptions):
            await subscription.stop()
        self._subscriptions.clear()
        for state in self._groups.values():
            if isinstance(state.queue, SpillingQueue):
                state.queue.close()

    @override
    async def publish(
        self,
        topic: str,
        event: EnvelopeFields,
        *,
        key: str | None = None,
        partition: int | None = None,
        headers: Mapping[str, bytes] | None = None,
    ) -> None:
        raw = serialise(event)
        if topic in self.admission_topics:
            await self._room_in_batch_groups(topic)
        self.published[topic] += 1
        carrier = _carrier()
        for group in self._topic_groups.get(topic, ()):
            state = self._groups[group]
            if event.type in state.skip_types:
                state.skipped[topic] += 1
                metrics.EVENTS_SKIPPED.labels(topic, "unread_type").inc()
                continue
            state.enqueued += 1
            state.queue.put_nowait((topic, raw, carrier))
        record_headers = tuple(headers.items()) if headers else ()
        for queue, wanted in self._listeners.get(topic, ()):
            if wanted is None or partition is None or partition in wanted:
                # Kafka's record key: the request id unless the publisher names another.
                queue.put_nowait((raw, carrier, key or event.request_id, record_headers))

    @override
    async def wait_for_room(self, topic: str) -> None:
        await self._room_in_batch_groups(topic)

    def _behind(self, topic: str) -> str | None:
        """A running batch group reading `topic` that holds `max_pending` events or more."""
        for group in self._topic_groups.get(topic, ()):
            state = self._groups[group]
            if state.batch and state.queue.qsize() >= self.max_pending:
                return group
        return None

    async def _room_in_batch_groups(self, topic: str) -> None:
        """Wait until no batch group reading `topic` holds `max_pending` events or more;
        BusUnavailableError after `publish_wait_s` seconds in all."""
        group = self._behind(topic)
        if group is None:
            return  # the usual case, without setting up a timeout
        try:
            async with asyncio.timeout(self.publish_wait_s):
                while (group := self._behind(topic)) is not None:
                    room = self._groups[group].room
                    room.clear()
                    await room.wait()
        except TimeoutError:
            raise BusUnavailableError(
                f"consumer group {group} is {self.max_pending} events or more behind"
            ) from None

    @override
    async def partition_count(self, topic: str) -> int:
        return self._partitions.get(topic, 1)

    @override
    async def end_offsets(self, topics: Sequence[str]) -> Offsets:
        return {(topic, 0): self.published[topic] for topic in topics}

    @override
    async def consumer_lag(
        self, group: str, topics: Sequence[str], *, until: Offsets | None = None
    ) -> int:
        ends = until if until is not None else await self.end_offsets(topics)
        state = self._groups.get(group)
        lag = 0
        for topic in topics:
            position = (
                0
                if state is None
                else state.joined_at[topic] + state.handled[topic] + state.skipped[topic]
            )
            lag += max(0, ends.get((topic, 0), 0) - position)
        return lag

    async def healthy(self) -> bool:
        """True while every subscription of this bus is running."""
        return all(subscription.healthy() for subscription in self._subscriptions)

    async def settled(self, group: str, timeout: float) -> bool:
        """Wait until consumer group `group` has handled every event delivered to it so far;
        False if that takes longer than `timeout` seconds (True at once for an unknown group)."""
        state = self._groups.get(group)
        if state is None:
            return True
        target = state.enqueued
        try:
            async with asyncio.timeout(timeout):
                while state.handled_total() < target:
                    await state.progress.wait()
        except TimeoutError:
            return False
        return True

    def _join(self, topics: Sequence[str], group: str) -> _Group:
        state = self._groups.get(group)
        if state is None:
            state = self._groups[group] = _Group()
            for topic in topics:
                state.joined_at[topic] = self.published[topic]
        state.members += 1
        for topic in topics:
            self._topic_groups[topic].add(group)
        return state

    def _dead_letter(
        self, topic: str, event: EnvelopeFields | None, error: BaseException, raw: bytes = b""
    ) -> None:
        log.error(
            "event dead-lettered",
            topic=topic,
            event_id=event.id if event else None,
            event_type=event.type if event else None,
            request_id=event.request_id if event else None,
            error=repr(error),
        )
        self.dead_letters.append(DeadLetter(topic, event, repr(error), raw))

    async def _decode(self, topic: str, raw: bytes) -> Event | None:
        """The event in `raw`, or None after dead-lettering bytes that do not decode (as
        the Kafka consumer does with an undecodable record)."""
        try:
            return await decode_event_off_loop(raw)
        except EventDecodeError as exc:
            self._dead_letter(topic, None, exc, raw)
            return None

    @override
    async def subscribe(
        self,
        topics: Sequence[str],
        group: str,
        handler: Handler,
        *,
        concurrency: int = 1,
        retry: RetryPolicy = RetryPolicy(),
        healthy: HealthCheck | None = None,
    ) -> Subscription:
        state = self._join(topics, group)
        # Set by `stop`: no worker takes another event.
        stopping = False
        # The workers handling an event now (the others wait for one).
        handling: set[asyncio.Task[None]] = set()

        async def handle(delivery: tuple[str, bytes, Carrier], by: asyncio.Task[None]) -> None:
            # Marked before the first suspension: a worker is either waiting for an event
            # or in `handling`, never in between.
            handling.add(by)
            topic, raw, carrier = delivery
            try:
                event = await self._decode(topic, raw)
                if event is None:
                    return
                with tracing.process_span(topic, group, event, _context(carrier)):
                    error = await call_with_retry(
                        lambda: handler(event),
                        retry,
                        lambda attempt, exc: log.warning(
                            "handler failed, retrying",
                            topic=topic,
                            event_id=event.id,
                            attempt=attempt,
                            error=repr(exc),
                        ),
                        healthy,
                    )
                if error is not None:
                    self._dead_letter(topic, event, error)
            finally:
                handling.discard(by)
                state.mark_handled([topic])

        async def worker() -> None:
            me = asyncio.current_task()
            assert me is not None
            # Each delivery in its own frame: what it held (the raw bytes, the event) is
            # let go once handled, not kept while the worker waits for the next one.
            while not stopping:
                await handle(await state.queue.get(), me)

        workers = [asyncio.create_task(worker()) for _ in range(max(1, concurrency))]

        async def drain() -> None:
            # As the Kafka consumer stops: no new event is taken (a worker waiting for one
            # ends now; the event it was just woken for stays queued), and those being
            # handled get `handler_drain_s` to finish; `stop` cancels what still runs.
            nonlocal stopping
            stopping = True
            for task in workers:
                if task not in handling:
                    task.cancel()
            busy = set(handling)
            quiet_s = min(self.handler_drain_s, DRAIN_QUIET_S)
            await _wait_unless(busy, quiet_s, self._cut_short)
            busy = {task for task in busy if not task.done()}
            if busy and not self._cut_short.is_set() and self.handler_drain_s > quiet_s:
                # A shutdown that seems to hang says why.
                log.warning(
                    "waiting for the event handlers in progress to finish; Ctrl+C again ends them",
                    group=group,
                    handlers=len(busy),
                    up_to_s=self.handler_drain_s,
                )
                await _wait_unless(busy, self.handler_drain_s - quiet_s, self._cut_short)
                busy = {task for task in busy if not task.done()}
            if busy:
                log.warning(
                    "event handlers still running at stop cancelled; their events may be "
                    "handled again",
                    group=group,
                    handlers=len(busy),
                )

        subscription = _TaskSubscription(workers, drain=drain)
        self._subscriptions.append(subscription)
        return subscription

    @override
    async def subscribe_batch(
        self,
        topics: Sequence[str],
        group: str,
        handler: BatchHandler,
        *,
        max_batch: int = 500,
        max_batch_wait_ms: int | None = None,
        retry: RetryPolicy = RetryPolicy(),
        healthy: HealthCheck | None = None,
        skip_types: Collection[str] = (),
    ) -> Subscription:
        state = self._join(topics, group)
        if self._spill_dir is not None and state.queue.empty():
            state.queue = SpillingQueue(self._spill_after, self._spill_dir)
        state.batch = True
        state.skip_types = frozenset(skip_types)
        linger_s = self.batch_linger_s if max_batch_wait_ms is None else max_batch_wait_ms / 1000
        # Set by `stop`: the batch being gathered is handled at once, not dropped.
        stopping = asyncio.Event()
        # Set by `hurry`: the batch being gathered is handled at once, and none lingers
        # until `hurried_until` (loop time): a request's events come moments apart.
        hurried = asyncio.Event()
        hurried_until = 0.0
        busy = False

        def hurry() -> None:
            nonlocal hurried_until
            hurried_until = asyncio.get_running_loop().time() + linger_s
            hurried.set()

        async def dead_letter(item: tuple[str, Event, Carrier], error: BaseException) -> None:
            self._dead_letter(item[0], item[1], error)

        async def handle(first: tuple[str, bytes, Carrier]) -> None:
            nonlocal busy
            items = [first]
            busy = True
            try:
                # Let a batch gather for a moment: one transaction for many events is
                # what keeps a store (history on SQLite) from costing a commit per event.
                # Not when a full batch is waiting already (as Kafka's fetch returns at
                # once): lingering then would cap the group at `max_batch` events per
                # linger, and a busier producer would pile events up in memory.
                lingering = asyncio.get_running_loop().time() >= hurried_until
                if state.queue.qsize() < max_batch - 1 and lingering:
                    hurried.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(linger_s):
                            await _first(stopping, hurried)
                while len(items) < max_batch and not state.queue.empty():
                    items.append(state.queue.get_nowait())
                state.room.set()  # publishers held back look again
                decoded = [
                    (topic, event, carrier)
                    for topic, raw, carrier in items
                    if (event := await self._decode(topic, raw)) is not None
                ]
                if not decoded:
                    return
                await handle_batch_isolating(
                    decoded,
                    lambda chunk: handler([event for _, event, _ in chunk]),
                    retry,
                    healthy=healthy,
                    dead_letter=dead_letter,
                    on_retry=lambda tries, size, exc: log.warning(
                        "batch handler failed, retrying",
                        size=size,
                        attempt=tries,
                        error=repr(exc),
                    ),
                )
            finally:
                busy = False
                state.mark_handled([topic for topic, _, _ in items])

        async def worker() -> None:
            # Each batch in its own frame: its events are let go once handled, not kept
            # while the worker waits for the next one.
            while True:
                await handle(await state.queue.get())

        async def drain() -> None:
            # Stopping while a batch waits for more events writes what it holds (and what
            # is queued behind it) instead of dropping it; bounded, as a shutdown must be.
            stopping.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STOP_DRAIN_S):
                    while (busy or not state.queue.empty()) and not self._cut_short.is_set():
                        await _first(state.progress, self._cut_short)

        def stopped() -> None:
            # A stopped store holds nobody back any more.
            state.batch = False
            state.room.set()

        subscription = _TaskSubscription(
            [asyncio.create_task(worker())], on_stop=stopped, drain=drain, hurry=hurry
        )
        self._subscriptions.append(subscription)
        return subscription

    @override
    async def listen(
        self,
        topic: str,
        handler: Handler,
        *,
        partitions: Sequence[int] | None = None,
        key_filter: KeyFilter | None = None,
        carried: Carried | None = None,
        max_delay_ms: int | None = None,
    ) -> Subscription:
        # This bus hands every event over at once (`max_delay_ms` needs no batching).
        queue: asyncio.Queue[_Delivery] = asyncio.Queue()
        entry = (queue, frozenset(partitions) if partitions is not None else None)
        self._listeners[topic].append(entry)

        async def handle(delivery: _Delivery) -> None:
            raw, carrier, key, headers = delivery
            if key_filter is not None and key is not None and not key_filter(key):
                return  # as on Kafka: asked when read, skipped without decoding
            value = next((v for k, v in headers if carried and k == carried.header), None)
            if carried is not None and value is not None:
                # As on Kafka: the carried event first (a reply's usage settles the
                # request's reservation before the reply reaches its client).
                await carried.hand_over(value, key, topic)
            event = await self._decode(topic, raw)
            if event is None:
                return
            try:
                with tracing.process_span(topic, None, event, _context(carrier)):
                    await handler(event)
            except Exception as exc:  # noqa: BLE001 - a listener error must not stop the listener
                log.error("listener failed", topic=topic, event_id=event.id, error=repr(exc))

        async def worker() -> None:
            # One worker per listener keeps events in publication order (stream chunks);
            # each in its own frame, let go once handled.
            while True:
                await handle(await queue.get())

        subscription = _TaskSubscription(
            [asyncio.create_task(worker())], on_stop=lambda: self._listeners[topic].remove(entry)
        )
        self._subscriptions.append(subscription)
        return subscription
