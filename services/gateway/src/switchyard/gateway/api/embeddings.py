"""`POST /v1/embeddings`: OpenAI's Embeddings API, through the bus like every model call."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from switchyard.common.events import ClientAPI
from switchyard.gateway.api.body import openapi_body, read_request_off_loop
from switchyard.gateway.api.deps import CurrentPrincipal, GatewayDep
from switchyard.gateway.dispatch import Dispatch
from switchyard.gateway.schemas import EmbeddingsRequest

router = APIRouter(prefix="/v1", tags=["embeddings"])


@router.post(
    "/embeddings",
    summary="Create embeddings (OpenAI-compatible)",
    openapi_extra=openapi_body(EmbeddingsRequest),
    response_model=None,
)
async def create_embeddings(
    request: Request, principal: CurrentPrincipal, gateway: GatewayDep
) -> Response:
    """Embed one input or a list of inputs."""
    client = await read_request_off_loop(ClientAPI.OPENAI_EMBEDDINGS, await request.body())
    dispatch = await Dispatch.start(gateway, request, principal, client)
    return await dispatch.answer()
