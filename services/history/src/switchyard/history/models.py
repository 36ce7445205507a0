"""Tables of the history service (SQLAlchemy 2).

- `history_events`: the event store. Every event except stream chunks, exactly once,
  as the whole envelope; the source of truth that projections can be rebuilt from.
- `history_requests`: the request projection, one row per request id, with its
  terminal status, reply, usage and cost; what the history, usage and jobs APIs read.
  Jobs are the requests of the batch lane (`priority = 'batch'`). `api` is the API the
  stored body and reply are shaped in (a `ClientAPI` value); `client_api` the API the
  client called. They differ only on rows recorded from version 1 events of Anthropic
  clients, whose bodies and replies travelled translated to Chat Completions
  (migration 0003). Requests of OpenAI's Responses API also keep their conversation
  state: `input_items` (the items the response was generated from, those of the
  conversation it continued included) next to the output items in `response`, so
  `previous_response_id` works on every model; `response_deleted_at` marks a response
  deleted through the API (its content is removed, the row and its usage stay).
- `history_webhooks`: one row per job that asked for a webhook: its delivery state.
- `history_tenant_settings`: per-tenant privacy (metadata only), retention and the
  webhook signing secret.
- `history_idempotency_keys`: Idempotency-Key claims and the responses they replay.
- `history_usage_hourly`, `history_usage_hourly_models`, `history_usage_dirty`: the usage
  rollup per tenant and hour (by user, API key, team and model; and by team and model
  only), and the hours waiting to be recomputed (rollup.py). The part of the prompt-cache
  writes kept an hour has columns of its own from migration 0015.
- `history_cache_entries`: the gateways' exact-match response cache, per tenant (cache.py).
- `history_cache_hit_pending`: cache hits linked to their source request before its cost
  was recorded, until the sweeper has marked their hours for the rollup (cache.py).
- `history_replays`, `history_replay_items`: replays of recorded traffic against another
  model, and each selected request's progress (replays.py).

A request is shown and counted (`shown`) once its `chat.requested` is stored, or, for a
request refused at admission (which never had one: nothing ran), once its refusal is.

Timestamps are timezone-aware UTC on both PostgreSQL and SQLite; the projection's JSON
columns are JSONB on PostgreSQL, event payloads plain JSON (kept as received). The Alembic
migrations in `migrations/` create the same schema.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ColumnElement,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    or_,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from typing_extensions import override

# `none_as_null` stores Python None as SQL NULL (not JSON 'null'), so "IS NULL" means absent.
JSONDocument = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware.

    SQLite has no time zone type: values are written as UTC text (which also keeps them
    comparable for keyset pagination) and marked UTC again when read.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    @override
    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: history stores timezone-aware UTC timestamps only")
        return value.astimezone(UTC)

    @override
    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class RequestStatus(StrEnum):
    """The status of a recorded request: `pending` until one terminal status (the others)."""

    PENDING = "pending"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    # Refused before any upstream call (a budget or rate limit).
    REFUSED = "refused"


class Base(DeclarativeBase):
    """The declarative base of the history tables, with the constraint naming convention the
    migrations rely on."""

    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


# The auth events that take a credential's right to run work away (or give a user's back).
CREDENTIAL_CHANGE_TYPES = ("auth.api_key_revoked", "auth.user_disabled", "auth.user_enabled")
CREDENTIAL_CHANGES_WHERE = "type IN ({})".format(
    ", ".join(f"'{kind}'" for kind in CREDENTIAL_CHANGE_TYPES)
)


class HistoryEvent(Base):
    """The event store: every consumed event once, by id, as the JSON it arrived as."""

    __tablename__ = "history_events"

    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    type: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[str] = mapped_column(String(64), index=True)
    tenant: Mapped[str] = mapped_column(String(128))
    source: Mapped[str] = mapped_column(String(64))
    time: Mapped[datetime] = mapped_column(UTCDateTime())
    schema_version: Mapped[int] = mapped_column(Integer)
    # json, not jsonb: each event is kept as the JSON text it arrived as (no re-encoding on
    # the write path); queries go through the indexed columns above (migration 0002).
    payload: Mapped[dict[str, Any]] = mapped_column(JSON(none_as_null=True))
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        # The revocations the sweeper cancels unfinished jobs by (migration 0014): a few
        # rows among millions of events, so only they are indexed.
        Index(
            "ix_history_events_credential_changes",
            "time",
            postgresql_where=text(CREDENTIAL_CHANGES_WHERE),
            sqlite_where=text(CREDENTIAL_CHANGES_WHERE),
        ),
    )


class HistoryRequest(Base):
    """One request and how it ended. A row may exist before its `chat.requested` event
    arrives (a reply or usage record came first); such a row has no `request_body` yet."""

    __tablename__ = "history_requests"

    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128))
    user_id: Mapped[str | None] = mapped_column(String(128))
    api_key_id: Mapped[str | None] = mapped_column(String(128))
    # The caller's team when the request was made (auth's team id), if any.
    team_id: Mapped[str | None] = mapped_column(String(128))
    model: Mapped[str | None] = mapped_column(String(256))
    # The API `request_body` and `response` are shaped in, and the one the client called.
    api: Mapped[str | None] = mapped_column(String(32))
    client_api: Mapped[str | None] = mapped_column(String(32))
    # The API the deployment was called with: `api` when passed through, another when
    # inference translated the request.
    upstream_api: Mapped[str | None] = mapped_column(String(32))
    priority: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default=RequestStatus.PENDING.value)
    # True when the terminal status is history's own expiry (no reply was recorded in time):
    # a real outcome from inference that arrives later replaces it (projection.py).
    outcome_provisional: Mapped[bool | None] = mapped_column(Boolean)
    request_body: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument)
    response: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument)
    # Responses API only: every input item of the response, the previous conversation's
    # first (NULL when not stored: `store: false`, metadata only, or deleted).
    input_items: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONDocument)
    response_deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument)
    provider: Mapped[str | None] = mapped_column(String(128))
    deployment: Mapped[str | None] = mapped_column(String(256))
    input_tokens: Mapped[int | None] = mapped_column(BigInteger)
    output_tokens: Mapped[int | None] = mapped_column(BigInteger)
    # Parts of input_tokens read from / written to the prompt cache, and of output_tokens
    # spent on reasoning (NULL on rows recorded before they were reported: none known).
    cache_read_input_tokens: Mapped[int | None] = mapped_column(BigInteger)
    cache_creation_input_tokens: Mapped[int | None] = mapped_column(BigInteger)
    # The part of the writes kept an hour (migration 0015; NULL on rows recorded before).
    cache_creation_1h_input_tokens: Mapped[int | None] = mapped_column(BigInteger)
    reasoning_tokens: Mapped[int | None] = mapped_column(BigInteger)
    cost_usd: Mapped[float | None] = mapped_column(Float)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    deadline: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # When inference began to run a request of the batch lane (`chat.started`, migration
    # 0012): a background response is `queued` before, `in_progress` after.
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Answered from the gateways' response cache (no upstream call), and what the answer
    # it reused had cost (migration 0004).
    cache_hit: Mapped[bool | None] = mapped_column(Boolean)
    saved_cost_usd: Mapped[float | None] = mapped_column(Float)
    # For a cache hit: the request whose answer it reused (migration 0008). What the hit
    # saved is that request's cost, whenever its usage is recorded (cache.py).
    cache_source_request_id: Mapped[str | None] = mapped_column(String(64))
    # For a replayed request: the recorded request it replays.
    replay_of: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        # A user's history, newest first (the history page); request_id breaks ties the
        # same way the pagination cursor does.
        Index(
            "ix_history_requests_tenant_user_created",
            "tenant",
            "user_id",
            created_at.desc(),
            request_id.desc(),
        ),
        # A tenant's history for admins, newest first.
        Index("ix_history_requests_tenant_created", "tenant", created_at.desc(), request_id.desc()),
        # Filters of the history API (migration 0002).
        Index(
            "ix_history_requests_tenant_status_created",
            "tenant",
            "status",
            created_at.desc(),
            request_id.desc(),
        ),
        Index(
            "ix_history_requests_tenant_model_created",
            "tenant",
            "model",
            created_at.desc(),
            request_id.desc(),
        ),
        Index(
            "ix_history_requests_tenant_api_key_created",
            "tenant",
            "api_key_id",
            created_at.desc(),
            request_id.desc(),
        ),
        # The team filter (migration 0004).
        Index(
            "ix_history_requests_tenant_team_created",
            "tenant",
            "team_id",
            created_at.desc(),
            request_id.desc(),
        ),
        # Jobs (the batch lane), per user and per tenant.
        Index(
            "ix_history_requests_jobs",
            "tenant",
            "user_id",
            created_at.desc(),
            request_id.desc(),
            postgresql_where=text("priority = 'batch'"),
            sqlite_where=text("priority = 'batch'"),
        ),
        # The expiry sweeper: requests still pending, by deadline.
        Index(
            "ix_history_requests_pending_deadline",
            "deadline",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
    )


class WebhookStatus(StrEnum):
    """Delivery state of a job's webhook."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class HistoryWebhook(Base):
    """A job's webhook: POSTed once the job reaches a terminal state, retried with backoff."""

    __tablename__ = "history_webhooks"

    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128))
    url: Mapped[str] = mapped_column(String(2048))
    status: Mapped[str] = mapped_column(String(16), default=WebhookStatus.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Bumped when the job's outcome changes after a delivery of the old one may have gone
    # out (history's expiry replaced by the real outcome): the new outcome is delivered
    # afresh, under a delivery id of its own, and an attempt still carrying the old one
    # cannot settle the new delivery.
    revision: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    __table_args__ = (
        Index(
            "ix_history_webhooks_due",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
    )


class TenantSettings(Base):
    """Per-tenant settings; a tenant without a row stores everything, forever."""

    __tablename__ = "history_tenant_settings"

    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    # False: metadata only, no prompt or completion text in the history tables.
    store_content: Mapped[bool] = mapped_column(Boolean, default=True)
    retention_days: Mapped[int | None] = mapped_column(Integer)
    webhook_secret: Mapped[str | None] = mapped_column(String(128))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # The response cache for every request of the tenant (NULL: off, requests may still
    # opt in with a header), and how long its entries live (NULL: the service default).
    cache_enabled: Mapped[bool | None] = mapped_column(Boolean)
    cache_ttl_s: Mapped[int | None] = mapped_column(Integer)


class IdempotencyState(StrEnum):
    """State of an `Idempotency-Key`: held by a request in flight, or holding its response."""

    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    # The replica running the request stopped waiting for it (its deadline passed, the
    # request published): the key waits for the request's own outcome, as recorded.
    AWAITING_OUTCOME = "awaiting"


class IdempotencyKey(Base):
    """An Idempotency-Key of one tenant: who claimed it for which body, and the response
    to replay once the first request finished."""

    __tablename__ = "history_idempotency_keys"

    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[str] = mapped_column(String(128))
    endpoint: Mapped[str] = mapped_column(String(128))
    claim_token: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    request_id: Mapped[str | None] = mapped_column(String(64))
    status_code: Mapped[int | None] = mapped_column(Integer)
    content_type: Mapped[str | None] = mapped_column(String(128))
    response_body: Mapped[bytes | None] = mapped_column(LargeBinary)
    # The headers describing the body (migration 0009; NULL on keys recorded before it).
    response_headers: Mapped[dict[str, str] | None] = mapped_column(JSONDocument)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    locked_until: Mapped[datetime] = mapped_column(UTCDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class UsageHourly(Base):
    """Requests of one tenant, hour, user, API key, team and model (NULL stored as '')."""

    __tablename__ = "history_usage_hourly"

    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    hour: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    api_key_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    # A user can move to another team, so the team is a dimension of its own.
    team_id: Mapped[str] = mapped_column(String(128), primary_key=True, server_default="")
    model: Mapped[str] = mapped_column(String(256), primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger)
    completed: Mapped[int] = mapped_column(BigInteger)
    errors: Mapped[int] = mapped_column(BigInteger)
    cancelled: Mapped[int] = mapped_column(BigInteger)
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    cache_read_input_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    cache_creation_input_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    cache_creation_1h_input_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    reasoning_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    cost_usd: Mapped[float] = mapped_column(Float)
    cache_hits: Mapped[int] = mapped_column(BigInteger, server_default="0")
    cache_saved_usd: Mapped[float] = mapped_column(Float, server_default="0")

    __table_args__ = (
        Index("ix_history_usage_hourly_hour", "hour"),
        Index("ix_history_usage_hourly_user", "tenant", "user_id", "hour"),
        Index("ix_history_usage_hourly_api_key", "tenant", "api_key_id", "hour"),
        Index("ix_history_usage_hourly_team", "tenant", "team_id", "hour"),
    )


class UsageHourlyModels(Base):
    """Requests of one tenant, hour, team and model: the grain tenant-wide reports read
    (a few rows per hour however many users and keys there are)."""

    __tablename__ = "history_usage_hourly_models"

    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    hour: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    team_id: Mapped[str] = mapped_column(String(128), primary_key=True, server_default="")
    model: Mapped[str] = mapped_column(String(256), primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger)
    completed: Mapped[int] = mapped_column(BigInteger)
    errors: Mapped[int] = mapped_column(BigInteger)
    cancelled: Mapped[int] = mapped_column(BigInteger)
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    cache_read_input_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    cache_creation_input_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    cache_creation_1h_input_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    reasoning_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    cost_usd: Mapped[float] = mapped_column(Float)
    cache_hits: Mapped[int] = mapped_column(BigInteger, server_default="0")
    cache_saved_usd: Mapped[float] = mapped_column(Float, server_default="0")

    __table_args__ = (Index("ix_history_usage_hourly_models_hour", "hour"),)


class UsageDirty(Base):
    """A (tenant, hour) whose rollup rows must be recomputed from the requests."""

    __tablename__ = "history_usage_dirty"

    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    hour: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    marked_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (Index("ix_history_usage_dirty_hour", "hour"),)


class CacheEntry(Base):
    """One answer of the response cache: the reply (and, for a streamed request, its
    stream events) to the request whose normalised body hashes to `key`, for one tenant."""

    __tablename__ = "history_cache_entries"

    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    api: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(256))
    response: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    stream_events: Mapped[list[Any] | None] = mapped_column(JSONDocument)
    source_request_id: Mapped[str] = mapped_column(String(64))
    # SHA-256 of `response` as stable JSON: how a hit's reply finds the entry it came from
    # (migration 0008; NULL on entries stored before it).
    response_digest: Mapped[str | None] = mapped_column(String(64))
    # Response headers describing the body (migration 0011; NULL on entries before it).
    headers: Mapped[dict[str, str] | None] = mapped_column(JSONDocument)
    size_bytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)

    __table_args__ = (Index("ix_history_cache_entries_tenant_digest", "tenant", "response_digest"),)


class CacheHitPending(Base):
    """A cache hit linked to the request whose answer it reused while that request's cost
    was not recorded yet (migration 0008): the sweeper marks the hit's hour for the usage
    rollup once the cost is there, then deletes the row (`cache.resolve_pending_hits`)."""

    __tablename__ = "history_cache_hit_pending"

    hit_request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    source_request_id: Mapped[str] = mapped_column(String(64))
    tenant: Mapped[str] = mapped_column(String(128))
    # When the recorder linked the hit: rows older than a bound are dropped, so a source
    # whose usage is never recorded does not keep its hits here for ever.
    linked_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ReplayStatus(StrEnum):
    """State of a replay: sending, stopped by the caller (resumable) or done."""

    RUNNING = "running"
    STOPPED = "stopped"
    COMPLETED = "completed"


class Replay(Base):
    """A replay of recorded requests against another model (replays.py)."""

    __tablename__ = "history_replays"

    replay_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128))
    user_id: Mapped[str] = mapped_column(String(128))
    api_key_id: Mapped[str | None] = mapped_column(String(128))
    to_model: Mapped[str] = mapped_column(String(256))
    selection: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    rate_count: Mapped[int] = mapped_column(Integer)
    rate_period_s: Mapped[float] = mapped_column(Float)
    bill_to: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    total: Mapped[int] = mapped_column(Integer)
    runner: Mapped[str | None] = mapped_column(String(128))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    __table_args__ = (
        Index("ix_history_replays_tenant_created", "tenant", created_at.desc()),
        Index("ix_history_replays_status", "status"),
    )


