"""The console's pages. Each one reads through `ConsoleBackend` as the signed-in user:
members see their own requests and keys, admins their tenant, and anything else is
simply not found (history and auth decide, exactly as for the API)."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Annotated, Any, cast
from urllib.parse import unquote, urlsplit

import structlog
from fastapi import APIRouter, Depends, Form, Request
from fastapi.templating import Jinja2Templates
from starlette.responses import RedirectResponse, Response

from switchyard.common.statuses import JOB_STATUSES, REQUEST_STATUSES
from switchyard.gateway.api.admin import budget_spend
from switchyard.gateway.auth import AuthenticationError, AuthUnavailableError, Principal
from switchyard.gateway.console import conversation, views
from switchyard.gateway.console.backend import BackendError, ConsoleBackend, TokenPair
from switchyard.gateway.console.session import (
    Session,
    SessionCookies,
    SessionTooLarge,
    cookie_value,
)

router = APIRouter()

LOG_PAGE_SIZE = 25
# A refreshed token pair is reused for this long by requests that present the same
# refresh token at once (auth treats a refresh token used twice as stolen).
_REFRESH_REUSE_S = 30.0
# An access token this close to its expiry (or past it, within the clock-skew leeway the
# gateway allows) is refreshed before the page is served, in seconds: a page makes several
# calls to auth with it, and auth may allow less leeway than the gateway.
REFRESH_AHEAD_S = 5.0

log = structlog.get_logger("switchyard.gateway.console")


class NotSignedIn(Exception):
    """No valid session: pages redirect to the sign-in page."""


@dataclass
class ConsoleState:
    """What the console's routes share: the backend, the session cookies, the templates and the
    token refreshes in flight (by refresh token: when started, in monotonic seconds, and their
    result), so concurrent pages refresh a session once."""

    backend: ConsoleBackend
    cookies: SessionCookies
    templates: Jinja2Templates
    refreshes: dict[str, tuple[float, asyncio.Future[TokenPair]]]


@dataclass(frozen=True)
class Viewer:
    """The signed-in user of a page."""

    principal: Principal
    session: Session

    @property
    def is_admin(self) -> bool:
        """Whether the user is a tenant admin."""
        return self.principal.is_tenant_admin

    @property
    def access_token(self) -> str:
        """The session's current access token (JWT)."""
        return self.session.access_token


def state(request: Request) -> ConsoleState:
    """The console's shared state, set on `app.state.console` by the console's app factory."""
    return cast(ConsoleState, request.app.state.console)


def base_path(request: Request) -> str:
    """The path the console is mounted at (the ASGI `root_path`), without a trailing slash."""
    return cast(str, request.scope.get("root_path", "")).rstrip("/")


async def _refreshed(console: ConsoleState, refresh_token: str) -> TokenPair:
    """Exchange a refresh token once per replica, however many requests present it."""
    now = time.monotonic()
    for token, (at, _) in list(console.refreshes.items()):
        if now - at > _REFRESH_REUSE_S:
            del console.refreshes[token]
    entry = console.refreshes.get(refresh_token)
    future: asyncio.Future[TokenPair]
    if entry is None:
        future = asyncio.ensure_future(console.backend.refresh(refresh_token))
        console.refreshes[refresh_token] = (now, future)
    else:
        future = entry[1]
    return await asyncio.shield(future)


async def current_viewer(request: Request) -> Viewer:
    """The user of the session cookie, refreshing an access token that expired or expires
    within `REFRESH_AHEAD_S`; NotSignedIn when there is no session or it has ended (signed
    out, revoked, user disabled)."""
    console = state(request)
    value = cookie_value(request.cookies)
    session = console.cookies.decode(value)
    if session is None:
        ended = console.cookies.ended(value)
        if ended is not None:
            # Nothing refreshes this sign-in any more: end it at auth too, rather than
            # leave its refresh token valid there for the rest of its own lifetime.
            await _end_at_auth(console, ended)
        raise NotSignedIn
    try:
        principal = await console.backend.principal(session.access_token)
    except AuthUnavailableError:
        raise BackendError(503, "Authentication is temporarily unavailable.") from None
    except AuthenticationError:
        pass
    else:
        expires_at = principal.expires_at
        if expires_at is None or expires_at - time.time() > REFRESH_AHEAD_S:
            return Viewer(principal, session)
    try:
        pair = await _refreshed(console, session.refresh_token)
    except BackendError as exc:
        if exc.status >= 500:
            raise
        raise NotSignedIn from None
    session = replace(session, access_token=pair.access_token, refresh_token=pair.refresh_token)
    request.state.renewed_session = session  # set on the response by the console's headers
    try:
        return Viewer(await console.backend.principal(session.access_token), session)
    except AuthenticationError:
        request.state.renewed_session = None  # the sign-in page drops the cookie instead
        raise NotSignedIn from None


