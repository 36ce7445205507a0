"""HTTP plumbing every service shares: health routes, internal-call authentication and
the uvicorn runner."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import signal
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import httpx
import uvicorn
from fastapi import APIRouter, FastAPI, Header, HTTPException, Response
from fastapi.telemetry import TelemetryConfig
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from switchyard.common.errors import APIError, error_response
from switchyard.common.headers import INTERNAL_TOKEN_HEADER
from switchyard.common.httpserver import PROTOCOL_PATH
from switchyard.common.tasks import wait_or_leave

if TYPE_CHECKING:
    from switchyard.common.errors import APIError

ReadinessCheck = Callable[[], Awaitable[bool]]

# What every service passes to `FastAPI(telemetry=...)`: FastAPI's own OpenTelemetry
# instrumentation off. It turns itself on whenever a global tracer provider is set, as
# `tracing.configure_tracing` sets one, and would add a second SERVER span to each
# request besides `TracingMiddleware`'s, and three INTERNAL ones (dependencies, endpoint,
# serialization). Metrics are Prometheus's (`/metrics`), logs structlog's.
FASTAPI_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}


# How long a readiness check may take before it counts as failed: a dependency that hangs
# (a database whose host stopped answering) must not hang `/readyz` with it; the
# deployments' probes give up after 3 s.
READINESS_CHECK_TIMEOUT_S = 2.0
# How long a check that outlasted its probe may run on before it is cancelled after all.
READINESS_FINISH_S = 30.0


def health_router(checks: dict[str, ReadinessCheck] | None = None) -> APIRouter:
    """`/livez` (the process answers) and `/readyz` (its dependencies answer): the `checks`
    run side by side, each one failed when it takes longer than
    `READINESS_CHECK_TIMEOUT_S`. A slow check is not cancelled (a database query
    cancelled half-way loses its connection, `wait_or_leave`): it runs on, and the probes
    that come meanwhile wait for it, within their own bound, rather than start another."""
    router = APIRouter(tags=["operations"])
    readiness = checks or {}
    running: dict[str, asyncio.Future[bool]] = {}

    async def bounded(name: str, check: ReadinessCheck) -> bool:
        task = running.get(name)
        if task is None or task.done():
            task = running[name] = asyncio.ensure_future(check())
        try:
            return await wait_or_leave(task, READINESS_CHECK_TIMEOUT_S, finish_s=READINESS_FINISH_S)
        except TimeoutError:
            return False

    @router.get("/livez")
    async def livez() -> dict[str, str]:
        """Liveness: the process is up."""
        return {"status": "ok"}

    @router.get("/readyz")
    async def readyz(response: Response) -> dict[str, object]:
        """Readiness: every dependency (bus, database) answers."""
        answers = await asyncio.gather(*(bounded(name, check) for name, check in readiness.items()))
        results = dict(zip(readiness, answers, strict=True))
        ready = all(results.values())
        if not ready:
            response.status_code = 503
        return {"status": "ok" if ready else "unavailable", "checks": results}

    return router


def internal_token_dependency(expected: str) -> Callable[[str | None], Awaitable[None]]:
    """A dependency refusing service-to-service calls without the shared internal token."""

    async def require_internal_token(
        token: str | None = Header(default=None, alias=INTERNAL_TOKEN_HEADER),
    ) -> None:
        if token is None or not hmac.compare_digest(token.encode(), expected.encode()):
            raise HTTPException(status_code=401, detail="internal token required")

    return require_internal_token


class InternalTokenFirst:
    """Refuse a request to a path under one of `prefixes` (history's `/v1/` API, the
    `/internal/` routes of every service) without the shared internal token before its
    body is read: FastAPI decodes a JSON body before it solves the route's dependencies,
    so a caller without the token could make a service decode megabytes of JSON for each
    401 it gets (seconds of the loop that answers the gateway). The answer is the one the
    route's own `internal_token_dependency` gives, in OpenAI's error format
    (`install_error_handlers`): 401 "internal token required". The routes keep that
    dependency; this only answers first."""

    def __init__(self, app: ASGIApp, token: str, prefixes: tuple[str, ...]) -> None:
        self.app = app
        self._expected = token.encode()
        self._prefixes = prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point: answer 401 at once for a request under the prefixes without
        the token; pass everything else through."""
        if scope["type"] == "http" and scope["path"].startswith(self._prefixes):
            name = INTERNAL_TOKEN_HEADER.lower().encode()
            given = next((value for key, value in scope["headers"] if key == name), None)
            if given is None or not hmac.compare_digest(given, self._expected):
                response = error_response(APIError(401, "internal token required"))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


