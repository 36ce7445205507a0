"""Running a large parse or check in a worker thread instead of on the event loop.

Every Switchyard service answers on one asyncio event loop (embedded mode runs all four
on one). Parsing a multi-megabyte JSON body or event there holds every other request
for as long as it takes. `off_loop` hands such work to the loop's default executor when
its input is larger than `OFF_LOOP_BYTES`: the interpreter is then shared in turns (the
switch interval, 5 ms by default) wherever the work runs Python code or releases the
GIL. One C call that holds the GIL throughout (orjson's parse, pydantic-core's) still
holds the loop for its own length, about half of such a decode measured; the bounds on
bodies (`jsonbody`) are what keep those calls short.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sized
from typing import TypeVar

# Inputs larger than this (bytes, or characters of a `str`) are handled in a worker
# thread; smaller ones take well under a millisecond, less than the hand-off to a thread.
OFF_LOOP_BYTES = 1 << 20

_S = TypeVar("_S", bound=Sized)
_T = TypeVar("_T")


async def off_loop(function: Callable[[_S], _T], raw: _S) -> _T:
    """`function(raw)`, called in a worker thread when `len(raw)` is larger than
    `OFF_LOOP_BYTES`, else here at once. Raises what `function` raises."""
    if len(raw) > OFF_LOOP_BYTES:
        return await asyncio.to_thread(function, raw)
    return function(raw)
