"""The account, key and admin API of auth, reachable through the gateway, so users never
need the auth port (which stays internal): sign-in, refresh and logout; a user's own keys
and limits; teams, users, keys, budgets and limits for tenant admins. Each route forwards
the request as it came (body, query, `Authorization`) to auth and its answer back; auth
authenticates and authorises (admins act on their own tenant only, members on their own
keys only). The caller's address is passed on in `X-Forwarded-For` for auth's sign-in
limits (set `SWITCHYARD_AUTH_TRUST_FORWARDED_FOR=true` on auth behind the gateway).

`GET /v1/spend` is the gateway's own: the caller's spend against every budget above them
in the current period, from the fleet's limit ledger.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

import httpx
from fastapi import APIRouter, FastAPI, Request, Response
from pydantic import BaseModel

from switchyard.common.errors import APIError
from switchyard.common.governance import BudgetClock, scope_key
from switchyard.common.queryparams import merged_parameters, refuse_unknown_parameters
from switchyard.gateway.api.deps import CurrentPrincipal, GatewayDep, single_credentials
from switchyard.gateway.governance.ledger import LedgerUnavailable

# (method, path, summary, tag): every auth route the gateway exposes.
AUTH_ROUTES: tuple[tuple[str, str, str, str], ...] = (
    ("POST", "/v1/auth/token", "Sign in: an access token and a refresh token", "account"),
    ("POST", "/v1/auth/refresh", "Exchange a refresh token for new tokens", "account"),
    ("POST", "/v1/auth/logout", "Sign out and revoke the tokens", "account"),
    ("POST", "/v1/auth/password", "Change your password; your other sign-ins end", "account"),
    ("GET", "/v1/me", "The caller, their team and every limit above them", "account"),
    ("GET", "/v1/api-keys", "The caller's API keys", "api-keys"),
    ("POST", "/v1/api-keys", "Create an API key, with limits within the team's", "api-keys"),
    ("PATCH", "/v1/api-keys/{key_id}", "Change the limits of one of the caller's keys", "api-keys"),
    ("DELETE", "/v1/api-keys/{key_id}", "Revoke one of the caller's keys", "api-keys"),
    ("GET", "/v1/admin/users", "Users of the tenant", "admin"),
    ("POST", "/v1/admin/users", "Create a user in the tenant", "admin"),
    ("PATCH", "/v1/admin/users/{user_id}", "A user's team and limits", "admin"),
    ("POST", "/v1/admin/users/{user_id}/password", "Set a user's password", "admin"),
    ("POST", "/v1/admin/users/{user_id}/disable", "Disable a user", "admin"),
    ("POST", "/v1/admin/users/{user_id}/enable", "Enable a user", "admin"),
    ("GET", "/v1/admin/api-keys", "Every key of the tenant", "admin"),
    ("POST", "/v1/admin/api-keys", "Create a key for a user, with team and limits", "admin"),
    ("PATCH", "/v1/admin/api-keys/{key_id}", "A key's limits", "admin"),
    ("DELETE", "/v1/admin/api-keys/{key_id}", "Revoke any key of the tenant", "admin"),
    ("GET", "/v1/admin/teams", "Teams of the tenant", "admin"),
    ("POST", "/v1/admin/teams", "Create a team with its budget and rate limits", "admin"),
    ("GET", "/v1/admin/teams/{team_id}", "One team", "admin"),
    ("PATCH", "/v1/admin/teams/{team_id}", "Rename a team or change its limits", "admin"),
    ("DELETE", "/v1/admin/teams/{team_id}", "Delete a team", "admin"),
    ("GET", "/v1/admin/tenant", "The tenant's own limits and failure modes", "admin"),
)
_FORWARDED_REQUEST_HEADERS = ("authorization", "content-type", "accept", "user-agent")
_FORWARDED_RESPONSE_HEADERS = ("content-type", "retry-after", "www-authenticate")


async def forward_to_auth(request: Request) -> Response:
    """Send the request to auth as it came (header values without surrounding blanks), and
    its answer back. Raises APIError 400 for a header HTTP cannot carry, 503
    (`auth_unavailable`) when auth cannot be reached."""
    gateway = request.app.state.gateway
    # Credentials sent twice are refused here as on every other route: auth would see
    # only one of them, perhaps not the one a proxy in front judged.
    single_credentials(request)
    # Without the whitespace around a value (not part of it, RFC 9110 section 5.5), which
    # the HTTP client refuses to send: `Bearer ` and blanks reaches auth as `Bearer`, a
    # missing token (401), not as a failed call.
    # As bytes: the value's own octets (Starlette decoded them as Latin-1), which may be
    # any the client sent; as text the HTTP client would take only ASCII.
    headers = {
        name.encode(): value.strip(" \t").encode("latin-1")
        for name, value in request.headers.items()
        if name.lower() in _FORWARDED_REQUEST_HEADERS
    }
    client = request.client.host if request.client is not None else None
    if client is not None:
        previous = request.headers.get("x-forwarded-for")
        forwarded_for = f"{previous}, {client}" if previous else client
        headers[b"x-forwarded-for"] = forwarded_for.encode("latin-1")
    # The path as it reached us, still percent-encoded: decoding it (request.url.path)
    # would hand control characters or non-ASCII text to the URL parser.
    raw_path = request.scope.get("raw_path") or request.url.path.encode()
    # A `.` or `..` segment (`DELETE /v1/api-keys/..` sent as is) matched a route with
    # that id here, but the URL parser would remove it, sending the call to another of
    # auth's paths (`/v1`). No resource is named so.
    if any(unquote(part) in (".", "..") for part in raw_path.decode("latin-1").split("/")):
        raise APIError(
            404,
            "No resource is named '.' or '..': a path segment is one of them.",
            code="not_found",
        )
    try:
        url = httpx.URL(gateway.settings.auth_url.rstrip("/") + raw_path.decode("latin-1"))
    except httpx.InvalidURL:
        raise APIError(
            400, "The request path is not a valid URL path.", code="invalid_path"
        ) from None
    try:
        answer = await gateway.http.request(
            request.method,
            url,
            params=merged_parameters(request),
            content=await request.body(),
            headers=headers,
            timeout=10.0,
        )
    except httpx.LocalProtocolError:
        # A header the HTTP client will not send (a NUL, CR or LF): the request's
        # fault, not auth's. The client's message is not echoed: it quotes the value.
        raise APIError(
            400, "A request header holds characters HTTP does not allow.", code="invalid_request"
        ) from None
    except httpx.HTTPError:
        raise APIError(
            503,
            "The account service is unavailable; retry shortly.",
            code="auth_unavailable",
            headers={"Retry-After": "1"},
        ) from None
    return Response(
        answer.content,
        status_code=answer.status_code,
        headers={
            name: value
            for name, value in answer.headers.items()
            if name.lower() in _FORWARDED_RESPONSE_HEADERS
        },
    )


# The routes that answer 201 Created (auth's own status codes).
_CREATED = {
    ("POST", "/v1/api-keys"),
    ("POST", "/v1/admin/users"),
    ("POST", "/v1/admin/api-keys"),
    ("POST", "/v1/admin/teams"),
}
# The routes that take no body.
_NO_BODY = {"/v1/admin/users/{user_id}/disable", "/v1/admin/users/{user_id}/enable"}


def _body_document(method: str, path: str) -> dict[str, Any] | None:
    """The OpenAPI `requestBody` of a forwarded route (a JSON object, or the sign-in form),
    so that the docs page can send one; auth's own `/docs` has each field."""
    if method not in ("POST", "PATCH") or path in _NO_BODY:
        return None
    content: dict[str, Any] = {"application/json": {"schema": {"type": "object"}}}
    if path == "/v1/auth/token":
        content["application/x-www-form-urlencoded"] = {"schema": {"type": "object"}}
    required = path not in ("/v1/auth/logout",)
    return {"requestBody": {"required": required, "content": content}}


