"""The response cache opt-in of teams and API keys: `cache_enabled` and `cache_ttl_s` on
`auth_teams` and `auth_api_keys` (NULL: not set, the level above decides).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("auth_teams", "auth_api_keys")


def upgrade() -> None:
    """Add the nullable `cache_enabled` and `cache_ttl_s` columns to `auth_teams` and
    `auth_api_keys`."""
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("cache_enabled", sa.Boolean(), nullable=True))
            batch.add_column(sa.Column("cache_ttl_s", sa.Integer(), nullable=True))


def downgrade() -> None:
    """Drop `cache_enabled` and `cache_ttl_s` from `auth_teams` and `auth_api_keys`."""
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("cache_ttl_s")
            batch.drop_column("cache_enabled")