# A path no route serves: matching it against a router tries every route there is.
_WARM_UP_PATH = "/.switchyard/warm-up"


async def warm_routes(app: ASGIApp) -> None:
    """Prepare `app`'s request handling before it serves: match one GET of a path no route
    serves against its router (its middleware left out, so nothing is logged or counted),
    then against the router of each app mounted in it that has one (not an app behind
    middleware, nor static files: they would answer). FastAPI builds each included
    router's routes (every endpoint's dependency and body analysis) the first time a
    request is matched against them, which held the first request after start-up for
    100 to 200 ms. The 404 the router answers is dropped. Raises nothing: a failure is
    logged, and start-up goes on."""
    router = getattr(app, "router", app)

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(_: Message) -> None:
        return None

    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": _WARM_UP_PATH,
        "raw_path": _WARM_UP_PATH.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "client": None,
        "server": None,
    }
    try:
        await router(scope, receive, send)
    except Exception as exc:  # a route's matching failing: its first request will tell
        import structlog

        structlog.get_logger("switchyard.http").warning(
            "routes not prepared at start-up", error=repr(exc)
        )
    for route in getattr(router, "routes", ()):
        # Only a mounted app with a router of its own (a FastAPI or Starlette app): not
        # one behind middleware, nor static files, which would answer the request.
        if isinstance(route, Mount) and hasattr(route.app, "router"):
            await warm_routes(route.app)


SERVICE_ENV = "SWITCHYARD_SERVICE"


def service_app() -> FastAPI:
    """uvicorn factory used by `switchyard <service>`: runs in every worker process
    (uvicorn starts fresh interpreters for `--workers N`), so each one configures its own
    logging and tracing before building the app of the service named in SWITCHYARD_SERVICE,
    whose lifespan then freezes the start-up heap (`heap.freezing_after_startup`)."""
    import os

    from switchyard.common.heap import freezing_after_startup
    from switchyard.common.logging import configure_logging
    from switchyard.common.plugins import by_name
    from switchyard.common.tracing import configure_tracing

    plugin = by_name(os.environ[SERVICE_ENV])
    settings = plugin.settings()
    configure_logging(
        plugin.name, settings.log_level, settings.log_format, secrets=[settings.internal_token]
    )
    configure_tracing(plugin.name)
    # Start-up objects out of every later full collection (see `heap`).
    return freezing_after_startup(plugin.create_app())


# Seconds a server keeps an idle connection open (uvicorn's default, named).
SERVER_KEEP_ALIVE_S = 5
# Seconds a client of another Switchyard service keeps an idle pooled connection: well
# under the server's. At the same 5 s (httpx's default) a request sent on a connection
# just as the server closed it for idling fails with "Server disconnected without
# sending a response", which a caller answers as the service being unreachable (503).
INTERNAL_KEEPALIVE_EXPIRY_S = 2.0

# uvicorn settings of every Switchyard server: uvloop, the guarded httptools protocol (head
# limits and read timeouts, see `httpserver`), logs through our own handlers only. No
# service serves WebSockets, so a WebSocket upgrade is declined like any other (answered as
# plain HTTP, the connection closed after it) rather than handed to a WebSocket library
# that holds a connection open, silent, when the request carries a body.
SERVER_OPTIONS: dict[str, Any] = {
    "loop": "auto",
    "http": PROTOCOL_PATH,
    "ws": "none",
    "log_config": None,
    "access_log": False,
    "proxy_headers": False,
    "timeout_keep_alive": SERVER_KEEP_ALIVE_S,
}


def internal_limits(max_connections: int = 100, max_keepalive: int = 20) -> httpx.Limits:
    """The connection pool limits of a client calling another Switchyard service:
    `max_connections` at once, `max_keepalive` of them kept idle, each for at most
    `INTERNAL_KEEPALIVE_EXPIRY_S` seconds (see there why)."""
    return httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=max_keepalive,
        keepalive_expiry=INTERNAL_KEEPALIVE_EXPIRY_S,
    )


# A signal this soon after the first is the same Ctrl+C: `uv run` (as `make run` and the
# README start services) forwards the SIGINT the terminal already sent the whole process
# group, so one Ctrl+C arrives twice, moments apart.
REPEATED_SIGNAL_S = 0.5
# uvicorn's exit status when the app did not start.
STARTUP_FAILURE = 3


