"""`GET /v1/models`: the models this caller may use."""

from __future__ import annotations

from fastapi import APIRouter

from switchyard.gateway.api.deps import CurrentPrincipal, GatewayDep

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models", summary="List models")
async def list_models(principal: CurrentPrincipal, gateway: GatewayDep) -> dict[str, object]:
    """The models the caller may use, in OpenAI's list format."""
    names = gateway.routing.model_names()
    if principal.allowed_models is not None:
        names = [name for name in names if name in principal.allowed_models]
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "switchyard"}
            for name in sorted(names)
        ],
    }
