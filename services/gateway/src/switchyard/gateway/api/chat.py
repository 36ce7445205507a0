"""`POST /v1/chat/completions`: OpenAI's Chat Completions, answered as JSON or, when
`stream` is true, as Server-Sent Events identical in form to OpenAI's."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from switchyard.common.errors import error_body
from switchyard.common.events import ChatChunk, ChatCompleted
from switchyard.gateway.api.body import openapi_body, validate_body
from switchyard.gateway.api.deps import CurrentPrincipal, GatewayDep
from switchyard.gateway.dispatch import Dispatch, ReplyFailed
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
    streaming = False
    try:
        first = await dispatch.first()
        if not body.stream:
            completed = await dispatch.completion(first)
            return Response(
                orjson.dumps(completed.data.response),
                media_type="application/json",
                headers={"x-request-id": dispatch.request_id},
            )
        streaming = True
        return StreamingResponse(
            _openai_sse(dispatch, first),
            media_type="text/event-stream",
            headers={"x-request-id": dispatch.request_id, "cache-control": "no-cache"},
        )
    except ReplyFailed as failed:
        raise failed.as_api_error() from None
    finally:
        if not streaming:
            dispatch.close()


async def _openai_sse(dispatch: Dispatch, first) -> AsyncIterator[bytes]:
    try:
        async for reply in dispatch.chunks(first):
            if isinstance(reply, ChatChunk):
                yield b"data: " + orjson.dumps(reply.data.chunk) + b"\n\n"
            elif isinstance(reply, ChatCompleted):
                yield b"data: [DONE]\n\n"
            else:
                error = reply.data.error
                yield b"data: " + error_body(error.message, error.type, error.code) + b"\n\n"
    finally:
        if not dispatch.finished:
            dispatch.client_disconnected()
        dispatch.close()
