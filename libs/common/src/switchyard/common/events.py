"""Event contracts, version 1: the one source of truth for every event on the bus.

Every event is an envelope (id, type, source, time, tenant, request id, schema version)
around a typed `data` payload. Events travel as JSON; `decode_event` validates raw bytes
into the right class in a single pass, and refuses unknown types or schema versions so a
consumer can dead-letter them instead of guessing. `docs/events/` holds the JSON Schema
generated from these models (`switchyard events schema`).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter

SCHEMA_VERSION = 1


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class Contract(BaseModel):
    """Base of every contract model: immutable, and strict about unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Priority(StrEnum):
    INTERACTIVE = "interactive"
    BATCH = "batch"


class TerminalStatus(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class ReplyAddress(Contract):
    """Where the reply and stream chunks of a request must be published, so they reach the
    gateway replica that holds the client's connection."""

    topic_suffix: Literal["replies"] = "replies"
    partition: int = Field(ge=0, description="Partition of the replies topic the gateway reads.")
    instance_id: str = Field(description="Gateway replica waiting for the reply.")


class TokenUsage(Contract):
    input_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=0, ge=0)

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class ErrorInfo(Contract):
    """An error in a form every API front end can translate into its own error object."""

    status: int = Field(ge=400, le=599, description="HTTP status the client should get.")
    type: str = Field(examples=["upstream_error"])
    code: str | None = Field(default=None, examples=["model_not_found"])
    message: str
    retry_after_s: float | None = Field(
        default=None,
        ge=0,
        description="When the client may retry (from the provider's Retry-After).",
    )


class ChatRequestData(Contract):
    api: Literal["openai", "anthropic"] = Field(
        default="openai", description="The API the client called; the reply is shaped for it."
    )
    operation: Literal["chat", "embeddings"] = Field(
        default="chat",
        description="chat: `body` is a Chat Completions request; embeddings: an Embeddings one.",
    )
    model: str = Field(description="Public model name the client asked for.")
    body: dict[str, Any] = Field(
        description="OpenAI Chat Completions request body, validated by the gateway.",
        examples=[{"model": "sim-small", "messages": [{"role": "user", "content": "Hello"}]}],
    )
    stream: bool = False
    user_id: str = Field(description="Authenticated subject (user id).")
    api_key_id: str | None = Field(default=None, description="API key used, if any.")
    priority: Priority = Priority.INTERACTIVE
    deadline: AwareDatetime = Field(description="After this instant nobody waits for the reply.")
    reply_to: ReplyAddress | None = Field(
        default=None, description="Absent for work no gateway waits for (jobs)."
    )


class ChatCompletedData(Contract):
    response: dict[str, Any] = Field(description="OpenAI chat.completion object.")
    provider: str
    deployment: str
    usage: TokenUsage
    latency_ms: float = Field(ge=0)


class ChatFailedData(Contract):
    status: Literal[TerminalStatus.FAILED, TerminalStatus.CANCELLED, TerminalStatus.EXPIRED]
    error: ErrorInfo
    provider: str | None = None
    deployment: str | None = None
    latency_ms: float = Field(default=0, ge=0)


class ChatChunkData(Contract):
    sequence: int = Field(ge=0, description="Position of this chunk in the stream, from 0.")
    chunk: dict[str, Any] = Field(description="OpenAI chat.completion.chunk object.")


class CancelRequestData(Contract):
    reason: str = Field(default="client_disconnected", examples=["client_disconnected"])


class UsageData(Contract):
    model: str
    provider: str | None = None
    deployment: str | None = None
    user_id: str
    api_key_id: str | None = None
    status: TerminalStatus
    usage: TokenUsage
    cost_usd: float = Field(default=0, ge=0)
    latency_ms: float = Field(default=0, ge=0)
    time_to_first_token_ms: float | None = Field(default=None, ge=0)


class EnvelopeFields(Contract):
    id: str = Field(
        default_factory=new_id, description="Unique event id; consumers deduplicate on it."
    )
    source: str = Field(description="Service that published the event.", examples=["gateway"])
    time: AwareDatetime = Field(default_factory=utcnow, description="UTC, ISO 8601.")
    tenant: str
    request_id: str
    schema_version: Literal[1] = SCHEMA_VERSION


class ChatRequested(EnvelopeFields):
    type: Literal["chat.requested"] = "chat.requested"
    data: ChatRequestData


class ChatCompleted(EnvelopeFields):
    type: Literal["chat.completed"] = "chat.completed"
    data: ChatCompletedData


class ChatFailed(EnvelopeFields):
    type: Literal["chat.failed"] = "chat.failed"
    data: ChatFailedData


class ChatChunk(EnvelopeFields):
    type: Literal["chat.chunk"] = "chat.chunk"
    data: ChatChunkData


class UsageRecorded(EnvelopeFields):
    type: Literal["usage.recorded"] = "usage.recorded"
    data: UsageData


class ChatCancelRequested(EnvelopeFields):
    """The client went away: whichever inference replica holds the request stops it."""

    type: Literal["chat.cancel_requested"] = "chat.cancel_requested"
    data: CancelRequestData


Event = Annotated[
    ChatRequested | ChatCompleted | ChatFailed | ChatChunk | UsageRecorded | ChatCancelRequested,
    Field(discriminator="type"),
]
EVENT_CLASSES: tuple[type[EnvelopeFields], ...] = (
    ChatRequested,
    ChatCompleted,
    ChatFailed,
    ChatChunk,
    UsageRecorded,
    ChatCancelRequested,
)

_event_adapter: TypeAdapter[Event] = TypeAdapter(Event)


class EventDecodeError(ValueError):
    """Raw bytes that are not a valid event of a known type and schema version."""


def decode_event(raw: bytes | str) -> Event:
    try:
        return _event_adapter.validate_json(raw)
    except ValueError as exc:
        raise EventDecodeError(str(exc)) from exc


def encode_event(event: EnvelopeFields) -> bytes:
    return event.model_dump_json().encode()


def event_json_schema() -> dict[str, Any]:
    """JSON Schema of every event, the document other teams build on."""
    schema = _event_adapter.json_schema()
    schema["$id"] = f"https://switchyard.dev/schemas/events/v{SCHEMA_VERSION}.json"
    schema["title"] = f"Switchyard events, schema version {SCHEMA_VERSION}"
    return schema
