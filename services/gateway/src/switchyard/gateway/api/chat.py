"""`POST /v1/chat/completions`: OpenAI's Chat Completions, for clients using the `openai`
SDK. The body is published as it came; the reply (JSON, or Server-Sent Events when
`stream` is true) is relayed as inference sent it, already in this API's shape."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from switchyard.common.events import ClientAPI
from switchyard.gateway.api.body import openapi_body, read_request_off_loop
from switchyard.gateway.api.deps import CurrentPrincipal, GatewayDep
from switchyard.gateway.dispatch import Dispatch
from switchyard.gateway.schemas import ChatCompletionRequest

router = APIRouter(prefix="/v1", tags=["chat"])


@router.post(
    "/chat/completions",
    summary="Create a chat completion (OpenAI-compatible)",
    openapi_extra=openapi_body(ChatCompletionRequest),
    response_model=None,
)
async def create_chat_completion(
    request: Request, principal: CurrentPrincipal, gateway: GatewayDep
) -> Response:
    """Create a chat completion; streams Server-Sent Events when `stream` is true."""
    client = await read_request_off_loop(ClientAPI.OPENAI_CHAT_COMPLETIONS, await request.body())
    dispatch = await Dispatch.start(gateway, request, principal, client)
    return await dispatch.answer()
