"""The HTTP server every service runs refuses oversized request heads with 431 and drops
clients too slow to send their head or body (408), while ordinary requests, kept-alive
connections and large bodies sent promptly are served as before."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from switchyard.common.http import SERVER_OPTIONS
from switchyard.common.httpserver import GuardedHttpToolsProtocol, HttpLimits


class SmallLimits(GuardedHttpToolsProtocol):
    limits = HttpLimits(
        max_header_bytes=2048, max_headers=20, header_timeout_s=0.5, body_timeout_s=0.5
    )


async def echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"received": len(body)})


async def early(request: Request) -> JSONResponse:
    return JSONResponse({"answered": "without reading the body"})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
async def server():
    paths = ("/echo", "/v1/messages", "/v1/chat/completions")
    app = Starlette(
        routes=[
            *(Route(path, echo, methods=["GET", "POST"]) for path in paths),
            Route("/early", early, methods=["POST"]),
        ]
    )
    port = free_port()
    options = {**SERVER_OPTIONS, "http": SmallLimits, "timeout_keep_alive": 1}
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", **options)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(1000):
        if server.started:
            break
        await asyncio.sleep(0.01)
    yield port
    server.should_exit = True
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def exchange(port: int, *parts: bytes, pause_s: float = 0.0, timeout: float = 5.0) -> bytes:
    """Send `parts` (pausing between them), then read until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for part in parts:
            writer.write(part)
            await writer.drain()
            if pause_s:
                await asyncio.sleep(pause_s)
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


def status_and_body(response: bytes) -> tuple[int, dict]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body) if body else {}


async def test_a_head_over_the_size_limit_gets_431_in_the_api_error_format(server):
    request = b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4096 + b"\r\n\r\n"
    status, body = status_and_body(await exchange(server, request))
    assert status == 431
    assert body["error"]["code"] == "request_header_fields_too_large"


async def test_a_huge_header_is_refused_before_it_is_all_received(server):
    # The server answers after the limit, without waiting for (or buffering) the rest.
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    writer.write(b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8192)
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert status_and_body(response)[0] == 431