class OneSignalServer(uvicorn.Server):
    """uvicorn's server, taking a signal repeated within `REPEATED_SIGNAL_S` as the first
    one: to uvicorn a second SIGINT is a forced exit, which skips the app's shutdown (the
    requests in flight, consumers stopped, offsets committed). A later one still forces."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._first_signal_at: float | None = None

    def handle_exit(self, sig: int, frame: Any) -> None:
        """uvicorn's signal handler: the first signal stops the server gracefully; one
        repeated within `REPEATED_SIGNAL_S` is ignored; a later SIGINT forces the exit."""
        now = time.monotonic()
        if self._first_signal_at is None:
            self._first_signal_at = now
        elif now - self._first_signal_at < REPEATED_SIGNAL_S:
            return
        super().handle_exit(sig, frame)


def server_config(app: Any, *, host: str, port: int) -> uvicorn.Config:
    """The uvicorn Config of one in-process server (embedded mode, tests)."""
    return uvicorn.Config(app, host=host, port=port, lifespan="on", **SERVER_OPTIONS)


def serve(
    app: FastAPI | str,
    *,
    host: str,
    port: int,
    workers: int = 1,
    factory: bool = False,
    name: str = "server",
    port_setting: str = "--port",
    host_setting: str = "--host",
) -> None:
    """Run an app with uvicorn until it is stopped. A port that cannot be bound is one
    line on stderr naming `port_setting` (an address that is not this machine's,
    `host_setting`), and exit status 1. Raises SettingsError (which the `switchyard`
    command prints as one line) for invalid `SWITCHYARD_HTTP_*` limits."""
    import sys

    from switchyard.common.httpserver import PortInUseError, bind, configured_limits

    # Read before listening: read later, by each connection, a bad value would fail
    # every request instead of the start-up.
    configured_limits()
    try:
        bind(host, port, name, port_setting, host_setting).close()
    except PortInUseError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again so the process
    # ends as signalled: the default action would kill it before the log writer's thread
    # has written the last lines (the shutdown's among them).
    signal.signal(signal.SIGTERM, _flush_logs_then_die)
    if workers > 1:
        # uvicorn's supervisor takes the signals (a repeated one changes nothing there)
        # and stops each worker with SIGTERM; a worker gets the process group's one
        # SIGINT besides, never uv's copy, so none is forced out of its shutdown.
        uvicorn.run(app, host=host, port=port, workers=workers, factory=factory, **SERVER_OPTIONS)
        return
    # What uvicorn.run does for one worker, on a server that takes one Ctrl+C as one.
    server = OneSignalServer(
        uvicorn.Config(app, host=host, port=port, factory=factory, **SERVER_OPTIONS)
    )
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:
        raise SystemExit(STARTUP_FAILURE)


def _flush_logs_then_die(signum: int, _frame: Any) -> None:
    from switchyard.common.logging import close_logs

    close_logs()
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)


def only_disconnects(exc: BaseException) -> bool:
    """Whether `exc` says only that the client went away (Starlette's ClientDisconnect,
    alone or every exception of a group)."""
    from starlette.requests import ClientDisconnect

    if isinstance(exc, ClientDisconnect):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(only_disconnects(inner) for inner in exc.exceptions)
    return False


class UnexpectedFaults:
    """ASGI middleware answering an exception nothing handled, raised before the answer
    started, as every other error is: logged with its traceback, then `answer(scope)` (a
    500 in OpenAI's error format, `server_error`), not the server's bare text/plain 500.
    A client gone (`only_disconnects`) is not a fault, nor is anything once the answer
    started: both are re-raised."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    def answer(self, scope: Scope, error: APIError) -> Response:
        """The answer `error` (what `fault` made of the exception) to the request in
        `scope`."""
        from switchyard.common.errors import error_response

        return error_response(error)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point (class docstring)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watching(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watching)
        except Exception as exc:
            if started or only_disconnects(exc):
                raise
            import structlog

            from switchyard.common.errors import APIError

            logger = structlog.get_logger("switchyard.http")
            if database_unreachable(exc):
                # An outage, not a defect: no traceback, and an answer the client may retry.
                logger.warning(
                    "database unavailable answering a request",
                    path=scope.get("path"),
                    error=repr(getattr(exc, "orig", None) or exc)[:300],
                )
                error = APIError(
                    503,
                    "A database this service needs is unavailable; retry shortly.",
                    code="database_unavailable",
                    headers={"Retry-After": "2"},
                )
            else:
                logger.exception("unexpected error answering a request", path=scope.get("path"))
                error = APIError(500, "The service failed to answer this request.")
            await self.answer(scope, error)(scope, receive, send)


# PostgreSQL's SQLSTATEs of a database unreachable or refusing work for now (its appendix
# A): class 08 connection exception and class 53 insufficient resources, whole; from class
# 57 the server shutting down or starting (57P01 admin_shutdown, 57P02 crash_shutdown,
# 57P03 cannot_connect_now), not a statement cancelled by its own timeout (57014).
_UNAVAILABLE_SQLSTATE_CLASSES = frozenset({"08", "53"})
_UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})
# SQLite's primary result codes of the same (https://sqlite.org/rescode.html): BUSY,
# LOCKED, NOMEM, IOERR, FULL, CANTOPEN; never ERROR (a wrong statement or a table or
# column missing), READONLY or CORRUPT, which retrying does not cure.
_UNAVAILABLE_SQLITE_CODES = frozenset({5, 6, 7, 10, 13, 14})


