"""A stand-in for the history service in gateway unit tests: the Idempotency-Key store
and the response cache store with the same semantics as history's (in memory), and a
recorder of forwarded calls."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx

HISTORY_PORT = 8002


@dataclass
class FakeHistory:
    keys: dict[tuple[str, str], dict] = field(default_factory=dict)
    calls: list[httpx.Request] = field(default_factory=list)
    claims: int = 0
    down: bool = False
    # What GET/POST on the public paths answer: path -> (status, body, content type)
    answers: dict[str, tuple[int, bytes, str]] = field(default_factory=dict)
    # Tenants storing metadata only: their completed claims keep no response body.
    metadata_only: set[str] = field(default_factory=set)
    # The response cache: (tenant, key) -> entry, and tenants with the cache turned on.
    cache: dict[tuple[str, str], dict] = field(default_factory=dict)
    cache_enabled: set[str] = field(default_factory=set)
    # The recorded status of requests (request id -> status), for keys awaiting an outcome.
    request_statuses: dict[str, str] = field(default_factory=dict)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("history is down", request=request)
        self.calls.append(request)
        path = request.url.path
        tenant = request.headers.get("x-switchyard-tenant")
        user = request.headers.get("x-switchyard-user-id")
        if path.startswith("/internal/v1/cache/"):
            return self._cache(request, path, tenant)
        if path.startswith("/internal/v1/idempotency/"):
            await asyncio.sleep(0)  # let concurrent requests interleave
            body = json.loads(request.content)
            return httpx.Response(200, json=self._idempotency(path, tenant, user, body))
        status, content, content_type = self.answers.get(
            str(request.url.raw_path.decode()),
            self.answers.get(path, (200, b'{"object": "list", "data": []}', "application/json")),
        )
        return httpx.Response(status, content=content, headers={"content-type": content_type})

    def _idempotency(self, path: str, tenant: str, user: str, body: dict) -> dict:
        slot = (tenant, body["key"])
        row = self.keys.get(slot)
        if path.endswith("/claim"):
            self.claims += 1
            if row is None:
                token = secrets.token_hex(8)
                self.keys[slot] = {
                    "fingerprint": body["fingerprint"],
                    "endpoint": body["endpoint"],
                    "user": user,
                    "token": token,
                    "state": "in_progress",
                }
                return {"outcome": "claimed", "claim_token": token}
            if (row["fingerprint"], row["endpoint"], row["user"]) != (
                body["fingerprint"],
                body["endpoint"],
                user,
            ):
                return {
                    "outcome": "mismatch",
                    "reason": "This Idempotency-Key was already used"
                    " with a different request body.",
                }
            if row["state"] == "awaiting":
                status = self.request_statuses.get(row["request_id"])
                if status == "completed":
                    return {"outcome": "answered_late", "request_id": row["request_id"]}
                if status not in (None, "pending") or row["lease_until"] <= time.monotonic():
                    token = secrets.token_hex(8)
                    row.update(state="in_progress", token=token, request_id=None)
                    return {"outcome": "claimed", "claim_token": token}
                return {"outcome": "in_progress", "request_id": row["request_id"]}
            if row["state"] == "completed":
                return {
                    "outcome": "completed",
                    "request_id": row["request_id"],
                    "status_code": row["status_code"],
                    "content_type": row["content_type"],
                    "body_b64": row["body_b64"],
                    "headers": row["headers"] if row["body_b64"] is not None else None,
                }
            return {"outcome": "in_progress"}
        if path.endswith("/complete"):
            if row is None or row["token"] != body["claim_token"]:
                return {"stored": False}
            row.update(
                state="completed",
                request_id=body["request_id"],
                status_code=body["status_code"],
                content_type=body["content_type"],
                body_b64=None
                if tenant in self.metadata_only and body.get("holds_content", True)
                else body["body_b64"],
                headers=body.get("headers") or {},
            )
            return {"stored": True}
        if path.endswith("/await-outcome"):
            if row is None or row["token"] != body["claim_token"] or row["state"] != "in_progress":
                return {"held": False}
            row.update(
                state="awaiting",
                request_id=body["request_id"],
                lease_until=time.monotonic() + body["lease_s"],
            )
            return {"held": True}
        if (
            row is not None
            and row["token"] == body["claim_token"]
            and row["state"] == "in_progress"
        ):
            del self.keys[slot]
            return {"released": True}
        return {"released": False}

    def _cache(self, request: httpx.Request, path: str, tenant: str) -> httpx.Response:
        if path.endswith("/settings"):
            return httpx.Response(
                200,
                json={
                    "cache_enabled": tenant in self.cache_enabled,
                    "cache_ttl_s": None,
                    "store_content": tenant not in self.metadata_only,
                },
            )
        key = path.rsplit("/", 1)[1]
        now = datetime.now(UTC)
        if request.method == "PUT":
            if tenant in self.metadata_only:
                return httpx.Response(200, json={"stored": False})
            entry = json.loads(request.content)
            expires = now + timedelta(seconds=entry.pop("ttl_s"))
            self.cache[(tenant, key)] = {
                **entry,
                "source_cost_usd": 0.25,
                "created_at": now.isoformat(),
                "expires_at": expires.isoformat(),
            }
            return httpx.Response(200, json={"stored": True, "expires_at": expires.isoformat()})
        entry = self.cache.get((tenant, key))
        if entry is None or datetime.fromisoformat(entry["expires_at"]) <= now:
            return httpx.Response(404, json={"error": {"message": "miss"}})
        return httpx.Response(200, json=entry)

    def stored_body(self, tenant: str, key: str) -> bytes:
        return base64.b64decode(self.keys[(tenant, key)]["body_b64"])


async def install(harness) -> FakeHistory:
    """Route the gateway's calls to port 8002 (history) to a FakeHistory; the rest (auth)
    still goes to the harness's fake auth."""
    history = FakeHistory()

    async def handle(request: httpx.Request) -> httpx.Response:
        if request.url.port == HISTORY_PORT:
            return await history.handle(request)
        return harness.auth.handle(request)

    harness.upstreams.route = handle
    return history
