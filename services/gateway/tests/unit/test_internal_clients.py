"""The gateway's clients of other Switchyard services (auth and history; the replay
command's client of the gateway) let go of an idle connection well before those servers
close it (`switchyard.common.http.INTERNAL_KEEPALIVE_EXPIRY_S`): a request sent on a
connection the server is closing fails as if the service were unreachable (503). A
connection refused, and a read (or a key lookup, a POST that only reads) whose connection
the server closed under it (a replica stopping in a rolling restart), are tried once
more; nothing else is."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from switchyard.common.http import INTERNAL_KEEPALIVE_EXPIRY_S, SERVER_KEEP_ALIVE_S
from switchyard.gateway.auth import Authenticator
from switchyard.gateway.internal_http import build_http_client
from switchyard.gateway.replay_cli import Client


def innermost(client: Any) -> Any:
    """The transport that sends on the network, under the gateway's retry layers."""
    transport = client._transport
    while getattr(transport, "_async_transport", None) is not None:
        transport = transport._async_transport
    return transport


def pool_of(client: Any) -> Any:
    """The connection pool behind an httpx client."""
    return innermost(client)._pool


async def test_the_client_of_auth_and_history_expires_idle_connections_first() -> None:
    client = build_http_client()
    try:
        pool = pool_of(client)
        assert pool._keepalive_expiry == INTERNAL_KEEPALIVE_EXPIRY_S < SERVER_KEEP_ALIVE_S
        assert client._trust_env is False  # never through the environment's proxy
    finally:
        await client.aclose()


def test_the_replay_commands_client_expires_idle_connections_first() -> None:
    client = Client("http://127.0.0.1:1", "sk-sy-test")
    assert pool_of(client._http)._keepalive_expiry == INTERNAL_KEEPALIVE_EXPIRY_S


class ClosingServer:
    """With `close_first`, closes the first connection as soon as a request arrives on it,
    without answering (a server stopping with the connection in the client's pool);
    answers `status` to every other request."""

    def __init__(self, close_first: bool, status: int, body: bytes = b"ok") -> None:
        self.close_first = close_first
        self.status = status
        self.body = body
        self.requests = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?i)content-length: *(\d+)", head)
        await reader.readexactly(int(length.group(1)) if length else 0)
        self.requests += 1
        if not (self.close_first and self.requests == 1):
            writer.write(
                f"HTTP/1.1 {self.status} X\r\ncontent-length: {len(self.body)}\r\n\r\n".encode()
                + self.body
            )
            await writer.drain()
        writer.close()


@contextlib.asynccontextmanager
async def serving(closing: ClosingServer) -> AsyncIterator[int]:
    """`closing` listening on 127.0.0.1; its port."""
    server = await asyncio.start_server(closing.handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("method", "close_first", "status", "answered", "requests"),
    [
        ("GET", True, 200, 200, 2),  # a read: sent again on a new connection
        ("POST", True, 200, None, 1),  # a write may have been done: the caller decides
        ("GET", False, 503, 503, 1),  # an answer is the service's own word
    ],
)
async def test_a_read_whose_connection_the_server_closed_is_sent_once_more(
    method: str, close_first: bool, status: int, answered: int | None, requests: int
) -> None:
    closing = ClosingServer(close_first, status)
    client = build_http_client()
    try:
        async with serving(closing) as port:
            if answered is None:
                with pytest.raises(httpx.RemoteProtocolError):
                    await client.request(method, f"http://127.0.0.1:{port}/v1/x")
            else:
                answer = await client.request(method, f"http://127.0.0.1:{port}/v1/x")
                assert answer.status_code == answered
        assert closing.requests == requests
    finally:
        await client.aclose()


async def test_a_key_lookup_whose_connection_auth_closed_is_sent_once_more() -> None:
    # A POST that only reads: without it, the request failed as if auth were down (503,
    # or the cached answer during an outage) while another replica was answering.
    identity = {"user_id": "u1", "tenant": "acme", "role": "member", "key_id": "k1"}
    closing = ClosingServer(True, 200, json.dumps(identity).encode())
    client = build_http_client()
    try:
        async with serving(closing) as port:
            authenticator = Authenticator(
                client,
                auth_url=f"http://127.0.0.1:{port}",
                internal_token="t",
                issuer="i",
                audience="a",
                key_ttl_s=60,
                negative_ttl_s=5,
                jwks_min_interval_s=60,
            )
            found = await authenticator._lookup("0" * 64)
        assert found is not None and found[0].api_key_id == "k1"
        assert closing.requests == 2
    finally:
        await client.aclose()


class FailingFirst(httpx.AsyncBaseTransport):
    """Raises `error` on the first request, answers 200 to the next ones."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.sent = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent += 1
        if self.sent == 1:
            raise self.error
        return httpx.Response(200, text="ok")


@pytest.mark.parametrize(
    ("method", "error", "sent"),
    [
        ("POST", httpx.ConnectError("refused"), 2),  # nothing was sent: any method again
        ("GET", httpx.ConnectError("refused"), 2),
        ("POST", httpx.ConnectTimeout("timed out"), 1),  # it already waited its time
        ("GET", httpx.ReadTimeout("timed out"), 1),
    ],
)
async def test_a_refused_connection_is_tried_once_more_a_timeout_never(
    method: str, error: Exception, sent: int
) -> None:
    client = build_http_client()
    failing = FailingFirst(error)
    holder = client._transport
    while getattr(holder._async_transport, "_async_transport", None) is not None:
        holder = holder._async_transport
    holder._async_transport = failing
    try:
        if sent == 1:
            with pytest.raises(type(error)):
                await client.request(method, "http://127.0.0.1:1/v1/x")
        else:
            assert (await client.request(method, "http://127.0.0.1:1/v1/x")).status_code == 200
        assert failing.sent == sent
    finally:
        await client.aclose()