def database_unreachable(exc: BaseException) -> bool:
    """Whether `exc` (raised by SQLAlchemy) says the database cannot be reached or cannot
    take work right now (refused or dropped connections, a server shutting down, a pool
    with no connection to give, SQLite's lock timeout, a full disk) rather than that a
    statement or the schema is wrong (a defect, answered 500 with its traceback)."""
    from sqlalchemy import exc as sa

    if isinstance(exc, sa.TimeoutError):  # the pool had no connection to give in time
        return True
    if not isinstance(exc, sa.DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    code = getattr(orig, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in _UNAVAILABLE_SQLITE_CODES
    sqlstate = getattr(orig, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate:
        return sqlstate[:2] in _UNAVAILABLE_SQLSTATE_CLASSES or sqlstate in _UNAVAILABLE_SQLSTATES
    # No SQLSTATE: psycopg's failures to connect or to keep a connection.
    return isinstance(exc, sa.OperationalError | sa.InterfaceError)


class ClientDisconnectGuard(UnexpectedFaults):
    """A client that goes away before its request is read or answered is normal (a load
    generator closing connections, a user pressing Ctrl+C): one INFO line, never an
    "Exception in ASGI application" traceback. Any other exception before the answer
    started is answered as `UnexpectedFaults` answers it. Added outermost, so it also sees
    what the other middlewares raise while they read the body."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point: `UnexpectedFaults`, and a ClientDisconnect (alone or in an
        exception group) logged at INFO and swallowed."""
        try:
            await super().__call__(scope, receive, send)
        except BaseException as exc:
            if not only_disconnects(exc):
                raise
            import structlog

            structlog.get_logger("switchyard.http").info(
                "client disconnected", method=scope.get("method"), path=scope.get("path")
            )


class HeadAsGet:
    """HEAD answered as GET without its body (RFC 9110, 9.3.2: the same status and header
    fields GET would have), on every route that has GET. FastAPI routes HEAD nowhere (a
    405), which load balancers' HEAD health checks and link checkers read as down. A
    route without GET still answers HEAD with 405."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point (class docstring)."""
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, without_body)


class TracingMiddleware:
    """A SERVER span per HTTP request, continuing the caller's W3C trace context; a
    pass-through while tracing is off."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point: run the wrapped app inside a SERVER span for each HTTP
        request, parented on the request's `traceparent`/`tracestate` headers, recording the
        response status."""
        from switchyard.common import tracing

        if scope["type"] != "http" or not tracing.tracing_enabled():
            await self.app(scope, receive, send)
            return
        from opentelemetry.trace import SpanKind

        carrier = {
            key.decode("latin-1"): value.decode("latin-1")
            for key, value in scope["headers"]
            if key in (b"traceparent", b"tracestate")
        }
        status = {"code": 500}

        async def send_with_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        with tracing.span(
            f"{scope['method']} {scope['path']}",
            kind=SpanKind.SERVER,
            parent=tracing.context_from_carrier(carrier),
            attributes={"http.request.method": scope["method"], "url.path": scope["path"]},
        ) as span:
            try:
                await self.app(scope, receive, send_with_status)
            finally:
                if span is not None:
                    span.set_attribute("http.response.status_code", status["code"])


async def inject_trace_headers(request: httpx.Request) -> None:
    """httpx request hook: carry the current trace to the service being called."""
    from switchyard.common.tracing import current_trace_carrier

    for key, value in current_trace_carrier().items():
        request.headers[key] = value
