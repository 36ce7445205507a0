"""Requests to OpenAI and Anthropic deployments are built without the SDK's per-call
machinery (`upstream.DirectRequests`): checked on the wire with a recording upstream
against the SDK's own `post` on the same client. The same headers (key, versions, betas,
user agent, `x-stainless-*`), in the same order, the same path and a JSON-equal body reach
the provider; every bad answer (an error status with or without an error object, a body
that is not JSON, a redirect, a timeout, a refused connection) becomes the same
`ProviderError` as through the SDK."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anthropic
import openai
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from switchyard.common.http import SERVER_KEEP_ALIVE_S, SERVER_OPTIONS
from switchyard.common.routing import Deployment
from switchyard.common.testing.processes import free_port
from switchyard.common.testing.servers import serve_app
from switchyard.inference.errors import ProviderError
from switchyard.inference.testing import SSE_HEAD, RawReply, RawServer, RecordingUpstream, Scripted
from switchyard.inference.upstream import (
    UPSTREAM_KEEPALIVE_S,
    AnthropicUpstream,
    DirectRequests,
    OpenAIUpstream,
    SDKUpstream,
    StreamEnd,
    create_upstream,
)

OPENAI_KEY = "sk-proj-DIRECTOPENAIKEY123"
ANTHROPIC_KEY = "sk-ant-api03-DIRECTANTHROPICKEY"
PATHS = {"openai": "/chat/completions", "anthropic": "/v1/messages"}
CLAUDE_CODE_HEADERS = {
    "anthropic-version": "2023-06-01",
    "anthropic-beta": "claude-code-20250219,interleaved-thinking-2025-05-14",
}
BODY = {
    "model": "upstream-model",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": 'héllo \u2028 {"json": [1, 2.5, null]}'}],
    "metadata": {"user_id": "u-1"},
    "tools": [{"name": "t", "input_schema": {"type": "object", "properties": {}}}],
}


def deployment(kind: str, base: str, **options: Any) -> Deployment:
    """A deployment of provider `kind` at the server rooted at `base`."""
    return Deployment(
        name=f"direct-{kind}",
        provider=kind,
        model="upstream-model",
        base_url=f"{base}/v1" if kind == "openai" else base,
        api_key_env=f"DIRECT_{kind.upper()}_KEY",
        **{"max_retries": 0, "timeout_s": 5, **options},
    )


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIRECT_OPENAI_KEY", OPENAI_KEY)
    monkeypatch.setenv("DIRECT_ANTHROPIC_KEY", ANTHROPIC_KEY)


@pytest.fixture(params=["openai", "anthropic"])
async def pair(
    request: pytest.FixtureRequest, recorder: RecordingUpstream
) -> AsyncIterator[tuple[SDKUpstream, SDKUpstream]]:
    """The upstream of one kind as created (direct requests), and the same client reached
    through the SDK's own `post` (no HTTP client handed over, so no direct requests)."""
    upstream = create_upstream(deployment(request.param, recorder.root))
    assert isinstance(upstream, SDKUpstream)
    through_sdk = type(upstream)(upstream.deployment, upstream.client)
    assert upstream.direct is not None and through_sdk.direct is None
    yield upstream, through_sdk
    await upstream.aclose()


def wire(recorder: RecordingUpstream) -> tuple[list[tuple[str, str]], str, Any, str]:
    """What reached the recording upstream last: its headers in order (but `host`, whose
    port is the server's), path, parsed body and query."""
    sent = recorder.last
    headers = [(name, value) for name, value in sent.headers.items() if name != "host"]
    return headers, sent.raw_path, sent.body, sent.query