def install_auth_routes(app: FastAPI) -> None:
    """Add every route of `AUTH_ROUTES` to the app, documented in its OpenAPI."""
    router = APIRouter()
    for method, path, summary, tag in AUTH_ROUTES:
        router.add_api_route(
            path,
            forward_to_auth,
            methods=[method],
            summary=summary,
            tags=[tag],
            response_class=Response,
            status_code=201 if (method, path) in _CREATED else 200,
            openapi_extra=_body_document(method, path),
            description=f"Forwarded to the auth service's `{method} {path}`; its answer "
            "comes back unchanged (errors in OpenAI's error format). Its fields are on "
            "auth's own `/docs` page.",
        )
    app.include_router(router)


class BudgetSpend(BaseModel):
    """One budget and what it has spent: `level` (key, user, team or tenant) and `id` name its
    owner; amounts in USD; `reserved_usd`, what the gateway replicas hold of it beyond the
    spend (requests in flight at their worst case, and allowance taken ahead in blocks);
    `budget_period` as configured (None: never resets); `period_start` and `resets_at` in
    ISO 8601."""

    level: str
    id: str
    max_budget_usd: float
    budget_period: str | None
    spent_usd: float
    reserved_usd: float
    period_start: str
    resets_at: str | None


class SpendOut(BaseModel):
    """The budgets that apply to a team (or the caller's tenant) and their spend."""

    object: str = "spend"
    team_id: str | None
    data: list[BudgetSpend]


