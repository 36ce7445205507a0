"""Event contracts, version 2: the one source of truth for every event on the bus.

Every event is an envelope (id, type, source, time, tenant, request id, schema version)
around a typed `data` payload. Events travel as JSON; `decode_event` validates raw bytes
into the right class in a single pass, and refuses unknown types or schema versions so a
consumer can dead-letter them instead of guessing. Version 1 events (still in a topic
during an upgrade) are read too: `decode_event` upgrades them to version 2 (`_upcast_v1`).
`docs/events/` holds the JSON Schema and the AsyncAPI document generated from these
models (`switchyard events schema`, `switchyard events asyncapi`).

Version 2 is protocol-native: a request carries the API the client called (`api`) and
the client's own request body, unchanged; replies and stream events travel in that same
API. Only the inference service translates, and only when the deployment serving the
request speaks another protocol (see docs/protocols.md).
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, get_args

import orjson
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    ValidationError,
    model_serializer,
)

from switchyard.common import exactjson
from switchyard.common.offloop import off_loop

SCHEMA_VERSION: Final = 2
SUPPORTED_SCHEMA_VERSIONS = (1, 2)


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC (the envelope's `time` default)."""
    return datetime.now(UTC)


# The instants an event may name: Python (and so every consumer) represents an aware time
# only between the years 1 and 9999 in UTC, and `0001-01-01T00:00:00+14:00` is in year 0
# there (`9999-12-31T23:59:59-14:00` in year 10000); a time a consumer cannot convert to UTC
# would be stored, then fail every read of it. No event of Switchyard's is from before 1970.
EARLIEST_EVENT_TIME: Final = datetime(1970, 1, 1, tzinfo=UTC)
# The latest instant an event may have happened at: the history API's reports take times
# before the year 9000 only, so an event dated later would be stored and never reported.
# (An expiry or a deadline may be later: a token's `exp` may name any year to 9999.)
LATEST_OCCURRENCE: Final = datetime(9000, 1, 1, tzinfo=UTC)


def _event_time(value: datetime) -> datetime:
    try:
        in_utc = value.astimezone(UTC)
    except OverflowError:
        in_utc = None
    if in_utc is None or in_utc < EARLIEST_EVENT_TIME:
        raise ValueError("must be an instant from 1970-01-01 to 9999-12-31 UTC")
    return value


def _occurrence(value: datetime) -> datetime:
    if value >= LATEST_OCCURRENCE:
        raise ValueError("must be an instant before 9000-01-01 UTC")
    return value


# An aware instant from 1970 to the end of 9999 (UTC), as every time in the contract is.
EventTime = Annotated[AwareDatetime, AfterValidator(_event_time)]
# When an event happened: an `EventTime` before the year 9000.
OccurredAt = Annotated[EventTime, AfterValidator(_occurrence)]


