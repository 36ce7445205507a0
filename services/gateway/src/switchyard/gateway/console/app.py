"""Builds the console's ASGI app, which the gateway mounts at `/ui`.

Layers, outermost first: security headers (a Content-Security-Policy without inline
scripts, no framing, no sniffing, no caching of pages) and the renewed session cookie;
cross-site refusal (asgi-cross-origin-protection, Go's `CrossOriginProtection` method: a
request that is not GET/HEAD/OPTIONS is refused when the browser says it comes from
another site, by `Sec-Fetch-Site`, or else by an `Origin` other than the host's); CSRF
protection (asgi-csrf: a signed double-submit token, checked on every request that is
not GET/HEAD/OPTIONS, cookies or not; while a session lasts, the token is the one its
session cookie carries, see `session`); then the pages and static files.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import structlog
from asgi_cross_origin_protection import CrossOriginProtection
from asgi_csrf import Errors, asgi_csrf
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import cookie_parser
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Match, get_route_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from switchyard.common.errors import APIError, http_error_headers, validation_message
from switchyard.common.http import FASTAPI_TELEMETRY
from switchyard.common.queryparams import refusing_repeated
from switchyard.common.settings import Environment
from switchyard.gateway.bootstrap import Gateway
from switchyard.gateway.console import views
from switchyard.gateway.console.backend import BackendError, ConsoleBackend
from switchyard.gateway.console.routes import (
    ConsoleState,
    NotSignedIn,
    base_path,
    render,
    router,
)
from switchyard.gateway.console.session import (
    COOKIE_NAME,
    COOKIE_PATH,
    CSRF_COOKIE,
    CSRF_NAMESPACE,
    SessionCookies,
    SessionTooLarge,
    cookie_value,
)

HERE = Path(__file__).parent

# Scripts and styles from the console's own static files only: no inline script, no
# eval, nothing from another origin. Pico's icons are data: images.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
]

log = structlog.get_logger("switchyard.gateway.console")


class _EveryPath:
    """asgi-csrf skips requests without cookies unless their path is "always protected";
    the console protects every path (a sign-in form forged cross-site included)."""

    def __contains__(self, path: object) -> bool:
        return True


# Where `ConsoleHeaders` keeps the request's own Cookie headers while the CSRF layer reads
# the one it is given (`_CookiesRestored` puts them back for the pages).
_SENT_COOKIES = "switchyard.console.sent_cookies"
# A CSRF token as asgi-csrf makes them (itsdangerous, URL-safe base64 and dots).
_TOKEN_FORM = re.compile(r"[A-Za-z0-9_\-.]{1,512}")


def _csrf_token_of(headers: list[tuple[bytes, bytes]], cookies: SessionCookies) -> str | None:
    """The CSRF token the CSRF layer checks a request's form against: the session's while
    a valid session cookie is sent (the session cookie as the pages read it, Starlette's
    `cookie_parser`), whatever CSRF cookie comes with it, a planted one included.
    Without a session (the sign-in form), the first CSRF cookie sent, which RFC 6265
    (5.4) orders first when its path is the most specific, if it has a token's form;
    else None. Before sign-in this stays a double-submit check against the browser's
    cookie, which somebody able to plant cookies can choose. Cookie headers are read
    as Latin-1 bytes: a value that is not UTF-8 is nobody's token, never a failure."""
    sent = "; ".join(value.decode("latin-1") for name, value in headers if name == b"cookie")
    if not sent:
        return None
    session = cookies.decode(cookie_value(cookie_parser(sent)))
    if session is not None:
        return session.csrf_token
    for pair in sent.split(";"):
        name, _, value = pair.partition("=")
        if name.strip() == CSRF_COOKIE:
            token = value.strip()
            return token if _TOKEN_FORM.fullmatch(token) else None
    return None


def _for_the_csrf_layer(
    scope: Scope, cookies: SessionCookies
) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]:
    """The request's headers as the CSRF layer is to see them, and its own Cookie headers.

    asgi-csrf parses the Cookie header with `http.cookies.SimpleCookie`, which reads
    whitespace as a separator and stops at the first pair it cannot parse: a planted
    `x=1 switchyard_csrf=<token> "z` would hand it a token of the planter's, and any
    unparsable pair before the CSRF cookie hides it (every form then refused). So it is
    shown one Cookie header holding only `switchyard_csrf=<token>` (`_csrf_token_of`), or
    none; the pages get the request's own headers back (`_CookiesRestored`)."""
    headers = [(name.lower(), value) for name, value in scope.get("headers", [])]
    own = [(name, value) for name, value in headers if name == b"cookie"]
    shown = [(name, value) for name, value in headers if name != b"cookie"]
    token = _csrf_token_of(own, cookies)
    if token is not None:
        shown.append((b"cookie", f"{CSRF_COOKIE}={token}".encode("ascii")))
    return shown, own