router = APIRouter(prefix="/v1", tags=["account"])


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


@router.get("/spend", response_model=SpendOut, summary="Spend against every budget above you")
async def spend(request: Request, principal: CurrentPrincipal, gateway: GatewayDep) -> SpendOut:
    """The caller's spend in the current period of each budget that applies to them (their
    key's, their own, their team's, their tenant's), fleet-wide. It takes no query
    parameter: one (`user_id`, `team_id`) is 400 `unknown_parameter`, never ignored (an
    admin would read the caller's own spend as another's). Checked after the
    credentials, as every account route does."""
    await refuse_unknown_parameters(request)
    try:
        return await budget_spend(gateway, principal)
    except LookupError:
        raise APIError(503, "Spend cannot be read right now.", code="limits_unavailable") from None


async def budget_spend(gateway: Any, principal: Any) -> SpendOut:
    """Spend against each budget above `principal`; LookupError if auth or the ledger
    cannot answer."""
    admission = gateway.admission
    if admission is None:
        return SpendOut(team_id=None, data=[])
    try:
        policy = await admission.policies.get(principal.user_id, principal.api_key_id)
    except Exception as exc:  # noqa: BLE001 - auth down
        raise LookupError("policy") from exc
    clock = BudgetClock(day_s=gateway.settings.budget_day_s)
    now = datetime.now(UTC)
    budgeted = [level for level in policy.levels if level.limits.max_budget_usd is not None]
    scopes = [scope_key(level.level, level.scope_id) for level in budgeted]
    # This replica's settlements first (they are written in the background, every 0.1 s):
    # a caller reading right after a request sees its cost. Other replicas' follow.
    with contextlib.suppress(LedgerUnavailable):
        await admission.flush()
    try:
        counters = {
            c.scope: c for c in await admission.ledger.counters(scopes) if c.kind == "spend"
        }
    except Exception as exc:  # noqa: BLE001 - the ledger is down
        raise LookupError("ledger") from exc
    data: list[dict[str, Any]] = []
    for level, scope in zip(budgeted, scopes, strict=True):
        anchor = datetime.fromtimestamp(level.budget_anchor or 0.0, UTC)
        period = clock.period(level.limits.budget_period, anchor, now)
        # Only a counter of the current period counts.
        current = counters.get(scope)
        if current is not None and not current.window_start >= period.start.timestamp():
            current = None
        data.append(
            {
                "level": level.level,
                "id": level.scope_id,
                "max_budget_usd": level.limits.max_budget_usd,
                "budget_period": level.limits.budget_period,
                "spent_usd": round(current.spent, 8) if current is not None else 0.0,
                "reserved_usd": round(max(0.0, current.committed - current.spent), 8)
                if current is not None
                else 0.0,
                "period_start": _iso(period.start.timestamp()),
                "resets_at": _iso(period.end.timestamp()) if period.end else None,
            }
        )
    return SpendOut(team_id=policy.team_id, data=[BudgetSpend(**item) for item in data])
