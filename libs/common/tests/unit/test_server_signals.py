"""One Ctrl+C is one stop: `uv run` forwards the SIGINT the process group got already, and
to uvicorn a second SIGINT is a forced exit that skips the app's shutdown."""

from __future__ import annotations

import signal

import pytest
import uvicorn
from fastapi import FastAPI

from switchyard.common import http
from switchyard.common.http import REPEATED_SIGNAL_S, OneSignalServer


def test_a_signal_repeated_at_once_is_the_same_stop_and_a_later_one_forces(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr(http.time, "monotonic", lambda: now[0])
    server = OneSignalServer(uvicorn.Config(FastAPI()))

    server.handle_exit(signal.SIGINT, None)
    now[0] += 0.01  # uv's copy of the same Ctrl+C
    server.handle_exit(signal.SIGINT, None)
    assert server.should_exit and not server.force_exit  # the app's shutdown still runs

    now[0] += REPEATED_SIGNAL_S  # a second press
    server.handle_exit(signal.SIGINT, None)
    assert server.force_exit


def test_plain_uvicorn_takes_the_forwarded_copy_for_a_forced_exit() -> None:
    """What OneSignalServer is for: a guard that this test fails if uvicorn changes."""
    server = uvicorn.Server(uvicorn.Config(FastAPI()))
    server.handle_exit(signal.SIGINT, None)
    server.handle_exit(signal.SIGINT, None)
    assert server.force_exit
