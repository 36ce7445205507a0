"""Settings of the history service, and where its Alembic migrations live."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from switchyard.common.db import check_database_url
from switchyard.common.settings import (
    DAY_S,
    HOUR_S,
    MAX_ATTEMPTS,
    MAX_BYTES,
    YEAR_S,
    CheckedSettings,
    ServiceSettings,
    http_url,
)
from switchyard.common.topics import Topics

# Shipped inside the package so `switchyard db upgrade` works from an installed wheel.
MIGRATIONS_DIR = str(Path(__file__).parent / "migrations")
# Each service keeps its own Alembic version table, so several can share one database.
VERSION_TABLE = "alembic_version_history"
# Longest retention: a century (a cut-off date further back is not a date).
MAX_RETENTION_DAYS = 36_500


class Settings(ServiceSettings):
    """History service settings (`SWITCHYARD_HISTORY_*` plus the shared `SWITCHYARD_*`)."""

    model_config = SettingsConfigDict(env_prefix="SWITCHYARD_HISTORY_")

    port: int = Field(default=8002, ge=1, le=65535)
    max_body_bytes: int = Field(
        default=8 * 1024 * 1024,
        gt=0,
        le=MAX_BYTES,
        description="Request bodies larger than this get 413 before they are read; must hold "
        "a stored Idempotency-Key response (base64, so 4/3 of idempotency_max_body_bytes).",
    )
    database_url: str = Field(
        default="sqlite+aiosqlite:///.switchyard/history.db",
        validation_alias=AliasChoices("SWITCHYARD_HISTORY_DATABASE_URL", "DATABASE_URL"),
        description="PostgreSQL (postgresql+psycopg://...) in production; SQLite in embedded mode.",
    )
    group: str = Field(
        default="",
        description="Consumer group on the request, reply and usage topics; unset: "
        "`<topic prefix>.history`.",
    )
    max_batch: int = Field(
        default=1000,
        ge=1,
        le=10_000,
        description="Most events written to the database in one transaction.",
    )
    max_batch_wait_ms: int = Field(
        default=20,
        ge=0,
        le=1000,
        description="Milliseconds a batch waits, after its first event, for more events "
        "before it is written: fewer transactions and offset commits per request, at "
        "the cost of that much delay before an event is in the database. A read of "
        "history ends the wait of the replica it reaches (a chained Responses turn, a "
        "job looked at), not of the others: with one history replica, 200 costs reads "
        "nothing and takes CPU off every request.",
    )
    recorder_thread: bool = Field(
        default=False,
        description="Write consumed events from a thread of their own, with their own event "
        "loop and database connection: for a process where history shares its event loop "
        "with the answering path (`switchyard dev` sets it), so that recording keeps pace "
        "with the load instead of waiting for turns of the busy loop. Needs a database a "
        "second connection reaches (not an in-memory SQLite database).",
    )
    resume_batch_lane: bool = Field(
        default=False,
        description="At start-up, publish again the batch-lane requests (jobs, background "
        "Responses, replays) an earlier run accepted and never finished, whose deadline has "
        "not passed: for a bus that keeps nothing across restarts (`switchyard dev` sets "
        "it). With Kafka, leave it off: the broker delivers unfinished requests again.",
    )
    poison_attempts: int = Field(
        default=5,
        ge=1,
        le=MAX_ATTEMPTS,
        description="Times an event that fails alone, while the database takes writes, is "
        "tried before it goes to the dead-letter topic.",
    )
    expiry_grace_s: float = Field(
        default=60.0,
        ge=0,
        le=DAY_S,
        description="A request still pending this long after its deadline is marked expired.",
    )
    sweep_interval_s: float = Field(
        default=5.0,
        gt=0,
        le=HOUR_S,
        description="How often expired requests, and the unfinished jobs of revoked "
        "keys and disabled users, are looked for.",
    )
    retention_days: int | None = Field(
        default=None,
        ge=1,
        le=MAX_RETENTION_DAYS,
        description="Requests older than this are purged (tenants may set their own); "
        "unset: kept forever.",
    )
    purge_interval_s: float = Field(
        default=3600.0, gt=0, le=DAY_S, description="How often the retention purge runs."
    )
    webhook_poll_interval_s: float = Field(
        default=0.5, gt=0, le=HOUR_S, description="How often due job webhooks are looked for."
    )
    webhook_max_attempts: int = Field(
        default=10,
        ge=1,
        le=MAX_ATTEMPTS,
        description="Delivery attempts of a job webhook before giving up.",
    )
    webhook_initial_backoff_s: float = Field(
        default=1.0,
        gt=0,
        le=DAY_S,
        description="Longest wait before the second attempt (full jitter: the wait is "
        "drawn between 0 and it); doubles each time up to webhook_max_backoff_s.",
    )
    webhook_max_backoff_s: float = Field(default=600.0, gt=0, le=DAY_S)
    webhook_timeout_s: float = Field(
        default=10.0, gt=0, le=HOUR_S, description="Per delivery attempt."
    )
    idempotency_max_body_bytes: int = Field(
        default=4 * 1024 * 1024,
        gt=0,
        # Stored base64 in a request body (4/3 of it), which MAX_BODY_BYTES must hold.
        le=MAX_BYTES // 2,
        description="Largest response stored to replay for an Idempotency-Key.",
    )

    replay_max_requests: int = Field(
        default=10_000,
        ge=1,
        le=100_000,
        description="Most requests one replay may select without a limit or sample.",
    )
    replay_request_timeout_s: float = Field(
        default=3600.0,
        gt=0,
        le=YEAR_S,
        description="Deadline of each replayed request (batch lane).",
    )
    replay_poll_interval_s: float = Field(
        default=0.5, gt=0, le=HOUR_S, description="How often running replays are looked for."
    )
    gateway_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        validation_alias=AliasChoices("SWITCHYARD_GATEWAY_PORT"),
        description="The gateway's port on this machine, which `gateway_url` defaults to "
        "when it is not set (8000 when neither is).",
    )
    # Declared after `gateway_port`, which its default reads (pydantic passes the fields
    # validated so far to a default factory that takes them).
    gateway_url: str = Field(
        default_factory=lambda data: f"http://127.0.0.1:{data.get('gateway_port') or 8000}",
        validation_alias=AliasChoices("SWITCHYARD_HISTORY_GATEWAY_URL", "SWITCHYARD_GATEWAY_URL"),
        description="A gateway, which admits each replayed request against the budgets and "
        "rate limits of whoever it is billed to (by default the gateway's port on this "
        "machine); empty: replays are sent without admission.",
    )

    @field_validator("gateway_url")
    @classmethod
    def _gateway_url(cls, value: str) -> str:
        """Empty turns admission of replays off; anything else must be an HTTP(S) URL."""
        return value if value == "" else http_url(value)

    @model_validator(mode="after")
    def _usable_database_url(self) -> Settings:
        # Refused here, before the server starts, not by the lifespan's first connection.
        check_database_url("history", self.database_url)
        return self

    @model_validator(mode="after")
    def _default_group(self) -> Settings:
        if not self.group:
            self.group = Topics(self.topic_prefix).group("history")
        return self

    @model_validator(mode="after")
    def _body_limit_holds_idempotency_responses(self) -> Settings:
        needed = (self.idempotency_max_body_bytes + 2) // 3 * 4 + 4096
        if self.max_body_bytes < needed:
            raise ValueError(
                f"SWITCHYARD_HISTORY_MAX_BODY_BYTES ({self.max_body_bytes}) must be at least "
                f"{needed} to accept Idempotency-Key responses of "
                f"SWITCHYARD_HISTORY_IDEMPOTENCY_MAX_BODY_BYTES ({self.idempotency_max_body_bytes})"
            )
        return self


class DatabaseSettings(CheckedSettings):
    """Only what the CLI and migrations need: the history database (and the default
    retention), without the service's secrets."""

    model_config = SettingsConfigDict(
        env_prefix="SWITCHYARD_HISTORY_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    database_url: str = Field(
        default="sqlite+aiosqlite:///.switchyard/history.db",
        validation_alias=AliasChoices("SWITCHYARD_HISTORY_DATABASE_URL", "DATABASE_URL"),
    )
    retention_days: int | None = Field(default=None, ge=1, le=MAX_RETENTION_DAYS)

    @model_validator(mode="after")
    def _usable_database_url(self) -> DatabaseSettings:
        # One line for every command (usage, retention...), not a driver's traceback.
        check_database_url("history", self.database_url)
        return self
