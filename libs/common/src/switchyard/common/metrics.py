"""Prometheus metrics: the `/metrics` route every service mounts.

Open by default (scraped from inside the cluster); with `SWITCHYARD_METRICS_TOKEN` set,
only requests carrying `Authorization: Bearer <token>` get the metrics (Prometheus:
`authorization: {credentials: <token>}` in the scrape config), others 401.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

from switchyard.common.errors import APIError

# The services whose metric families carry their name (`switchyard_<service>_...`).
SERVICES = ("auth", "gateway", "history", "inference")


class OwnFamilies:
    """A view of `registry` without the metric families of the other services: a process
    imports their modules (the `switchyard` command loads every service's commands, and
    embedded mode runs them all), which registers their metrics at zero, and a scrape of
    one service must not report another's (a gateway's `switchyard_auth_outbox_failing 0`
    would hide auth's own in an alert)."""

    def __init__(self, registry: CollectorRegistry, service: str) -> None:
        self._registry = registry
        self._foreign = tuple(f"switchyard_{name}_" for name in SERVICES if name != service)

    def collect(self) -> Iterator[Metric]:
        """The registry's families, those of other services left out."""
        for family in self._registry.collect():
            if not family.name.startswith(self._foreign):
                yield family


def metrics_router(
    registry: CollectorRegistry = REGISTRY, token: str | None = None, service: str | None = None
) -> APIRouter:
    """`GET /metrics`; with `token`, only for callers presenting it as a bearer token; with
    `service`, without the other services' metric families (`OwnFamilies`)."""
    router = APIRouter(tags=["operations"])
    expected = f"Bearer {token}".encode() if token else None
    source = registry if service is None else OwnFamilies(registry, service)

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
        return Response(generate_latest(source), media_type=CONTENT_TYPE_LATEST)

    return router