class ReplayItemState(StrEnum):
    """State of one replayed request, from selected to compared with its original."""

    PENDING = "pending"
    # Being published: a runner that died here left it in doubt (replays.py resolves it).
    SENDING = "sending"
    SENT = "sent"
    # Its replay reached a terminal state and the pair was compared.
    SETTLED = "settled"
    NOT_REPLAYABLE = "not_replayable"


class ReplayItem(Base):
    """One selected request of a replay and its replayed counterpart."""

    __tablename__ = "history_replay_items"

    replay_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    original_request_id: Mapped[str] = mapped_column(String(64))
    replay_request_id: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    attempted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    settled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    exact_match: Mapped[bool | None] = mapped_column(Boolean)
    similarity: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (Index("ix_history_replay_items_state", "replay_id", "state", "position"),)


# Declarative classes type `__table__` as a FromClause; each is a Table.
events_table = cast(Table, HistoryEvent.__table__)
requests_table = cast(Table, HistoryRequest.__table__)
webhooks_table = cast(Table, HistoryWebhook.__table__)
tenant_settings_table = cast(Table, TenantSettings.__table__)
idempotency_table = cast(Table, IdempotencyKey.__table__)
usage_hourly_table = cast(Table, UsageHourly.__table__)
usage_hourly_models_table = cast(Table, UsageHourlyModels.__table__)
usage_dirty_table = cast(Table, UsageDirty.__table__)
cache_entries_table = cast(Table, CacheEntry.__table__)
cache_hit_pending_table = cast(Table, CacheHitPending.__table__)
replays_table = cast(Table, Replay.__table__)
replay_items_table = cast(Table, ReplayItem.__table__)


def shown(columns: Any = None) -> ColumnElement[bool]:
    """SQL true for the request rows history shows and counts: those whose
    `chat.requested` is stored (a reply that overtook its request waits for it), and
    requests refused at admission, which never have one (their refusal, a `chat.failed`
    and a `usage.recorded` of status `refused`, is their whole record). `columns`: the
    columns of `history_requests` or of an alias of it."""
    r = columns if columns is not None else requests_table.c
    return or_(r.request_body.is_not(None), r.status == RequestStatus.REFUSED.value)
