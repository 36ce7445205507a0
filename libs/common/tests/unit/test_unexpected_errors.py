"""A fault of a service's own (an exception nothing handled) before its answer started is
answered like every other error, in OpenAI's error format, not with the server's bare
text/plain 500."""

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
