"""CORS for browser clients: Starlette's CORSMiddleware with the configured origins,
methods and headers. Unconfigured, development allows any origin and every other
environment none, so a deployment opens exactly the origins it lists."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from switchyard.gateway.config import Settings


def install_cors(app: FastAPI, settings: Settings) -> bool:
    """Add the middleware if any origin is allowed; True if it was added. Add it last, so
    it is the outermost layer and refusals (401, 413, 429) carry CORS headers too."""
    origins = settings.effective_cors_origins()
    if not origins and settings.cors_allow_origin_regex is None:
        return False
    app.add_middleware(
        CORSMiddleware,
        allow_origins=origins,
        allow_origin_regex=settings.cors_allow_origin_regex,
        allow_methods=settings.cors_allow_methods,
        allow_headers=settings.cors_allow_headers,
        expose_headers=settings.cors_expose_headers,
        allow_credentials=settings.cors_allow_credentials,
        max_age=settings.cors_max_age_s,
    )
    return True
