"""`GET /v1/history`: the caller's own requests and replies, served by the history
service; the gateway authenticates and passes the verified identity along."""

from __future__ import annotations

import httpx
import structlog
from fastapi import APIRouter, Request, Response

from switchyard.common.errors import APIError
from switchyard.common.http import INTERNAL_TOKEN_HEADER
from switchyard.gateway.api.deps import CurrentPrincipal, GatewayDep
from switchyard.gateway.auth import Principal
from switchyard.gateway.bootstrap import Gateway

log = structlog.get_logger("switchyard.gateway.history")
router = APIRouter(prefix="/v1/history", tags=["history"])


async def _forward(gateway: Gateway, principal: Principal, path: str, request: Request) -> Response:
    headers = {
        INTERNAL_TOKEN_HEADER: gateway.settings.internal_token,
        "x-switchyard-tenant": principal.tenant,
        "x-switchyard-user-id": principal.user_id,
        "x-switchyard-role": principal.role,
    }
    try:
        upstream = await gateway.http.get(
            gateway.settings.history_url.rstrip("/") + path,
            params=request.query_params,
            headers=headers,
            timeout=10.0,
        )
    except httpx.HTTPError as exc:
        log.error("history service unreachable", error=repr(exc))
        raise APIError(
            503,
            "History is temporarily unavailable; retry shortly.",
            code="history_unavailable",
            headers={"Retry-After": "2"},
        ) from None
    return Response(
        upstream.content,
        status_code=upstream.status_code,
        media_type=upstream.headers.get("content-type", "application/json"),
    )


@router.get("", summary="List your requests, newest first")
async def list_history(
    request: Request, principal: CurrentPrincipal, gateway: GatewayDep
) -> Response:
    """List the caller's requests with their replies (cursor pagination: `limit`, `cursor`)."""
    return await _forward(gateway, principal, "/v1/history", request)


@router.get("/{request_id}", summary="One request with its reply")
async def get_history_item(
    request_id: str, request: Request, principal: CurrentPrincipal, gateway: GatewayDep
) -> Response:
    """One of the caller's requests, with its full reply and usage."""
    if not request_id.isalnum() or len(request_id) > 64:
        raise APIError(404, "No such request.", code="request_not_found")
    return await _forward(gateway, principal, f"/v1/history/{request_id}", request)
