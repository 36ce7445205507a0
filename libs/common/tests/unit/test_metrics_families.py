"""A service's `/metrics` shows its own metric families and the shared ones, never the
families of the other services whose modules the process happens to import."""

from __future__ import annotations

import httpx
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Gauge

from switchyard.common.metrics import metrics_router


async def test_a_service_exposes_its_own_and_the_shared_families_only() -> None:
    registry = CollectorRegistry()
    Gauge("switchyard_auth_outbox_failing", "auth's", registry=registry)
    Counter("switchyard_gateway_requests_rejected", "the gateway's", ["reason"], registry=registry)
    Gauge("switchyard_bus_connected", "shared", registry=registry)
    app = FastAPI()
    app.include_router(metrics_router(registry, service="gateway"))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gateway"
    ) as client:
        text = (await client.get("/metrics")).text

    assert "switchyard_gateway_requests_rejected" in text
    assert "switchyard_bus_connected" in text
    assert "switchyard_auth_outbox_failing" not in text


async def test_without_a_service_every_family_is_shown() -> None:
    registry = CollectorRegistry()
    Gauge("switchyard_auth_outbox_failing", "auth's", registry=registry)
    app = FastAPI()
    app.include_router(metrics_router(registry))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://any"
    ) as client:
        assert "switchyard_auth_outbox_failing" in (await client.get("/metrics")).text
