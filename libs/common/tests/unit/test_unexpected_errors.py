"""What every service's outer middleware does: a fault of the service's own (an exception
nothing handled) before its answer started is answered like every other error, in
OpenAI's error format, not with the server's bare text/plain 500 (a database out of reach
is a 503 to retry, not a fault); HEAD is answered as GET without the body."""

from __future__ import annotations

import asyncio
import sqlite3

import httpx
import psycopg
import pytest
from fastapi import FastAPI
from sqlalchemy import exc as sa_exc
from sqlalchemy.exc import OperationalError, ProgrammingError

from switchyard.common.errors import install_error_handlers
from switchyard.common.http import ClientDisconnectGuard


def service(fault: BaseException) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/broken")
    async def broken() -> None:
        raise fault

    app.add_middleware(ClientDisconnectGuard)
    return app


async def call(app: FastAPI) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.get("/broken")


async def test_an_unexpected_exception_is_a_500_in_openais_error_format() -> None:
    response = await call(service(RuntimeError("secret detail")))
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["type"] == "server_error"
    assert "secret detail" not in response.text


async def test_head_is_answered_as_get_without_the_body() -> None:
    from switchyard.common.http import HeadAsGet

    app = FastAPI()

    @app.get("/thing")
    async def thing() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/action")
    async def action() -> dict[str, str]:
        return {"done": "yes"}

    app.add_middleware(HeadAsGet)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        got = await client.get("/thing")
        head = await client.head("/thing")
        post_only = await client.head("/action")
    # The status and header fields GET has, and no body (RFC 9110, 9.3.2).
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == got.headers["content-length"]
    assert head.headers["content-type"] == got.headers["content-type"]
    assert post_only.status_code == 405


async def test_a_405_allows_every_method_served_at_the_path() -> None:
    from switchyard.common.http import HeadAsGet

    app = FastAPI()
    install_error_handlers(app)

    @app.get("/things/{thing_id}")
    async def get_thing(thing_id: str) -> dict[str, str]:
        return {"id": thing_id}

    @app.delete("/things/{thing_id}")
    async def delete_thing(thing_id: str) -> dict[str, str]:
        return {"deleted": thing_id}

    @app.post("/things/{thing_id}/cancel")
    async def cancel_thing(thing_id: str) -> dict[str, str]:
        return {"cancelled": thing_id}

    inner = FastAPI()
    install_error_handlers(inner)

    @inner.put("/settings")
    async def put_settings() -> dict[str, str]:
        return {}

    @inner.patch("/settings")
    async def patch_settings() -> dict[str, str]:
        return {}

    app.mount("/admin", inner)
    app.add_middleware(HeadAsGet)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        put = await client.put("/things/t1")
        cancel = await client.get("/things/t1/cancel")
        mounted = await client.post("/admin/settings")
    # RFC 9110, 15.5.6: the methods the resource supports, not the first route's only.
    assert put.status_code == 405
    assert put.headers["allow"] == "DELETE, GET, HEAD"
    assert put.json()["error"]["type"] == "invalid_request_error"
    assert cancel.status_code == 405
    assert cancel.headers["allow"] == "POST"
    assert mounted.status_code == 405
    assert mounted.headers["allow"] == "PATCH, PUT"
    # Which method was sent where, and what to send: not only "Method Not Allowed".
    assert put.json()["error"]["code"] == "method_not_allowed"
    assert put.json()["error"]["message"] == (
        "Method not allowed: PUT /things/t1; this address takes DELETE, GET, HEAD."
    )
    assert mounted.json()["error"]["message"] == (
        "Method not allowed: POST /admin/settings; this address takes PATCH, PUT."
    )


async def test_a_405_of_mounted_static_files_never_says_no_method_is_allowed(tmp_path) -> None:
    from starlette.staticfiles import StaticFiles

    (tmp_path / "a.css").write_text("body {}")
    app = FastAPI()
    install_error_handlers(app)
    app.mount("/static", StaticFiles(directory=tmp_path))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.post("/static/a.css")
    assert response.status_code == 405
    assert response.headers.get("allow", "GET, HEAD") != ""


def _database_error(kind: type, orig: BaseException) -> BaseException:
    return kind("SELECT 1", {}, orig)


