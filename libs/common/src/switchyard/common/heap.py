"""Python's cyclic garbage collector in a long-running server.

A service holds a few hundred thousand objects made at start-up and never freed (modules,
pydantic and SQLAlchemy schemas, the SDKs' types, routing and price tables). CPython's
full collection walks every object it tracks, so once those count, each full collection
(every several seconds under load) held the event loop for hundreds of milliseconds: at
concurrency 1 in embedded mode, one request in a few hundred waited 300 to 450 ms.
`gc.freeze()` moves the objects alive at the end of start-up into a permanent generation
that collections skip (https://docs.python.org/3/library/gc.html#gc.freeze); what is made
later, the per-request garbage, is collected as before. Frozen objects are still freed
when their reference count drops to zero; a reference cycle among them is not, so what
start-up made and a later change replaces (the routing table before its first reload, a
pooled connection made at start-up) can stay in memory: one copy each, not a growth.

A server also collects its youngest generation every `GEN0_THRESHOLD` allocations rather
than CPython's 700 (`gc.set_threshold`). A full collection comes after ten collections of
the middle generation, so at 700 a request or reply of a million values (a prompt of
300,000 messages, a reply with logprobs for every token), parsed in a worker thread or
not, set off several full collections while it was being built, each holding the GIL and
so the event loop for 100 to 300 ms and more with what else the process held: 21 MB of
logprobs took 1.2 to 2 s to read with four such pauses, 0.4 to 0.9 s with none at
50,000. The youngest generation then holds up to that many objects before they are
looked at, a few MB of cyclic garbage at most.
"""

from __future__ import annotations

import gc
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

import structlog

from switchyard.common.http import warm_routes

log = structlog.get_logger("switchyard.heap")

AppT = TypeVar("AppT")


# Servers in this process that froze the heap and have not stopped (several apps can share
# one process: tests, embedded mode); the heap is unfrozen when the last one stops.
_holders = 0
# Allocations between collections of the youngest generation while a server runs.
GEN0_THRESHOLD = 50_000
# The thresholds before the first server froze the heap, restored when the last stops.
_thresholds: tuple[int, int, int] | None = None


def freeze_startup_heap() -> int:
    """Collect garbage, then freeze every object alive now (`gc.freeze()`), and collect
    the youngest generation every `GEN0_THRESHOLD` allocations; returns how many objects
    the permanent generation holds. Takes one full collection's time (tens
    to hundreds of ms): call it once a server has started, before it serves, and
    `release_startup_heap()` when it stops."""
    global _holders, _thresholds
    _holders += 1
    if _thresholds is None:
        _thresholds = gc.get_threshold()
        gc.set_threshold(GEN0_THRESHOLD, _thresholds[1], _thresholds[2])
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info(
        "start-up objects frozen",
        objects=frozen,
        ms=round((time.perf_counter() - started) * 1000, 1),
    )
    return frozen


def release_startup_heap() -> None:
    """A server that froze the heap stops: the last one to stop unfreezes it
    (`gc.unfreeze()`), so that its objects can be collected again, and restores the
    collector's thresholds."""
    global _holders, _thresholds
    _holders = max(0, _holders - 1)
    if _holders == 0:
        gc.unfreeze()
        if _thresholds is not None:
            gc.set_threshold(*_thresholds)
            _thresholds = None


def freezing_after_startup(app: AppT) -> AppT:
    """`app` (a Starlette/FastAPI app) whose lifespan, once its own start-up is over,
    prepares its routes (`http.warm_routes`) and freezes the start-up heap, and unfreezes
    it at shutdown; returns `app`."""
    router = app.router  # type: ignore[attr-defined]
    inner: Callable[[Any], AbstractAsyncContextManager[Any]] = router.lifespan_context

    @asynccontextmanager
    async def lifespan(started_app: Any) -> AsyncIterator[Any]:
        async with inner(started_app) as state:
            # Its routes prepared first, so that what that makes is frozen too.
            await warm_routes(started_app)
            freeze_startup_heap()
            try:
                yield state
            finally:
                release_startup_heap()

    router.lifespan_context = lifespan
    return app
