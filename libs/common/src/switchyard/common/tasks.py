"""Stopping asyncio tasks within a bound, whatever they are doing."""

from __future__ import annotations

import asyncio
from typing import Any


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
