"""Mounting the console into the gateway app: at `/ui`, after every API route, so API
requests match before it and pass through none of its middleware; `/` leads to it."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.responses import RedirectResponse

from switchyard.gateway.bootstrap import Gateway

MOUNT_PATH = "/ui"


def install_console(app: FastAPI, gateway: Gateway) -> None:
    """Serve the web console under `MOUNT_PATH` on `app`, with `/` and `MOUNT_PATH`
    itself redirecting to it (307)."""
    # Imported here so a gateway with the console disabled never loads its templates.
    from switchyard.gateway.console.app import create_console

    @app.get("/", include_in_schema=False)
    async def _home() -> RedirectResponse:
        return RedirectResponse(MOUNT_PATH + "/", status_code=307)

    # The console's own address without its slash (trailing slashes are not redirected
    # app-wide); the Location is a path, never built from the Host header.
    @app.get(MOUNT_PATH, include_in_schema=False)
    async def _console() -> RedirectResponse:
        return RedirectResponse(MOUNT_PATH + "/", status_code=307)

    app.mount(MOUNT_PATH, create_console(gateway), name="console")
