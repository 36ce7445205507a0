"""A NUL character (U+0000) in a request on a real PostgreSQL server, whose text values
cannot hold one: a page cursor whose id holds one, and a replay body field that does, are
400s naming them, never a 500 from the database."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from switchyard.common.bus import InMemoryBus
from switchyard.common.db import upgrade
from switchyard.history.app import create_app
from switchyard.history.config import MIGRATIONS_DIR, VERSION_TABLE, Settings

pytestmark = pytest.mark.integration

TOKEN = "test-internal-token"
HEADERS = {
    "x-switchyard-internal-token": TOKEN,
    "x-switchyard-tenant": "acme",
    "x-switchyard-user-id": "alice",
    "x-switchyard-role": "admin",
}


def cursor_with_id(request_id: str) -> str:
    """A cursor as `encode_cursor` writes one, whose id is `request_id`."""
    raw = json.dumps(["2026-12-07T12:00:00+00:00", request_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


async def test_a_nul_cursor_or_body_field_is_a_400_on_postgres(postgres_url):
    upgrade(MIGRATIONS_DIR, postgres_url, VERSION_TABLE)
    settings = Settings(
        database_url=postgres_url,
        internal_token=TOKEN,
        topic_prefix="nul",
        sweep_interval_s=3600,
        gateway_url="",
    )
    bus = InMemoryBus()
    app = create_app(settings, bus=bus)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://history") as client:
            for path in ("/v1/history", "/v1/jobs", "/v1/replays"):
                refused = await client.get(
                    path, params={"cursor": cursor_with_id("a\x00b")}, headers=HEADERS
                )
                assert refused.status_code == 400, (path, refused.text)
                assert refused.json()["error"]["code"] == "invalid_cursor"
                taken = await client.get(
                    path, params={"cursor": cursor_with_id("ab")}, headers=HEADERS
                )
                assert taken.status_code == 200, (path, taken.text)
            replay = await client.post(
                "/v1/replays",
                json={"since": "1h", "to_model": "sim-large", "model": "x\x00y"},
                headers=HEADERS,
            )
            assert replay.status_code == 400, replay.text
            assert replay.json()["error"]["param"] == "model"
    await bus.stop()