async def _end_at_auth(console: ConsoleState, session: Session, *, live: bool = False) -> None:
    """End `session`'s sign-in at auth, with its access token too while the session is
    `live`; an expired or already ended sign-in, or auth unreachable, changes nothing here."""
    try:
        if live:
            await console.backend.sign_out(session.access_token, session.refresh_token)
        else:
            await console.backend.end_sign_in(session.refresh_token)
    except BackendError:
        pass


CurrentViewer = Annotated[Viewer, Depends(current_viewer)]


def render(
    request: Request,
    template: str,
    viewer: Viewer | None,
    status_code: int = 200,
    **context: Any,
) -> Response:
    """A page: `template` with the context every page needs (viewer, base path, CSRF
    token, current section)."""
    console = state(request)
    return console.templates.TemplateResponse(
        request,
        template,
        {
            "viewer": viewer,
            "base": base_path(request),
            "csrftoken": request.scope["csrftoken"](),
            **context,
        },
        status_code=status_code,
    )


def redirect(request: Request, path: str) -> RedirectResponse:
    """A 303 redirect to `path` inside the console."""
    return RedirectResponse(base_path(request) + path, status_code=303)


def safe_next(request: Request, value: str | None) -> str:
    """Where to go after signing in: a console path only (never another site, nor a path
    that leaves the console once a browser resolves it); the console's home otherwise."""
    base = base_path(request)
    if not isinstance(value, str) or len(value) >= 2000 or not value.isprintable():
        return base + "/"
    parts = urlsplit(value)
    # A browser resolves `.` and `..` segments (`%2e` too, by the URL standard) before it
    # follows a redirect: `/ui/../..//evil.com` is not a console path.
    dots = any(unquote(segment) in (".", "..") for segment in parts.path.split("/"))
    if (
        parts.scheme
        or parts.netloc
        or not parts.path.startswith(base + "/")
        or "//" in parts.path
        or "\\" in value
        or dots
    ):
        return base + "/"
    return value


def backend_of(request: Request) -> ConsoleBackend:
    """The console's backend client."""
    return state(request).backend


# -- signing in and out ---------------------------------------------------------------


@router.get("/login")
async def login_page(request: Request) -> Response:
    """The sign-in form (email and password)."""
    return render(
        request, "login.html", None, next=safe_next(request, request.query_params.get("next"))
    )


