"""Publishing the events of cache hits: gathered for a short while, then published together.

A hit is answered from the gateway's memory in about a millisecond; recording it takes
three events (`chat.requested` and `chat.completed` on the replies topic, `usage.recorded`
on the usage topic). Published one hit at a time, those events cost the gateway more CPU
than the answer itself, and at concurrency 1 that work runs between one answer and the
next. Gathered for `linger_s` (the setting `SWITCHYARD_GATEWAY_CACHE_HIT_EVENTS_LINGER_MS`)
and then handed to the bus in one go, the events of many hits share their produce
requests, and most answers are given while nothing is being published.

Order and retries are per hit, as when published alone: a hit's request event before its
reply (same key, same partition), its usage event alongside; each event is retried with
backoff while the bus does not take it (`HIT_EVENT_ATTEMPTS`; consumers deduplicate on
the event id, so a retry of an event the broker did take is harmless), and one given up
on is logged and counted in `switchyard_gateway_cache_hit_events_total`, never dropped
silently. `stop` publishes what is still gathering. A replica killed (not stopped) loses
the hits of the current window from history; the answers were given.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog
from prometheus_client import Counter

from switchyard.common.backoff import Backoff
from switchyard.common.bus import BusUnavailableError, EventRejectedError
from switchyard.common.events import EnvelopeFields

log = structlog.get_logger(__name__)

HIT_EVENTS = Counter(
    "switchyard_gateway_cache_hit_events_total",
    "Events of cache hits (request, reply, usage), published after the answer, by outcome "
    "(published; retried: the bus did not take it, tried again; failed: given up on).",
    ["outcome"],
)
# How often, and how patiently, a hit's event is offered to the bus before it is given up.
HIT_EVENT_ATTEMPTS = 6
HIT_EVENT_BACKOFF = Backoff(initial_s=0.5, max_s=10.0)
# This many hits gathering are published at once, whatever the linger.
MAX_GATHERING = 500
# How long a stop waits for the last hits' events to be taken by the bus.
STOP_TIMEOUT_S = 10.0

# publish(topic, event, key): the bus's publish; raises BusUnavailableError.
Publish = Callable[[str, EnvelopeFields, str], Awaitable[None]]


@dataclass(frozen=True)
class HitRecord:
    """The events of one hit: `requested` and `completed` as (replies topic, event), `usage`
    as (usage topic, event); all keyed by `request_id`."""

    request_id: str
    requested: tuple[str, EnvelopeFields]
    completed: tuple[str, EnvelopeFields]
    usage: tuple[str, EnvelopeFields]


class HitEvents:
    """Gathers hits' events for `linger_s` seconds (0: publishes each hit at once), then
    publishes them all through `publish`."""

    def __init__(self, publish: Publish, linger_s: float) -> None:
        self._publish = publish
        self._linger_s = linger_s
        self._gathering: list[HitRecord] = []
        self._timer: asyncio.TimerHandle | None = None
        self._publishing: set[asyncio.Task[None]] = set()

    def add(self, hit: HitRecord) -> None:
        """Queue `hit`'s events; they are published within `linger_s` seconds."""
        self._gathering.append(hit)
        if self._linger_s <= 0 or len(self._gathering) >= MAX_GATHERING:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._linger_s, self.flush)

    def flush(self) -> None:
        """Start publishing every hit gathered so far (returns at once)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        hits, self._gathering = self._gathering, []
        if not hits:
            return
        task = asyncio.ensure_future(self._publish_all(hits))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def stop(self) -> None:
        """Publish what is gathering and wait (at most `STOP_TIMEOUT_S`) for every hit's
        events to be taken or given up on."""
        self.flush()
        if self._publishing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await asyncio.gather(*self._publishing, return_exceptions=True)

    async def _publish_all(self, hits: list[HitRecord]) -> None:
        # Every hit starts in this same turn of the loop: the producer sends their first
        # events in shared produce requests.
        await asyncio.gather(*(self._publish_hit(hit) for hit in hits))

    async def _publish_hit(self, hit: HitRecord) -> None:
        async def in_order() -> None:
            # The request before its reply (the same partition keeps them in this order).
            if await self._publish_one(*hit.requested, hit.request_id):
                await self._publish_one(*hit.completed, hit.request_id)
            else:
                HIT_EVENTS.labels("failed").inc()  # the reply is not published without it

        # Both at once: the usage event shares the produce request of the first.
        await asyncio.gather(in_order(), self._publish_one(*hit.usage, hit.request_id))

    async def _publish_one(self, topic: str, event: EnvelopeFields, key: str) -> bool:
        """Publish one event, retried with backoff while the bus does not take it. Returns
        whether it was published; every outcome is counted and a failure is logged with
        the request id."""
        error: BusUnavailableError | None = None
        for attempt in range(1, HIT_EVENT_ATTEMPTS + 1):
            try:
                await self._publish(topic, event, key)
            except EventRejectedError as exc:  # too large or unserialisable: final
                error = exc
                break
            except BusUnavailableError as exc:
                error = exc
                if attempt < HIT_EVENT_ATTEMPTS:
                    HIT_EVENTS.labels("retried").inc()
                    await asyncio.sleep(HIT_EVENT_BACKOFF.delay(attempt))
                continue
            HIT_EVENTS.labels("published").inc()
            return True
        HIT_EVENTS.labels("failed").inc()
        log.error(
            "could not record a cache hit",
            error=str(error),
            type=event.type,
            request_id=event.request_id,
        )
        return False