async def test_too_many_header_fields_get_431(server):
    headers = b"".join(b"X-H%d: v\r\n" % i for i in range(30))
    status, body = status_and_body(
        await exchange(server, b"GET /echo HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    )
    assert status == 431
    assert "header fields" in body["error"]["message"]


def assert_in_format_of(path: bytes, body: dict, error_type: str) -> None:
    """`body` is the error object of the API at `path`: Anthropic's on /v1/messages,
    OpenAI's elsewhere, with the type that API uses for the status."""
    if path.startswith(b"/v1/messages"):
        assert body["type"] == "error" and body["error"]["type"] == error_type, body
        assert body["error"]["message"]
    else:
        assert set(body) == {"error"}, body
        assert body["error"]["message"] and body["error"]["type"] == error_type
        assert {"param", "code"} <= set(body["error"])


@pytest.mark.parametrize(
    "path, error_type",
    [
        (b"/v1/messages", "request_too_large"),
        (b"/v1/messages/count_tokens?beta=true", "request_too_large"),
        (b"/v1/chat/completions", "invalid_request_error"),
        (b"/v1/responses", "invalid_request_error"),
    ],
)
async def test_a_head_too_large_gets_431_in_the_format_of_the_api_called(server, path, error_type):
    request = b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4096 + b"\r\n\r\n"
    status, body = status_and_body(await exchange(server, request))
    assert status == 431
    assert_in_format_of(path, body, error_type)


@pytest.mark.parametrize(
    "path, error_type",
    [(b"/v1/messages", "timeout_error"), (b"/v1/chat/completions", "timeout_error")],
)
async def test_a_head_too_slow_gets_408_in_the_format_of_the_api_called(server, path, error_type):
    status, body = status_and_body(
        await exchange(server, b"POST " + path + b" HTTP/1.1\r\n", b"Host: x\r\n", pause_s=0.4)
    )
    assert status == 408
    assert_in_format_of(path, body, error_type)


@pytest.mark.parametrize("path", [b"/v1/messages", b"/v1/chat/completions"])
async def test_a_body_too_slow_gets_408_in_the_format_of_the_api_called(server, path):
    head = b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
    status, body = status_and_body(await exchange(server, head + b"x" * 10))
    assert status == 408
    assert_in_format_of(path, body, "timeout_error")


async def test_a_client_too_slow_to_send_its_head_gets_408_and_is_disconnected(server):
    status, body = status_and_body(
        await exchange(server, b"GET /echo HTTP/1.1\r\n", b"Host: x\r\n", pause_s=0.4)
    )
    assert status == 408
    assert body["error"]["code"] == "request_timeout"


async def test_a_connection_that_sends_nothing_is_closed(server):
    assert await exchange(server) == b""  # closed by the server after the head timeout


async def test_a_client_too_slow_to_send_its_body_gets_408(server):
    head = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
    status, body = status_and_body(await exchange(server, head + b"x" * 10))
    assert status == 408
    assert "body" in body["error"]["message"]


async def test_prompt_requests_kept_alive_and_large_bodies_are_served(server):
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    body = b"x" * (1024 * 1024)
    for _ in range(2):  # the same kept-alive connection, head limit counted per request
        writer.write(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = int(
            next(
                line.split(b":")[1]
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
        )
        payload = await reader.readexactly(length)
        assert head.startswith(b"HTTP/1.1 200")
        assert json.loads(payload) == {"received": len(body)}
        await asyncio.sleep(0.3)  # idle, but within the keep-alive time
    writer.close()


@pytest.mark.parametrize("split", [True, False], ids=["body-later", "body-with-head"])
@pytest.mark.parametrize("upgrade", [b"h2c", b"no-such-protocol"])
async def test_bytes_after_an_upgrade_no_service_speaks_are_never_read_as_a_request(
    server, upgrade, split
):
    # The parser stops at an Upgrade it will not perform; reading on would take the body
    # that follows for a new request (smuggled past whatever proxy sent the first one).
    smuggled = b"GET /v1/messages HTTP/1.1\r\nHost: x\r\n\r\n"
    head = (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: "
        + upgrade
        + b"\r\nContent-Length: %d\r\n\r\n" % len(smuggled)
    )
    parts = (head, smuggled) if split else (head + smuggled,)
    response = await exchange(server, *parts, pause_s=0.1)
    assert response.count(b"HTTP/1.1 ") == 1, response  # one answer, then the end
    status, _ = status_and_body(response)
    assert status == 400


async def test_an_upgrade_no_service_speaks_without_a_body_is_answered_as_plain_http(server):
    request = b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
    status, body = status_and_body(await exchange(server, request))
    assert status == 200
    assert body == {"received": 0}


async def test_a_refused_upgrade_keeps_the_answers_of_requests_pipelined_before_it_in_order(
    server,
):
    smuggled = b"GET /v1/messages HTTP/1.1\r\nHost: x\r\n\r\n"
    pipelined = (
        b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
        b"Content-Length: %d\r\n\r\n" % len(smuggled) + smuggled
    )
    response = await exchange(server, pipelined)
    first, _, rest = response.partition(b"HTTP/1.1 ")[2].partition(b"HTTP/1.1 ")
    assert first.startswith(b"200") and b'{"received":0}' in first
    assert rest.startswith(b"400") and b"may not carry a body" in rest
    assert response.count(b"HTTP/1.1 ") == 2


@pytest.mark.parametrize(
    ("extra", "status"),
    [(b"", 200), (b"Content-Length: 00\r\n", 200), (b"Content-Length: 1\r\n", 400)],
    ids=["no-body", "zero-length", "with-body"],
)
async def test_a_websocket_upgrade_is_declined_like_any_other_and_the_connection_closed(
    server, extra, status
):
    # No service serves WebSockets: never handed to a WebSocket library (which kept a
    # connection whose upgrade carried a body open, silent, for ever).
    request = (
        b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        + extra
        + b"\r\n"
        + (b"x" if status == 400 else b"")
    )
    response = await exchange(server, request)  # read until the server closes
    assert response.count(b"HTTP/1.1 ") == 1
    assert status_and_body(response)[0] == status


async def test_a_body_sent_after_its_answer_leaves_an_idle_connection_that_is_closed(server):
    # The late body cancelled the keep-alive timer and nothing re-armed it: the client
    # could hold the connection open for ever without sending anything more.
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    writer.write(b"POST /early HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200")
    await asyncio.sleep(0.1)
    writer.write(b"hello")
    await writer.drain()
    try:
        rest = await asyncio.wait_for(reader.read(), 10)  # closed after the 1 s keep-alive
    finally:
        writer.close()
    assert b"without reading the body" in rest


@pytest.mark.parametrize(
    ("path", "version", "anthropic"),
    [
        (b"/v1/messages", b"", True),
        (b"/v1/chat/completions", b"", False),
        # `/v1/models` answers in the format its caller speaks, as its route does.
        (b"/v1/models", b"anthropic-version: 2023-06-01\r\n", True),
        (b"/v1/models", b"", False),
    ],
)
async def test_an_upgrade_with_a_body_is_refused_in_the_format_of_the_api_called(
    server, path, version, anthropic
):
    request = (
        b"POST "
        + path
        + b" HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
        + version
        + b"Content-Length: 2\r\n\r\n{}"
    )
    status, body = status_and_body(await exchange(server, request))
    assert status == 400
    assert_in_format_of(b"/v1/messages" if anthropic else path, body, "invalid_request_error")
    assert "protocol upgrade" in body["error"]["message"]


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"FOO /v1/chat/completions HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nIdempotency-Key: a\x01b\r\n\r\n",
        b"GET /v1/chat/completions HTTP/9\r\n\r\n",
    ],
    ids=["method", "control-character", "version"],
)
async def test_a_request_that_is_not_http_gets_400_in_the_format_of_the_api_called(
    server, request_bytes
):
    answer = await exchange(server, request_bytes)
    status, body = status_and_body(answer)
    assert status == 400
    path = request_bytes.split(b" ", 2)[1]
    assert_in_format_of(path, body, "invalid_request_error")
    head = answer.split(b"\r\n\r\n", 1)[0].decode()
    request_id = next(line for line in head.split("\r\n") if line.startswith("x-request-id: "))
    if path.startswith(b"/v1/messages"):  # Anthropic's error objects name the request
        assert body["request_id"] == request_id.removeprefix("x-request-id: ")


async def test_every_refusal_carries_a_request_id_of_its_own(server):
    heads = []
    for _ in range(2):
        answer = await exchange(
            server, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n", pause_s=0.6
        )
        head = answer.split(b"\r\n\r\n", 1)[0].decode()
        heads.append(next(line for line in head.split("\r\n") if line.startswith("x-request-id: ")))
    assert heads[0] != heads[1]
