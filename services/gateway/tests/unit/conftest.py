"""Gateway under test: the real app on the in-memory bus, a fake inference service
subscribed to the bus, and the auth service replaced by an httpx mock transport."""

from __future__ import annotations

import hashlib
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
    ChatRequested,
    Event,
    TokenUsage,
)
from switchyard.common.topics import Topics
from switchyard.gateway.app import create_app
from switchyard.gateway.config import Settings

API_KEY = "sk-sy-" + "k" * 43
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
                return httpx.Response(
                    200,
                    json={
                        "key_id": "key-1",
                        "user_id": "user-1",
                        "tenant": "acme",
                        "role": "member",
                        "scopes": ["chat", "history:read"],
                        "allowed_models": None,
                        "expires_at": None,
                    },
                )
            return httpx.Response(404, json={"error": {"message": "no such key"}})
        if request.url.path == "/internal/v1/revocations":
            return httpx.Response(200, json=self.revocations)
        if request.url.path.startswith("/internal/v1/users/"):
            user_id = request.url.path.rsplit("/", 1)[1]
            if user_id in self.missing_users:
                return httpx.Response(404, json={"error": {"message": "No such user."}})
            return httpx.Response(200, json={"user_id": user_id, "tenant": "acme", "active": True})
        return httpx.Response(404)


Responder = Callable[[ChatRequested], Awaitable[list]]


def completed_reply(request: ChatRequested, text: str = "hi there") -> ChatCompleted:
    response = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": request.data.model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4},
    }
    return ChatCompleted(
        source="test",
        tenant=request.tenant,
        request_id=request.request_id,
        data=ChatCompletedData(
            response=response,
            provider="fake",
            deployment="fake",
            usage=TokenUsage(input_tokens=2, output_tokens=2),
            latency_ms=1,
        ),
    )


def chunk(request: ChatRequested, sequence: int, content: str) -> ChatChunk:
    data = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": request.data.model,
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
    }
    return ChatChunk(
        source="test",
        tenant=request.tenant,
        request_id=request.request_id,
        data=ChatChunkData(sequence=sequence, chunk=data),
    )


@dataclass
class Harness:
    client: httpx.AsyncClient
    bus: InMemoryBus
    auth: FakeAuth
    requests: list[ChatRequested]
    settings: Settings
    respond: list[Responder]
    app: object = None


@pytest.fixture
def settings() -> Settings:
    return Settings(request_timeout_s=2.0, max_body_bytes=10_000, topic_prefix="unit")


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
            await bus.publish(topics.replies, reply, partition=event.data.reply_to.partition)

    await bus.subscribe([topics.requests_interactive], "inference", fake_inference, concurrency=8)
    app = create_app(settings, bus=bus)
    gateway = app.state.gateway
    await gateway.http.aclose()
    gateway.http = httpx.AsyncClient(transport=httpx.MockTransport(auth.handle))
    gateway.authenticator._client = gateway.http
    gateway.authenticator.jwks._client = gateway.http
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield Harness(client, bus, auth, requests, settings, respond, app)
    await bus.stop()