def _sqlite_error(statement: str) -> BaseException:
    """The error SQLAlchemy raises for `statement` on an SQLite database holding table
    `t (a)`."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import DBAPIError

    engine = create_engine("sqlite://")
    try:
        with engine.connect() as connection:
            connection.execute(text("CREATE TABLE t (a)"))
            connection.execute(text(statement))
    except DBAPIError as exc:
        return exc
    finally:
        engine.dispose()
    raise AssertionError("the statement should have failed")


def _sqlite_locked() -> BaseException:
    error = sqlite3.OperationalError("database is locked")
    error.sqlite_errorcode = 5  # SQLITE_BUSY, as sqlite3 sets it
    return _database_error(OperationalError, error)


@pytest.mark.parametrize(
    ("fault", "status"),
    [
        # PostgreSQL refusing connections (psycopg gives no SQLSTATE for that).
        (lambda: _database_error(OperationalError, psycopg.OperationalError("refused")), 503),
        # PostgreSQL shutting down under a session (57P01 admin_shutdown).
        (lambda: _database_error(OperationalError, psycopg.errors.AdminShutdown()), 503),
        (_sqlite_locked, 503),
        (lambda: sa_exc.TimeoutError("QueuePool limit reached"), 503),
        # Defects, not outages: a statement or a schema that is wrong.
        (lambda: _database_error(ProgrammingError, psycopg.errors.SyntaxError()), 500),
        (lambda: _sqlite_error("SELECT * FROM missing"), 500),
        (lambda: _sqlite_error("INSERT INTO t (b) VALUES (1)"), 500),  # a migration missing
        (lambda: _sqlite_error("SELEC 1"), 500),
        (lambda: _sqlite_error("SELECT (SELECT a, a FROM t)"), 500),
        # A statement cancelled by its own timeout (57014) is not an outage.
        (lambda: _database_error(OperationalError, psycopg.errors.QueryCanceled()), 500),
    ],
)
async def test_a_database_out_of_reach_is_a_503_to_retry_a_defect_a_500(fault, status) -> None:
    response = await call(service(fault()))

    assert response.status_code == status
    error = response.json()["error"]
    if status == 503:
        assert error["code"] == "database_unavailable"
        assert response.headers["retry-after"] == "2"
    else:
        assert error["type"] == "server_error"
        assert "retry-after" not in response.headers


async def test_readiness_fails_a_check_that_hangs_instead_of_hanging_with_it(monkeypatch) -> None:
    from switchyard.common import http, tasks

    monkeypatch.setattr(http, "READINESS_CHECK_TIMEOUT_S", 0.1)
    answer, started, cancelled = asyncio.Event(), [], []

    async def hangs() -> bool:
        started.append(1)
        try:
            await answer.wait()
        except asyncio.CancelledError:
            cancelled.append(1)
            raise
        return True

    async def answers() -> bool:
        return True

    app = FastAPI()
    app.include_router(http.health_router({"database": hangs, "bus": answers}))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        async with asyncio.timeout(5):
            ready = await client.get("/readyz")
            # The hanging check is left running, not cancelled (a query cancelled half-way
            # loses its connection), and not started again while it runs: the next probe
            # waits for the same one, which answers within its bound.
            waiting = asyncio.ensure_future(client.get("/readyz"))
            await asyncio.sleep(0.02)
            assert started == [1] and not cancelled
            answer.set()
            again = await waiting
            answer.clear()
            third = await client.get("/readyz")

    assert ready.status_code == third.status_code == 503
    assert ready.json()["checks"] == third.json()["checks"] == {"database": False, "bus": True}
    assert again.status_code == 200
    assert started == [1, 1] and not cancelled
    answer.set()
    assert await tasks.LEFT.wait(5) == 0


async def test_two_probes_at_once_share_one_check_and_both_are_ready() -> None:
    from switchyard.common import http

    calls = []

    async def slowish() -> bool:
        calls.append(1)
        await asyncio.sleep(0.05)
        return True

    app = FastAPI()
    app.include_router(http.health_router({"database": slowish}))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        first, second = await asyncio.gather(client.get("/readyz"), client.get("/readyz"))
    assert first.status_code == second.status_code == 200
    assert calls == [1]
