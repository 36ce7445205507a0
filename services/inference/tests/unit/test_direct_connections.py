"""Direct requests (`upstream.DirectRequests`, aiohttp) against a raw HTTP/1.1 server that
keeps every request's head as it came off the socket: the head is byte for byte the one
the SDK's own client sends (names in the same case and order; cookies the upstream set
are sent back, though aiohttp writes them last); a stream's connection goes back to the
pool even when its body's last chunk comes after its `[DONE]` (on the SDK's own client
too, which platform kinds use); an upstream closed is never called again; a proxy in the
environment keeps the SDK's client; replies in an encoding that was not asked for, or in
a charset that is no text encoding, are the upstream's fault, never the client's."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, cast

import httpx2
import pytest

from switchyard.common.routing import Deployment
from switchyard.inference.errors import ProviderError
from switchyard.inference.testing import SSE_HEAD, RawReply, RawServer, json_reply
from switchyard.inference.upstream import DirectRequests, SDKUpstream, create_upstream

PATHS = {"openai": "/chat/completions", "anthropic": "/v1/messages"}
BODY = {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}


def deployment(kind: str, base: str) -> Deployment:
    return Deployment(
        name=f"raw-{kind}",
        provider=kind,
        model="m",
        base_url=f"{base}/v1" if kind == "openai" else base,
        api_key_env="RAW_KEY",
        max_retries=0,
        timeout_s=5,
    )


@pytest.fixture(autouse=True)
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAW_KEY", "sk-raw-key-123")
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture(params=["openai", "anthropic"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def pair(kind: str, root: str) -> tuple[SDKUpstream, SDKUpstream]:
    """The upstream as created (direct requests) and its client through the SDK's post."""
    upstream = create_upstream(deployment(kind, root))
    assert isinstance(upstream, SDKUpstream) and upstream.direct is not None
    return upstream, type(upstream)(upstream.deployment, upstream.client)


async def outcome(upstream: SDKUpstream, *, stream: bool = False) -> Any:
    """What one call gives: ("ok", the reply or the events) or the ProviderError's
    (status, code or Switchyard's kind of failure when the upstream sent no code,
    retryable)."""
    path = PATHS[upstream.protocol]
    try:
        if stream:
            return "ok", [sse.data async for sse in upstream.stream(path, BODY, {}, 5)]
        return "ok", await upstream.send(path, BODY, {}, 5)
    except ProviderError as error:
        return error.status, error.metric_code, error.retryable


async def test_the_request_head_is_byte_for_byte_the_sdks_cookies_included(kind: str) -> None:
    reply = json_reply(b'{"id": "x"}', headers=b"set-cookie: __cf_bm=abc; Path=/\r\n")
    heads = []
    for through_sdk in (False, True):
        # A server each: each client's second request carries the cookie it was given.
        async with RawServer(reply) as server:
            upstream, sdk = await pair(kind, server.root)
            try:
                client = sdk if through_sdk else upstream
                assert await outcome(client) == ("ok", {"id": "x"})
                assert await outcome(client) == ("ok", {"id": "x"})
            finally:
                await upstream.aclose()
            heads.append([head.replace(server.root[7:].encode(), b"HOST") for head in server.heads])
    (first, second), (sdk_first, sdk_second) = heads
    assert first == sdk_first
    assert b"\r\nauthorization: Bearer sk-raw-key-123\r\n" in first
    # The cookie comes back in both; aiohttp writes it last, and spells it `Cookie`.
    assert without_cookie(second) == without_cookie(sdk_second) == first
    assert cookies(second) == cookies(sdk_second) == [b"__cf_bm=abc"]


def without_cookie(head: bytes) -> bytes:
    return b"\r\n".join(line for line in head.split(b"\r\n") if not is_cookie(line))


def cookies(head: bytes) -> list[bytes]:
    return [line.split(b": ", 1)[1] for line in head.split(b"\r\n") if is_cookie(line)]


def is_cookie(line: bytes) -> bool:
    return line.lower().startswith(b"cookie:")


@pytest.fixture(params=["direct", "sdk"])
def client_path(request: pytest.FixtureRequest) -> str:
    """Direct requests, or the SDK's own client (platform kinds, a proxy in the way)."""
    return str(request.param)