@pytest.mark.parametrize(
    "headers",
    [
        {},
        CLAUDE_CODE_HEADERS,
        {**CLAUDE_CODE_HEADERS, "x-stainless-helper": "agents"},
        {"OpenAI-Beta": "assistants=v2", "User-Agent": "caller/1.0"},
        {"x-stainless-read-timeout": "99", "X-Stainless-Retry-Count": "3"},
        {"X-Stainless-Helper": "a, b", "x-stainless-helper": "b,c"},
    ],
    ids=["none", "claude-code", "helper", "casing", "timeouts-set", "helper-twice"],
)
async def test_the_headers_path_and_body_reaching_the_provider_are_the_sdks_own(
    pair: tuple[SDKUpstream, SDKUpstream], recorder: RecordingUpstream, headers: dict[str, str]
) -> None:
    upstream, through_sdk = pair
    path = PATHS[upstream.protocol]
    recorder.script(Scripted(json={"id": "x"}))

    assert await through_sdk.send(path, BODY, headers, 7.5) == {"id": "x"}
    expected = wire(recorder)
    assert await upstream.send(path, BODY, headers, 7.5) == {"id": "x"}

    assert wire(recorder) == expected
    assert recorder.requests[0].body == BODY == recorder.requests[1].body


async def test_a_large_reply_is_parsed_off_the_event_loop(
    pair: tuple[SDKUpstream, SDKUpstream],
    recorder: RecordingUpstream,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reply over `OFF_LOOP_BYTES` (embeddings of many inputs) is parsed in a worker
    thread, a small one at once, by both ways of sending; both come back whole."""
    import threading

    from switchyard.common.offloop import OFF_LOOP_BYTES
    from switchyard.inference import upstream as upstream_module

    parsed_on_loop: list[tuple[bool, bool]] = []
    real = upstream_module.parse_object
    loop_thread = threading.current_thread()

    def recorded(content: bytes | str, deployment: str) -> dict[str, Any]:
        on_loop = threading.current_thread() is loop_thread
        parsed_on_loop.append((len(content) > OFF_LOOP_BYTES, on_loop))
        return real(content, deployment)

    monkeypatch.setattr(upstream_module, "parse_object", recorded)
    upstream, through_sdk = pair
    path = PATHS[upstream.protocol]
    large = {"data": [{"embedding": [0.0123456789] * 1024, "index": i} for i in range(80)]}
    for sender in (upstream, through_sdk):
        recorder.script(Scripted(json=large), Scripted(json={"id": "x"}))
        assert await sender.send(path, BODY, {}, 7.5) == large
        assert await sender.send(path, BODY, {}, 7.5) == {"id": "x"}
    assert parsed_on_loop == [(True, False), (False, True)] * 2


async def test_an_anthropic_request_carries_its_key_version_betas_and_the_sdks_user_agent(
    recorder: RecordingUpstream,
) -> None:
    upstream = create_upstream(deployment("anthropic", recorder.root))
    recorder.script(Scripted(json={"id": "msg"}))
    try:
        await upstream.send("/v1/messages", BODY, CLAUDE_CODE_HEADERS, 30)
    finally:
        await upstream.aclose()

    sent = recorder.last
    assert sent.raw_path == "/v1/messages"
    assert sent.headers["authorization"] == f"Bearer {ANTHROPIC_KEY}"
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.headers["anthropic-beta"] == CLAUDE_CODE_HEADERS["anthropic-beta"]
    assert sent.headers["user-agent"] == f"AsyncAnthropic/Python {anthropic.__version__}"
    assert sent.headers["x-stainless-package-version"] == anthropic.__version__
    assert sent.headers["x-stainless-timeout"] == "30"
    assert sent.headers["content-type"] == "application/json"
    assert sent.body == BODY


async def test_an_openai_request_carries_its_key_and_the_sdks_user_agent(
    recorder: RecordingUpstream,
) -> None:
    upstream = create_upstream(deployment("openai", recorder.root))
    recorder.script(Scripted(json={"id": "chatcmpl"}))
    try:
        await upstream.send("/chat/completions", BODY, {}, 12.5)
    finally:
        await upstream.aclose()

    sent = recorder.last
    assert sent.raw_path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert sent.headers["user-agent"] == f"AsyncOpenAI/Python {openai.__version__}"
    assert sent.headers["x-stainless-read-timeout"] == "12.5"
    assert sent.headers["x-stainless-retry-count"] == "0"
    assert "openai-organization" not in sent.headers  # the SDK omits it when unset
    assert sent.body == BODY


async def test_a_stream_arrives_event_by_event_through_direct_requests(
    pair: tuple[SDKUpstream, SDKUpstream], recorder: RecordingUpstream
) -> None:
    upstream, through_sdk = pair
    path = PATHS[upstream.protocol]
    events: list[tuple[str | None, Any]] = [
        ("message_start", {"type": "message_start", "n": 1}),
        (None, {"choices": [{"delta": {"content": "a\u2028b"}}]}),
        (None, "[DONE]"),
    ]
    recorder.script(Scripted(events=events))

    got = [(sse.event, sse.data) async for sse in upstream.stream(path, BODY, {}, 5)]
    headers = wire(recorder)
    assert [(sse.event, sse.data) async for sse in through_sdk.stream(path, BODY, {}, 5)] == got
    assert got == [events[0], events[1]]
    assert wire(recorder) == headers


async def test_a_lone_surrogate_in_a_reply_is_a_replacement_character_not_a_502(
    pair: tuple[SDKUpstream, SDKUpstream], recorder: RecordingUpstream
) -> None:
    # An emoji's high half without its low half: valid JSON, which orjson refuses.
    upstream, through_sdk = pair
    path = PATHS[upstream.protocol]
    split = '{"choices": [{"delta": {"content": "a\\ud83d"}}], "k": {"\\ude00": "\\ud83d\\ude00"}}'
    recorder.script(
        Scripted(events=[(None, split), (None, "[DONE]")]),
        Scripted(chunks=[split.encode()], media_type="application/json"),
    )
    expected = {"choices": [{"delta": {"content": "a\ufffd"}}], "k": {"\ufffd": "\U0001f600"}}

    streamed = [sse.data async for sse in upstream.stream(path, BODY, {}, 5)]
    assert streamed == [expected]
    assert await upstream.send(path, BODY, {}, 5) == expected
    assert await through_sdk.send(path, BODY, {}, 5) == expected


async def test_a_header_value_beyond_ascii_is_sent_or_refused_as_through_the_sdk(
    pair: tuple[SDKUpstream, SDKUpstream], recorder: RecordingUpstream
) -> None:
    upstream, through_sdk = pair
    recorder.script(Scripted(json={"id": "x"}))
    outcomes = []
    for candidate in (upstream, through_sdk):
        try:
            await candidate.send(PATHS[candidate.protocol], BODY, {"anthropic-beta": "bêta"}, 5)
            outcomes.append(("sent", recorder.last.headers["anthropic-beta"]))
        except ProviderError as error:
            outcomes.append((str(error.status), error.code or ""))
    assert outcomes[0] == outcomes[1]
    # Anthropic's SDK sends it in UTF-8 (read back here as Latin-1); OpenAI's refuses it.
    expected = ("sent", "bÃªta") if upstream.protocol == "anthropic" else ("400", "invalid_request")
    assert outcomes[0] == expected


def failure_of(error: ProviderError) -> dict[str, Any]:
    """Everything about a ProviderError the client and the retry logic see."""
    return {
        name: getattr(error, name)
        for name in (
            "status",
            "type",
            "message",
            "code",
            "param",
            "vendor",
            "retryable",
            "retry_same",
            "unhealthy",
            "retry_after",
        )
    }


async def failures(
    upstream: SDKUpstream, through_sdk: SDKUpstream, *, stream: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ProviderError of one call through direct requests, then through the SDK."""
    results = []
    for candidate in (upstream, through_sdk):
        path = PATHS[candidate.protocol]
        with pytest.raises(ProviderError) as caught:
            if stream:
                async for _ in candidate.stream(path, BODY, {}, 5):
                    pass
            else:
                await candidate.send(path, BODY, {}, 5)
        results.append(failure_of(caught.value))
    return results[0], results[1]


BAD_ANSWERS = {
    "openai-error-object": Scripted(
        json={
            "error": {
                "message": "bad temp",
                "type": "invalid_request_error",
                "param": "temperature",
                "code": "invalid_value",
            }
        },
        status=400,
    ),
    "anthropic-error-object": Scripted(
        json={"type": "error", "error": {"type": "invalid_request_error", "message": "no"}},
        status=400,
    ),
    "error-as-a-string": Scripted(json={"error": "nothing here", "message": "m"}, status=404),
    "no-error-object": Scripted(json={"detail": "exploded"}, status=500),
    "json-not-an-object": Scripted(json=[1, 2], status=422),
    "overloaded": Scripted(
        json={"type": "error", "error": {"type": "overloaded_error", "message": "busy"}},
        status=529,
    ),
    "rate-limited": Scripted(
        json={"error": {"message": "slow down", "type": "rate_limit_error"}},
        status=429,
        headers={"retry-after": "7"},
    ),
    "rate-limited-by-limit-headers": Scripted(
        json={"error": {"message": "slow down", "type": "tokens", "code": "rate_limit_exceeded"}},
        status=429,
        headers={
            "x-ratelimit-remaining-requests": "5",
            "x-ratelimit-reset-requests": "1s",
            "x-ratelimit-remaining-tokens": "0",
            "x-ratelimit-reset-tokens": "6m0s",
        },
    ),
    "key-refused": Scripted(json={"error": {"message": f"bad key {OPENAI_KEY}"}}, status=401),
    "echoed-key": Scripted(json={"error": {"message": f"key {ANTHROPIC_KEY} ok?"}}, status=400),
    "not-json": Scripted(chunks=[b"<html>Bad Gateway</html>"], status=502, media_type="text/html"),
    "empty-body": Scripted(chunks=[], status=503, media_type="text/plain"),
    "request-timeout": Scripted(json={}, status=408),
}


@pytest.mark.parametrize("stream", [False, True], ids=["send", "stream"])
@pytest.mark.parametrize("answer", list(BAD_ANSWERS), ids=list(BAD_ANSWERS))
async def test_a_bad_answer_becomes_the_same_error_as_through_the_sdk(
    pair: tuple[SDKUpstream, SDKUpstream], recorder: RecordingUpstream, answer: str, stream: bool
) -> None:
    upstream, through_sdk = pair
    recorder.script(BAD_ANSWERS[answer])

    direct, sdk = await failures(upstream, through_sdk, stream=stream)

    assert direct == sdk
    assert ANTHROPIC_KEY not in direct["message"] and OPENAI_KEY not in direct["message"]


async def test_a_429_without_retry_after_waits_until_its_spent_limit_refills(
    recorder: RecordingUpstream,
) -> None:
    # OpenAI's 429 names the refill of each limit, not always a Retry-After: the tokens
    # limit is the one at 0, so the wait is its 6 minutes, not the requests' second.
    upstream = create_upstream(deployment("openai", recorder.root))
    recorder.script(BAD_ANSWERS["rate-limited-by-limit-headers"])
    try:
        with pytest.raises(ProviderError) as caught:
            await upstream.send("/chat/completions", BODY, {}, 5)
    finally:
        await upstream.aclose()
    assert (caught.value.status, caught.value.retry_after) == (429, 360.0)


async def test_an_upstream_error_reaches_the_client_with_its_own_status_type_and_param(
    recorder: RecordingUpstream,
) -> None:
    upstream = create_upstream(deployment("openai", recorder.root))
    recorder.script(BAD_ANSWERS["openai-error-object"])
    try:
        with pytest.raises(ProviderError) as caught:
            await upstream.send("/chat/completions", BODY, {}, 5)
    finally:
        await upstream.aclose()
    assert failure_of(caught.value) | {"retry_same": None} == {
        "status": 400,
        "type": "invalid_request_error",
        "message": "bad temp",
        "code": "invalid_value",
        "param": "temperature",
        "vendor": "openai",
        "retryable": False,
        "retry_same": None,
        "unhealthy": False,
        "retry_after": None,
    }


# Error replies of servers that do not follow OpenAI's shape (vLLM, FastAPI apps, plain
# text), and the message and code the client must get from each.
ODD_ERRORS = {
    "string-error": (
        Scripted(json={"error": "model 'x' not found"}, status=400),
        ("model 'x' not found", None),
    ),
    "fastapi-detail": (
        Scripted(
            json={"detail": [{"loc": ["body", "model"], "msg": "field required"}]}, status=422
        ),
        ("body.model: field required", None),
    ),
    "detail-string": (Scripted(json={"detail": "Not Found"}, status=404), ("Not Found", None)),
    "numeric-code": (
        Scripted(json={"object": "error", "message": "too long", "code": 400}, status=400),
        ("too long", "400"),
    ),
    "plain-text": (
        Scripted(chunks=[b"model is loading\n"], status=400, media_type="text/plain"),
        ("model is loading", None),
    ),
}


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
@pytest.mark.parametrize("answer", list(ODD_ERRORS), ids=list(ODD_ERRORS))
async def test_an_error_in_another_shape_keeps_its_message_and_code(
    recorder: RecordingUpstream, kind: str, answer: str
) -> None:
    scripted, (message, code) = ODD_ERRORS[answer]
    upstream = create_upstream(deployment(kind, recorder.root))
    recorder.script(scripted)
    try:
        with pytest.raises(ProviderError) as caught:
            await upstream.send(PATHS[kind], BODY, {}, 5)
    finally:
        await upstream.aclose()
    assert (caught.value.status, caught.value.message, caught.value.code) == (
        scripted.status,
        message,
        code,
    )


async def test_an_upstream_408_reaches_the_client_as_it_was_after_the_retries(
    recorder: RecordingUpstream,
) -> None:
    upstream = create_upstream(deployment("openai", recorder.root))
    recorder.script(
        Scripted(json={"error": {"message": "took too long", "type": "timeout"}}, status=408)
    )
    try:
        with pytest.raises(ProviderError) as caught:
            await upstream.send("/chat/completions", BODY, {}, 5)
    finally:
        await upstream.aclose()
    failure = caught.value
    assert (failure.status, failure.type, failure.message) == (408, "timeout", "took too long")
    assert failure.retryable  # another attempt, or another deployment, may answer


async def test_an_html_error_page_from_anthropic_is_not_relayed_as_its_message(
    recorder: RecordingUpstream,
) -> None:
    upstream = create_upstream(deployment("anthropic", recorder.root))
    recorder.script(BAD_ANSWERS["not-json"])
    try:
        with pytest.raises(ProviderError) as caught:
            await upstream.send("/v1/messages", BODY, {}, 5)
    finally:
        await upstream.aclose()
    assert (caught.value.status, caught.value.code) == (502, None)  # it named none
    assert caught.value.metric_code == "upstream_error"
    # Markup says nothing a client can use: the status and its reason do.
    assert caught.value.message == "HTTP 502 Bad Gateway"
    assert caught.value.retryable


async def test_a_rate_limit_waits_as_long_as_the_upstream_says(
    pair: tuple[SDKUpstream, SDKUpstream], recorder: RecordingUpstream
) -> None:
    upstream, _ = pair
    recorder.script(BAD_ANSWERS["rate-limited"])
    with pytest.raises(ProviderError) as caught:
        await upstream.send(PATHS[upstream.protocol], BODY, {}, 5)
    assert (caught.value.status, caught.value.retry_after) == (429, 7.0)
    assert caught.value.retryable and not caught.value.unhealthy


@pytest.mark.parametrize("stream", [False, True], ids=["send", "stream"])
async def test_a_redirect_is_never_followed(
    pair: tuple[SDKUpstream, SDKUpstream], recorder: RecordingUpstream, stream: bool
) -> None:
    upstream, through_sdk = pair
    recorder.script(
        Scripted(json={}, status=307, headers={"location": f"{recorder.root}/elsewhere"})
    )

    direct, sdk = await failures(upstream, through_sdk, stream=stream)

    assert direct == sdk
    assert (direct["status"], direct["code"]) == (502, "upstream_redirect")
    assert [sent.raw_path for sent in recorder.requests] == [recorder.requests[0].raw_path] * 2
    assert "/elsewhere" not in {sent.raw_path for sent in recorder.requests}


@pytest.fixture(scope="module")
def slow_server() -> Iterator[str]:
    """A provider that answers nothing for 3 seconds."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def slow(_: Any) -> JSONResponse:
        await asyncio.sleep(3)
        return JSONResponse({"id": "late"})

    with serve_app(Starlette(routes=[Route("/{path:path}", slow, methods=["POST"])])) as root:
        yield root


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
@pytest.mark.parametrize("stream", [False, True], ids=["send", "stream"])
async def test_an_upstream_slower_than_the_timeout_fails_as_a_timeout(
    slow_server: str, kind: str, stream: bool
) -> None:
    upstream = create_upstream(deployment(kind, slow_server))
    assert isinstance(upstream, SDKUpstream)
    through_sdk = type(upstream)(upstream.deployment, upstream.client)
    results = []
    try:
        for candidate in (upstream, through_sdk):
            with pytest.raises(ProviderError) as caught:
                if stream:
                    async for _ in candidate.stream(PATHS[kind], BODY, {}, 0.3):
                        pass
                else:
                    await candidate.send(PATHS[kind], BODY, {}, 0.3)
            results.append(failure_of(caught.value))
    finally:
        await upstream.aclose()
    assert results[0] == results[1]
    assert (results[0]["status"], results[0]["code"]) == (504, "upstream_timeout")


async def failures_at(
    kind: str, base: str, *, stream: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """`failures` of a `kind` deployment at `base`, direct then through the SDK."""
    upstream = create_upstream(deployment(kind, base))
    assert isinstance(upstream, SDKUpstream)
    through_sdk = type(upstream)(upstream.deployment, upstream.client)
    try:
        return await failures(upstream, through_sdk, stream=stream)
    finally:
        await upstream.aclose()


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_an_upstream_that_refuses_the_connection_fails_the_same_way(kind: str) -> None:
    direct, sdk = await failures_at(kind, f"http://127.0.0.1:{free_port()}", stream=False)
    assert direct == sdk
    assert (direct["status"], direct["code"], direct["retryable"]) == (
        502,
        "upstream_unreachable",
        True,
    )


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_a_stream_cut_off_half_way_fails_the_same_way(kind: str) -> None:
    # The first event of a stream, then the connection closed before the stream's end.
    cut = RawReply(SSE_HEAD, [b'data: {"choices": [{}]}\n\n'], chunked=True, cut=True)
    async with RawServer(cut) as server:
        direct, sdk = await failures_at(kind, server.root, stream=True)
    assert direct == sdk
    assert (direct["status"], direct["code"]) == (502, "upstream_unreachable")


# A body delimited by the connection's close (no length, not chunked): HTTP cannot tell a
# cut from the end, only the stream's own end can.
CLOSE_DELIMITED_SSE = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n"
STARTED = {
    "openai": (
        b'data: {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 0, '
        b'"delta": {"role": "assistant", "content": "Hel"}, "finish_reason": null}]}\n\n'
    ),
    "anthropic": (
        b'event: message_start\ndata: {"type": "message_start", "message": {"id": "m", '
        b'"type": "message", "role": "assistant", "content": [], "model": "m", '
        b'"usage": {"input_tokens": 3, "output_tokens": 0}}}\n\n'
        b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, '
        b'"delta": {"type": "text_delta", "text": "Hel"}}\n\n'
        b'event: message_delta\ndata: {"type": "message_delta", "delta": '
        b'{"stop_reason": "end_turn"}, "usage": {"output_tokens": 1}}\n\n'
    ),
}


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_a_stream_whose_connection_closes_before_its_end_fails_as_a_cut(kind: str) -> None:
    # Events, then the connection closed: no `[DONE]`, no finish_reason, no
    # `message_stop`. The client must not get a stream that looks whole.
    cut = RawReply(CLOSE_DELIMITED_SSE, [STARTED[kind]], cut=True)
    async with RawServer(cut) as server:
        direct, sdk = await failures_at(kind, server.root, stream=True)
    assert direct == sdk
    assert (direct["status"], direct["code"], direct["retryable"]) == (
        502,
        "upstream_unreachable",
        True,
    )


async def test_a_chat_stream_closed_after_every_choice_finished_is_whole() -> None:
    # Some OpenAI-compatible servers close without `[DONE]`: nothing of the answer is
    # missing once every choice has its finish_reason.
    finished = (
        b'data: {"id": "c", "object": "chat.completion.chunk", "choices": [{"index": 1, '
        b'"delta": {"content": "lo"}, "finish_reason": "stop"}]}\n\n'
    )
    second = STARTED["openai"].replace(b'"index": 0', b'"index": 1')
    last = finished.replace(b'"index": 1', b'"index": 0')
    results = {}
    for name, chunks in {
        "one choice still open": [STARTED["openai"], second, finished],
        "every choice finished": [STARTED["openai"], second, finished, last],
    }.items():
        async with RawServer(RawReply(CLOSE_DELIMITED_SSE, chunks, cut=True)) as server:
            upstream = create_upstream(deployment("openai", server.root))
            try:
                results[name] = [
                    sse.data async for sse in upstream.stream(PATHS["openai"], BODY, {}, 5)
                ]
            except ProviderError as exc:
                results[name] = exc.code
            finally:
                await upstream.aclose()
    assert results["one choice still open"] == "upstream_unreachable"
    assert [
        choice["index"] for data in results["every choice finished"] for choice in data["choices"]
    ] == [0, 1, 1, 0]


def test_a_stream_ends_with_its_own_ending_event_or_every_choice_finished() -> None:
    def ended(*events: dict[str, Any]) -> bool:
        end = StreamEnd()
        for data in events:
            end.see(data)
        return end.ended

    open_choice = {"choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": None}]}
    assert not ended()
    assert not ended(open_choice)
    assert ended(open_choice, {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    usage_chunk = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}
    assert ended(open_choice, usage_chunk)
    assert not ended(open_choice, {"choices": []})
    assert not ended({"type": "message_start"}, {"type": "message_delta"})
    for ending in ("message_stop", "response.completed", "response.incomplete", "response.failed"):
        assert ended({"type": "response.created"}, {"type": ending})
    assert not ended({"type": "response.created"}, {"type": "response.output_text.delta"})


@pytest.mark.parametrize(
    ("event_line", "code", "status"),
    [
        (b"", "invalid_prompt", 400),
        (b"event: error\n", "rate_limit_exceeded", 429),
        (b"event: error\n", "invalid_image_url", 400),
        (b"event: error\n", "vector_store_timeout", 504),
        (b"event: error\n", "server_error", 500),
        # (`invalid_api_key` is Switchyard's key refused: test_error_types.py.)
    ],
)
async def test_a_responses_error_event_fails_with_its_own_code_and_the_status_it_stands_for(
    event_line: bytes, code: str, status: int
) -> None:
    # The Responses API's `error` event is the error itself (`code`, `message`), and a
    # server may give its type only in the data.
    error = (
        event_line
        + b'data: {"type": "error", "code": "'
        + code.encode()
        + b'", "message": "Bad prompt.", "param": null}\n\n'
    )
    async with RawServer(RawReply(SSE_HEAD, [error], chunked=True)) as server:
        upstream = create_upstream(deployment("openai", server.root))
        try:
            with pytest.raises(ProviderError) as caught:
                async for _ in upstream.stream("/responses", BODY, {}, 5):
                    pass
        finally:
            await upstream.aclose()
    assert (caught.value.code, caught.value.message) == (code, "Bad prompt.")
    assert caught.value.status == status and caught.value.type != "error"


async def test_a_body_that_is_not_json_is_refused_as_a_bad_request(
    recorder: RecordingUpstream,
) -> None:
    upstream = create_upstream(deployment("anthropic", recorder.root))
    recorder.script(Scripted(json={"id": "never"}))
    try:
        with pytest.raises(ProviderError) as caught:
            await upstream.send("/v1/messages", {"model": "m", "x": {1, 2}}, {}, 5)
    finally:
        await upstream.aclose()
    assert (caught.value.status, caught.value.code) == (400, "invalid_request")
    assert recorder.requests == []


async def test_only_plain_openai_and_anthropic_deployments_skip_the_sdks_request_building(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DIRECT_GEMINI_KEY", "gemini-key")
    plain = [create_upstream(deployment(kind, "http://127.0.0.1:9")) for kind in PATHS]
    gemini = create_upstream(
        Deployment(
            name="g", provider="gemini", model="gemini-2.0-flash", api_key_env="DIRECT_GEMINI_KEY"
        )
    )
    assert isinstance(plain[0], OpenAIUpstream) and isinstance(plain[1], AnthropicUpstream)
    assert all(upstream.direct is not None for upstream in plain)  # type: ignore[attr-defined]
    for upstream in (*plain, gemini):
        await upstream.aclose()
    assert isinstance(gemini, SDKUpstream) and gemini.direct is None


async def test_connecting_is_bounded_by_the_deployments_timeout_however_long_a_reply_is_awaited(
    pair: tuple[SDKUpstream, SDKUpstream],
) -> None:
    """A non-streamed call waits for its reply up to `response_timeout_s`; connecting to
    an unreachable upstream is still given up after `timeout_s`, through the SDK's client
    and through direct requests alike."""
    upstream, through_sdk = pair
    sdk_timeout = through_sdk._options({}, 600.0)["timeout"]
    direct_timeout = DirectRequests.timeout(600.0, upstream._connect_s(600.0))

    assert (sdk_timeout.connect, sdk_timeout.pool, sdk_timeout.read) == (5, 5, 600.0)
    assert (direct_timeout.sock_connect, direct_timeout.connect) == (5, 5)
    assert direct_timeout.sock_read == 600.0 and direct_timeout.total is None
    # A call allowed less than the deployment's timeout connects within it too.
    assert upstream._connect_s(0.5) == 0.5


async def peer_port(request: Request) -> JSONResponse:
    assert request.client is not None
    return JSONResponse({"port": request.client.port})


@pytest.mark.parametrize("direct", [True, False], ids=["direct-requests", "through-the-sdk"])
async def test_an_idle_connection_is_let_go_before_a_five_second_server_closes_it(
    direct: bool,
) -> None:
    """uvicorn (vLLM's server, the simulator's) and Node close an idle connection after
    5 s; a call sent on one as it closes fails, and no client repeats a POST. Idle longer
    than `UPSTREAM_KEEPALIVE_S`, the next call opens a new connection."""
    assert UPSTREAM_KEEPALIVE_S < SERVER_KEEP_ALIVE_S
    port = free_port()
    app = Starlette(routes=[Route("/v1/chat/completions", peer_port, methods=["POST"])])
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", **SERVER_OPTIONS)
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    upstream = create_upstream(deployment("openai", f"http://127.0.0.1:{port}"))
    assert isinstance(upstream, SDKUpstream)
    if not direct:
        upstream = type(upstream)(upstream.deployment, upstream.client)
    try:
        for _ in range(1000):
            if server.started:
                break
            await asyncio.sleep(0.01)
        path = PATHS["openai"]
        first = (await upstream.send(path, BODY, {}, 5))["port"]
        again = (await upstream.send(path, BODY, {}, 5))["port"]
        await asyncio.sleep(UPSTREAM_KEEPALIVE_S + 0.5)  # still open at the server
        later = (await upstream.send(path, BODY, {}, 5))["port"]
        assert again == first  # kept alive while in use
        assert later != first
    finally:
        await upstream.aclose()
        server.should_exit = True
        await serving


async def test_an_error_string_in_place_of_a_chunk_fails_the_stream_with_its_message(
    pair: tuple[SDKUpstream, SDKUpstream], recorder: RecordingUpstream
) -> None:
    # Some OpenAI-compatible servers stream `{"error": "<message>", "error_type": ...}`:
    # a failure quoting the upstream, not a chunk passed on, nor a success once `[DONE]`.
    upstream, _ = pair
    events: list[tuple[str | None, Any]] = [
        (None, {"choices": [{"delta": {"content": "a"}}]}),
        (None, {"error": "Model is overloaded", "error_type": "overloaded"}),
        (None, "[DONE]"),
    ]
    recorder.script(Scripted(events=events))

    got = []
    with pytest.raises(ProviderError) as failure:
        async for sse in upstream.stream(PATHS[upstream.protocol], BODY, {}, 5):
            got.append(sse.data)
    assert got == [events[0][1]]
    assert "Model is overloaded" in failure.value.message
