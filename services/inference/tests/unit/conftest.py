"""Fixtures of the inference unit tests: a recording upstream served for real over HTTP on
a free 127.0.0.1 port (in a background thread, so it outlives each test's event loop),
cleared before every test; `serve`, a handler routing model `m` to the deployments a test
names. The provider simulator's fixtures (`simulator`,
`simulator_server`) come from `switchyard.simulator.testing`. `anthropic_message` builds
an upstream Anthropic reply for the tests that import it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from switchyard.common.routing import Deployment, ModelRoute, RoutingTable
from switchyard.common.testing.servers import serve_app
from switchyard.common.topics import Topics
from switchyard.inference.providers import ProviderPool
from switchyard.inference.reliability import Backoff, BreakerPolicy, DeploymentStates
from switchyard.inference.testing import Harness, RecordingUpstream


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


@pytest.fixture
async def serve() -> AsyncIterator[Any]:
    """`await serve(*deployments)`: a handler (a `Harness` on its own in-memory bus)
    routing model `m` to those deployments in order, with short backoffs; stopped, with
    its provider clients, after the test."""
    started: list[tuple[Harness, ProviderPool]] = []

    async def start(*deployments: Deployment) -> Harness:
        providers = ProviderPool()
        harness = await Harness.start(
            Topics("serve"),
            routing=RoutingTable(models={"m": ModelRoute(name="m", deployments=list(deployments))}),
            providers=providers,
            backoff=Backoff(0.01, 0.02),
            deployments=DeploymentStates(BreakerPolicy(failure_threshold=5, cooldown_s=60)),
        )
        started.append((harness, providers))
        return harness

    yield start
    for harness, providers in started:
        await harness.stop()
        await providers.aclose()


def anthropic_message(**overrides: Any) -> dict[str, Any]:
    """A complete Anthropic Messages reply (one text block, `end_turn`), with `overrides`
    replacing its top-level fields."""
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": [{"type": "text", "text": "Hello!"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 10, "output_tokens": 3},
    }
    return {**message, **overrides}