def _after(retry_after: str | None) -> str:
    """When auth's `Retry-After` (whole seconds) lets a sign-in be tried again, as people
    say it: `in 45 seconds`, `in 5 minutes` (rounded up); `later` without one."""
    try:
        seconds = int(retry_after or "")
    except ValueError:
        return "later"
    if seconds < 60:
        return f"in {max(seconds, 1)} second{'s' if seconds != 1 else ''}"
    minutes = -(-seconds // 60)
    return f"in {minutes} minute{'s' if minutes != 1 else ''}"


def _throttled(what: str, exc: BackendError) -> str:
    """What a page says of auth's 429 `exc`: too many `what` (the account's or address's
    limit), or auth busy checking other passwords (`passwords_busy`: nothing the user
    did, and over in a moment)."""
    if exc.code == "passwords_busy":
        return f"Many passwords are being checked right now; try again {_after(exc.retry_after)}."
    return f"Too many {what}; try again {_after(exc.retry_after)}."


@router.post("/login")
async def login(
    request: Request,
    email: Annotated[str, Form(max_length=320)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
    next: Annotated[str, Form(max_length=2000)] = "",
) -> Response:
    """Sign in through auth; on success the session cookie is set."""
    target = safe_next(request, next)

    def sign_in_page(status: int, error: str) -> Response:
        """The sign-in form again, as filled in, saying what went wrong."""
        return render(request, "login.html", None, status, next=target, email=email, error=error)

    if not email.strip() or not password:
        return sign_in_page(400, "Enter your email and password.")
    address = request.client.host if request.client is not None else "unknown"
    try:
        pair = await backend_of(request).sign_in(email.strip(), password, address)
    except BackendError as exc:
        messages = {
            400: "Enter a valid email and password.",
            401: "Incorrect email or password.",
            429: _throttled("sign-in attempts", exc),
        }
        status = exc.status if exc.status in messages else 503
        page = sign_in_page(status, messages.get(exc.status, exc.message))
        if status == 429 and exc.retry_after:
            page.headers["Retry-After"] = exc.retry_after  # auth's: when to try again
        return page
    cookies = state(request).cookies
    # A new CSRF token for the new session: one known before sign-in (anybody able to plant
    # a cookie could have set it) protects nothing of the session.
    session = Session(
        pair.access_token,
        pair.refresh_token,
        email.strip(),
        time.time(),
        cookies.new_csrf_token(),
    )
    response = RedirectResponse(target, status_code=303)
    try:
        cookies.set(response, session)
    except SessionTooLarge:
        # Nothing the browser would keep: said here, not a sign-in page coming back.
        log.warning("console sign-in too large for its session cookies")
        return sign_in_page(
            400,
            "Your sign-in is too large for the console to keep (your team allows very many "
            "models). Ask an admin to shorten the team's list, or use the API.",
        )
    cookies.set_csrf_token(response, session)
    return response


@router.get("/password")
async def password_page(request: Request, viewer: CurrentViewer) -> Response:
    """The form to change the signed-in user's password."""
    return render(request, "password.html", viewer, section="password")


@router.post("/password")
async def change_password(
    request: Request,
    viewer: CurrentViewer,
    current_password: Annotated[str, Form(max_length=1024)] = "",
    new_password: Annotated[str, Form(max_length=1024)] = "",
    confirm_password: Annotated[str, Form(max_length=1024)] = "",
) -> Response:
    """Change the signed-in user's password at auth, given the current one: their other
    sign-ins end, this one goes on. The page again, saying what went wrong (a wrong
    current password counts towards the account's sign-in limits at auth)."""

    def page(status: int, error: str | None = None) -> Response:
        return render(
            request,
            "password.html",
            viewer,
            status,
            section="password",
            form_error=error,
            changed=error is None,
        )

    if not current_password or not new_password:
        return page(400, "Enter your current password and a new one.")
    if new_password != confirm_password:
        return page(400, "The new password and its repetition differ.")
    if not 8 <= len(new_password) <= 1024:
        return page(400, "A password has 8 to 1024 characters.")
    address = request.client.host if request.client is not None else "unknown"
    try:
        await backend_of(request).change_password(
            viewer.access_token, current_password, new_password, address
        )
    except BackendError as exc:
        if exc.status == 403 and exc.code == "incorrect_password":
            return page(403, "The current password is incorrect.")
        if exc.status == 429:
            response = page(429, _throttled("attempts", exc))
            if exc.retry_after:
                response.headers["Retry-After"] = exc.retry_after
            return response
        if exc.status >= 500:
            raise
        return page(exc.status, exc.message)
    return page(200)


@router.post("/logout")
async def logout(request: Request) -> Response:
    """End the sign-in at auth and drop the cookie."""
    console = state(request)
    value = cookie_value(request.cookies)
    session = console.cookies.decode(value)
    if session is not None:
        await _end_at_auth(console, session, live=True)
    else:
        ended = console.cookies.ended(value)
        if ended is not None:
            await _end_at_auth(console, ended)
    response = redirect(request, "/login")
    console.cookies.clear(response, request.cookies)
    console.cookies.drop_csrf_token(response)
    return response


# -- overview ------------------------------------------------------------------------------


async def _labels(request: Request, viewer: Viewer) -> dict[str, dict[str, str]]:
    """Names for ids: {"api_key": {key_id: name}, "user": {user_id: email}}."""
    backend = backend_of(request)
    keys_path = "/v1/admin/api-keys" if viewer.is_admin else "/v1/api-keys"
    calls = [backend.auth(viewer.access_token, "GET", keys_path)]
    if viewer.is_admin:
        calls.append(backend.auth(viewer.access_token, "GET", "/v1/admin/users"))
    results = await asyncio.gather(*calls, return_exceptions=True)
    labels: dict[str, dict[str, str]] = {"api_key": {}, "user": {}}
    if isinstance(results[0], dict):
        labels["api_key"] = {
            key["key_id"]: f"{key['name']} ({key['prefix']}…)" for key in results[0]["data"]
        }
    if len(results) > 1 and isinstance(results[1], dict):
        labels["user"] = {user["id"]: user["email"] for user in results[1]["data"]}
    labels["user"].setdefault(viewer.principal.user_id, viewer.session.email)
    return labels


@router.get("/")
async def overview(request: Request, viewer: CurrentViewer) -> Response:
    """Requests, tokens, spend, error rate and latency over time; top models, keys, users."""
    span = views.OVERVIEW_RANGES[
        views.choice(request.query_params.get("range"), views.OVERVIEW_RANGES, "day")
    ]
    backend = backend_of(request)
    until = datetime.now(UTC).replace(microsecond=0)
    since = span.since(until)
    window = {"since": views.iso(since), "until": views.iso(until)}
    dimensions = ["model", "api_key"] + (["user"] if viewer.is_admin else [])
    over_time, totals, labels, *tops = await asyncio.gather(
        backend.history(
            viewer.principal, "/v1/usage/performance", {**window, "group_by": span.bucket}
        ),
        backend.history(viewer.principal, "/v1/usage/performance", window),
        _labels(request, viewer),
        *(
            backend.history(viewer.principal, "/v1/usage", {**window, "group_by": dimension})
            for dimension in dimensions
        ),
    )
    buckets = views.fill_buckets(over_time["data"], since, until, span.bucket)
    labels_x = [views.bucket_label(key, span.bucket) for key, _ in buckets]

    def series(metric: str, scale: float = 1.0, *, rate: bool = False) -> list[Any]:
        """Values per bucket; a bucket without requests counts 0, but has no latency or
        error rate at all (a gap in the line, not a fall to zero)."""
        empty = None if rate else 0
        return [
            (row[metric] * scale if row[metric] is not None else None) if row else empty
            for _, row in buckets
        ]

    charts = {
        "requests": views.chart(
            "bar", labels_x, {"Requests": series("requests"), "Errors": series("errors")}, "count"
        ),
        "tokens": views.chart(
            "line",
            labels_x,
            {"Input tokens": series("input_tokens"), "Output tokens": series("output_tokens")},
            "count",
        ),
        "spend": views.chart("line", labels_x, {"Spend (USD)": series("cost_usd")}, "usd"),
        "errors": views.chart(
            "line", labels_x, {"Error rate": series("error_rate", 100, rate=True)}, "percent"
        ),
        "latency": views.chart(
            "line",
            labels_x,
            {
                "p50": series("latency_ms_p50", rate=True),
                "p95": series("latency_ms_p95", rate=True),
            },
            "ms",
        ),
    }
    summary = totals["data"][0] if totals["data"] else None
    top = {}
    for dimension, report in zip(dimensions, tops, strict=True):
        rows = sorted(report["data"], key=lambda row: (-row["cost_usd"], -row["requests"]))[:5]
        top[dimension] = [
            {**row, "label": labels.get(dimension, {}).get(row[dimension]) or row[dimension]}
            for row in rows
        ]
    return render(
        request,
        "overview.html",
        viewer,
        section="overview",
        span=span,
        ranges=views.OVERVIEW_RANGES,
        summary=summary,
        charts=charts,
        top=top,
    )


# -- usage and spend -------------------------------------------------------------------


def _usage_params(request: Request) -> tuple[str, views.Range]:
    query = request.query_params
    group = views.choice(query.get("group_by"), views.USAGE_GROUPS, "day")
    span = views.USAGE_RANGES[views.choice(query.get("range"), views.USAGE_RANGES, "30d")]
    return group, span


def _usage_window(span: views.Range) -> dict[str, str]:
    """The range as history's relative `since` (e.g. 720h), so the CSV is the report."""
    return {"since": f"{int(span.span.total_seconds() // 3600)}h"}


# A number as the key form's fields take it: ASCII digits, a sign, and (for amounts) a
# decimal point. int() and float() would also take "1_000", other scripts' digits, "1e3",
# "nan" and "inf", none of which the form offers or the JSON API could be sent.
_WHOLE_NUMBER = re.compile(r"-?[0-9]{1,18}")
_DECIMAL_NUMBER = re.compile(r"-?[0-9]{1,18}(\.[0-9]{1,18})?")


def _form_number(raw: str, *, decimal: bool) -> int | float | None:
    """`raw` (a form field) as a whole number, or a decimal one when `decimal`; None when
    it is neither."""
    text = raw.strip()
    if not (_DECIMAL_NUMBER if decimal else _WHOLE_NUMBER).fullmatch(text):
        return None
    return float(text) if decimal else int(text)


@router.get("/usage")
async def usage(request: Request, viewer: CurrentViewer) -> Response:
    """Usage and spend grouped by day, hour, model, user, key or team: chart and table."""
    group, span = _usage_params(request)
    backend = backend_of(request)
    params = {"group_by": group, **_usage_window(span)}
    unavailable = None
    report: dict[str, Any] = {"data": [], "totals": {}}
    labels: dict[str, Any]
    try:
        report, labels = await asyncio.gather(
            backend.history(viewer.principal, "/v1/usage", params), _labels(request, viewer)
        )
    except BackendError as exc:
        if exc.status != 400:
            raise
        unavailable = exc.message
        labels = {}
    rows = report["data"]
    is_time = group in ("day", "hour")
    if is_time:
        since = views.parse_iso(report.get("since"))
        until = views.parse_iso(report.get("until"))
        if since and until:
            filled = views.fill_buckets(rows, since, until, group)
            chart_labels = [views.bucket_label(key, group) for key, _ in filled]
            cost = [row["cost_usd"] if row else 0 for _, row in filled]
            count = [row["requests"] if row else 0 for _, row in filled]
        else:
            chart_labels, cost, count = [], [], []
    else:
        rows = sorted(rows, key=lambda row: -row["cost_usd"])
        chart_labels = [
            labels.get(group, {}).get(row.get(group)) or row.get(group) or "(none)"
            for row in rows[:15]
        ]
        cost = [row["cost_usd"] for row in rows[:15]]
        count = [row["requests"] for row in rows[:15]]
    charts = {
        "cost": views.chart("bar", chart_labels, {"Spend (USD)": cost}, "usd"),
        "requests": views.chart("bar", chart_labels, {"Requests": count}, "count"),
    }
    return render(
        request,
        "usage.html",
        viewer,
        section="usage",
        group=group,
        groups=views.USAGE_GROUPS,
        span=span,
        ranges=views.USAGE_RANGES,
        rows=rows,
        totals=report.get("totals", {}),
        labels=labels,
        charts=charts,
        unavailable=unavailable,
        csv_query=views.query_string({"group_by": group, "range": span.key}),
    )


@router.get("/usage.csv")
async def usage_csv(request: Request, viewer: CurrentViewer) -> Response:
    """The usage table as CSV: exactly what `GET /v1/usage?format=csv` answers."""
    group, span = _usage_params(request)
    upstream = await backend_of(request).history_response(
        viewer.principal,
        "/v1/usage",
        {"group_by": group, **_usage_window(span), "format": "csv"},
    )
    return Response(
        upstream.content,
        media_type=upstream.headers.get("content-type", "text/csv; charset=utf-8"),
        headers={"content-disposition": f'attachment; filename="usage-{group}-{span.key}.csv"'},
    )


# -- request log -------------------------------------------------------------------------


@router.get("/requests")
async def request_log(request: Request, viewer: CurrentViewer) -> Response:
    """Requests newest first, with filters (time, model, status, key, user) and cursor pages."""
    query = request.query_params
    filters = {
        "range": views.choice(query.get("range"), views.LOG_RANGES, ""),
        "model": (query.get("model") or "")[:256],
        "status": views.choice(query.get("status"), REQUEST_STATUSES, ""),
        "api_key_id": (query.get("api_key_id") or "")[:128],
        "user_id": (query.get("user_id") or "")[:128] if viewer.is_admin else "",
    }
    cursor = (query.get("cursor") or "")[:512]
    params: dict[str, Any] = {
        key: value for key, value in filters.items() if key != "range" and value
    }
    if filters["range"]:
        params["since"] = views.iso(views.LOG_RANGES[filters["range"]].since())
    params["limit"] = LOG_PAGE_SIZE
    if cursor:
        params["cursor"] = cursor
    backend = backend_of(request)
    error = None
    page: dict[str, Any] = {"data": [], "next_cursor": None}
    try:
        page, labels = await asyncio.gather(
            backend.history(viewer.principal, "/v1/history", params), _labels(request, viewer)
        )
    except BackendError as exc:
        if exc.status != 400:
            raise
        error, labels = exc.message, await _labels(request, viewer)
    next_link = (
        views.query_string({**filters, "cursor": page["next_cursor"]})
        if page.get("next_cursor")
        else None
    )
    return render(
        request,
        "requests.html",
        viewer,
        section="requests",
        items=page["data"],
        filters=filters,
        ranges=views.LOG_RANGES,
        statuses=REQUEST_STATUSES,
        models=backend.gateway.routing.model_names(),
        labels=labels,
        next_link=next_link,
        first_link=views.query_string(filters) if cursor else None,
        error=error,
    )


@router.get("/requests/{request_id}")
async def request_detail(request_id: str, request: Request, viewer: CurrentViewer) -> Response:
    """One request: the conversation as text, tool calls, usage, latency, deployment,
    retries and fallbacks; what a metadata-only tenant keeps, without content."""
    backend = backend_of(request)
    if not (1 <= len(request_id) <= 64 and request_id.replace("-", "").replace("_", "").isalnum()):
        return render(request, "not_found.html", viewer, 404, what="request")
    try:
        item, labels = await asyncio.gather(
            backend.history(viewer.principal, f"/v1/history/{request_id}"),
            _labels(request, viewer),
        )
    except BackendError as exc:
        if exc.status == 404:
            return render(request, "not_found.html", viewer, 404, what="request")
        raise
    # Stored as the client and the upstream sent them: any JSON, read defensively.
    body = item.get("request") if isinstance(item.get("request"), dict) else {}
    reply = item.get("response") if isinstance(item.get("response"), dict) else {}
    redacted = bool(body.get("redacted") or reply.get("redacted"))
    return render(
        request,
        "request_detail.html",
        viewer,
        section="requests",
        item=item,
        labels=labels,
        redacted=redacted,
        request_turns=[]
        if redacted
        else conversation.shown(
            conversation.iter_request_turns(body),
            count=conversation.request_turn_count(body),
        ),
        reply_turns=[] if redacted else conversation.shown(conversation.response_turns(reply)),
        tools=conversation.declared_tools(body),
        parameters=conversation.parameters(body),
        finish_reasons=conversation.finish_reasons(reply),
        attempts=item.get("attempts"),
    )


# -- API keys ----------------------------------------------------------------------------


async def _keys_page(
    request: Request, viewer: Viewer, status_code: int = 200, **context: Any
) -> Response:
    backend = backend_of(request)
    path = "/v1/admin/api-keys" if viewer.is_admin else "/v1/api-keys"
    keys, labels, me = await asyncio.gather(
        backend.auth(viewer.access_token, "GET", path),
        _labels(request, viewer),
        _governance(request, viewer),
    )
    rows = sorted(keys["data"], key=lambda key: key["created_at"], reverse=True)
    return render(
        request,
        "keys.html",
        viewer,
        status_code,
        section="keys",
        keys=rows,
        labels=labels,
        models=backend.gateway.routing.model_names(),
        limits_available=me is not None,
        periods=views.BUDGET_PERIODS,
        **context,
    )


@router.get("/keys")
async def keys(request: Request, viewer: CurrentViewer) -> Response:
    """The user's keys (admins: the tenant's), and the form to create one."""
    return await _keys_page(request, viewer)


@router.post("/keys")
async def create_key(
    request: Request,
    viewer: CurrentViewer,
    name: Annotated[str, Form(max_length=400)] = "",
    expires_in_days: Annotated[str, Form(max_length=10)] = "",
    allowed_models: Annotated[list[str] | None, Form()] = None,
    scopes: Annotated[list[str] | None, Form()] = None,
    max_budget_usd: Annotated[str, Form(max_length=32)] = "",
    budget_period: Annotated[str, Form(max_length=8)] = "",
    rpm_limit: Annotated[str, Form(max_length=32)] = "",
    tpm_limit: Annotated[str, Form(max_length=32)] = "",
    max_parallel_requests: Annotated[str, Form(max_length=32)] = "",
) -> Response:
    """Create a key for the signed-in user; the secret is shown on this answer only.
    Limits are sent only when filled in (auth checks them against the team's and the
    user's, and refuses what does not fit, naming the field)."""
    body: dict[str, Any] = {"name": name.strip() or "default"}
    problem = None
    if expires_in_days.strip():
        days = _form_number(expires_in_days, decimal=False)
        if days is None:
            problem = "Expires in (days) must be a whole number."
        else:
            body["expires_in_days"] = days
    for field, raw, label in (
        ("max_budget_usd", max_budget_usd, "Budget (USD)"),
        ("rpm_limit", rpm_limit, "Requests per minute"),
        ("tpm_limit", tpm_limit, "Tokens per minute"),
        ("max_parallel_requests", max_parallel_requests, "Parallel requests"),
    ):
        if raw.strip():
            value = _form_number(raw, decimal=field == "max_budget_usd")
            if value is None:
                problem = f"{label} must be a number."
                continue
            body[field] = value
    if budget_period in views.BUDGET_PERIODS:
        body["budget_period"] = budget_period
    elif budget_period.strip():
        problem = "Budget period must be one of the periods offered."
    if allowed_models:
        body["allowed_models"] = [model for model in allowed_models if model][:200]
    if scopes:
        body["scopes"] = [scope for scope in scopes if scope][:10]
    if problem is None:
        try:
            created = await backend_of(request).auth(
                viewer.access_token, "POST", "/v1/api-keys", json=body
            )
        except BackendError as exc:
            if exc.status >= 500:
                raise
            problem = exc.message
        else:
            return await _keys_page(request, viewer, 201, created=created)
    return await _keys_page(request, viewer, 400, form_error=problem, form=body)


@router.post("/keys/{key_id}/revoke")
async def revoke_key(key_id: str, request: Request, viewer: CurrentViewer) -> Response:
    """Revoke a key (one's own; admins: any of the tenant's). Unknown keys are 404."""
    path = "/v1/admin/api-keys/" if viewer.is_admin else "/v1/api-keys/"
    if not (1 <= len(key_id) <= 128 and key_id.replace("-", "").replace("_", "").isalnum()):
        return render(request, "not_found.html", viewer, 404, what="API key")
    try:
        await backend_of(request).auth(viewer.access_token, "DELETE", path + key_id)
    except BackendError as exc:
        if exc.status == 404:
            return render(request, "not_found.html", viewer, 404, what="API key")
        raise
    return redirect(request, "/keys")


# -- teams and budgets -------------------------------------------------------------------

NOT_AVAILABLE = (404, 405, 501)


async def _governance(request: Request, viewer: Viewer) -> dict[str, Any] | None:
    """The caller and the limits of every level above them (auth's `GET /v1/me`), or
    None when this server has no teams, budgets and limits."""
    try:
        return cast(
            dict[str, Any], await backend_of(request).auth(viewer.access_token, "GET", "/v1/me")
        )
    except BackendError as exc:
        if exc.status in NOT_AVAILABLE:
            return None
        raise


async def _team_spend(
    request: Request, viewer: Viewer, starts: set[datetime]
) -> tuple[dict[tuple[datetime, str], float], str | None]:
    """{(period start, team id): USD spent since then} from history's usage grouped by
    team, one report per distinct period start; (empty, reason) when history cannot
    group by team."""
    backend = backend_of(request)
    spend: dict[tuple[datetime, str], float] = {}
    for start in sorted(starts):
        try:
            report = await backend.history(
                viewer.principal,
                "/v1/usage",
                {"group_by": "team", "since": views.iso(start)},
            )
        except BackendError as exc:
            if exc.status == 400:
                return {}, exc.message
            raise
        for row in report.get("data", []):
            if row.get("team"):
                spend[(start, row["team"])] = float(row.get("cost_usd") or 0)
    return spend, None


async def _member_team_spend(request: Request, viewer: Viewer) -> tuple[float | None, str | None]:
    """(USD the caller's team spent in its current budget period, None) from the limit
    ledger, fleet-wide (history would show only the member's own requests); (None, reason)
    when it cannot be read."""
    try:
        spend = await budget_spend(backend_of(request).gateway, viewer.principal)
    except LookupError:
        return None, "the limit store cannot be read right now."
    for budget in spend.data:
        if budget.level == "team":
            return budget.spent_usd, None
    return None, "this gateway does not enforce budgets."


@router.get("/teams")
async def teams(request: Request, viewer: CurrentViewer) -> Response:
    """Teams with spend against budget and when budgets reset; members see their team
    and the limits that apply to them. Without teams on this server, the page says so.

    Admins: every team of the tenant (auth's `GET /v1/admin/teams`), spend from history's
    usage grouped by team since each budget period's start. Members: their team from
    auth's `GET /v1/me` (its id: members cannot list teams), spend from the limit ledger."""
    backend = backend_of(request)
    me = await _governance(request, viewer)
    if me is None:
        return render(request, "teams.html", viewer, section="teams", available=False)
    rows: list[dict[str, Any]] = []
    if viewer.is_admin:
        answer = await backend.auth(viewer.access_token, "GET", "/v1/admin/teams")
        rows = [
            {"id": team["id"], "name": team["name"], "limits": team.get("limits") or {}}
            for team in answer.get("data", [])
        ]
    elif me.get("team_id") and isinstance(me.get("levels"), dict):
        level = me["levels"].get("team") or {}
        rows = [{"id": me["team_id"], "name": me["team_id"], "limits": level.get("limits") or {}}]
    now = datetime.now(UTC)
    day_s = backend.gateway.settings.budget_day_s
    for row in rows:
        row["period"] = views.budget_period(row["limits"], now, day_s)
        row["spend_usd"] = None
    budgeted = [row for row in rows if row["period"] is not None]
    spend_unavailable = None
    if viewer.is_admin and budgeted:
        starts = {row["period"][0] for row in budgeted}
        spend, spend_unavailable = await _team_spend(request, viewer, starts)
        for row in budgeted:
            if spend_unavailable is None:
                row["spend_usd"] = spend.get((row["period"][0], row["id"]), 0.0)
    elif budgeted:
        [row] = budgeted
        row["spend_usd"], spend_unavailable = await _member_team_spend(request, viewer)
    levels = me.get("levels") if isinstance(me.get("levels"), dict) else {}
    return render(
        request,
        "teams.html",
        viewer,
        section="teams",
        available=True,
        teams=rows,
        levels=levels,
        spend_unavailable=spend_unavailable,
    )


# -- jobs ----------------------------------------------------------------------------------


@router.get("/jobs")
async def jobs(request: Request, viewer: CurrentViewer) -> Response:
    """Asynchronous jobs with their status; unfinished ones (queued, in progress) can be
    cancelled."""
    query = request.query_params
    status = views.choice(query.get("status"), JOB_STATUSES, "")
    cursor = (query.get("cursor") or "")[:512]
    page = await backend_of(request).history(
        viewer.principal,
        "/v1/jobs",
        {"status": status, "cursor": cursor, "limit": LOG_PAGE_SIZE},
    )
    return render(
        request,
        "jobs.html",
        viewer,
        section="jobs",
        jobs=page["data"],
        status=status,
        statuses=JOB_STATUSES,
        next_link=views.query_string({"status": status, "cursor": page["next_cursor"]})
        if page.get("next_cursor")
        else None,
        first_link=views.query_string({"status": status}) if cursor else None,
    )


@router.post("/jobs/{job_id}/cancel")
async def cancel_job(job_id: str, request: Request, viewer: CurrentViewer) -> Response:
    """Cancel an unfinished job (a finished one cannot be: the page says why)."""
    if not (1 <= len(job_id) <= 64 and job_id.replace("-", "").replace("_", "").isalnum()):
        return render(request, "not_found.html", viewer, 404, what="job")
    try:
        await backend_of(request).cancel_job(viewer.principal, job_id)
    except BackendError as exc:
        if exc.status == 404:
            return render(request, "not_found.html", viewer, 404, what="job")
        if exc.status == 409:
            return render(
                request,
                "message.html",
                viewer,
                409,
                section="jobs",
                title="Job not cancelled",
                message=exc.message,
                back="/jobs",
            )
        raise
    return redirect(request, "/jobs")


# -- models and deployments ------------------------------------------------------------


@router.get("/models")
async def models(request: Request, viewer: CurrentViewer) -> Response:
    """Each model's deployments: routing, circuit-breaker state, and the last hour's
    requests, error rate and latency."""
    backend = backend_of(request)
    routing = backend.gateway.routing
    names = routing.model_names()
    if viewer.principal.allowed_models is not None:
        names = [name for name in names if name in viewer.principal.allowed_models]
    performance, (circuits, replicas) = await asyncio.gather(
        backend.history(
            viewer.principal,
            "/v1/usage/performance",
            {"since": "1h", "group_by": "model,deployment"},
        ),
        backend.circuit_states(),
    )
    health = {(row["model"], row["deployment"]): row for row in performance["data"]}
    routes = []
    for name in sorted(names):
        route = routing.route(name)
        if route is None:
            continue
        deployments = []
        for deployment in route.deployments:
            circuit = circuits.get((name, deployment.name))
            deployments.append(
                {
                    "deployment": deployment,
                    "circuit": circuit or ("closed" if replicas else "unknown"),
                    "health": health.get((name, deployment.name)),
                }
            )
        routes.append({"name": name, "deployments": deployments})
    return render(
        request,
        "models.html",
        viewer,
        section="models",
        routes=routes,
        replicas=replicas,
        replicas_configured=len(backend.gateway.settings.console_inference_metrics_urls),
    )
