"""`POST /v1/messages`: Anthropic's Messages API, for clients using the `anthropic` SDK.

The request is translated to the OpenAI shape every deployment understands (inference
translates again for Anthropic deployments), and the reply back to Anthropic's shape,
including the streaming event sequence (`message_start` ... `message_stop`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from switchyard.common.errors import APIError
from switchyard.common.events import ChatChunk, ChatCompleted
from switchyard.common.translate import (
    OpenAIToAnthropicStream,
    TranslationError,
    anthropic_request_to_openai,
    anthropic_sse,
    openai_response_to_anthropic,
)
from switchyard.gateway.api.body import openapi_body, validate_body
from switchyard.gateway.api.deps import CurrentPrincipal, GatewayDep
from switchyard.gateway.dispatch import Dispatch, ReplyFailed
from switchyard.gateway.errors import anthropic_error_body
from switchyard.gateway.schemas import AnthropicMessagesRequest

router = APIRouter(prefix="/v1", tags=["messages"])


@router.post(
    "/messages",
    summary="Create a message (Anthropic-compatible)",
    openapi_extra=openapi_body(AnthropicMessagesRequest),
    response_model=None,
)
async def create_message(
    request: Request, principal: CurrentPrincipal, gateway: GatewayDep
) -> Response:
    """Create a message; streams Anthropic's Server-Sent Events when `stream` is true."""
    body, raw_body = validate_body(AnthropicMessagesRequest, await request.body())
    try:
        openai_body = anthropic_request_to_openai(raw_body)
    except TranslationError as exc:
        raise APIError(400, str(exc), code="invalid_request") from None
    if body.stream:
        openai_body["stream_options"] = {"include_usage": True}
    dispatch = await Dispatch.start(
        gateway,
        request,
        principal,
        api="anthropic",
        operation="chat",
        model=body.model,
        body=openai_body,
        stream=body.stream,
    )
    streaming = False
    try:
        first = await dispatch.first()
        if not body.stream:
            completed = await dispatch.completion(first)
            message = openai_response_to_anthropic(completed.data.response, body.model)
            return Response(
                orjson.dumps(message),
                media_type="application/json",
                headers={"x-request-id": dispatch.request_id},
            )
        streaming = True
        return StreamingResponse(
            _anthropic_sse(dispatch, first, body.model),
            media_type="text/event-stream",
            headers={"x-request-id": dispatch.request_id, "cache-control": "no-cache"},
        )
    except ReplyFailed as failed:
        raise failed.as_api_error() from None
    finally:
        if not streaming:
            dispatch.close()


async def _anthropic_sse(dispatch: Dispatch, first, model: str) -> AsyncIterator[bytes]:
    converter = OpenAIToAnthropicStream(model)
    try:
        async for reply in dispatch.chunks(first):
            if isinstance(reply, ChatChunk):
                for event in converter.feed(reply.data.chunk):
                    yield anthropic_sse(event)
            elif isinstance(reply, ChatCompleted):
                usage = reply.data.usage
                for event in converter.finish(
                    input_tokens=usage.input_tokens, output_tokens=usage.output_tokens
                ):
                    yield anthropic_sse(event)
            else:
                error = reply.data.error
                yield (
                    b"event: error\ndata: "
                    + anthropic_error_body(error.status, error.message)
                    + b"\n\n"
                )
    finally:
        if not dispatch.finished:
            dispatch.client_disconnected()
        dispatch.close()
