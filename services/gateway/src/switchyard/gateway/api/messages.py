"""`POST /v1/messages`: Anthropic's Messages API, for clients using the `anthropic` SDK.

The request is translated to the OpenAI shape every deployment understands (inference
translates again for Anthropic deployments), and the reply back to Anthropic's shape,
including the streaming event sequence (`message_start` ... `message_stop`)."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request, Response

from switchyard.common.errors import APIError
from switchyard.common.events import ChatChunk, ChatCompleted, ChatFailed
from switchyard.common.translate import (
    OpenAIToAnthropicStream,
    TranslationError,
    anthropic_request_to_openai,
    anthropic_sse,
    openai_response_to_anthropic,
)
from switchyard.gateway.api.body import openapi_body, validate_body
from switchyard.gateway.api.deps import CurrentPrincipal, GatewayDep
from switchyard.gateway.dispatch import Dispatch
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
    return await dispatch.answer(
        stream=body.stream,
        json_body=lambda completed: orjson.dumps(
            openai_response_to_anthropic(completed.data.response, body.model)
        ),
        sse=_anthropic_sse(body.model),
    )


def _anthropic_sse(model: str):
    """An encoder turning OpenAI-shaped replies into Anthropic's event sequence."""
    converter = OpenAIToAnthropicStream(model)

    def encode(reply: ChatChunk | ChatCompleted | ChatFailed) -> list[bytes]:
        if isinstance(reply, ChatChunk):
            return [anthropic_sse(event) for event in converter.feed(reply.data.chunk)]
        if isinstance(reply, ChatCompleted):
            usage = reply.data.usage
            return [
                anthropic_sse(event)
                for event in converter.finish(
                    input_tokens=usage.input_tokens, output_tokens=usage.output_tokens
                )
            ]
        error = reply.data.error
        return [
            b"event: error\ndata: " + anthropic_error_body(error.status, error.message) + b"\n\n"
        ]

    return encode
