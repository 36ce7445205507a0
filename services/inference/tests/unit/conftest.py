"""Fixtures of the inference unit tests: a recording upstream served for real over HTTP on
a free 127.0.0.1 port (in a background thread, so it outlives each test's event loop),
cleared before every test. The provider simulator's fixtures (`simulator`,
`simulator_server`) come from `switchyard.simulator.testing`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from switchyard.common.testing.servers import serve_app
from switchyard.inference.testing import RecordingUpstream


@pytest.fixture(scope="session")
def recording_server() -> Iterator[tuple[RecordingUpstream, str]]:
    recorder = RecordingUpstream()
    with serve_app(recorder.app()) as root:
        yield recorder, root


@pytest.fixture
def recorder(recording_server: tuple[RecordingUpstream, str]) -> Iterator[RecordingUpstream]:
    """The recording upstream, with nothing recorded or scripted; `recorder.root` is its
    URL."""
    recorder, root = recording_server
    recorder.script()
    recorder.root = root
    yield recorder
    recorder.script()
