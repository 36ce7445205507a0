"""`/v1/history`: the caller's own requests and replies (the whole tenant's for admins),
served by the history service; the gateway authenticates and passes the verified
identity along. Also the tenant's history settings (admins): metadata-only storage,
retention and the job webhook signing secret.

`forward` is shared with `/v1/usage`, `/v1/jobs`, `/v1/responses` and `/v1/replays`,
which history serves too; `read_when_recorded` waits, bounded, for what this gateway
accepted moments ago and history has not recorded yet."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import orjson
import structlog
from fastapi import APIRouter, Request, Response

from switchyard.common import scopes
from switchyard.common.errors import APIError
from switchyard.common.queryparams import merged_parameters
from switchyard.gateway.api.body import parse_json_object_off_loop
from switchyard.gateway.api.deps import CurrentPrincipal, GatewayDep, insufficient_scope
from switchyard.gateway.auth import Principal
from switchyard.gateway.bootstrap import Gateway

log = structlog.get_logger("switchyard.gateway.history")
router = APIRouter(prefix="/v1/history", tags=["history"])

# Ids this API hands out are 32 hex digits; anything unlike an id is simply not found.
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Request headers history may see besides the identity (content negotiation).
_PASSED_HEADERS = ("accept",)


def looks_like_id(value: str) -> bool:
    """Whether `value` could be an id this API hands out (1 to 64 of `A-Z a-z 0-9 _ -`)."""
    return _ID.fullmatch(value) is not None


def identity_headers(gateway: Gateway, principal: Principal) -> dict[str, str]:
    """The internal token and `principal`'s verified identity, for a call to history."""
    return principal.internal_headers(gateway.settings.internal_token)


async def call(
    gateway: Gateway,
    principal: Principal,
    path: str,
    request: Request | None = None,
    *,
    method: str = "GET",
    json: Any = None,
    content: bytes | None = None,
) -> httpx.Response:
    """History's answer to `method path` called as `principal` (with the query parameters
    and `accept` of `request`, if given). APIError 503 `history_unavailable` when history
    cannot be reached."""
    # As bytes: a client's value keeps its own octets (Starlette decoded them as Latin-1),
    # which may be any the client sent; as text the HTTP client would take only ASCII.
    headers = {  # Switchyard's own values: UTF-8, whatever they hold
        name.encode(): value.encode()
        for name, value in identity_headers(gateway, principal).items()
    }
    if request is not None:
        headers.update(
            {
                name.encode(): request.headers[name].encode("latin-1")
                for name in _PASSED_HEADERS
                if name in request.headers
            }
        )
    if content is not None:
        headers[b"content-type"] = b"application/json"
    try:
        return await gateway.http.request(
            method,
            gateway.settings.history_url.rstrip("/") + path,
            params=merged_parameters(request) if request is not None else None,
            headers=headers,
            json=json,
            content=content,
            timeout=10.0,
        )
    except httpx.LocalProtocolError:
        # A header value HTTP cannot carry (a control character): the request's fault.
        raise APIError(
            400, "A request header holds characters HTTP does not allow.", code="invalid_request"
        ) from None
    except httpx.HTTPError as exc:
        log.error("history service unreachable", error=repr(exc))
        raise APIError(
            503,
            "History is temporarily unavailable; retry shortly.",
            code="history_unavailable",
            headers={"Retry-After": "2"},
        ) from None


def relay(upstream: httpx.Response) -> Response:
    """History's answer as the client gets it: status, body, content type (and a download's
    `content-disposition`, a refusal's `retry-after`)."""
    relayed = {
        name: upstream.headers[name]
        for name in ("content-disposition", "retry-after")
        if name in upstream.headers
    }
    return Response(
        upstream.content,
        status_code=upstream.status_code,
        media_type=upstream.headers.get("content-type", "application/json"),
        headers=relayed,
    )


async def forward(
    gateway: Gateway,
    principal: Principal,
    path: str,
    request: Request | None = None,
    *,
    method: str = "GET",
    json: Any = None,
    content: bytes | None = None,
) -> Response:
    """Call history as `principal` and relay its answer (status, body, content type)."""
    return relay(
        await call(gateway, principal, path, request, method=method, json=json, content=content)
    )


def error_of(answer: httpx.Response) -> dict[str, Any]:
    """The `error` object of one of history's error answers (`message`, `code`...), or {}."""
    try:
        error = answer.json().get("error")
    except (ValueError, AttributeError):
        error = None
    return error if isinstance(error, dict) else {}


# How many reads of one user may wait for history at once on a replica
# (`read_when_recorded`); a read beyond them gets history's first answer.
MAX_WAITING_READS_PER_USER = 8


