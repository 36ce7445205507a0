"""The part of a request's prompt-cache writes kept an hour (Anthropic's `ttl: "1h"`,
priced apart): `cache_creation_1h_input_tokens` on `history_requests` (NULL on requests
recorded before) and on the usage rollups `history_usage_hourly` and
`history_usage_hourly_models` (0 on hours rolled up before; such writes were counted in
`cache_creation_input_tokens` only, and still are, as a part of it).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMN = "cache_creation_1h_input_tokens"
ROLLUPS = ("history_usage_hourly", "history_usage_hourly_models")


def upgrade() -> None:
    """Add the column: nullable on the requests, `0` by default on the rollups."""
    with op.batch_alter_table("history_requests") as batch:
        batch.add_column(sa.Column(COLUMN, sa.BigInteger(), nullable=True))
    for table in ROLLUPS:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column(COLUMN, sa.BigInteger(), server_default="0", nullable=False))


def downgrade() -> None:
    """Drop the column from the three tables."""
    for table in (*ROLLUPS, "history_requests"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column(COLUMN)
