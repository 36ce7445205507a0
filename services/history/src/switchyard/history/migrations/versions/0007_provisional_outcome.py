"""`history_requests.outcome_provisional`: marks the terminal status history gave a request
itself (the expiry sweeper's), which a real outcome from inference still replaces.

Revision ID: 0007
Revises: 0006
Create Date: 2025-03-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the nullable `outcome_provisional` column (no table rewrite)."""
    # Nullable, no default: adding it rewrites nothing, even on a large table.
    op.add_column("history_requests", sa.Column("outcome_provisional", sa.Boolean(), nullable=True))


def downgrade() -> None:
    """Drop `outcome_provisional`."""
    with op.batch_alter_table("history_requests") as batch:
        batch.drop_column("outcome_provisional")