async def read_when_recorded(
    gateway: Gateway,
    principal: Principal,
    path: str,
    request: Request | None = None,
    *,
    not_yet: Callable[[httpx.Response], Awaitable[bool]],
) -> httpx.Response:
    """History's answer to `GET path` for something accepted moments ago, whose events may
    still be on their way to history: while `not_yet(answer)` says it is not recorded yet
    (e.g. a 404 for an id this gateway just answered), asked again with backoff (5 ms
    doubling to 500 ms), for at most `responses_state_wait_s` seconds; then the last
    answer, whatever it is. At most `MAX_WAITING_READS_PER_USER` reads of one user wait
    at once: a client reading what it just made waits for one or a few, while one reading
    ids it did not make (or made long ago) could otherwise hold any number of requests
    open, each asking history again and again. APIError 503 when history cannot be
    reached."""
    answer = await call(gateway, principal, path, request)
    waiting = gateway.waiting_reads
    user = f"{principal.tenant}/{principal.user_id}"
    if waiting[user] >= MAX_WAITING_READS_PER_USER or not await not_yet(answer):
        return answer
    waiting[user] += 1
    try:
        deadline = time.monotonic() + gateway.settings.responses_state_wait_s
        delay = 0.005
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return answer
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, 0.5)
            answer = await call(gateway, principal, path, request)
            if not await not_yet(answer):
                return answer
    finally:
        waiting[user] -= 1
        if waiting[user] <= 0:
            del waiting[user]


@router.get("", summary="List your requests, newest first")
async def list_history(
    request: Request, principal: CurrentPrincipal, gateway: GatewayDep
) -> Response:
    """The caller's requests with their replies, newest first (admins: the whole tenant).

    Query parameters: `limit` (1-100, default 20; a page ends sooner, one request at least,
    before its requests and replies pass about 16 MB), `cursor` (the previous page's
    `next_cursor`, set whenever more follow), `since` and `until` (ISO 8601, e.g.
    `2025-03-01T00:00:00Z`, a date, or relative like `7d`), `model`, `status`
    (comma-separated: pending, completed, failed, cancelled, expired, refused),
    `api_key_id`, `team_id`, and for admins `user_id`. Each request is shown in the API the
    client called (`api`), with its team and its usage: input, output, cache-read,
    cache-creation and reasoning tokens."""
    return await forward(gateway, principal, "/v1/history", request)


def _without_secret(response: Response, principal: Principal) -> Response:
    """The settings as history answered them, less the webhook signing secret unless the
    credential holds the `admin` scope."""
    if response.status_code != 200 or scopes.ADMIN in principal.scopes:
        return response
    settings = orjson.loads(response.body)
    settings.pop("webhook_secret", None)
    return Response(orjson.dumps(settings), media_type="application/json")


@router.get("/settings", summary="Your tenant's history settings (admins)")
async def get_settings(
    request: Request, principal: CurrentPrincipal, gateway: GatewayDep
) -> Response:
    """Metadata-only storage, retention and (with the `admin` scope) the secret job
    webhooks are signed with."""
    return _without_secret(
        await forward(gateway, principal, "/v1/history/settings", request), principal
    )


@router.put("/settings", summary="Change your tenant's history settings (admins)")
async def put_settings(
    request: Request, principal: CurrentPrincipal, gateway: GatewayDep
) -> Response:
    """Body: `store_content` (false: metadata only, no prompt or completion text),
    `retention_days`, `clear_retention`, `rotate_webhook_secret` (needs the `admin`
    scope), `cache_enabled` and `cache_ttl_s` (the response cache for every request of
    the tenant). Needs the `history:write` scope."""
    changes = await parse_json_object_off_loop(await request.body())
    if changes.get("rotate_webhook_secret") and scopes.ADMIN not in principal.scopes:
        raise insufficient_scope(scopes.ADMIN)
    response = await forward(
        gateway,
        principal,
        "/v1/history/settings",
        None,
        method="PUT",
        content=orjson.dumps(changes),
    )
    return _without_secret(response, principal)


@router.get("/{request_id}", summary="One request with its reply")
async def get_history_item(
    request_id: str, request: Request, principal: CurrentPrincipal, gateway: GatewayDep
) -> Response:
    """One of the caller's requests, with its full reply, usage, latency and deployment."""
    if not looks_like_id(request_id):
        raise APIError(
            404, f"No request found with id '{request_id[:64]}'.", code="request_not_found"
        )
    return await forward(gateway, principal, f"/v1/history/{request_id}", request)