def _identifier(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


# The longest ids and names history stores (its columns' sizes): a longer one would be
# taken by inference, which would answer it, and then refused by history's database, so
# the request would be answered but recorded as expired, its usage dead-lettered.
MAX_EVENT_ID_LENGTH: Final = 64  # event ids, request ids, sources
MAX_NAME_LENGTH: Final = 128  # tenants, users, API keys, teams, providers
MAX_MODEL_LENGTH: Final = 256  # model and deployment names

# A name every consumer keys on and stores (PostgreSQL's text cannot hold NUL, and one
# stored with a replacement would no longer match the events naming the original).
Identifier = Annotated[str, Field(max_length=MAX_NAME_LENGTH), AfterValidator(_identifier)]
# An event or request id, or a source, as `Identifier`, stored in 64 characters.
EventId = Annotated[str, Field(max_length=MAX_EVENT_ID_LENGTH), AfterValidator(_identifier)]
ModelName = Annotated[str, Field(max_length=MAX_MODEL_LENGTH)]
ProviderName = Annotated[str, Field(max_length=MAX_NAME_LENGTH)]


def derived_event_id(event_id: str, suffix: str) -> str:
    """The id of an event made from the event `event_id` (a reply's, a usage record's, a
    stream chunk's), `<base>.<suffix>`, within `MAX_EVENT_ID_LENGTH` for a `suffix` of up
    to 31 characters: the base is `event_id` itself when it has at most 32 characters
    (Switchyard's own ids have 32), else a 32-hex digest of it, the same every time so a
    redelivery derives the same id."""
    base = event_id
    if len(base) > 32:
        base = hashlib.blake2b(event_id.encode(), digest_size=16).hexdigest()
    return f"{base}.{suffix}"


def new_id() -> str:
    """A new event id: 32 lowercase hex digits of a random UUID."""
    return uuid.uuid4().hex


class Contract(BaseModel):
    """Base of every contract model: immutable, and strict about unknown fields."""

    # No infinite or NaN number: JSON has none (PostgreSQL's JSON would store `null`),
    # and sums and roundings of one fail wherever they are read.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class Priority(StrEnum):
    """How urgently a request is served: `interactive` (a client waits) before `batch` (jobs
    and other work nobody waits on)."""

    INTERACTIVE = "interactive"
    BATCH = "batch"


class TerminalStatus(StrEnum):
    """How a request ended: completed, failed (an error reply), cancelled (the client went
    away), expired (its deadline passed) or refused (a budget or rate limit, before any upstream
    call)."""

    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    # Refused before any upstream call (a budget or rate limit): nothing was run.
    REFUSED = "refused"


class ClientAPI(StrEnum):
    """The API a client called, named `<vendor>.<api>`. The request body, the reply and the
    stream events of a request are all in this API's own shapes."""

    OPENAI_CHAT_COMPLETIONS = "openai.chat_completions"
    OPENAI_EMBEDDINGS = "openai.embeddings"
    OPENAI_RESPONSES = "openai.responses"
    # `POST /v1/responses/input_tokens`: the input tokens a Responses request would use.
    OPENAI_RESPONSES_INPUT_TOKENS = "openai.responses.input_tokens"
    ANTHROPIC_MESSAGES = "anthropic.messages"
    ANTHROPIC_COUNT_TOKENS = "anthropic.count_tokens"

    @property
    def vendor(self) -> str:
        """`openai` or `anthropic`: whose error format and headers the client expects."""
        return self.value.split(".", 1)[0]

    @property
    def streams(self) -> bool:
        """Whether the API can answer with a stream of Server-Sent Events."""
        return self in (
            ClientAPI.OPENAI_CHAT_COMPLETIONS,
            ClientAPI.OPENAI_RESPONSES,
            ClientAPI.ANTHROPIC_MESSAGES,
        )


# Request headers a provider may need to interpret the body, forwarded with it (lower
# case). Never credentials: `authorization`, `x-api-key` and cookies are never carried.
FORWARDED_HEADERS = frozenset({"anthropic-version", "anthropic-beta", "openai-beta"})


class ReplyAddress(Contract):
    """Where the reply and stream chunks of a request must be published, so they reach the
    gateway replica that holds the client's connection."""

    topic_suffix: Literal["replies"] = "replies"
    partition: int = Field(ge=0, description="Partition of the replies topic the gateway reads.")
    instance_id: str = Field(description="Gateway replica waiting for the reply.")


# The most tokens one count may say: a signed 64-bit integer, what every store of counts
# holds (history's columns, PostgreSQL's bigint). An upstream reporting more is read as this.
MAX_TOKEN_COUNT = 2**63 - 1
# The most a cost may say (USD): more than any count of tokens at any price, and far from
# a float's range, so a sum of costs never overflows one (PostgreSQL's `float8` sums fail).
MAX_COST_USD: Final = 1e20
# The longest duration an event may name (milliseconds, about 115 days).
MAX_DURATION_MS: Final = 1e10


class TokenUsage(Contract):
    """Tokens of one request, in the units the provider bills.

    `input_tokens` counts every input token, including those read from or written to the
    provider's prompt cache; `cache_read_input_tokens` and `cache_creation_input_tokens`
    say how many of them were (OpenAI's `prompt_tokens` already counts them this way;
    Anthropic reports the three separately, and they are added up), and
    `cache_creation_1h_input_tokens` how many of those written were kept an hour
    (Anthropic's `ttl: "1h"`, dearer than its 5 minutes). `reasoning_tokens`
    are the part of `output_tokens` spent on reasoning, where the provider reports it.
    """

    input_tokens: int = Field(
        default=0, ge=0, le=MAX_TOKEN_COUNT, description="All input tokens, cached included."
    )
    output_tokens: int = Field(
        default=0, ge=0, le=MAX_TOKEN_COUNT, description="All output tokens."
    )
    cache_read_input_tokens: int = Field(
        default=0, ge=0, le=MAX_TOKEN_COUNT, description="Input tokens read from the prompt cache."
    )
    cache_creation_input_tokens: int = Field(
        default=0,
        ge=0,
        le=MAX_TOKEN_COUNT,
        description="Input tokens written to the prompt cache.",
    )
    # Left out of the JSON when 0, so that every other usage still reads for consumers of
    # earlier releases (the contract refuses unknown fields).
    cache_creation_1h_input_tokens: int = Field(
        default=0,
        ge=0,
        le=MAX_TOKEN_COUNT,
        exclude_if=lambda count: count == 0,
        description=(
            "The part of cache_creation_input_tokens written to the cache for an hour "
            "(Anthropic's cache_creation.ephemeral_1h_input_tokens), billed at its own price."
        ),
    )
    reasoning_tokens: int = Field(
        default=0,
        ge=0,
        le=MAX_TOKEN_COUNT,
        description="Output tokens spent on reasoning (a part of output).",
    )

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens

    @property
    def uncached_input_tokens(self) -> int:
        """Input tokens billed at the plain input price."""
        return max(
            0, self.input_tokens - self.cache_read_input_tokens - self.cache_creation_input_tokens
        )


class ErrorInfo(Contract):
    """An error in the vocabulary of the client's API (OpenAI's or Anthropic's error
    `type`), with the HTTP status the client should get."""

    status: int = Field(ge=400, le=599, description="HTTP status the client should get.")
    type: str = Field(examples=["invalid_request_error", "overloaded_error"])
    code: str | None = Field(default=None, examples=["model_not_found"])
    param: str | None = Field(default=None, description="The request field at fault, if any.")
    message: str
    retry_after_s: float | None = Field(
        default=None,
        ge=0,
        description="When the client may retry (from the provider's Retry-After).",
    )
    should_retry: bool | None = Field(
        default=None,
        description="The provider's `x-should-retry` answer header, when it sent one: "
        "whether a client should retry this error on its own (the official OpenAI and "
        "Anthropic SDKs read it before their own rules). Relayed to the client as sent.",
    )
    details: dict[str, Any] | None = Field(
        default=None,
        description="The machine-readable part of an Anthropic-format error "
        '(`error.details`, e.g. `{"error_code": "thread_not_found"}`), which '
        "Anthropic's SDKs read to recover; relayed as the upstream sent it (credentials "
        "redacted), and sent to clients of Anthropic's API only.",
        examples=[{"error_code": "thread_unsupported_request"}],
    )


class ChatRequestData(Contract):
    """A request to a model, as the client sent it."""

    api: ClientAPI = Field(description="The API the client called; the reply is shaped for it.")
    model: ModelName = Field(description="Public model name the client asked for.")
    body: dict[str, Any] = Field(
        description="The client's request body in its API's own shape, as received (unknown "
        "fields included). Inference replaces only `model` with the deployment's model, "
        "and translates the body when the deployment speaks another API.",
        examples=[{"model": "sim-small", "messages": [{"role": "user", "content": "Hello"}]}],
    )
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="Client request headers the provider needs to read the body "
        "(`anthropic-version`, `anthropic-beta`, `openai-beta`); never credentials.",
    )
    previous_items: list[dict[str, Any]] | None = Field(
        default=None,
        description="Responses API only (`openai.responses`), when the body names a "
        "`previous_response_id`: the items of that conversation, oldest first (the previous "
        "response's input items, then its output items), as history held them when the "
        "gateway accepted the request. Switchyard serves `previous_response_id` itself: "
        "inference sends these before the body's `input`, and history stores them as part "
        "of this response's input items. Carried here, not fetched later, so the request "
        "can be replayed as it ran.",
    )
    stream: bool = False
    user_id: Identifier = Field(description="Authenticated subject (user id).")
    api_key_id: Identifier | None = Field(default=None, description="API key used, if any.")
    team_id: Identifier | None = Field(default=None, description="Team of the caller, if any.")
    priority: Priority = Priority.INTERACTIVE
    deadline: EventTime = Field(description="After this instant nobody waits for the reply.")
    reply_to: ReplyAddress | None = Field(
        default=None, description="Absent for work no gateway waits for (jobs)."
    )
    webhook_url: str | None = Field(
        default=None,
        max_length=2048,
        description="Jobs only: where history POSTs the job's result (HMAC-signed) once it "
        "reaches a terminal state.",
    )
    replay_of: EventId | None = Field(
        default=None,
        description="Set on a replayed request: the request id of the recorded original.",
    )


