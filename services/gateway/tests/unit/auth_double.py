"""A configurable stand-in for the auth and history services, and a gateway wired to it on
the in-memory bus, for the authentication, revocation, scope and CORS tests.

Every HTTP call the gateway makes is recorded in `AuthDouble.calls`, so tests can show
that an attack caused no lookup at all."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from switchyard.common.bus import InMemoryBus
from switchyard.common.events import ChatRequested, EnvelopeFields, Event
from switchyard.common.topics import Topics
from switchyard.gateway.app import create_app
from switchyard.gateway.config import Settings

from .conftest import completed_reply

ISSUER, AUDIENCE = "switchyard-auth", "switchyard"
# The paths auth serves (the double also plays history).
AUTH_PATHS = ("/internal/v1/api-keys", "/internal/v1/users", "/internal/v1/policy", "/.well-known")


def new_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class ApiKeyRecord:
    key: str
    key_id: str
    user_id: str
    tenant: str = "acme"
    role: str = "member"
    scopes: list[str] = field(default_factory=lambda: ["chat", "history:read"])
    allowed_models: list[str] | None = None
    expires_at: str | None = None
    team_id: str | None = None

    def identity(self) -> dict[str, object]:
        """What auth answers for this key (`/internal/v1/api-keys/lookup`)."""
        return {
            "key_id": self.key_id,
            "user_id": self.user_id,
            "tenant": self.tenant,
            "role": self.role,
            "scopes": self.scopes,
            "allowed_models": self.allowed_models,
            "expires_at": self.expires_at,
            "team_id": self.team_id,
        }


@dataclass
class AuthDouble:
    keys: dict[str, rsa.RSAPrivateKey] = field(default_factory=lambda: {"kid-1": new_rsa_key()})
    # Kids served in the JWKS (a key can sign before it is published, to test rotation).
    published: list[str] = field(default_factory=lambda: ["kid-1"])
    api_keys: dict[str, ApiKeyRecord] = field(default_factory=dict)
    snapshot: dict[str, Any] = field(
        default_factory=lambda: {
            "generated_at": "2025-01-01T00:00:00Z",
            "revoked_tokens": [],
            "revoked_sessions": [],
            "revoked_api_keys": [],
            "disabled_users": [],
        }
    )
    # How many snapshot requests fail (503) before one succeeds.
    snapshot_failures: int = 0
    # The query of each snapshot request.
    snapshot_queries: list[dict[str, str]] = field(default_factory=list)
    # GET /v1/history/{id}: request id -> owning tenant.
    history_items: dict[str, str] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    # Users auth no longer knows (GET /internal/v1/users/{id} answers 404).
    missing_users: set[str] = field(default_factory=set)
    # User id -> (team id, the team's models: None for any) in GET /internal/v1/users/{id}.
    user_teams: dict[str, tuple[str, Any]] = field(default_factory=dict)
    # Auth unreachable: every call fails to connect.
    down: bool = False
    # Every call answered with this status instead (a 503 outage, a 401 misconfiguration).
    answer_status: int | None = None
    # Auth hung: every call times out after this many seconds.
    hang_s: float | None = None

    def count(self, path: str) -> int:
        return sum(1 for call in self.calls if call == path)

    def add_api_key(self, **fields: Any) -> ApiKeyRecord:
        record = ApiKeyRecord(
            key="sk-sy-" + uuid.uuid4().hex + uuid.uuid4().hex[:11],
            key_id=fields.pop("key_id", "key-" + uuid.uuid4().hex[:8]),
            user_id=fields.pop("user_id", "user-" + uuid.uuid4().hex[:8]),
            **fields,
        )
        self.api_keys[hashlib.sha256(record.key.encode()).hexdigest()] = record
        return record

    def token(self, kid: str = "kid-1", headers: dict | None = None, **overrides: Any) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "user-jwt",
            "tenant": "acme",
            "role": "member",
            "scopes": ["chat", "history:read"],
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "jti": uuid.uuid4().hex,
            "sid": "session-1",
        }
        claims.update(overrides)
        claims = {name: value for name, value in claims.items() if value is not None}
        return jwt.encode(
            claims, self.keys[kid], algorithm="RS256", headers={"kid": kid, **(headers or {})}
        )

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid in self.published:
            jwk = RSAAlgorithm.to_jwk(self.keys[kid].public_key(), as_dict=True)
            jwk.update(kid=kid, alg="RS256", use="sig")
            keys.append(jwk)
        return {"keys": keys}

    def handle(self, request: httpx.Request) -> Any:
        path = request.url.path
        self.calls.append(path)
        if self.hang_s is not None and path.startswith(AUTH_PATHS):
            return self._hung(request, self.hang_s)
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        if self.answer_status is not None:
            return httpx.Response(self.answer_status, json={"error": {"message": "no"}})
        if request.url.host not in ("127.0.0.1", "localhost"):
            return httpx.Response(599)  # anything else would be an SSRF
        if path == "/.well-known/jwks.json":
            return httpx.Response(200, json=self.jwks())
        if path == "/internal/v1/api-keys/lookup":
            record = self.api_keys.get(json.loads(request.read())["secret_hash"])
            if record is None:
                return httpx.Response(404, json={"error": {"message": "no such key"}})
            return httpx.Response(200, json=record.identity())
        if path.startswith("/internal/v1/users/"):
            user_id = path.rsplit("/", 1)[1]
            if user_id in self.missing_users:
                return httpx.Response(
                    404, json={"error": {"message": "No such user.", "code": "user_not_found"}}
                )
            status = {"user_id": user_id, "tenant": "acme", "active": True}
            if user_id in self.user_teams:
                status["team_id"], status["team_models"] = self.user_teams[user_id]
            return httpx.Response(200, json=status)
        if path == "/internal/v1/revocations":
            self.snapshot_queries.append(dict(request.url.params))
            if self.snapshot_failures > 0:
                self.snapshot_failures -= 1
                return httpx.Response(503)
            return httpx.Response(200, json=self.snapshot)
        if path.startswith("/v1/history/"):
            owner = self.history_items.get(path.rsplit("/", 1)[1])
            if owner is None or owner != request.headers.get("x-switchyard-tenant"):
                return httpx.Response(404, json={"error": {"message": "No such request."}})
            return httpx.Response(200, json={"request_id": path.rsplit("/", 1)[1]})
        if path == "/v1/history":
            return httpx.Response(200, json={"object": "list", "data": []})
        return httpx.Response(404)

    @staticmethod
    async def _hung(request: httpx.Request, seconds: float) -> httpx.Response:
        await asyncio.sleep(seconds)
        raise httpx.ReadTimeout("auth did not answer", request=request)


@dataclass
class GatewayUnderTest:
    client: httpx.AsyncClient
    bus: InMemoryBus
    auth: AuthDouble
    app: Any
    settings: Settings
    topics: Topics

    @property
    def gateway(self) -> Any:
        return self.app.state.gateway

    async def publish_auth_event(self, event: EnvelopeFields) -> None:
        await self.bus.publish(self.topics.auth_events, event)


@contextlib.asynccontextmanager
async def gateway_with(
    auth: AuthDouble | None = None,
    settings: Settings | None = None,
    configure: Callable[[Any], None] | None = None,
    inference: Callable[[InMemoryBus, Topics, ChatRequested], Awaitable[None]] | None = None,
) -> AsyncIterator[GatewayUnderTest]:
    """The real gateway app on an in-memory bus, auth and history played by `auth`, and
    a fake inference answering every chat request (`inference`, when given, in its
    place: called with the bus, the topics and each request)."""
    auth = auth or AuthDouble()
    settings = settings or Settings(request_timeout_s=2.0, topic_prefix="unit-auth")
    if "governance_store" not in settings.model_fields_set:
        # Unit tests need no database: limits are counted in memory unless a test asks.
        settings.governance_store = "memory"
    bus = InMemoryBus()
    await bus.start()
    topics = Topics(settings.topic_prefix)

    async def fake_inference(event: Event) -> None:
        assert isinstance(event, ChatRequested)
        if inference is not None:
            await inference(bus, topics, event)
            return
        reply = completed_reply(event)
        await bus.publish(
            topics.replies,
            reply,
            key=event.request_id,
            partition=event.data.reply_to.partition,
        )

    await bus.subscribe([topics.requests_interactive], "inference", fake_inference, concurrency=4)
    app = create_app(
        settings, bus=bus, http=httpx.AsyncClient(transport=httpx.MockTransport(auth.handle))
    )
    if configure is not None:
        configure(app)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
                yield GatewayUnderTest(client, bus, auth, app, settings, topics)
    finally:
        await bus.stop()
