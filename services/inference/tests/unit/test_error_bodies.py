"""Whatever an upstream (or a proxy in front of it) answers an error with, the client gets
the upstream's status and a clear, bounded, printable message: the body's own message
wherever its server keeps it (OpenAI's and Anthropic's `error.message`, NestJS's list
`message`, FastAPI's `detail` object or validation list, GraphQL's and Cloudflare's
`errors` list, an error object a proxy wrapped in another), else the status and its
reason (`HTTP 503 Service Unavailable`), never the body's Python repr, markup, control
bytes or JSON the parser refused. Both protocols give the same message for every body,
through direct requests and through the SDK's `post`."""

from __future__ import annotations

import pytest

from switchyard.common.events import ClientAPI
from switchyard.common.routing import Deployment
from switchyard.inference.errors import ProviderError
from switchyard.inference.testing import RecordingUpstream, Scripted
from switchyard.inference.upstream import SDKUpstream, create_upstream

PATHS = {"openai": "/chat/completions", "anthropic": "/v1/messages"}
BODY = {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}
# What a client of each API gets as the type of an error without one, by status.
CLIENT_API = {
    "openai": ClientAPI.OPENAI_CHAT_COMPLETIONS,
    "anthropic": ClientAPI.ANTHROPIC_MESSAGES,
}


def raw(body: bytes, status: int, media_type: str = "application/json") -> Scripted:
    return Scripted(chunks=[body], status=status, media_type=media_type)


DEEP = b"[" * 5000 + b"]" * 5000
HUGE_MESSAGE = "y" * 50_000

# Each body, its status, and the message and upstream type the client must get.
BODIES: dict[str, tuple[Scripted, str, str | None]] = {
    "nestjs-list-message": (
        Scripted(
            json={"statusCode": 400, "message": ["a", "b"], "error": "Bad Request"}, status=400
        ),
        "a; b",
        None,
    ),
    "detail-object": (
        Scripted(json={"detail": {"msg": "model is busy"}}, status=503),
        "model is busy",
        None,
    ),
    "fastapi-validation-list": (
        Scripted(
            json={
                "detail": [
                    {"loc": ["body", "model"], "msg": "field required", "type": "missing"},
                    {"loc": ["body", "n"], "msg": "not an int", "type": "int_parsing"},
                ]
            },
            status=422,
        ),
        "body.model: field required; body.n: not an int",
        None,
    ),
    "graphql-errors-list": (
        Scripted(
            json={"errors": [{"message": "quota exceeded"}, {"message": "retry"}]}, status=429
        ),
        "quota exceeded; retry",
        None,
    ),
    "cloudflare-errors-list": (
        Scripted(
            json={"success": False, "errors": [{"code": 7003, "message": "No route"}]}, status=404
        ),
        "No route",
        None,
    ),
    "error-null": (
        Scripted(json={"error": None}, status=503),
        "HTTP 503 Service Unavailable",
        None,
    ),
    "nested-error": (
        Scripted(
            json={"error": {"error": {"type": "invalid_request_error", "message": "bad model"}}},
            status=400,
        ),
        "bad model",
        "invalid_request_error",
    ),
    "anthropic-envelope-wrapped": (
        Scripted(
            json={
                "error": {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
            },
            status=529,
        ),
        "busy",
        "overloaded_error",
    ),
    "object-without-message": (
        Scripted(json={"foo": 1}, status=500),
        "HTTP 500 Internal Server Error",
        None,
    ),
    "binary-garbage": (
        raw(bytes(range(256)) * 4, 502, "application/octet-stream"),
        "HTTP 502 Bad Gateway",
        None,
    ),
    "control-characters-in-message": (
        Scripted(json={"error": {"message": "bad\x00 \x1b[31mthing\x07\n\tthere"}}, status=400),
        "bad [31mthing there",
        None,
    ),
    "nested-5000-deep": (raw(DEEP, 500), "HTTP 500 Internal Server Error", None),
    "latin-1-text": (
        raw("modèle inconnu".encode("latin-1"), 404, "text/plain"),
        "mod\ufffdle inconnu",
        None,
    ),
    "json-string": (Scripted(json="upstream says no", status=400), "upstream says no", None),
    "json-number": (Scripted(json=42, status=500), "HTTP 500 Internal Server Error", None),
    "json-array": (Scripted(json=[1, 2], status=422), "HTTP 422 Unprocessable Entity", None),
    "empty": (raw(b"", 503, "text/plain"), "HTTP 503 Service Unavailable", None),
    "html": (
        raw(b"<html><body>Bad Gateway</body></html>", 502, "text/html"),
        "HTTP 502 Bad Gateway",
        None,
    ),
    "huge-text": (raw(b"z" * 1_000_000, 500, "text/plain"), "z" * 1000 + "\u2026", None),
    "huge-message": (
        Scripted(json={"error": {"message": HUGE_MESSAGE}}, status=400),
        "y" * 1000 + "\u2026",
        None,
    ),
    "status-without-reason": (Scripted(json={}, status=529), "HTTP 529", None),
}


async def failure(recorder: RecordingUpstream, kind: str, sdk: bool) -> ProviderError:
    """The ProviderError of one call to a `kind` deployment, by direct requests or through
    the SDK's own `post`."""
    upstream = create_upstream(
        Deployment(
            name=f"odd-{kind}",
            provider=kind,
            model="m",
            base_url=f"{recorder.root}/v1" if kind == "openai" else recorder.root,
            max_retries=0,
            timeout_s=5,
        )
    )
    assert isinstance(upstream, SDKUpstream)
    if sdk:
        upstream = type(upstream)(upstream.deployment, upstream.client)
    try:
        with pytest.raises(ProviderError) as caught:
            await upstream.send(PATHS[kind], BODY, {}, 5)
    finally:
        await upstream.aclose()
    return caught.value


@pytest.mark.parametrize("sdk", [False, True], ids=["direct", "sdk"])
@pytest.mark.parametrize("kind", ["openai", "anthropic"])
@pytest.mark.parametrize("body", list(BODIES), ids=list(BODIES))
async def test_every_error_body_gives_the_client_its_status_and_a_clear_message(
    recorder: RecordingUpstream, monkeypatch: pytest.MonkeyPatch, body: str, kind: str, sdk: bool
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-odd-bodies")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-odd-bodies")
    scripted, message, upstream_type = BODIES[body]
    recorder.script(scripted)

    error = await failure(recorder, kind, sdk)
    info = error.to_error_info(CLIENT_API[kind])

    assert (error.status, error.type, error.message) == (scripted.status, upstream_type, message)
    assert error.code != "upstream_unreachable"
    assert info.message == message and info.message.isprintable()
    assert info.status == (503 if kind == "openai" and scripted.status == 529 else scripted.status)
