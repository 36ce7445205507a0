"""Request models of the model APIs, for the OpenAPI document (Swagger UI) only.

The gateway does not validate bodies against them: it reads only what it needs
(`api/body.py`) and publishes the body as the client sent it, so unknown and new
parameters, content blocks and roles reach inference and the provider unchanged, and the
provider judges them. These models describe the common fields of each API.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ChatMessage(BaseModel):
    """A Chat Completions message (OpenAI API reference, `messages`); fields not named are kept."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class StreamOptions(BaseModel):
    """Chat Completions `stream_options`; fields not named are kept."""

    model_config = ConfigDict(extra="allow")

    include_usage: bool | None = None


class ChatCompletionRequest(BaseModel):
    """OpenAI Chat Completions request. Fields not listed here pass through unchanged."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [{"model": "sim-small", "messages": [{"role": "user", "content": "Hello"}]}]
        },
    )

    model: str = Field(min_length=1, max_length=256)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int | None = Field(default=None, ge=1, le=128)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = Field(default=None, max_length=256)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None


class AnthropicMessage(BaseModel):
    """An Anthropic Messages API message (`messages`); fields not named are kept."""

    model_config = ConfigDict(extra="allow")

    role: str = Field(examples=["user", "assistant"])
    content: str | list[dict[str, Any]] = Field(
        description="Text, or content blocks (text, image, document, tool_use, tool_result, "
        "thinking...), with `cache_control` where the client puts it."
    )


class AnthropicMessagesRequest(BaseModel):
    """Anthropic Messages request. Fields not listed here pass through unchanged."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "model": "sim-small",
                    "max_tokens": 256,
                    "messages": [{"role": "user", "content": "Hello"}],
                }
            ]
        },
    )

    model: str = Field(min_length=1, max_length=256)
    messages: list[AnthropicMessage] = Field(min_length=1)
    max_tokens: int = Field(ge=1)
    system: str | list[dict[str, Any]] | None = None
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    stop_sequences: list[str] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = Field(
        default=None, examples=[{"type": "enabled", "budget_tokens": 2048}]
    )


class AnthropicCountTokensRequest(BaseModel):
    """Anthropic count_tokens request: a Messages request without `max_tokens`. Fields not
    listed here pass through unchanged."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {"model": "sim-claude", "messages": [{"role": "user", "content": "Hello"}]}
            ]
        },
    )

    model: str = Field(min_length=1, max_length=256)
    messages: list[AnthropicMessage] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None


class ResponsesInputTokensRequest(BaseModel):
    """OpenAI Responses input token count request: the body `POST /v1/responses` would
    take, without the parameters of a response itself (`ResponsesRequest` adds them).
    Fields not listed here pass through unchanged to deployments offering the Responses
    API."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {"model": "sim-small", "input": "Hello", "instructions": "Answer briefly."}
            ]
        },
    )

    model: str = Field(min_length=1, max_length=256)
    input: str | list[dict[str, Any]] | None = None
    instructions: str | None = None
    previous_response_id: str | None = Field(
        default=None, description="Count this stored response's conversation too."
    )
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    truncation: str | None = None


class EmbeddingsRequest(BaseModel):
    """OpenAI Embeddings request. Fields not listed here pass through unchanged."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={"examples": [{"model": "sim-small", "input": "The food was delicious"}]},
    )

    model: str = Field(min_length=1, max_length=256)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = Field(default=None, max_length=256)


# OpenAI's limits on `metadata` keys and values (what the gateway checks, `api/body.py`).
MetadataKey = Annotated[str, Field(max_length=64)]
MetadataValue = Annotated[str, Field(max_length=512)]


class ResponsesRequest(ResponsesInputTokensRequest):
    """OpenAI Responses request: what its input token count takes, and the parameters of
    a response itself. Fields not listed here pass through unchanged to deployments
    offering the Responses API; translated deployments refuse, naming it, what they
    cannot serve."""

    input: str | list[dict[str, Any]] | None = Field(
        default=None,
        description="Text, or input items: messages (`role`, `content`), `function_call` and "
        "`function_call_output` items, reasoning items...",
    )
    previous_response_id: str | None = Field(
        default=None, description="Continue this stored response's conversation (any model)."
    )
    store: bool = Field(default=True, description="Keep the response for retrieval and chaining.")
    background: bool = Field(
        default=False, description="Answer at once with the queued response; run it later."
    )
    stream: bool = False
    text: dict[str, Any] | None = Field(
        default=None, examples=[{"format": {"type": "json_schema", "name": "x", "schema": {}}}]
    )
    reasoning: dict[str, Any] | None = Field(default=None, examples=[{"effort": "low"}])
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    metadata: dict[MetadataKey, MetadataValue] | None = Field(
        default=None, max_length=16, description="At most 16 pairs, kept and echoed by Switchyard."
    )


class JobRequest(BaseModel):
    """An asynchronous job: one request of any model API, as in the request lines of
    OpenAI's Batch API (`url` names the API, `body` is its request body; a line's
    `custom_id` and `method: "POST"` are accepted and any other field is refused). A plain
    Chat Completions body (with an optional `webhook_url`) is accepted too."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "url": "/v1/messages",
                    "body": {
                        "model": "sim-claude",
                        "max_tokens": 256,
                        "messages": [{"role": "user", "content": "Summarise this"}],
                    },
                    "webhook_url": "https://hooks.example.com/switchyard",
                }
            ]
        }
    )

    url: Literal["/v1/chat/completions", "/v1/messages", "/v1/embeddings"] = Field(
        description="The API of `body`."
    )
    body: dict[str, Any] = Field(description="The request body, as that API takes it.")
    webhook_url: str | None = Field(
        default=None,
        max_length=2048,
        description="Where the job's result is POSTed (HMAC-signed) once it ends.",
    )
