"""`history_webhooks.revision`: how many times the outcome of a job changed after its
webhook may already have been sent (history's provisional expiry replaced by the real
outcome), so the new outcome is delivered under a delivery id of its own.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the column, 0 for every existing row (a constant default: no table rewrite on
    PostgreSQL)."""
    op.add_column(
        "history_webhooks",
        sa.Column("revision", sa.Integer(), nullable=False, server_default="0"),
    )


def downgrade() -> None:
    """Drop the column."""
    with op.batch_alter_table("history_webhooks") as batch:
        batch.drop_column("revision")