class _CookiesRestored:
    """Inside the CSRF layer: gives the pages the Cookie headers the request sent (which
    `ConsoleHeaders` kept aside), in place of the one the CSRF layer was shown."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point: restore the request's Cookie headers, then call the app."""
        own = scope.get(_SENT_COOKIES)
        if own is not None:
            headers = [(n, v) for n, v in scope["headers"] if n != b"cookie"]
            scope = {**scope, "headers": headers + own}
        await self.app(scope, receive, send)


class ConsoleHeaders:
    """Adds the security headers to every console response, `Cache-Control: no-store` to
    pages, and the session cookie when a page renewed the user's tokens; shows the CSRF
    layer the session's token (`_for_the_csrf_layer`)."""

    def __init__(self, app: ASGIApp, cookies: SessionCookies) -> None:
        self.app = app
        self.cookies = cookies

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point: pass HTTP requests through, adding the headers on the way out."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})
        # The console knows its users by the session cookie only. An `Authorization: Bearer`
        # header makes the CSRF layer (asgi_csrf) let a form through unchecked, taking it for
        # an API call: no console request keeps one.
        shown, own = _for_the_csrf_layer(scope, self.cookies)
        scope = {
            **scope,
            "headers": [(n, v) for n, v in shown if n != b"authorization"],
            _SENT_COOKIES: own,
        }

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                headers += [header for header in SECURITY_HEADERS if header[0] not in names]
                static = "/static/" in scope.get("path", "")
                if not static and b"cache-control" not in names:
                    headers.append((b"cache-control", b"no-store"))
                renewed = scope["state"].get("renewed_session")
                if renewed is not None:
                    carrier = Response()
                    try:
                        self.cookies.set(carrier, renewed)
                    except SessionTooLarge:
                        # The page is answered; the old cookie stays, but its refresh
                        # token is spent (auth rotates them): the next renewal ends the
                        # sign-in, and signing in again says why.
                        log.warning("renewed console session too large for its cookies")
                    headers += [h for h in carrier.raw_headers if h[0] == b"set-cookie"]
                message = {**message, "headers": headers}
            await send(message)

        content_type = next(
            (value for name, value in scope["headers"] if name.lower() == b"content-type"), b""
        )
        if content_type.lower().startswith(b"multipart/"):
            # The console's forms are URL-encoded; the CSRF check cannot read a multipart
            # body (asgi-csrf against this python-multipart), which answered with a 500.
            refused = HTMLResponse(
                "<!doctype html><title>Request refused</title><h1>Request refused</h1>"
                "<p>The console's forms are sent as application/x-www-form-urlencoded.</p>",
                status_code=415,
            )
            await refused(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)