class ChatCompletedData(Contract):
    """A request's successful reply, in the client's API, with the deployment that
    answered and the tokens it used."""

    api: ClientAPI = Field(description="The API `response` is shaped for (the client's).")
    response: dict[str, Any] = Field(
        description="The reply body in the client's API: a `chat.completion`, an Anthropic "
        "`message`, an embeddings `list`, a Responses `response`..."
    )
    provider: ProviderName
    deployment: ModelName
    upstream_api: ClientAPI | None = Field(
        default=None,
        description="The API the deployment was called with; equal to `api` when the "
        "request was passed through, another when it was translated; none when no "
        "deployment was called (a token count Switchyard estimated itself).",
    )
    usage: TokenUsage
    latency_ms: float = Field(
        ge=0, le=MAX_DURATION_MS, description="Time spent calling the upstream, in ms."
    )


class ChatFailedData(Contract):
    """How a request that got no reply ended: its terminal status, the error the client
    gets (in its API's vocabulary), the deployment tried if any, and the time spent (ms)."""

    status: Literal[
        TerminalStatus.FAILED,
        TerminalStatus.CANCELLED,
        TerminalStatus.EXPIRED,
        TerminalStatus.REFUSED,
    ]
    error: ErrorInfo
    provider: ProviderName | None = None
    deployment: ModelName | None = None
    latency_ms: float = Field(default=0, ge=0, le=MAX_DURATION_MS)
    response: dict[str, Any] | None = Field(
        default=None,
        description="What a stream that failed, expired or was cancelled after it began "
        "had given its client (the records the bus took), as its API's reply body "
        "assembles it (a Responses `response` whose `output` holds the items given whole, "
        "an Anthropic `message` or a `chat.completion` with the text so far); absent when "
        "nothing was streamed, or when carrying it would make the event larger than the "
        "bus takes. Left out of the JSON when absent, so a consumer of an earlier release "
        "reads every other failure.",
    )

    @model_serializer(mode="wrap")
    def _without_absent_response(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        dumped: dict[str, Any] = handler(self)
        if self.response is None:
            dumped.pop("response", None)
        return dumped


class StreamEvent(Contract):
    """One Server-Sent Event of a streamed reply, in the client's API: `event` is the SSE
    event name where the API uses named events (Anthropic's `message_start`..., the
    Responses API's `response.output_text.delta`...), None for data-only streams (Chat
    Completions' chunks). `data` is the event's JSON payload."""

    event: str | None = None
    data: dict[str, Any]


class ChatChunkData(Contract):
    """A run of stream events of one streamed reply, in the client's API, numbered so the
    gateway relays them in order and skips repeats."""

    sequence: int = Field(ge=0, description="Position of this record in the stream, from 0.")
    run: str = Field(
        description="Which execution of the request produced the stream. A request re-run "
        "after a crash streams under another `run`; the gateway never splices two runs."
    )
    events: list[StreamEvent] = Field(
        min_length=1,
        description="Consecutive stream events, relayed to the client in this order. "
        "Several are batched in one record when the bus is slower than the upstream.",
    )


class ChatStartedData(Contract):
    """The lane a request waited in before inference began to run it."""

    priority: Priority = Field(description="The lane: `batch` for jobs and background work.")


class CancelRequestData(Contract):
    """Why a request is cancelled (`client_disconnected` when the client went away)."""

    reason: str = Field(default="client_disconnected", examples=["client_disconnected"])


class UsageData(Contract):
    """What one request cost, published once when it reaches its terminal state."""

    api: ClientAPI | None = Field(default=None, description="The API the client called.")
    model: ModelName = Field(description="Public model name.")
    provider: ProviderName | None = None
    deployment: ModelName | None = None
    user_id: Identifier
    api_key_id: Identifier | None = None
    team_id: Identifier | None = None
    status: TerminalStatus
    usage: TokenUsage = Field(
        description="Tokens of every upstream call the request made (a call whose reply "
        "could not be delivered was still billed, and counts)."
    )
    cost_usd: float = Field(default=0, ge=0, le=MAX_COST_USD)
    latency_ms: float = Field(default=0, ge=0, le=MAX_DURATION_MS)
    time_to_first_token_ms: float | None = Field(default=None, ge=0, le=MAX_DURATION_MS)
    upstream_calls: int = Field(default=1, ge=0, description="Upstream calls made.")
    cache_hit: bool = Field(
        default=False, description="Answered from Switchyard's response cache (no upstream)."
    )
    saved_cost_usd: float = Field(
        default=0,
        ge=0,
        le=MAX_COST_USD,
        description="For a cache hit: what the reused answer cost when it was made (USD), "
        "i.e. what the hit saved. 0 otherwise.",
    )
    replay_of: EventId | None = Field(default=None, description="Original request, for a replay.")


class ApiKeyRevokedData(Contract):
    """Which API key was revoked, whose it was and who revoked it."""

    key_id: str = Field(description="Id of the revoked API key (never the key or its hash).")
    user_id: str = Field(description="Owner of the key.")
    reason: Literal["owner", "admin", "operator"] = Field(
        default="owner", description="Who revoked it: the owner, a tenant admin, or the CLI."
    )


class UserStatusData(Contract):
    """The user whose status changed."""

    user_id: str


# The most clock skew a verifier accepts on an access token's `exp` (seconds): the
# gateway's `jwt_leeway_s` is bounded by it, and auth keeps revocations this long past the
# tokens' expiry, so a revoked token accepted late for skew is still refused.
MAX_JWT_LEEWAY_S = 300.0


class TokenRevokedData(Contract):
    """The access token (`jti`) now refused, its owner, and when it would have expired."""

    jti: str = Field(description="`jti` claim of the revoked access token.")
    user_id: str
    expires_at: EventTime = Field(
        description="When the token expires anyway; consumers may forget the entry once "
        "it is older than the clock skew they accept on `exp`."
    )


class TokenFamilyRevokedData(Contract):
    """The sign-in session (refresh-token family) that ended, its owner, why, and
    after when none of its access tokens is valid anyway."""

    family_id: str = Field(
        description="The refresh-token family (the `sid` claim of its access tokens)."
    )
    user_id: str
    reason: Literal["logout", "reuse_detected", "user_disabled", "admin"]
    expires_at: EventTime = Field(
        description="No access token of the family is valid after this instant, but for "
        "the clock skew a verifier accepts on `exp`."
    )


class SigningKeyRotatedData(Contract):
    """The key (`kid`) that now signs access tokens, the one before it, and the JWKS's kids."""

    kid: str = Field(description="`kid` of the key that now signs access tokens.")
    previous_kid: str | None = Field(default=None, description="The key that signed before.")
    published_kids: list[str] = Field(
        description="Every `kid` now in the JWKS (the new key and those still verifying)."
    )


class LimitsChangedData(Contract):
    """The level (tenant, team, user or API key) whose limits or membership changed."""

    scope: Literal["tenant", "team", "user", "api_key"] = Field(
        description="Which level's budget, rate limits or membership changed."
    )
    scope_id: str = Field(description="Id of the tenant, team, user or API key.")


class CachePurgedData(Contract):
    """Which cached answers a purge deleted: the filters `switchyard cache purge` was given,
    or the request whose response was deleted (`DELETE /v1/responses/{id}`)."""

    tenant: str | None = Field(
        default=None, description="Only this tenant's cached answers; null: every tenant's."
    )
    model: str | None = Field(
        default=None, description="Only answers of this model; null: every model's."
    )
    expired_only: bool = Field(default=False, description="Only answers already expired.")
    # Left out of the JSON when absent, for consumers of earlier releases (the contract
    # refuses unknown fields).
    source_request_id: EventId | None = Field(
        default=None,
        exclude_if=lambda value: value is None,
        description=("Only answers made by this request (its response was deleted); null: any."),
    )


class EnvelopeFields(Contract):
    """The envelope every event shares: id, source, time, tenant, request id and schema
    version; each event class adds its `type` literal and its `data` payload."""

    id: EventId = Field(
        default_factory=new_id, description="Unique event id; consumers deduplicate on it."
    )
    source: EventId = Field(description="Service that published the event.", examples=["gateway"])
    time: OccurredAt = Field(default_factory=utcnow, description="UTC, ISO 8601.")
    tenant: Identifier
    request_id: EventId
    schema_version: Literal[2] = SCHEMA_VERSION
    if TYPE_CHECKING:
        # Every event class declares its own `type` literal; seen here by the type checker
        # only, so the envelope itself gains no field.
        type: str


class ChatRequested(EnvelopeFields):
    """A client's request to a model, accepted by the gateway: inference runs it and
    history records it."""

    type: Literal["chat.requested"] = "chat.requested"
    data: ChatRequestData


class ChatCompleted(EnvelopeFields):
    """A request's reply: the gateway relays it to the waiting client, history records
    it."""

    type: Literal["chat.completed"] = "chat.completed"
    data: ChatCompletedData


class ChatFailed(EnvelopeFields):
    """A request ended without a reply (failed, cancelled, expired or refused): the client
    gets the error, history records it."""

    type: Literal["chat.failed"] = "chat.failed"
    data: ChatFailedData


class ChatChunk(EnvelopeFields):
    """Stream events of a streamed reply, relayed by the gateway to the client as they come."""

    type: Literal["chat.chunk"] = "chat.chunk"
    data: ChatChunkData


class ChatStarted(EnvelopeFields):
    """Inference began to run a request that waited in the batch lane (a job, a background
    response): history shows it `in_progress` rather than `queued` from then on."""

    type: Literal["chat.started"] = "chat.started"
    data: ChatStartedData


class UsageRecorded(EnvelopeFields):
    """What one finished request cost (tokens, USD, latency): history aggregates it for usage and
    budgets."""

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
    """A disabled user may sign in and use API keys again."""

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


class CachePurged(EnvelopeFields):
    """Cached answers were deleted from the response cache's shared store (`switchyard
    cache purge`): every gateway replica drops the matching answers it keeps in memory.
    The envelope's `tenant` is the purged tenant, or `*` when every tenant's were."""

    type: Literal["cache.purged"] = "cache.purged"
    data: CachePurgedData


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

# Every event type, the one place a new event is added: decoding, the JSON Schema, the
# AsyncAPI document and `EVENT_CLASSES` all follow from it.
Event = Annotated[
    ChatRequested
    | ChatCompleted
    | ChatFailed
    | ChatChunk
    | ChatStarted
    | UsageRecorded
    | ChatCancelRequested
    | AuthEvent
    | CachePurged,
    Field(discriminator="type"),
]
# The classes of `Event`, in the union's order (derived, never listed by hand).
EVENT_CLASSES: tuple[type[EnvelopeFields], ...] = get_args(get_args(Event)[0])

_event_adapter: TypeAdapter[Event] = TypeAdapter(Event)


class EventDecodeError(ValueError):
    """Raw bytes that are not a valid event of a known type and schema version."""


def decode_event(raw: bytes | str) -> Event:
    """The event in `raw` (JSON). Raises EventDecodeError, and nothing else, for anything
    that is not a valid event of a known type and a supported schema version (whatever its
    bytes: consumers rely on it to dead-letter or skip a record instead of failing on it);
    version 1 events are upgraded."""
    try:
        return _event_adapter.validate_json(raw)
    except ValueError as exc:
        first: Exception = exc
    except Exception as exc:  # noqa: BLE001 - no bytes may fail a consumer
        raise EventDecodeError(f"{type(exc).__name__}: {exc}") from exc
    try:
        document = orjson.loads(raw)
    except Exception as exc:  # noqa: BLE001 - not JSON (or not bytes at all)
        raise EventDecodeError(str(first)) from exc
    if _refused_as_json(first):
        # JSON the serialiser wrote (`encode_event`: pydantic's, nested up to 254 levels)
        # that pydantic's parser refuses (it stops at 200 levels): an upstream's reply or
        # tool arguments may be that deep. Every event that can be published can be read,
        # its integers beyond 64 bits exact as pydantic's parser keeps them.
        try:
            return _event_adapter.validate_python(exactjson.loads(raw))
        except Exception as exc:  # noqa: BLE001 - not an event, however deep
            raise EventDecodeError(f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(document, dict) or document.get("schema_version") != 1:
        raise EventDecodeError(str(first)) from first
    try:
        return _event_adapter.validate_python(_upcast_v1(document))
    except Exception as exc:  # noqa: BLE001 - a version 1 shape of any kind
        raise EventDecodeError(f"version 1 event: {type(exc).__name__}: {exc}") from exc


def _refused_as_json(error: Exception) -> bool:
    """Whether pydantic refused a document as not JSON (`json_invalid`) rather than as
    not an event: for bytes orjson reads, its parser's depth limit."""
    return isinstance(error, ValidationError) and any(
        detail["type"] == "json_invalid" for detail in error.errors()
    )


async def decode_event_off_loop(raw: bytes | str) -> Event:
    """`decode_event(raw)`, in a worker thread when `raw` is over `OFF_LOOP_BYTES` (a
    request event carrying a prompt of megabytes, a reply of thousands of embeddings), so
    that its decoding shares the interpreter with the consumer's event loop instead of
    holding it throughout (`offloop`). Raises EventDecodeError, as `decode_event`."""
    return await off_loop(decode_event, raw)


_V1_API = {
    ("openai", "chat"): ClientAPI.OPENAI_CHAT_COMPLETIONS,
    ("openai", "embeddings"): ClientAPI.OPENAI_EMBEDDINGS,
    # Version 1 carried Anthropic requests already translated to Chat Completions.
    ("anthropic", "chat"): ClientAPI.OPENAI_CHAT_COMPLETIONS,
}


def _upcast_v1(document: dict[str, Any]) -> dict[str, Any]:
    """A version 1 event as version 2. Version 1 bodies, replies and chunks were always in
    OpenAI's shapes (Chat Completions or Embeddings), whatever API the client called."""
    document = {**document, "schema_version": 2}
    data = document.get("data")
    if not isinstance(data, dict):
        return document
    data = dict(data)
    kind = document.get("type")
    if kind == "chat.requested":
        api_name, operation = data.pop("api", "openai"), data.pop("operation", "chat")
        api = (
            _V1_API.get((api_name, operation))
            if isinstance(api_name, str) and isinstance(operation, str)
            else None
        )
        data["api"] = api.value if api else None
    elif kind == "chat.completed":
        api = ClientAPI.OPENAI_CHAT_COMPLETIONS
        response = data.get("response")
        if isinstance(response, dict) and response.get("object") == "list":
            api = ClientAPI.OPENAI_EMBEDDINGS
        data["api"] = api.value
    elif kind == "chat.chunk":
        data = {
            "sequence": data.get("sequence"),
            "run": "v1",
            "events": [{"event": None, "data": data.get("chunk")}],
        }
    document["data"] = data
    return document


def encode_event(event: EnvelopeFields) -> bytes:
    """The UTF-8 JSON bytes `event` travels as; `decode_event` reads them back."""
    return event.model_dump_json().encode()


def event_json_schema() -> dict[str, Any]:
    """JSON Schema of every event, the document other teams build on."""
    schema = _event_adapter.json_schema()
    schema["$id"] = f"https://switchyard.dev/schemas/events/v{SCHEMA_VERSION}.json"
    schema["title"] = f"Switchyard events, schema version {SCHEMA_VERSION}"
    return schema
