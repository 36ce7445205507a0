"""A client of another Switchyard service lets go of an idle connection before the server
closes it: reusing one the server is closing at that moment fails with "Server
disconnected without sending a response", which the caller reports as the service being
unreachable."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from switchyard.common.http import (
    INTERNAL_KEEPALIVE_EXPIRY_S,
    SERVER_KEEP_ALIVE_S,
    SERVER_OPTIONS,
    internal_limits,
)


async def peer(request: Request) -> JSONResponse:
    assert request.client is not None
    return JSONResponse({"port": request.client.port})


def test_internal_clients_expire_idle_connections_well_before_the_servers_do() -> None:
    assert SERVER_OPTIONS["timeout_keep_alive"] == SERVER_KEEP_ALIVE_S
    assert internal_limits().keepalive_expiry == INTERNAL_KEEPALIVE_EXPIRY_S
    assert INTERNAL_KEEPALIVE_EXPIRY_S <= SERVER_KEEP_ALIVE_S / 2


async def test_an_idle_pooled_connection_is_replaced_before_the_server_would_close_it() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = Starlette(routes=[Route("/peer", peer)])
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", **SERVER_OPTIONS)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(1000):
            if server.started:
                break
            await asyncio.sleep(0.01)
        async with httpx.AsyncClient(limits=internal_limits()) as client:
            url = f"http://127.0.0.1:{port}/peer"
            first = (await client.get(url)).json()["port"]
            again = (await client.get(url)).json()["port"]
            await asyncio.sleep(INTERNAL_KEEPALIVE_EXPIRY_S + 0.5)  # still open at the server
            later = (await client.get(url)).json()["port"]
        assert again == first  # kept alive while in use
        assert later != first  # a new connection, never the one the server may be closing
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task
