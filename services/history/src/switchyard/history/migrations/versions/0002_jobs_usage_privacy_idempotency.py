"""Jobs, webhooks, tenant settings (privacy, retention), Idempotency-Key claims, and the
indexes the history filters, the usage report, the expiry sweeper and the purge need.

Revision ID: 0002
Revises: 0001
Create Date: 2025-02-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)


def _is_postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    """Create the webhook, tenant settings, idempotency and usage rollup tables and the indexes of
    the history filters, the usage report, the expiry sweeper and the purge."""
    op.create_table(
        "history_webhooks",
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", TIMESTAMP, nullable=False),
        sa.Column("last_attempt_at", TIMESTAMP, nullable=True),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("delivered_at", TIMESTAMP, nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("request_id", name="pk_history_webhooks"),
    )
    op.create_index(
        "ix_history_webhooks_due",
        "history_webhooks",
        ["next_attempt_at"],
        postgresql_where=sa.text("status = 'pending'"),
        sqlite_where=sa.text("status = 'pending'"),
    )

    op.create_table(
        "history_tenant_settings",
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("store_content", sa.Boolean(), nullable=False, server_default=sa.true()),
        sa.Column("retention_days", sa.Integer(), nullable=True),
        sa.Column("webhook_secret", sa.String(128), nullable=True),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("tenant", name="pk_history_tenant_settings"),
    )

    op.create_table(
        "history_idempotency_keys",
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("endpoint", sa.String(128), nullable=False),
        sa.Column("claim_token", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("content_type", sa.String(128), nullable=True),
        sa.Column("response_body", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("locked_until", TIMESTAMP, nullable=False),
        sa.Column("completed_at", TIMESTAMP, nullable=True),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "key", name="pk_history_idempotency_keys"),
    )
    op.create_index(
        "ix_history_idempotency_keys_expires_at", "history_idempotency_keys", ["expires_at"]
    )

    op.create_table(
        "history_usage_hourly",
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("hour", TIMESTAMP, nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("api_key_id", sa.String(128), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        *[
            sa.Column(name, sa.BigInteger(), nullable=False)
            for name in (
                "requests",
                "completed",
                "errors",
                "cancelled",
                "input_tokens",
                "output_tokens",
            )
        ],
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint(
            "tenant", "hour", "user_id", "api_key_id", "model", name="pk_history_usage_hourly"
        ),
    )
    op.create_index("ix_history_usage_hourly_hour", "history_usage_hourly", ["hour"])
    op.create_index(
        "ix_history_usage_hourly_user", "history_usage_hourly", ["tenant", "user_id", "hour"]
    )
    op.create_index(
        "ix_history_usage_hourly_api_key", "history_usage_hourly", ["tenant", "api_key_id", "hour"]
    )
    op.create_table(
        "history_usage_hourly_models",
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("hour", TIMESTAMP, nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        *[
            sa.Column(name, sa.BigInteger(), nullable=False)
            for name in (
                "requests",
                "completed",
                "errors",
                "cancelled",
                "input_tokens",
                "output_tokens",
            )
        ],
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "hour", "model", name="pk_history_usage_hourly_models"),
    )
    op.create_index("ix_history_usage_hourly_models_hour", "history_usage_hourly_models", ["hour"])
    op.create_table(
        "history_usage_dirty",
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("hour", TIMESTAMP, nullable=False),
        sa.Column("marked_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "hour", name="pk_history_usage_dirty"),
    )
    op.create_index("ix_history_usage_dirty_hour", "history_usage_dirty", ["hour"])
    # Requests recorded before this migration: every hour of theirs is computed once by
    # the service (reports read those hours from the requests until then).
    if _is_postgres():
        op.execute(
            "INSERT INTO history_usage_dirty (tenant, hour, marked_at) "
            "SELECT DISTINCT tenant, date_trunc('hour', created_at AT TIME ZONE 'UTC') "
            "AT TIME ZONE 'UTC', now() - interval '1 hour' FROM history_requests"
        )
    else:
        op.execute(
            "INSERT INTO history_usage_dirty (tenant, hour, marked_at) "
            "SELECT DISTINCT tenant, substr(created_at, 1, 13) || ':00:00.000000', "
            "'2000-01-01 00:00:00.000000' FROM history_requests"
        )

    # History filters: each keeps "newest first" an index scan for its filter.
    for name, column in (
        ("ix_history_requests_tenant_status_created", "status"),
        ("ix_history_requests_tenant_model_created", "model"),
        ("ix_history_requests_tenant_api_key_created", "api_key_id"),
    ):
        op.create_index(
            name,
            "history_requests",
            ["tenant", column, sa.text("created_at DESC"), sa.text("request_id DESC")],
        )
    op.create_index(
        "ix_history_requests_jobs",
        "history_requests",
        ["tenant", "user_id", sa.text("created_at DESC"), sa.text("request_id DESC")],
        postgresql_where=sa.text("priority = 'batch'"),
        sqlite_where=sa.text("priority = 'batch'"),
    )
    op.create_index(
        "ix_history_requests_pending_deadline",
        "history_requests",
        ["deadline"],
        postgresql_where=sa.text("status = 'pending'"),
        sqlite_where=sa.text("status = 'pending'"),
    )
    if _is_postgres():
        # Rows arrive in time order, so block-range indexes make the retention purge's
        # range scans cheap for almost no write cost.
        op.create_index(
            "ix_history_requests_created_brin",
            "history_requests",
            ["created_at"],
            postgresql_using="brin",
        )
        op.create_index(
            "ix_history_events_time_brin", "history_events", ["time"], postgresql_using="brin"
        )
        # Event payloads are archived as the JSON text they arrived as: json, unlike jsonb,
        # costs no re-encoding on the write path (the history consumer's hottest statement).
        op.alter_column(
            "history_events",
            "payload",
            type_=sa.JSON(),
            postgresql_using="payload::json",
            existing_nullable=False,
        )
        # Leave room on each page so most projection updates stay heap-only (HOT).
        op.execute("ALTER TABLE history_requests SET (fillfactor = 85)")


def downgrade() -> None:
    """Drop what this revision added and restore the earlier column types and storage settings."""
    if _is_postgres():
        op.alter_column(
            "history_events",
            "payload",
            type_=postgresql.JSONB(),
            postgresql_using="payload::jsonb",
            existing_nullable=False,
        )
        op.execute("ALTER TABLE history_requests RESET (fillfactor)")
        op.drop_index("ix_history_events_time_brin", table_name="history_events")
        op.drop_index("ix_history_requests_created_brin", table_name="history_requests")
    op.drop_index("ix_history_requests_pending_deadline", table_name="history_requests")
    op.drop_index("ix_history_requests_jobs", table_name="history_requests")
    for name in (
        "ix_history_requests_tenant_api_key_created",
        "ix_history_requests_tenant_model_created",
        "ix_history_requests_tenant_status_created",
    ):
        op.drop_index(name, table_name="history_requests")
    op.drop_index("ix_history_usage_dirty_hour", table_name="history_usage_dirty")
    op.drop_table("history_usage_dirty")
    op.drop_index("ix_history_usage_hourly_models_hour", table_name="history_usage_hourly_models")
    op.drop_table("history_usage_hourly_models")
    op.drop_index("ix_history_usage_hourly_api_key", table_name="history_usage_hourly")
    op.drop_index("ix_history_usage_hourly_user", table_name="history_usage_hourly")
    op.drop_index("ix_history_usage_hourly_hour", table_name="history_usage_hourly")
    op.drop_table("history_usage_hourly")
    op.drop_index("ix_history_idempotency_keys_expires_at", table_name="history_idempotency_keys")
    op.drop_table("history_idempotency_keys")
    op.drop_table("history_tenant_settings")
    op.drop_index("ix_history_webhooks_due", table_name="history_webhooks")
    op.drop_table("history_webhooks")
