"""CORS for browser clients: Starlette's CORSMiddleware with the configured origins,
methods and headers. Unconfigured, development allows any origin and every other
environment none, so a deployment opens exactly the origins it lists. The web console
(`/ui`) is left out: its pages and forms serve its own origin only, whatever is allowed
for the API."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import Receive, Scope, Send
from typing_extensions import override

from switchyard.gateway.config import Settings
from switchyard.gateway.console.mount import MOUNT_PATH


class APICORSMiddleware(CORSMiddleware):
    """Starlette's CORSMiddleware for every path but the console's (`MOUNT_PATH` and
    below), which is passed through untouched: no CORS header, and a preflight there is
    not answered (the browser then refuses the cross-origin request)."""

    @override
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]  # behind a path prefix, the app's own path
        if path == MOUNT_PATH or path.startswith(MOUNT_PATH + "/"):
            await self.app(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def install_cors(app: FastAPI, settings: Settings) -> bool:
    """Add the middleware if any origin is allowed; True if it was added. Add it last, so
    it is the outermost layer and refusals (401, 413, 429) carry CORS headers too."""
    origins = settings.effective_cors_origins()
    if not origins and settings.cors_allow_origin_regex is None:
        return False
    app.add_middleware(
        APICORSMiddleware,
        allow_origins=origins,
        allow_origin_regex=settings.cors_allow_origin_regex,
        allow_methods=settings.cors_allow_methods,
        allow_headers=settings.cors_allow_headers,
        expose_headers=settings.cors_expose_headers,
        allow_credentials=settings.cors_allow_credentials,
        max_age=settings.cors_max_age_s,
    )
    return True
