"""A response cache entry keeps the response headers that describe its body
(`history_cache_entries.headers`, e.g. `x-switchyard-token-count`: whether a token count
is the model's own or an estimate), so a hit answers with them too.

Revision ID: 0011
Revises: 0010
Create Date: 2025-03-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON_DOCUMENT = sa.JSON(none_as_null=True).with_variant(
    postgresql.JSONB(none_as_null=True), "postgresql"
)


def upgrade() -> None:
    """Add the nullable column (no table rewrite; entries stored before it have none)."""
    op.add_column("history_cache_entries", sa.Column("headers", JSON_DOCUMENT, nullable=True))


def downgrade() -> None:
    """Drop the column."""
    with op.batch_alter_table("history_cache_entries") as batch:
        batch.drop_column("headers")
