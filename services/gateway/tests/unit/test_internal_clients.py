"""The gateway's clients of other Switchyard services (auth and history; the replay
command's client of the gateway) let go of an idle connection well before those servers
close it (`switchyard.common.http.INTERNAL_KEEPALIVE_EXPIRY_S`): a request sent on a
connection the server is closing fails as if the service were unreachable (503)."""

from __future__ import annotations

from typing import Any

from switchyard.common.http import INTERNAL_KEEPALIVE_EXPIRY_S, SERVER_KEEP_ALIVE_S
from switchyard.gateway.bootstrap import build_http_client
from switchyard.gateway.replay_cli import Client


def idle_expiry(client: Any) -> float:
    """The keep-alive expiry of the connection pool behind an httpx client."""
    return client._transport._pool._keepalive_expiry


async def test_the_client_of_auth_and_history_expires_idle_connections_first() -> None:
    client = build_http_client()
    try:
        assert idle_expiry(client) == INTERNAL_KEEPALIVE_EXPIRY_S < SERVER_KEEP_ALIVE_S
    finally:
        await client.aclose()


def test_the_replay_commands_client_expires_idle_connections_first() -> None:
    client = Client("http://127.0.0.1:1", "sk-sy-test")
    assert idle_expiry(client._http) == INTERNAL_KEEPALIVE_EXPIRY_S


async def test_a_refused_connection_to_auth_or_history_is_tried_once_more() -> None:
    """A replica stopping in a rolling restart refuses connections for a moment: the
    request was never sent, so it is tried again at once (httpx's connect retries)."""
    client = build_http_client()
    try:
        assert client._transport._pool._retries == 1  # type: ignore[attr-defined]
    finally:
        await client.aclose()
