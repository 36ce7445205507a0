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


class LeftWork:
    """The work `wait_or_leave` left running for one owner (a database engine's user, say),
    kept referenced until it ends, so that the owner can wait for it before closing what
    it uses (`wait`)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Future[Any]] = set()

    def add(self, task: asyncio.Future[Any]) -> None:
        """Keep `task` until it ends."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def running(self) -> int:
        """How many are still running."""
        return sum(1 for task in self._tasks if not task.done())

    async def wait(self, timeout_s: float = 5.0) -> int:
        """Wait up to `timeout_s` seconds for every piece of work left running to end (an
        undo one started when it ended included); returns how many are still running."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while pending := [task for task in self._tasks if not task.done()]:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return len(pending)
            with contextlib.suppress(Exception):
                await asyncio.wait(pending, timeout=remaining)
            # The undo a task started runs after the wait's own callback: one more turn.
            await asyncio.sleep(0)
        return 0


# Work left running by callers that name no owner.
LEFT = LeftWork()


async def wait_or_leave(
    work: Awaitable[_T],
    timeout_s: float,
    *,
    finish_s: float = 60.0,
    on_late: Callable[[_T], Awaitable[None] | None] | None = None,
    left: LeftWork = LEFT,
) -> _T:
    """Run `work` in a task of its own (a task given is used as it is) and wait up to
    `timeout_s` seconds for its result.

    Returns what `work` returns and raises what it raises. Raises TimeoutError when it
    takes longer (or is cancelled by another caller's `finish_s` while this one waits on
    the same task), without cancelling it: it runs on to its end, `finish_s` seconds more at
    most, and is cancelled only then (a server that stopped answering). Database work
    cancelled half-way loses its connection: the pool forgets it while its socket stays
    open on the server (SQLAlchemy issues #8145 and #12077), so a store that is merely slow
    would be left with more and more connections until it refuses new ones. Left to end,
    the connection goes back to the pool. (Work that holds locks should also be bounded
    where it runs, e.g. by PostgreSQL's `statement_timeout`, so that it does not hold them
    long after its caller gave up.)

    `on_late`: called with the result of work that succeeded after its caller stopped
    waiting (a timeout, or the caller's own cancellation), to undo what the caller never
    learned of; it may return an awaitable, which runs in the background too. `left`: the
    owner's record of what it left running. Failures of left work, and of `on_late`, are
    logged at debug level, not raised."""
    task = asyncio.ensure_future(work)
    try:
        async with asyncio.timeout(timeout_s):
            return await asyncio.shield(task)
    except asyncio.CancelledError:
        _leave(task, finish_s, on_late, left)
        current = asyncio.current_task()
        if task.cancelled() and current is not None and not current.cancelling():
            # The work was cancelled, not this caller: work shared with an earlier caller
            # that left it, whose `finish_s` passed. For this caller it never answered.
            raise TimeoutError("the work was stopped before it answered") from None
        raise
    except BaseException:
        _leave(task, finish_s, on_late, left)
        raise


def _leave(
    task: asyncio.Future[_T],
    finish_s: float,
    on_late: Callable[[_T], Any] | None,
    left: LeftWork,
) -> None:
    """Let `task` run on (cancelled after `finish_s` seconds); hand a success the caller
    did not get to `on_late`. A task already done is settled at once: its failure was
    raised to the caller; its success came just as the caller stopped waiting."""
    if task.done() and (task.cancelled() or task.exception() is not None):
        return  # cancelled with its caller, or failed: the caller was told
    cancel: asyncio.TimerHandle | None = None

    def ended(done: asyncio.Future[_T]) -> None:
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
            left.add(follow)
            follow.add_done_callback(_undone)

    if task.done():
        ended(task)
        return
    left.add(task)
    cancel = asyncio.get_running_loop().call_later(finish_s, task.cancel)
    task.add_done_callback(ended)


def _undone(done: asyncio.Future[Any]) -> None:
    if not done.cancelled() and done.exception() is not None:
        log.debug("undoing late work failed", error=repr(done.exception()))
