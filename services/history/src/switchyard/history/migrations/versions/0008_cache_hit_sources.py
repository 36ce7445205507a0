"""Cache hits know the request whose answer they reused: `history_requests.cache_source_request_id`
(what a hit saved is that request's cost, however late its usage is recorded), and each
cache entry keeps the digest of its answer (`history_cache_entries.response_digest`), by
which a hit's reply finds its entry. `history_cache_hit_pending` holds the hits linked
while their source's cost was not recorded yet, until the sweeper has marked their hours
for the usage rollup.

Revision ID: 0008
Revises: 0007
Create Date: 2025-03-15
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Add the two nullable columns (no table rewrite), the index by which a hit's reply
    finds its entry, and the table of hits waiting for their source's cost. A hit's source
    is read by its primary key, so the link needs no index of its own."""
    op.add_column(
        "history_requests", sa.Column("cache_source_request_id", sa.String(64), nullable=True)
    )
    op.add_column(
        "history_cache_entries", sa.Column("response_digest", sa.String(64), nullable=True)
    )
    op.create_index(
        "ix_history_cache_entries_tenant_digest",
        "history_cache_entries",
        ["tenant", "response_digest"],
    )
    op.create_table(
        "history_cache_hit_pending",
        sa.Column("hit_request_id", sa.String(64), nullable=False),
        sa.Column("source_request_id", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("linked_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("hit_request_id", name="pk_history_cache_hit_pending"),
    )


def downgrade() -> None:
    """Drop the table, the index and the columns."""
    op.drop_table("history_cache_hit_pending")
    op.drop_index("ix_history_cache_entries_tenant_digest", table_name="history_cache_entries")
    with op.batch_alter_table("history_cache_entries") as batch:
        batch.drop_column("response_digest")
    with op.batch_alter_table("history_requests") as batch:
        batch.drop_column("cache_source_request_id")
