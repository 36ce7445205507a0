"""`POST /v1/chat/completions`: OpenAI's Chat Completions, answered as JSON or, when
`stream` is true, as Server-Sent Events identical in form to OpenAI's."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request, Response

from switchyard.common.errors import error_body
from switchyard.common.events import ChatChunk, ChatCompleted, ChatFailed
from switchyard.gateway.api.body import openapi_body, validate_body
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
    body, raw_body = validate_body(ChatCompletionRequest, await request.body())
    dispatch = await Dispatch.start(
        gateway,
        request,
        principal,
        api="openai",
        operation="chat",
        model=body.model,
        body=raw_body,
        stream=body.stream,
    )
    return await dispatch.answer(
        stream=body.stream,
        json_body=lambda completed: orjson.dumps(completed.data.response),
        sse=_openai_sse,
    )


def _openai_sse(reply: ChatChunk | ChatCompleted | ChatFailed) -> list[bytes]:
    if isinstance(reply, ChatChunk):
        return [b"data: " + orjson.dumps(reply.data.chunk) + b"\n\n"]
    if isinstance(reply, ChatCompleted):
        return [b"data: [DONE]\n\n"]
    error = reply.data.error
    return [b"data: " + error_body(error.message, error.type, error.code) + b"\n\n"]
