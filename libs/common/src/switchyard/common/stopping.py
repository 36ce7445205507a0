"""The moment a process is asked to stop (SIGTERM, Ctrl+C), told to the services in it as
the signal arrives. uvicorn's graceful shutdown first waits for every open connection to
end and only then runs the app's lifespan shutdown, so an app that must bound that wait
(the gateway ends the streams still open after its drain period, `Gateway.begin_drain`)
cannot learn of the signal from its lifespan.

`on_stop_signal` registers a callback and chains a handler before the SIGINT and SIGTERM
handlers in place (uvicorn's, while its server runs: one worker or each of `--workers N`);
embedded mode, whose runner takes the signals itself, calls `stop_signalled`.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Marks a handler installed here, so it is chained once whatever registers.
_CHAINED = "_switchyard_stop_chain"

_callbacks: list[Callable[[], None]] = []


def on_stop_signal(callback: Callable[[], None]) -> Callable[[], None]:
    """Call `callback` (no arguments) once, when this process is next asked to stop. It runs
    in the signal handler, between two bytecodes of the main thread: it must only schedule
    work (`loop.call_soon_threadsafe`). Returns the function that unregisters it.

    Called from the main thread, it chains a handler before the current SIGINT and SIGTERM
    handlers (when they are Python callables): the signal then reaches them as before."""
    _callbacks.append(callback)
    if threading.current_thread() is threading.main_thread():
        for sig in _SIGNALS:
            _chain(sig)

    def unregister() -> None:
        with contextlib.suppress(ValueError):
            _callbacks.remove(callback)

    return unregister


def stop_signalled() -> None:
    """Run (and forget) every registered callback: the process was asked to stop. A callback
    that raises does not keep the others from running."""
    pending = list(_callbacks)
    _callbacks.clear()
    for callback in pending:
        with contextlib.suppress(Exception):
            callback()


def _chain(sig: signal.Signals) -> None:
    previous = signal.getsignal(sig)
    if not callable(previous) or getattr(previous, _CHAINED, False):
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        stop_signalled()
        previous(signum, frame)

    marked: Any = handler
    setattr(marked, _CHAINED, True)
    signal.signal(sig, handler)