@contextlib.asynccontextmanager
async def streaming(path: str, reply: RawReply) -> AsyncIterator[tuple[RawServer, SDKUpstream]]:
    """A raw server answering `reply`, and an OpenAI upstream on it that streams through
    `path`'s client; the upstream (and its twin on the other client) closed after."""
    async with RawServer(reply) as server:
        direct, sdk = await pair("openai", server.root)
        try:
            yield server, direct if path == "direct" else sdk
        finally:
            await direct.aclose()
            await sdk.aclose()


def ends_being_read(upstream: SDKUpstream) -> dict[asyncio.Task[None], Any]:
    """The upstream's background reads of streams' ends, on whichever client it uses."""
    return upstream.direct._drains if upstream.direct is not None else upstream._ends


async def ended(upstream: SDKUpstream) -> None:
    """Wait (up to 5 s) until every stream's end being read in the background was read:
    its connection is then back in the pool, or closed."""
    ends = list(ends_being_read(upstream))
    if ends:
        _, reading = await asyncio.wait(ends, timeout=5)
        assert not reading, "a stream's end was still being read after 5 s"


DONE = [b'data: {"choices": []}\n\n', b"data: [DONE]\n\n"]


async def test_a_streams_connection_is_reused_when_its_end_comes_after_done(
    client_path: str,
) -> None:
    events = [b'data: {"choices": [{"delta": {"content": "a"}}]}\n\n', b"data: [DONE]\n\n"]
    reply = RawReply(SSE_HEAD, events, chunked=True, end_after_s=0.02)
    async with streaming(client_path, reply) as (server, upstream):
        for _ in range(3):
            assert await outcome(upstream, stream=True) == (
                "ok",
                [{"choices": [{"delta": {"content": "a"}}]}],
            )
            await ended(upstream)  # the stream's end arrives after `[DONE]`
    assert len(server.heads) == 3
    assert server.connections == 1


async def test_a_stream_whose_body_never_ends_after_done_has_its_connection_closed(
    monkeypatch: pytest.MonkeyPatch, client_path: str
) -> None:
    monkeypatch.setattr("switchyard.inference.upstream.DirectResponse.DRAIN_S", 0.05)
    reply = RawReply(SSE_HEAD, DONE, chunked=True, end_after_s=3600)
    async with streaming(client_path, reply) as (server, upstream):
        assert await outcome(upstream, stream=True) == ("ok", [{"choices": []}])
        await asyncio.sleep(0.2)
        assert await outcome(upstream, stream=True) == ("ok", [{"choices": []}])
    assert server.connections == 2


async def test_events_after_done_are_read_to_the_bodys_end_and_never_passed_on(
    client_path: str,
) -> None:
    late = b'data: {"choices": [{"delta": {"content": "late"}}]}\n\n'
    reply = RawReply(SSE_HEAD, [*DONE, late], chunked=True, end_after_s=0.02)
    async with streaming(client_path, reply) as (server, upstream):
        for _ in range(2):
            assert await outcome(upstream, stream=True) == ("ok", [{"choices": []}])
            await ended(upstream)
    assert server.connections == 1


async def test_closing_the_upstream_gives_up_a_streams_end_still_being_read(
    client_path: str,
) -> None:
    reply = RawReply(SSE_HEAD, DONE, chunked=True, end_after_s=3600)
    async with streaming(client_path, reply) as (_, upstream):
        assert await outcome(upstream, stream=True) == ("ok", [{"choices": []}])
        await asyncio.sleep(0.05)  # the read of the end has started
        reads = set(ends_being_read(upstream))
        assert len(reads) == 1

        await asyncio.wait_for(upstream.aclose(), 2)

        assert all(read.done() for read in reads)
        assert not ends_being_read(upstream)


async def test_closing_the_upstream_right_after_a_stream_closes_its_response(
    client_path: str,
) -> None:
    # Closed in the same turn as the stream ended: the read of its end never started.
    reply = RawReply(SSE_HEAD, DONE, chunked=True, end_after_s=3600)
    async with streaming(client_path, reply) as (_, upstream):
        assert await outcome(upstream, stream=True) == ("ok", [{"choices": []}])
        [kept] = ends_being_read(upstream).values()
        await upstream.aclose()
        if client_path == "direct":
            assert kept.closed  # aiohttp's response
        else:
            events_read, response = kept
            assert isinstance(response, httpx2.Response) and response.is_closed
            assert cast(Any, events_read).ag_frame is None, "the iterator is closed"


async def test_an_upstream_closed_is_never_called_again(kind: str) -> None:
    async with RawServer(json_reply(b'{"id": "x"}')) as server:
        upstream, _ = await pair(kind, server.root)
        assert await outcome(upstream) == ("ok", {"id": "x"})
        await upstream.aclose()

        assert await outcome(upstream) == (502, "upstream_unreachable", True)
        await upstream.aclose()  # twice is harmless
    assert len(server.heads) == 1


