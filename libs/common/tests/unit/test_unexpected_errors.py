"""What every service's outer middleware does: a fault of the service's own (an exception
nothing handled) before its answer started is answered like every other error, in
OpenAI's error format, not with the server's bare text/plain 500; HEAD is answered as GET
without the body."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

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
