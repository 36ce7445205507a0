"""Tables of the history service (SQLAlchemy 2).

- `history_events`: the event store. Every event except stream chunks, exactly once,
  as the whole envelope; the source of truth that projections can be rebuilt from.
- `history_requests`: the request projection, one row per request id, with its
  terminal status, reply, usage and cost; what the history, usage and jobs APIs read.
  Jobs are the requests of the batch lane (`priority = 'batch'`). `api` is the API the
  stored body and reply are shaped in (a `ClientAPI` value); `client_api` the API the
  client called. They differ only on rows recorded from version 1 events of Anthropic
  clients, whose bodies and replies travelled translated to Chat Completions
  (migration 0003).
- `history_webhooks`: one row per job that asked for a webhook: its delivery state.
- `history_tenant_settings`: per-tenant privacy (metadata only), retention and the
  webhook signing secret.
- `history_idempotency_keys`: Idempotency-Key claims and the responses they replay.
- `history_usage_hourly`, `history_usage_hourly_models`, `history_usage_dirty`: the usage
  rollup per tenant and hour (by user, API key and model; and by model only), and the hours
  waiting to be recomputed (rollup.py).

Timestamps are timezone-aware UTC on both PostgreSQL and SQLite; the projection's JSON
columns are JSONB on PostgreSQL, event payloads plain JSON (kept as received). The Alembic
migrations in `migrations/` create the same schema.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# `none_as_null` stores Python None as SQL NULL (not JSON 'null'), so "IS NULL" means absent.
JSONDocument = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware.

    SQLite has no time zone type: values are written as UTC text (which also keeps them
    comparable for keyset pagination) and marked UTC again when read.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: history stores timezone-aware UTC timestamps only")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class RequestStatus(StrEnum):
    PENDING = "pending"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    # Refused before any upstream call (a budget or rate limit).
    REFUSED = "refused"


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class HistoryEvent(Base):
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


class HistoryRequest(Base):
    """One request and how it ended. A row may exist before its `chat.requested` event
    arrives (a reply or usage record came first); such a row has no `request_body` yet."""

    __tablename__ = "history_requests"

    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128))
    user_id: Mapped[str | None] = mapped_column(String(128))
    api_key_id: Mapped[str | None] = mapped_column(String(128))
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
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument)
    provider: Mapped[str | None] = mapped_column(String(128))
    deployment: Mapped[str | None] = mapped_column(String(256))
    input_tokens: Mapped[int | None] = mapped_column(Integer)
    output_tokens: Mapped[int | None] = mapped_column(Integer)
    # Parts of input_tokens read from / written to the prompt cache, and of output_tokens
    # spent on reasoning (NULL on rows recorded before they were reported: none known).
    cache_read_input_tokens: Mapped[int | None] = mapped_column(Integer)
    cache_creation_input_tokens: Mapped[int | None] = mapped_column(Integer)
    reasoning_tokens: Mapped[int | None] = mapped_column(Integer)
    cost_usd: Mapped[float | None] = mapped_column(Float)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    deadline: Mapped[datetime | None] = mapped_column(UTCDateTime())

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


class IdempotencyState(StrEnum):
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"


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
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    locked_until: Mapped[datetime] = mapped_column(UTCDateTime())
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class UsageHourly(Base):
    """Requests of one tenant, hour, user, API key and model (NULL stored as '')."""

    __tablename__ = "history_usage_hourly"

    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    hour: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    api_key_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    model: Mapped[str] = mapped_column(String(256), primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger)
    completed: Mapped[int] = mapped_column(BigInteger)
    errors: Mapped[int] = mapped_column(BigInteger)
    cancelled: Mapped[int] = mapped_column(BigInteger)
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    cache_read_input_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    cache_creation_input_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    reasoning_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    cost_usd: Mapped[float] = mapped_column(Float)

    __table_args__ = (
        Index("ix_history_usage_hourly_hour", "hour"),
        Index("ix_history_usage_hourly_user", "tenant", "user_id", "hour"),
        Index("ix_history_usage_hourly_api_key", "tenant", "api_key_id", "hour"),
    )


class UsageHourlyModels(Base):
    """Requests of one tenant, hour and model: the grain tenant-wide reports read."""

    __tablename__ = "history_usage_hourly_models"

    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    hour: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    model: Mapped[str] = mapped_column(String(256), primary_key=True)
    requests: Mapped[int] = mapped_column(BigInteger)
    completed: Mapped[int] = mapped_column(BigInteger)
    errors: Mapped[int] = mapped_column(BigInteger)
    cancelled: Mapped[int] = mapped_column(BigInteger)
    input_tokens: Mapped[int] = mapped_column(BigInteger)
    output_tokens: Mapped[int] = mapped_column(BigInteger)
    cache_read_input_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    cache_creation_input_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    reasoning_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    cost_usd: Mapped[float] = mapped_column(Float)

    __table_args__ = (Index("ix_history_usage_hourly_models_hour", "hour"),)


class UsageDirty(Base):
    """A (tenant, hour) whose rollup rows must be recomputed from the requests."""

    __tablename__ = "history_usage_dirty"

    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    hour: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    marked_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (Index("ix_history_usage_dirty_hour", "hour"),)


events_table = HistoryEvent.__table__
requests_table = HistoryRequest.__table__
webhooks_table = HistoryWebhook.__table__
tenant_settings_table = TenantSettings.__table__
idempotency_table = IdempotencyKey.__table__
usage_hourly_table = UsageHourly.__table__
usage_hourly_models_table = UsageHourlyModels.__table__
usage_dirty_table = UsageDirty.__table__
