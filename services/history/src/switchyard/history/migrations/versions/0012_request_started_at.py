"""When inference began to run a request of the batch lane (`history_requests.started_at`,
from `chat.started`), so a background response shows `in_progress` once it runs.

Revision ID: 0012
Revises: 0011
Create Date: 2025-04-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the nullable column (no table rewrite; rows recorded before it have none)."""
    op.add_column(
        "history_requests", sa.Column("started_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    """Drop the column."""
    with op.batch_alter_table("history_requests") as batch:
        batch.drop_column("started_at")
