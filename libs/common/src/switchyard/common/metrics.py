"""Prometheus metrics: the `/metrics` route every service mounts.

Open by default (scraped from inside the cluster); with `SWITCHYARD_METRICS_TOKEN` set,
only requests carrying `Authorization: Bearer <token>` get the metrics (Prometheus:
`authorization: {credentials: <token>}` in the scrape config), others 401.
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from switchyard.common.errors import APIError


def metrics_router(registry: CollectorRegistry = REGISTRY, token: str | None = None) -> APIRouter:
    """`GET /metrics`; with `token`, only for callers presenting it as a bearer token."""
    router = APIRouter(tags=["operations"])
    expected = f"Bearer {token}".encode() if token else None

    @router.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        """Prometheus exposition of this process's metrics."""
        if expected is not None:
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                raise APIError(
                    401,
                    "The metrics need 'Authorization: Bearer <SWITCHYARD_METRICS_TOKEN>'.",
                    code="metrics_token_required",
                    headers={"WWW-Authenticate": "Bearer"},
                )
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router
