"""Event store and request projection.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON_DOCUMENT = sa.JSON(none_as_null=True).with_variant(
    postgresql.JSONB(none_as_null=True), "postgresql"
)
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create `history_events` (each event once, by id) and `history_requests` (one row per request)
    with their lookup indexes."""
    op.create_table(
        "history_events",
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("time", TIMESTAMP, nullable=False),
        sa.Column("schema_version", sa.Integer(), nullable=False),
        sa.Column("payload", JSON_DOCUMENT, nullable=False),
        sa.Column("recorded_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("event_id", name="pk_history_events"),
    )
    op.create_index("ix_history_events_request_id", "history_events", ["request_id"])

    op.create_table(
        "history_requests",
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=True),
        sa.Column("api_key_id", sa.String(128), nullable=True),
        sa.Column("model", sa.String(256), nullable=True),
        sa.Column("api", sa.String(32), nullable=True),
        sa.Column("priority", sa.String(32), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("request_body", JSON_DOCUMENT, nullable=True),
        sa.Column("response", JSON_DOCUMENT, nullable=True),
        sa.Column("error", JSON_DOCUMENT, nullable=True),
        sa.Column("provider", sa.String(128), nullable=True),
        sa.Column("deployment", sa.String(256), nullable=True),
        sa.Column("input_tokens", sa.Integer(), nullable=True),
        sa.Column("output_tokens", sa.Integer(), nullable=True),
        sa.Column("cost_usd", sa.Float(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("completed_at", TIMESTAMP, nullable=True),
        sa.Column("deadline", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("request_id", name="pk_history_requests"),
    )
    op.create_index(
        "ix_history_requests_tenant_user_created",
        "history_requests",
        ["tenant", "user_id", sa.text("created_at DESC"), sa.text("request_id DESC")],
    )
    op.create_index(
        "ix_history_requests_tenant_created",
        "history_requests",
        ["tenant", sa.text("created_at DESC"), sa.text("request_id DESC")],
    )


def downgrade() -> None:
    """Drop the event store and the request projection, with their indexes."""
    op.drop_index("ix_history_requests_tenant_created", table_name="history_requests")
    op.drop_index("ix_history_requests_tenant_user_created", table_name="history_requests")
    op.drop_table("history_requests")
    op.drop_index("ix_history_events_request_id", table_name="history_events")
    op.drop_table("history_events")