PROXY = "http://proxy:3128"


@pytest.mark.parametrize(
    ("environment", "base", "direct"),
    [
        ({}, "http://127.0.0.1:9", True),
        ({"no_proxy": "localhost,127.0.0.1"}, "http://127.0.0.1:9", True),
        ({"HTTPS_PROXY": PROXY, "HTTP_PROXY": PROXY}, "http://127.0.0.1:9", False),
        ({"http_proxy": PROXY}, "http://127.0.0.1:9", False),
        ({"ALL_PROXY": "socks5://proxy:1080"}, "http://127.0.0.1:9", False),
        ({"HTTP_PROXY": PROXY, "NO_PROXY": "127.0.0.1"}, "http://127.0.0.1:9", True),
        ({"HTTP_PROXY": PROXY, "NO_PROXY": "127.0.0.1:9"}, "http://127.0.0.1:9", True),
        ({"HTTP_PROXY": PROXY, "NO_PROXY": "*"}, "http://127.0.0.1:9", True),
        ({"HTTPS_PROXY": PROXY}, "http://127.0.0.1:9", True),  # a plain-HTTP upstream
        # httpx proxies these (its patterns match subdomains only), the standard library
        # does not: the SDK's client decides.
        ({"HTTPS_PROXY": PROXY, "NO_PROXY": ".example.com"}, "https://example.com", False),
        ({"HTTPS_PROXY": PROXY, "NO_PROXY": "localhost"}, "https://api.localhost", False),
        ({"HTTPS_PROXY": PROXY, "NO_PROXY": "10.0.0.0/8"}, "https://10.1.2.3", False),
    ],
    ids=[
        "none",
        "no-proxy-only",
        "proxy",
        "lower-case",
        "all",
        "bypassed",
        "bypassed-with-port",
        "star",
        "other-scheme",
        "leading-dot",
        "subdomain",
        "cidr",
    ],
)
async def test_a_proxy_that_may_apply_to_the_upstream_keeps_the_sdks_client(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], base: str, direct: bool
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    upstream = create_upstream(deployment("openai", base))
    assert isinstance(upstream, SDKUpstream)
    try:
        assert (upstream.direct is not None) is direct
        assert DirectRequests.usable(upstream.client) is direct
    finally:
        await upstream.aclose()


@pytest.mark.parametrize("stream", [False, True], ids=["send", "stream"])
@pytest.mark.parametrize("status", ["200 OK", "400 Bad Request"])
async def test_a_reply_in_an_encoding_not_asked_for_is_an_invalid_reply(
    kind: str, status: str, stream: bool
) -> None:
    reply = json_reply(b"\x0b\x02\x80{}\x03", status, headers=b"content-encoding: br\r\n")
    async with RawServer(reply) as server:
        upstream, _ = await pair(kind, server.root)
        try:
            assert await outcome(upstream, stream=stream) == (502, "upstream_invalid_reply", True)
        finally:
            await upstream.aclose()


@pytest.mark.parametrize("charset", ["undefined", "zlib", "rot13", "idna"])
async def test_an_error_reply_in_a_charset_that_is_no_text_encoding_keeps_its_status(
    kind: str, charset: str
) -> None:
    body = b'{"error": {"message": "busy", "type": "server_error"}}'
    reply = json_reply(body, "503 Service Unavailable")
    reply.head = reply.head.replace(
        b"application/json", f"application/json; charset={charset}".encode()
    )
    async with RawServer(reply) as server:
        upstream, _ = await pair(kind, server.root)
        try:
            assert await outcome(upstream) == (503, "upstream_error", True)
        finally:
            await upstream.aclose()


async def test_a_stream_is_read_as_utf8_whatever_its_charset() -> None:
    text = "héllo \u2028"
    data = b'data: {"choices": [{"delta": {"content": "' + text.encode() + b'"}}]}\n\n'
    head = SSE_HEAD.replace(b"text/event-stream", b"text/event-stream; charset=undefined")
    async with RawServer(RawReply(head, [data, b"data: [DONE]\n\n"], chunked=True)) as server:
        upstream, _ = await pair("openai", server.root)
        try:
            assert await outcome(upstream, stream=True) == (
                "ok",
                [{"choices": [{"delta": {"content": text}}]}],
            )
        finally:
            await upstream.aclose()
