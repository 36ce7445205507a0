"""`switchyard.common.stopping`: a registered callback learns of the first stop signal as
it arrives, before the handler that was in place (uvicorn's) runs as before; it runs
once; an unregistered one does not run."""

from __future__ import annotations

import os
import signal

from switchyard.common.stopping import on_stop_signal, stop_signalled


def test_the_signal_reaches_the_callbacks_then_the_previous_handler() -> None:
    seen: list[str] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: seen.append(f"server {signum}"))
    try:
        unregister = on_stop_signal(lambda: seen.append("callback"))
        dropped = on_stop_signal(lambda: seen.append("dropped"))
        dropped()
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        unregister()  # already run: harmless
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert seen == ["callback", f"server {signal.SIGTERM}", f"server {signal.SIGTERM}"]


def test_a_callback_that_fails_does_not_keep_the_others_from_running() -> None:
    seen: list[str] = []

    def broken() -> None:
        raise RuntimeError("broken")

    unregister_broken = on_stop_signal(broken)
    unregister = on_stop_signal(lambda: seen.append("ran"))
    stop_signalled()
    stop_signalled()
    unregister_broken()
    unregister()
    assert seen == ["ran"]
