"""OpenAI Responses API state: the input items of each response (the conversation it
continued, then its own input), and when a response was deleted through the API.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add `input_items` (JSON) and `response_deleted_at` to `history_requests`."""
    json_document = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
    with op.batch_alter_table("history_requests") as table:
        table.add_column(sa.Column("input_items", json_document, nullable=True))
        table.add_column(
            sa.Column("response_deleted_at", sa.DateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    """Drop `response_deleted_at` and `input_items`."""
    with op.batch_alter_table("history_requests") as table:
        table.drop_column("response_deleted_at")
        table.drop_column("input_items")
