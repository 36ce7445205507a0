"""Gateway under test: the real app on the in-memory bus, a fake inference service
subscribed to the bus, and the auth service replaced by an httpx mock transport."""

from __future__ import annotations

import hashlib
import inspect
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from switchyard.common.bus import InMemoryBus
from switchyard.common.events import (
    ChatChunk,
    ChatChunkData,
    ChatCompleted,
    ChatCompletedData,
    ChatFailed,
    ChatFailedData,
    ChatRequested,
    ClientAPI,
    ErrorInfo,
    Event,
    StreamEvent,
    TerminalStatus,
    TokenUsage,
)
from switchyard.common.topics import Topics
from switchyard.gateway.app import create_app
from switchyard.gateway.config import Settings

API_KEY = "sk-sy-" + "k" * 43
# What Anthropic's SDKs send with every request; Anthropic's API refuses one without it.
ANTHROPIC_VERSION = "2023-06-01"
# A request extension that keeps `as_anthropic_clients_send` off a request.
WITHOUT_ANTHROPIC_VERSION = "switchyard_test_without_anthropic_version"


async def as_anthropic_clients_send(request: httpx.Request) -> None:
    """The harness client's request hook: a request to Anthropic's Messages paths gets
    `anthropic-version` unless it has one, as every Anthropic client sends it; a test of
    a request without it says so with the WITHOUT_ANTHROPIC_VERSION extension."""
    if (
        request.url.path.startswith("/v1/messages")
        and "anthropic-version" not in request.headers
        and not request.extensions.get(WITHOUT_ANTHROPIC_VERSION)
    ):
        request.headers["anthropic-version"] = ANTHROPIC_VERSION


# What the fake auth answers for API_KEY, by its hash or by its id.
TEST_KEY_IDENTITY = {
    "key_id": "key-1",
    "user_id": "user-1",
    "tenant": "acme",
    "role": "member",
    "scopes": ["chat", "history:read"],
    "allowed_models": None,
    "expires_at": None,
}
KID = "test-kid"


@dataclass
class FakeAuth:
    """Plays the auth service: one valid API key, a JWKS with one RSA key."""

    private_key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    lookups: int = 0
    # Users auth no longer knows (GET /internal/v1/users/{id} answers 404).
    missing_users: set = field(default_factory=set)
    # What GET /internal/v1/revocations answers (the gateway's start-up snapshot).
    revocations: dict = field(
        default_factory=lambda: {
            "generated_at": "2025-01-01T00:00:00Z",
            "revoked_tokens": [],
            "revoked_sessions": [],
            "revoked_api_keys": [],
            "disabled_users": [],
        }
    )

    def jwks(self) -> dict:
        jwk = RSAAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        jwk.update(kid=KID, alg="RS256", use="sig")
        return {"keys": [jwk]}

    def token(self, **overrides) -> str:
        now = int(time.time())
        claims = {
            "iss": "switchyard-auth",
            "aud": "switchyard",
            "sub": "user-jwt",
            "tenant": "acme",
            "role": "member",
            "scopes": ["chat"],
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "jti": uuid.uuid4().hex,
        }
        claims.update(overrides)
        claims = {key: value for key, value in claims.items() if value is not None}
        return jwt.encode(claims, self.private_key, algorithm="RS256", headers={"kid": KID})

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/.well-known/jwks.json":
            return httpx.Response(200, json=self.jwks())
        if request.url.path == "/internal/v1/api-keys/lookup":
            self.lookups += 1
            body = request.read()
            import json

            if json.loads(body)["secret_hash"] == hashlib.sha256(API_KEY.encode()).hexdigest():
                return httpx.Response(200, json=TEST_KEY_IDENTITY)
            return httpx.Response(404, json={"error": {"message": "no such key"}})
        if request.url.path.startswith("/internal/v1/api-keys/"):
            # The test key by its id, as admissions of replayed requests check it.
            if request.url.path.rsplit("/", 1)[1] == "key-1":
                return httpx.Response(
                    200, json={**TEST_KEY_IDENTITY, "revoked": False, "user_active": True}
                )
            return httpx.Response(
                404, json={"error": {"message": "API key not found.", "code": "api_key_not_found"}}
            )
        if request.url.path == "/internal/v1/revocations":
            return httpx.Response(200, json=self.revocations)
        if request.url.path.startswith("/internal/v1/users/"):
            user_id = request.url.path.rsplit("/", 1)[1]
            if user_id in self.missing_users:
                return httpx.Response(
                    404, json={"error": {"message": "No such user.", "code": "user_not_found"}}
                )
            return httpx.Response(200, json={"user_id": user_id, "tenant": "acme", "active": True})
        return httpx.Response(404)


Responder = Callable[[ChatRequested], Awaitable[list]]
RUN = "run-1"


