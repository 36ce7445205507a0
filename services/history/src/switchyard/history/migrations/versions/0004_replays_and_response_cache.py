"""Replays and the response cache: cache hits, their savings and the replayed original on
each request (and hits and savings in the usage rollup); per-tenant cache settings; the
cache entries; replays and their items.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROLLUP_TABLES = ("history_usage_hourly", "history_usage_hourly_models")
TIMESTAMP = sa.DateTime(timezone=True)
JSON_DOCUMENT = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    """Add the cache and replay columns to requests, the usage rollup and tenant settings, and
    create the cache entry, replay and replay item tables."""
    # Nullable, no default: adding them rewrites nothing, even on a large table.
    with op.batch_alter_table("history_requests") as table:
        table.add_column(sa.Column("cache_hit", sa.Boolean(), nullable=True))
        table.add_column(sa.Column("saved_cost_usd", sa.Float(), nullable=True))
        table.add_column(sa.Column("replay_of", sa.String(64), nullable=True))
    for rollup in ROLLUP_TABLES:
        with op.batch_alter_table(rollup) as table:
            table.add_column(
                sa.Column("cache_hits", sa.BigInteger(), nullable=False, server_default="0")
            )
            table.add_column(
                sa.Column("cache_saved_usd", sa.Float(), nullable=False, server_default="0")
            )
    with op.batch_alter_table("history_tenant_settings") as table:
        table.add_column(sa.Column("cache_enabled", sa.Boolean(), nullable=True))
        table.add_column(sa.Column("cache_ttl_s", sa.Integer(), nullable=True))

    op.create_table(
        "history_cache_entries",
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("api", sa.String(32), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("response", JSON_DOCUMENT, nullable=False),
        sa.Column("stream_events", JSON_DOCUMENT, nullable=True),
        sa.Column("source_request_id", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("expires_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("tenant", "key", name="pk_history_cache_entries"),
    )
    op.create_index("ix_history_cache_entries_expires_at", "history_cache_entries", ["expires_at"])
    op.create_table(
        "history_replays",
        sa.Column("replay_id", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("api_key_id", sa.String(128), nullable=True),
        sa.Column("to_model", sa.String(256), nullable=False),
        sa.Column("selection", JSON_DOCUMENT, nullable=False),
        sa.Column("rate_count", sa.Integer(), nullable=False),
        sa.Column("rate_period_s", sa.Float(), nullable=False),
        sa.Column("bill_to", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("runner", sa.String(128), nullable=True),
        sa.Column("lease_until", TIMESTAMP, nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.Column("completed_at", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("replay_id", name="pk_history_replays"),
    )
    op.create_index(
        "ix_history_replays_tenant_created",
        "history_replays",
        ["tenant", sa.text("created_at DESC")],
    )
    op.create_index("ix_history_replays_status", "history_replays", ["status"])
    op.create_table(
        "history_replay_items",
        sa.Column("replay_id", sa.String(64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("original_request_id", sa.String(64), nullable=False),
        sa.Column("replay_request_id", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("attempted_at", TIMESTAMP, nullable=True),
        sa.Column("settled_at", TIMESTAMP, nullable=True),
        sa.Column("exact_match", sa.Boolean(), nullable=True),
        sa.Column("similarity", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("replay_id", "position", name="pk_history_replay_items"),
    )
    op.create_index(
        "ix_history_replay_items_state",
        "history_replay_items",
        ["replay_id", "state", "position"],
    )


def downgrade() -> None:
    """Drop the replay and cache tables and the cache columns of the requests, rollup and tenant
    settings."""
    op.drop_table("history_replay_items")
    op.drop_table("history_replays")
    op.drop_table("history_cache_entries")
    with op.batch_alter_table("history_tenant_settings") as table:
        table.drop_column("cache_ttl_s")
        table.drop_column("cache_enabled")
    for rollup in ROLLUP_TABLES:
        with op.batch_alter_table(rollup) as table:
            table.drop_column("cache_saved_usd")
            table.drop_column("cache_hits")
    with op.batch_alter_table("history_requests") as table:
        table.drop_column("replay_of")
        table.drop_column("saved_cost_usd")
        table.drop_column("cache_hit")
