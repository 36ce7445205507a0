"""Stopping asyncio tasks within a bound, whatever they are doing; and waiting for work
within a bound without cancelling it (`wait_or_leave`)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import structlog

log = structlog.get_logger("switchyard.tasks")

_T = TypeVar("_T")

# Work whose caller stopped waiting (`wait_or_leave`), kept referenced until it ends.
_left: set[asyncio.Future[Any]] = set()


async def cancel_and_wait(task: asyncio.Task[Any], timeout_s: float = 5.0) -> bool:
    """Cancel `task` and wait up to `timeout_s` seconds for it to end; returns whether it
    did. The task is cancelled again every half second while it runs on: on Python 3.11,
    `asyncio.wait_for` swallows a cancellation that arrives just as the operation it waits
    for completes, so a single `cancel()` can go unnoticed by a busy task."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not task.done():
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        task.cancel()
        await asyncio.wait([task], timeout=min(0.5, remaining))
    if task.done() and not task.cancelled():
        task.exception()  # seen: a failure on the way out is not worth a warning at exit
    return task.done()


async def wait_or_leave(
    work: Awaitable[_T],
    timeout_s: float,
    *,
    finish_s: float = 60.0,
    on_late: Callable[[_T], Awaitable[None] | None] | None = None,
) -> _T:
    """Run `work` in a task of its own and wait up to `timeout_s` seconds for its result.

    Returns what `work` returns and raises what it raises. Raises TimeoutError when it
    takes longer, without cancelling it: it runs on to its end, `finish_s` seconds more at
    most, and is cancelled only then (a server that stopped answering). Database work
    cancelled half-way loses its connection: the pool forgets it while its socket stays
    open on the server (SQLAlchemy issues #8145 and #12077), so a store that is merely slow
    would be left with more and more connections until it refuses new ones. Left to end,
    the connection goes back to the pool.

    `on_late`: called with the result of work that succeeded after its caller stopped
    waiting (a timeout, or the caller's own cancellation), to undo what the caller never
    learned of; it may return an awaitable, which runs in the background too. Failures of
    left work, and of `on_late`, are logged at debug level, not raised."""
    task = asyncio.ensure_future(work)
    try:
        async with asyncio.timeout(timeout_s):
            return await asyncio.shield(task)
    except BaseException:
        _leave(task, finish_s, on_late)
        raise


def _leave(task: asyncio.Future[_T], finish_s: float, on_late: Callable[[_T], Any] | None) -> None:
    """Let `task` run on (cancelled after `finish_s` seconds); hand a success the caller
    did not get to `on_late`. A task already done is settled at once: its failure was
    raised to the caller; its success came just as the caller stopped waiting."""
    cancel: asyncio.TimerHandle | None = None

    def ended(done: asyncio.Future[_T]) -> None:
        _left.discard(done)
        if cancel is not None:
            cancel.cancel()
        if done.cancelled():
            return
        error = done.exception()
        if error is not None:
            log.debug("work left running failed", error=repr(error))
            return
        if on_late is None:
            return
        try:
            undo = on_late(done.result())
        except Exception as exc:  # noqa: BLE001 - background clean-up, nobody to tell
            log.debug("undoing late work failed", error=repr(exc))
            return
        if inspect.isawaitable(undo):
            follow = asyncio.ensure_future(undo)
            _left.add(follow)
            follow.add_done_callback(_forget)

    if task.done():
        ended(task)
        return
    _left.add(task)
    cancel = asyncio.get_running_loop().call_later(finish_s, task.cancel)
    task.add_done_callback(ended)


def _forget(done: asyncio.Future[Any]) -> None:
    _left.discard(done)
    if not done.cancelled() and done.exception() is not None:
        log.debug("undoing late work failed", error=repr(done.exception()))


async def left_running(timeout_s: float = 5.0) -> int:
    """Wait up to `timeout_s` seconds for the work `wait_or_leave` left running to end
    (before closing what it uses, e.g. a database engine); returns how many are still
    running."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    # Again while work ends: an undo it started is left running too.
    while pending := [task for task in _left if not task.done()]:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            return len(pending)
        with contextlib.suppress(Exception):
            await asyncio.wait(pending, timeout=remaining)
    return 0
