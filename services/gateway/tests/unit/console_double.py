"""Auth and history played for the console's unit tests: sign-in, refresh and sign-out,
API keys (own and the tenant's), users, teams, and history's lists, items, usage,
performance and jobs, each answering only for the caller's tenant like the real
services. Every call is recorded with its headers, so tests can show what the console
asked for and as whom."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import httpx

from switchyard.common.scopes import token_scopes

from .auth_double import AuthDouble


@dataclass
class Account:
    user_id: str
    email: str
    password: str
    tenant: str = "acme"
    role: str = "member"


@dataclass
class ConsoleDouble(AuthDouble):
    accounts: list[Account] = field(
        default_factory=lambda: [
            Account("user-alice", "alice@acme.test", "alice-password", "acme", "member"),
            Account("user-root", "root@acme.test", "root-password", "acme", "admin"),
            Account("user-eve", "eve@evil.test", "eve-password", "evil", "admin"),
        ]
    )
    access_ttl_s: int = 300
    keys_by_id: dict[str, dict[str, Any]] = field(default_factory=dict)
    refresh_tokens: dict[str, Account] = field(default_factory=dict)
    items: dict[str, dict[str, Any]] = field(default_factory=dict)  # request id -> item
    # Teams in the governance API's shape; None: this auth has no teams API (404).
    teams: list[dict[str, Any]] | None = None
    team_spend: dict[str, float] = field(default_factory=dict)  # usage by team
    usage_csv: bytes = b"model,requests\nsim-small,3\n"
    metrics: str = ""
    # Rows of history's `GET /v1/usage/performance` (the models page's last hour).
    performance: list[dict[str, Any]] = field(default_factory=list)
    # Jobs of history's `GET /v1/jobs` (the jobs page).
    jobs: list[dict[str, Any]] = field(default_factory=list)
    recorded: list[httpx.Request] = field(default_factory=list)
    # Seconds auth asks a throttled sign-in to wait; None: sign-ins are not throttled.
    sign_in_throttled_s: int | None = None
    # The code of that 429: auth's `too_many_attempts`, or `passwords_busy` (its hasher).
    sign_in_throttled_code: str = "too_many_attempts"
    # Claims every access token carries besides the usual ones (`allowed_models`...).
    token_claims: dict[str, Any] = field(default_factory=dict)

    # -- helpers for tests -------------------------------------------------------------

    def account(self, email: str) -> Account:
        return next(account for account in self.accounts if account.email == email)

    def access_token(self, account: Account, **overrides: Any) -> str:
        claims = {
            "sub": account.user_id,
            "tenant": account.tenant,
            "role": account.role,
            # As auth signs users in: an admin's token also holds history:write and admin.
            "scopes": list(token_scopes(account.role)),
            "exp": int(time.time()) + self.access_ttl_s,
            **self.token_claims,
            **overrides,
        }
        return self.token(**claims)

    def add_key(self, account: Account, name: str, status: str = "active") -> dict[str, Any]:
        key_id = "key-" + uuid.uuid4().hex[:10]
        record = {
            "key_id": key_id,
            "name": name,
            "prefix": "sk-sy-abcd",
            "user_id": account.user_id,
            "tenant": account.tenant,
            "scopes": ["chat", "history:read"],
            "allowed_models": None,
            "status": status,
            "expires_at": None,
            "revoked_at": None,
            "created_at": "2025-03-01T12:00:00Z",
        }
        self.keys_by_id[key_id] = record
        return record

    def add_item(self, account: Account, **fields: Any) -> dict[str, Any]:
        request_id = uuid.uuid4().hex
        item = {
            "id": request_id,
            "object": "chat.history",
            "created_at": "2025-03-01T12:00:00Z",
            "completed_at": "2025-03-01T12:00:01Z",
            "model": "sim-small",
            "status": "completed",
            "request": {"model": "sim-small", "messages": [{"role": "user", "content": "Hi"}]},
            "response": {
                "object": "chat.completion",
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": "Hello!"},
                    }
                ],
            },
            "error": None,
            "usage": {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5},
            "latency_ms": 12.5,
            "provider": "simulator",
            "deployment": "sim-1",
            "api_key_id": None,
            "user_id": account.user_id,
            "_tenant": account.tenant,
        }
        item.update(fields)
        self.items[request_id] = item
        return item

    def calls_to(self, path: str, method: str | None = None) -> list[httpx.Request]:
        return [
            call
            for call in self.recorded
            if call.url.path == path and (method is None or call.method == method)
        ]

    # -- the services ------------------------------------------------------------------

    def _caller(self, request: httpx.Request) -> Account | None:
        header = request.headers.get("authorization", "")
        if not header.startswith("Bearer "):
            return None
        import jwt

        try:
            claims = jwt.decode(header[7:], options={"verify_signature": False})
        except jwt.PyJWTError:
            return None
        if claims.get("exp", 0) < time.time():
            return None
        return next((a for a in self.accounts if a.user_id == claims.get("sub")), None)

    @staticmethod
    def _json(status: int, body: Any) -> httpx.Response:
        return httpx.Response(status, json=body)

    @staticmethod
    def _error(status: int, message: str, code: str = "error") -> httpx.Response:
        return httpx.Response(status, json={"error": {"message": message, "code": code}})

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.recorded.append(request)
        path, method = request.url.path, request.method
        if path == "/v1/auth/token":
            if self.sign_in_throttled_s is not None:
                throttled = self._error(
                    429, "Too many sign-in attempts.", self.sign_in_throttled_code
                )
                throttled.headers["Retry-After"] = str(self.sign_in_throttled_s)
                return throttled
            form = {k: v[0] for k, v in parse_qs(request.read().decode()).items()}
            account = next(
                (
                    a
                    for a in self.accounts
                    if a.email == form.get("username") and a.password == form.get("password")
                ),
                None,
            )
            if account is None:
                return self._error(401, "Incorrect email or password.", "invalid_credentials")
            return self._tokens(account)
        if path == "/v1/auth/refresh":
            account = self.refresh_tokens.pop(json.loads(request.read())["refresh_token"], None)
            if account is None:
                return self._error(401, "Invalid refresh token.", "invalid_grant")
            return self._tokens(account)
        if path == "/v1/auth/logout":
            # As auth: a presented access token is judged first (an expired one is a 401
            # whatever the body holds); the refresh token's sign-in then ends.
            if "authorization" in request.headers and self._caller(request) is None:
                return self._error(401, "The access token is invalid or expired.", "invalid_token")
            body = json.loads(request.read() or b"{}")
            self.refresh_tokens.pop(body.get("refresh_token") or "", None)
            return httpx.Response(204)
        if path == "/v1/auth/password":
            # As auth: the caller's current password, then the new one's length.
            caller = self._caller(request)
            if caller is None:
                return self._error(401, "The access token is invalid or expired.", "invalid_token")
            body = json.loads(request.read())
            if body.get("current_password") != caller.password:
                return self._error(403, "The current password is incorrect.", "incorrect_password")
            caller.password = body["new_password"]
            return httpx.Response(204)
        if path.startswith(("/v1/api-keys", "/v1/admin/", "/v1/me")):
            return self._auth_api(request, path, method)
        if path.startswith(("/v1/history", "/v1/usage", "/v1/jobs")):
            return self.answer_history(request, path, method)
        if path == "/metrics":
            return httpx.Response(200, text=self.metrics)
        return super().handle(request)

    def _tokens(self, account: Account) -> httpx.Response:
        refresh = "rt-" + uuid.uuid4().hex
        self.refresh_tokens[refresh] = account
        return self._json(
            200,
            {
                "access_token": self.access_token(account),
                "token_type": "bearer",
                "expires_in": self.access_ttl_s,
                "refresh_token": refresh,
                "refresh_expires_in": 3600,
            },
        )

    def _auth_api(self, request: httpx.Request, path: str, method: str) -> httpx.Response:
        caller = self._caller(request)
        if caller is None:
            return self._error(401, "The access token is invalid or expired.", "invalid_token")
        if path in ("/v1/me", "/v1/admin/teams") and self.teams is None:
            return self._error(404, "Not Found")
        if path == "/v1/me":
            team = self.teams[0]["id"] if self.teams else None
            levels = {"team": {"id": team, "limits": self.teams[0]["limits"]}} if team else {}
            return self._json(
                200,
                {
                    "id": caller.user_id,
                    "email": caller.email,
                    "tenant": caller.tenant,
                    "role": caller.role,
                    "team_id": team,
                    "levels": levels,
                },
            )
        if path.startswith("/v1/admin/") and caller.role != "admin":
            return self._error(403, "This operation needs the admin role.", "admin_required")
        if path == "/v1/admin/teams":
            return self._json(200, {"object": "list", "data": self.teams})
        if path == "/v1/admin/users":
            users = [
                {"id": a.user_id, "email": a.email, "tenant": a.tenant, "role": a.role}
                for a in self.accounts
                if a.tenant == caller.tenant
            ]
            return self._json(200, {"object": "list", "data": users})
        if path in ("/v1/api-keys", "/v1/admin/api-keys") and method == "GET":
            keys = [
                key
                for key in self.keys_by_id.values()
                if key["tenant"] == caller.tenant
                and (path == "/v1/admin/api-keys" or key["user_id"] == caller.user_id)
            ]
            return self._json(200, {"object": "list", "data": keys})
        if path == "/v1/api-keys" and method == "POST":
            body = json.loads(request.read())
            if len(body.get("name", "")) > 200:
                return self._error(400, "name is too long", "invalid_request")
            if (body.get("rpm_limit") or 0) < 0:
                return self._error(400, "'rpm_limit' must be >= 0.", "invalid_request")
            record = self.add_key(caller, body["name"])
            record["allowed_models"] = body.get("allowed_models")
            limit_names = (
                "max_budget_usd",
                "budget_period",
                "rpm_limit",
                "tpm_limit",
                "max_parallel_requests",
            )
            if self.teams is not None:
                record["limits"] = {name: body.get(name) for name in limit_names}
            return self._json(201, {**record, "key": "sk-sy-SECRET" + uuid.uuid4().hex})
        if method == "DELETE":
            key = self.keys_by_id.get(path.rsplit("/", 1)[1])
            admin = path.startswith("/v1/admin/")
            if (
                key is None
                or key["tenant"] != caller.tenant
                or (not admin and key["user_id"] != caller.user_id)
            ):
                return self._error(404, "No such API key.", "api_key_not_found")
            key["status"] = "revoked"
            return httpx.Response(204)
        return self._error(404, "Not Found")

    def answer_history(self, request: httpx.Request, path: str, method: str) -> httpx.Response:
        """History's answer to `request` (a test wraps this to script one answer)."""
        tenant = request.headers.get("x-switchyard-tenant")
        user = request.headers.get("x-switchyard-user-id")
        admin = request.headers.get("x-switchyard-role") == "admin"
        if request.headers.get("x-switchyard-internal-token") is None or not tenant:
            return self._error(401, "missing identity")

        def visible(item: dict[str, Any]) -> bool:
            return item["_tenant"] == tenant and (admin or item["user_id"] == user)

        def public(item: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in item.items() if not k.startswith("_")}

        if path == "/v1/history":
            data = [public(item) for item in self.items.values() if visible(item)]
            return self._json(200, {"object": "list", "data": data, "next_cursor": None})
        if path.startswith("/v1/history/"):
            item = self.items.get(path.rsplit("/", 1)[1])
            if item is None or not visible(item):
                return self._error(404, "No request found.", "request_not_found")
            return self._json(200, public(item))
        if path == "/v1/usage":
            if request.url.params.get("format") == "csv":
                return httpx.Response(
                    200, content=self.usage_csv, headers={"content-type": "text/csv; charset=utf-8"}
                )
            group = request.url.params.get("group_by", "day")
            if group == "team":
                if not self.team_spend:
                    return self._error(
                        400, "Invalid value for 'group_by': 'team' is not one of day."
                    )
                rows = [
                    {"team": t, "cost_usd": c, "requests": 1} for t, c in self.team_spend.items()
                ]
                return self._json(200, {"object": "usage.report", "data": rows, "totals": {}})
            return self._json(
                200,
                {
                    "object": "usage.report",
                    "since": "2025-03-01T00:00:00Z",
                    "until": "2025-03-02T00:00:00Z",
                    "data": [],
                    "totals": {},
                },
            )
        if path == "/v1/usage/performance":
            return self._json(
                200, {"object": "usage.performance", "data": self.performance, "totals": {}}
            )
        if path == "/v1/jobs":
            return self._json(200, {"object": "list", "data": self.jobs, "next_cursor": None})
        return self._error(404, "Not Found")
