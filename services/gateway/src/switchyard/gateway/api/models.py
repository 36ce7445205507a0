"""`GET /v1/models` and `GET /v1/models/{model_id}`: the models this caller may use, in the
shape of the SDK asking.

A request carrying `anthropic-version` (the `anthropic` SDK always sends it) gets
Anthropic's Models API shapes (its API reference, "Models"): a page
`{"data": [...], "has_more", "first_id", "last_id"}` of `{"type": "model", "id",
"display_name", "created_at", "lifecycle"}` objects, newest first, paged with `limit`
(1 to 1000, default 20) and one of `after_id` / `before_id`; errors in Anthropic's format.
Any other request gets OpenAI's: `{"object": "list", "data": [{"id", "object": "model",
"created", "owned_by"}]}` (one page, as OpenAI answers), errors in OpenAI's format.

A model the caller may not use is answered exactly like one that does not exist (404),
so model names are not disclosed to keys restricted to other models.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from switchyard.common.errors import APIError
from switchyard.common.routing import ModelRoute
from switchyard.gateway.api.deps import CurrentPrincipal, GatewayDep
from switchyard.gateway.auth import Principal
from switchyard.gateway.bootstrap import Gateway
from switchyard.gateway.errors import vendor_of_request
from switchyard.gateway.intake import model_not_found

router = APIRouter(prefix="/v1", tags=["models"])

OWNED_BY = "switchyard"
DEFAULT_LIMIT = 20
MAX_LIMIT = 1000


def wants_anthropic_shape(request: Request) -> bool:
    """Whether the caller speaks Anthropic's API: it sent `anthropic-version` (the same
    choice its errors' format follows, `errors.vendor_of`)."""
    return vendor_of_request(request) == "anthropic"


def visible_routes(gateway: Gateway, principal: Principal) -> list[ModelRoute]:
    """The caller's models, newest first (Anthropic's order), then by name."""
    routes = [route for route in gateway.routing.models.values() if principal.may_use(route.name)]
    routes.sort(key=lambda route: route.name)
    routes.sort(key=lambda route: route.released, reverse=True)
    return routes


def anthropic_model(route: ModelRoute) -> dict[str, Any]:
    """One model in Anthropic's shape (`created_at` in RFC 3339, UTC)."""
    return {
        "type": "model",
        "id": route.name,
        "display_name": route.label,
        "created_at": route.released.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "lifecycle": "active",
    }


def openai_model(route: ModelRoute) -> dict[str, Any]:
    """One model in OpenAI's shape (`created` in Unix seconds)."""
    return {
        "id": route.name,
        "object": "model",
        "created": int(route.released.timestamp()),
        "owned_by": OWNED_BY,
    }


def _cursor(routes: list[ModelRoute], name: str, param: str) -> int:
    for position, route in enumerate(routes):
        if route.name == name:
            return position
    raise APIError(
        400,
        f"Invalid '{param}': no model '{name}' in this list.",
        param=param,
        code="invalid_cursor",
    )


def anthropic_page(
    routes: list[ModelRoute], limit: int, after_id: str | None, before_id: str | None
) -> dict[str, Any]:
    """One page of Anthropic's model list: `limit` models after `after_id`, or the
    `limit` models just before `before_id`, or the first `limit`."""
    if after_id is not None and before_id is not None:
        raise APIError(
            400,
            "Give 'after_id' or 'before_id', not both.",
            param="before_id",
            code="invalid_request",
        )
    if before_id is not None:
        end = _cursor(routes, before_id, "before_id")
        start = max(0, end - limit)
        page, has_more = routes[start:end], start > 0
    else:
        start = _cursor(routes, after_id, "after_id") + 1 if after_id is not None else 0
        page, has_more = routes[start : start + limit], start + limit < len(routes)
    return {
        "data": [anthropic_model(route) for route in page],
        "has_more": has_more,
        "first_id": page[0].name if page else None,
        "last_id": page[-1].name if page else None,
    }


@router.get("/models", summary="List models")
async def list_models(
    request: Request,
    principal: CurrentPrincipal,
    gateway: GatewayDep,
    limit: Annotated[
        int,
        Query(ge=1, le=MAX_LIMIT, description="Anthropic shape: models per page (1 to 1000)."),
    ] = DEFAULT_LIMIT,
    after_id: Annotated[
        str | None, Query(description="Anthropic shape: the page after this model.")
    ] = None,
    before_id: Annotated[
        str | None, Query(description="Anthropic shape: the page before this model.")
    ] = None,
) -> dict[str, object]:
    """The models the caller may use: Anthropic's paged list when the request carries
    `anthropic-version`, OpenAI's list otherwise."""
    routes = visible_routes(gateway, principal)
    if wants_anthropic_shape(request):
        return anthropic_page(routes, limit, after_id, before_id)
    routes.sort(key=lambda route: route.name)
    return {"object": "list", "data": [openai_model(route) for route in routes]}


@router.get("/models/{model_id:path}", summary="Retrieve a model")
async def retrieve_model(
    model_id: str, request: Request, principal: CurrentPrincipal, gateway: GatewayDep
) -> dict[str, object]:
    """One model the caller may use, in Anthropic's shape when the request carries
    `anthropic-version`, OpenAI's otherwise; 404 when it does not exist or the caller may
    not use it."""
    route = gateway.routing.route(model_id)
    if route is None or not principal.may_use(model_id):
        raise model_not_found(model_id)
    if wants_anthropic_shape(request):
        return anthropic_model(route)
    return openai_model(route)
