"""An Idempotency-Key's recorded response keeps the headers that describe its body
(`history_idempotency_keys.response_headers`, e.g. `x-switchyard-token-count`: whether a
token count is the model's own or an estimate), so a replay answers with them too.

Revision ID: 0009
Revises: 0008
Create Date: 2025-03-20
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON_DOCUMENT = sa.JSON(none_as_null=True).with_variant(
    postgresql.JSONB(none_as_null=True), "postgresql"
)


def upgrade() -> None:
    """Add the nullable column (no table rewrite; keys recorded before it have none)."""
    op.add_column(
        "history_idempotency_keys", sa.Column("response_headers", JSON_DOCUMENT, nullable=True)
    )


def downgrade() -> None:
    """Drop the column."""
    with op.batch_alter_table("history_idempotency_keys") as batch:
        batch.drop_column("response_headers")