async def _csrf_refused(scope: Scope, send: Send, reason: Errors) -> None:
    body = (
        b"<!doctype html><title>Request refused</title><h1>Request refused</h1>"
        b"<p>This form was not sent from this console page (its CSRF token is missing or "
        b"wrong). Reload the page and try again.</p>"
    )
    await send(
        {
            "type": "http.response.start",
            "status": 403,
            "headers": [
                (b"content-type", b"text/html; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _cross_site_refused(scope: Scope, receive: Receive, send: Send) -> None:
    """The page for a form the browser says another site sent (403)."""
    refused = HTMLResponse(
        "<!doctype html><title>Request refused</title><h1>Request refused</h1>"
        "<p>This form was sent from another site. Open the console and send it from "
        "there.</p>",
        status_code=403,
    )
    await refused(scope, receive, send)


def _templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    environment = templates.env
    # Autoescaping on for every template, whatever its file extension.
    environment.autoescape = True
    environment.filters.update(
        time=views.format_time,
        number=views.format_number,
        usd=views.format_usd,
        ms=views.format_ms,
        percent=views.format_percent,
        json_text=views.json_text,
    )
    environment.globals["query_string"] = views.query_string
    return templates


# Where the console's own assets are served, under its mount.
STATIC_PATH = "/static"


def _slash_moved(request: Request) -> str | None:
    """Where a page read with a trailing slash (`/ui/keys/`) lives without it, as a path
    and query (never an absolute URL built from the Host header, which a cache in front
    keyed on the path alone could hand to others); None if no page is there, or for a
    method other than GET and HEAD (a form is never moved)."""
    path = request.scope["path"]
    if request.method not in ("GET", "HEAD") or not path.endswith("/"):
        return None
    if get_route_path(request.scope) in ("", "/"):
        return None
    stripped = {**request.scope, "path": path.rstrip("/")}
    if not any(route.matches(stripped)[0] is Match.FULL for route in request.app.router.routes):
        return None
    # From the path as sent, still percent-encoded: the decoded one would turn `%3F` into
    # a query, `%23` into a fragment and `%2541` into another id.
    raw = request.scope.get("raw_path") or path.encode()
    # One leading slash: `//host/...` would be read by the browser as another host.
    location = "/" + raw.decode("latin-1").rstrip("/").lstrip("/")
    query = request.url.query
    return f"{location}?{query}" if query else location


def create_console(gateway: Gateway) -> ASGIApp:
    """The console app for `gateway` (its settings, authenticator, routing and clients)."""
    settings = gateway.settings
    secure = settings.environment != Environment.DEVELOPMENT
    key = settings.console_signing_key()
    cookies = SessionCookies(key, ttl_s=settings.console_session_ttl_s, secure=secure)
    app = FastAPI(
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        telemetry=FASTAPI_TELEMETRY,
        # Starlette's slash redirect names the Host header in its Location; `_http_error`
        # makes the same redirect with a path.
        redirect_slashes=False,
        # A filter given twice (`?model=a&model=b`) is refused, as on the API; the pages
        # take one value of each, `status` too.
        dependencies=[Depends(refusing_repeated(lists=()))],
    )
    app.state.console = ConsoleState(
        backend=ConsoleBackend(gateway), cookies=cookies, templates=_templates(), refreshes={}
    )
    app.include_router(router)
    app.mount(STATIC_PATH, StaticFiles(directory=HERE / "static"), name="static")

    @app.exception_handler(NotSignedIn)
    async def _sign_in_first(request: Request, _: NotSignedIn) -> Response:
        target = (
            base_path(request)
            + "/login"
            + views.query_string({"next": request.url.path if request.method == "GET" else None})
        )
        response: Response
        if request.headers.get("hx-request"):
            response = Response(status_code=204, headers={"hx-redirect": target})
        else:
            response = RedirectResponse(target, status_code=303)
        if request.cookies.get(COOKIE_NAME) is not None:
            # An altered, ended or older-format cookie, or one of a sign-in auth ended:
            # the browser stops sending it.
            cookies.clear(response, request.cookies)
        return response

    @app.exception_handler(BackendError)
    async def _backend_failed(request: Request, exc: BackendError) -> Response:
        return render(
            request,
            "message.html",
            None,
            503 if exc.status >= 500 else exc.status,
            title="Something went wrong" if exc.status < 500 else "Temporarily unavailable",
            message=exc.message,
            back="/",
        )

    @app.exception_handler(APIError)
    async def _refused(request: Request, exc: APIError) -> Response:
        return render(
            request,
            "message.html",
            None,
            exc.status,
            title="Not accepted",
            message=exc.message,
            back="/",
        )

    @app.exception_handler(RequestValidationError)
    async def _bad_form(request: Request, exc: RequestValidationError) -> Response:
        # A field beyond its bounds (a 500-character email...): a page, never FastAPI's
        # JSON that repeats the input back.
        message, _ = validation_message(list(exc.errors()))
        return render(
            request, "message.html", None, 400, title="Not accepted", message=message, back="/"
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            moved = _slash_moved(request)
            if moved is not None:
                return RedirectResponse(moved, status_code=307)
            root = request.scope.get("root_path", "")
            if root.endswith(STATIC_PATH):
                # A missing asset: the page's links are the console's, not the assets' mount.
                request.scope["root_path"] = root.removesuffix(STATIC_PATH)
            return render(request, "not_found.html", None, 404, what="page")
        return HTMLResponse(
            f"<!doctype html><title>{exc.status_code}</title><p>Request failed.</p>",
            status_code=exc.status_code,
            headers=http_error_headers(request, exc),
        )

    protected: Any = asgi_csrf(
        _CookiesRestored(app),
        cookie_name=CSRF_COOKIE,
        signing_secret=cookies.csrf_secret,
        signing_namespace=CSRF_NAMESPACE,
        always_protect=_EveryPath(),
        cookie_path=COOKIE_PATH,
        cookie_secure=secure,
        cookie_samesite="Lax",
        send_csrf_failed=_csrf_refused,
    )
    # Before sign-in the CSRF token can only be checked against the browser's own cookie,
    # which somebody able to plant cookies for the host (a sibling subdomain) can choose:
    # the browser's word on where the form came from is what stops a forged sign-in
    # (login CSRF). A sibling subdomain is `same-site`, refused like `cross-site`.
    # Clients that send neither header (scripts, older browsers) meet the token check.
    same_origin = CrossOriginProtection(protected, deny_app=_cross_site_refused)
    return ConsoleHeaders(same_origin, cookies)