def asgi_scope(method: str, path: str, raw_path: bytes | None = None) -> dict:
    """An HTTP scope as the server hands it to the app, for a request with the test API key
    and a JSON body: `path` decoded, `raw_path` as the client sent it (by default `path`).
    For what an HTTP client would not send as it is (`..` segments, a body cut short)."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode() if raw_path is None else raw_path,
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"authorization", f"Bearer {API_KEY}".encode()),
            (b"content-type", b"application/json"),
        ],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }


def openai_completion(model: str, text: str) -> dict:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4},
    }


def anthropic_message(model: str, text: str) -> dict:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 2, "output_tokens": 2},
    }


def completed_reply(
    request: ChatRequested, text: str = "hi there", response: dict | None = None
) -> ChatCompleted:
    """The completion inference would publish, in the API the client called."""
    if response is None:
        if request.data.api == ClientAPI.ANTHROPIC_MESSAGES:
            response = anthropic_message(request.data.model, text)
        else:
            response = openai_completion(request.data.model, text)
    return ChatCompleted(
        source="test",
        tenant=request.tenant,
        request_id=request.request_id,
        data=ChatCompletedData(
            api=request.data.api,
            response=response,
            provider="fake",
            deployment="fake",
            upstream_api=request.data.api,
            usage=TokenUsage(input_tokens=2, output_tokens=2),
            latency_ms=1,
        ),
    )


def failed_reply(
    request: ChatRequested,
    status: int,
    type: str,
    message: str = "failed upstream",
    **details,
) -> ChatFailed:
    return ChatFailed(
        source="test",
        tenant=request.tenant,
        request_id=request.request_id,
        data=ChatFailedData(
            status=TerminalStatus.FAILED,
            error=ErrorInfo(status=status, type=type, message=message, **details),
        ),
    )


def record(
    request: ChatRequested, sequence: int, events: list[StreamEvent], run: str = RUN
) -> ChatChunk:
    """One `chat.chunk` record holding `events`."""
    return ChatChunk(
        source="test",
        tenant=request.tenant,
        request_id=request.request_id,
        data=ChatChunkData(sequence=sequence, run=run, events=events),
    )


def openai_chunk_event(model: str, content: str) -> StreamEvent:
    return StreamEvent(
        data={
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": model,
            "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
        }
    )


def text_delta_event(content: str) -> StreamEvent:
    return StreamEvent(
        event="content_block_delta",
        data={
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": content},
        },
    )


def chunk(request: ChatRequested, sequence: int, content: str, run: str = RUN) -> ChatChunk:
    """A record of one text delta in the API the client called."""
    if request.data.api == ClientAPI.ANTHROPIC_MESSAGES:
        return record(request, sequence, [text_delta_event(content)], run)
    return record(request, sequence, [openai_chunk_event(request.data.model, content)], run)


def anthropic_stream(
    request: ChatRequested, pieces: list[str], usage: dict | None = None, run: str = RUN
) -> list[ChatChunk]:
    """Records of a whole Anthropic event stream (`message_start` ... `message_stop`),
    one record per event, as inference publishes a stream it relays."""
    start = anthropic_message(request.data.model, "")
    start["content"] = []
    start["stop_reason"] = None
    start["usage"] = usage or {"input_tokens": 2, "output_tokens": 1}
    events = [
        StreamEvent(event="message_start", data={"type": "message_start", "message": start}),
        StreamEvent(
            event="content_block_start",
            data={
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        *[text_delta_event(piece) for piece in pieces],
        StreamEvent(event="content_block_stop", data={"type": "content_block_stop", "index": 0}),
        StreamEvent(
            event="message_delta",
            data={
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": len(pieces)},
            },
        ),
        StreamEvent(event="message_stop", data={"type": "message_stop"}),
    ]
    return [record(request, index, [event], run) for index, event in enumerate(events)]


Route = Callable[[httpx.Request], "httpx.Response | Awaitable[httpx.Response]"]


class Upstreams:
    """The far end of the gateway's HTTP client (auth and history) in unit tests: every
    request goes to `route`, looked up per request, so a test re-routes by assigning it.
    The client is given to the gateway through `create_app(..., http=...)`."""

    def __init__(self, route: Route) -> None:
        self.route = route

    async def handle(self, request: httpx.Request) -> httpx.Response:
        answer = self.route(request)
        return await answer if inspect.isawaitable(answer) else answer

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self.handle))


@dataclass
class Harness:
    client: httpx.AsyncClient
    bus: InMemoryBus
    auth: FakeAuth
    requests: list[ChatRequested]
    settings: Settings
    respond: list[Responder]
    app: object = None
    # What the gateway's calls to auth and history reach; `auth.handle` by default.
    upstreams: Upstreams | None = None


@pytest.fixture(autouse=True)
def _no_infrastructure(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests never reach a real database or broker, even when the shell points at
    them (the limit ledger would otherwise choose PostgreSQL from DATABASE_URL)."""
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)


@pytest.fixture
def settings() -> Settings:
    return Settings(
        request_timeout_s=2.0,
        max_body_bytes=10_000,
        chat_completions_max_body_bytes=50_000,
        messages_max_body_bytes=200_000,
        embeddings_max_body_bytes=20_000,
        topic_prefix="unit",
        # Unit tests need no database: limits are counted in memory.
        governance_store="memory",
    )


@pytest.fixture
async def harness(settings: Settings) -> AsyncIterator[Harness]:
    bus = InMemoryBus()
    await bus.start()
    topics = Topics(settings.topic_prefix)
    auth = FakeAuth()
    requests: list[ChatRequested] = []

    async def default_responder(request: ChatRequested) -> list:
        return [completed_reply(request)]

    respond: list[Responder] = [default_responder]

    async def fake_inference(event: Event) -> None:
        assert isinstance(event, ChatRequested)
        requests.append(event)
        for reply in await respond[0](event):
            await bus.publish(
                topics.replies,
                reply,
                key=event.request_id,
                partition=event.data.reply_to.partition,
            )

    await bus.subscribe([topics.requests_interactive], "inference", fake_inference, concurrency=8)
    # `auth.handle` looked up per request, so a test replacing it re-routes the gateway.
    upstreams = Upstreams(lambda request: auth.handle(request))
    app = create_app(settings, bus=bus, http=upstreams.client())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://gateway",
            event_hooks={"request": [as_anthropic_clients_send]},
        ) as client:
            yield Harness(client, bus, auth, requests, settings, respond, app, upstreams)
    await bus.stop()
