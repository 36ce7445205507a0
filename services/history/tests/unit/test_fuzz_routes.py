"""Every route of the history service (the internal API the gateway calls), called with
generated requests (schemathesis), never answers 5xx."""

from __future__ import annotations

import pytest

from switchyard.common.bus import InMemoryBus
from switchyard.common.testing.fuzz import serve_in_thread, server_errors
from switchyard.history.app import create_app
from switchyard.history.config import Settings

TOKEN = "fuzz-internal-token"


# Bounded by examples (about 45 s alone on 2 cores); the timeout only covers a busy machine.
@pytest.mark.timeout(300)
def test_no_history_route_answers_5xx_to_generated_requests(database_url):
    async def build(state: dict) -> object:
        bus = InMemoryBus()
        settings = Settings(
            database_url=database_url, internal_token=TOKEN, topic_prefix="fuzz",
            sweep_interval_s=3600,
        )  # fmt: skip

        async def cleanup() -> None:
            await bus.stop()

        state["cleanup"] = cleanup
        return create_app(settings, bus=bus)

    identity = {
        "x-switchyard-internal-token": TOKEN,
        "x-switchyard-tenant": "acme",
        "x-switchyard-user-id": "root",
        "x-switchyard-role": "admin",
    }
    with serve_in_thread(build) as server:
        failures = server_errors(server.base_url, headers=identity)
    assert failures == [], "\n".join(failures)
