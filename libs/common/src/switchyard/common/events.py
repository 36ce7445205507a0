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
    webhook_url: str | None = Field(
        default=None,
        max_length=2048,
        description="Jobs only: where history POSTs the job's result (HMAC-signed) once it "
        "reaches a terminal state.",
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


class ApiKeyRevokedData(Contract):
    key_id: str = Field(description="Id of the revoked API key (never the key or its hash).")
    user_id: str = Field(description="Owner of the key.")
    reason: Literal["owner", "admin", "operator"] = Field(
        default="owner", description="Who revoked it: the owner, a tenant admin, or the CLI."
    )


class UserStatusData(Contract):
    user_id: str


class TokenRevokedData(Contract):
    jti: str = Field(description="`jti` claim of the revoked access token.")
    user_id: str
    expires_at: AwareDatetime = Field(
        description="When the token expires anyway; consumers may forget the entry after it."
    )


class TokenFamilyRevokedData(Contract):
    family_id: str = Field(
        description="The refresh-token family (the `sid` claim of its access tokens)."
    )
    user_id: str
    reason: Literal["logout", "reuse_detected", "user_disabled", "admin"]
    expires_at: AwareDatetime = Field(
        description="No access token of the family is valid after this instant."
    )


class SigningKeyRotatedData(Contract):
    kid: str = Field(description="`kid` of the key that now signs access tokens.")
    previous_kid: str | None = Field(default=None, description="The key that signed before.")
    published_kids: list[str] = Field(
        description="Every `kid` now in the JWKS (the new key and those still verifying)."
    )


class LimitsChangedData(Contract):
    scope: Literal["tenant", "team", "user", "api_key"] = Field(
        description="Which level's budget, rate limits or membership changed."
    )
    scope_id: str = Field(description="Id of the tenant, team, user or API key.")


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


class ApiKeyRevoked(EnvelopeFields):
    """An API key stops working everywhere: gateways drop it from their caches."""

    type: Literal["auth.api_key_revoked"] = "auth.api_key_revoked"
    data: ApiKeyRevokedData


class UserDisabled(EnvelopeFields):
    """A user's tokens and API keys stop working until the user is enabled again."""

    type: Literal["auth.user_disabled"] = "auth.user_disabled"
    data: UserStatusData


class UserEnabled(EnvelopeFields):
    type: Literal["auth.user_enabled"] = "auth.user_enabled"
    data: UserStatusData


class TokenRevoked(EnvelopeFields):
    """One access token (by `jti`) is refused from now on (the blocklist)."""

    type: Literal["auth.token_revoked"] = "auth.token_revoked"
    data: TokenRevokedData


class TokenFamilyRevoked(EnvelopeFields):
    """A sign-in session ends: its refresh tokens and every access token carrying its `sid`
    are refused (logout, or a refresh token presented twice)."""

    type: Literal["auth.token_family_revoked"] = "auth.token_family_revoked"
    data: TokenFamilyRevokedData


class SigningKeyRotated(EnvelopeFields):
    """A new key signs access tokens: verifiers fetch the JWKS again now."""

    type: Literal["auth.signing_key_rotated"] = "auth.signing_key_rotated"
    data: SigningKeyRotatedData


class LimitsChanged(EnvelopeFields):
    """A budget, rate limit or team membership changed: gateways drop what they cached
    about that level and apply the new limits to the next request."""

    type: Literal["auth.limits_changed"] = "auth.limits_changed"
    data: LimitsChangedData


# Events on the auth topic, each a change every gateway replica must apply.
AuthEvent = (
    ApiKeyRevoked
    | UserDisabled
    | UserEnabled
    | TokenRevoked
    | TokenFamilyRevoked
    | SigningKeyRotated
    | LimitsChanged
)

Event = Annotated[
    ChatRequested
    | ChatCompleted
    | ChatFailed
    | ChatChunk
    | UsageRecorded
    | ChatCancelRequested
    | ApiKeyRevoked
    | UserDisabled
    | UserEnabled
    | TokenRevoked
    | TokenFamilyRevoked
    | SigningKeyRotated
    | LimitsChanged,
    Field(discriminator="type"),
]
EVENT_CLASSES: tuple[type[EnvelopeFields], ...] = (
    ChatRequested,
    ChatCompleted,
    ChatFailed,
    ChatChunk,
    UsageRecorded,
    ChatCancelRequested,
    ApiKeyRevoked,
    UserDisabled,
    UserEnabled,
    TokenRevoked,
    TokenFamilyRevoked,
    SigningKeyRotated,
    LimitsChanged,
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
