"""An index of the auth events that revoke an API key or disable (or enable) a user, by
time: the sweeper cancels the unfinished jobs of such credentials from them, and they are
a few rows among every event history keeps, so only they are indexed (a partial index: no
cost to the writes of other events).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_WHERE = "type IN ('auth.api_key_revoked', 'auth.user_disabled', 'auth.user_enabled')"


def upgrade() -> None:
    """Create the partial index (PostgreSQL and SQLite alike)."""
    op.create_index(
        "ix_history_events_credential_changes",
        "history_events",
        ["time"],
        postgresql_where=sa.text(_WHERE),
        sqlite_where=sa.text(_WHERE),
    )


def downgrade() -> None:
    """Drop it."""
    op.drop_index("ix_history_events_credential_changes", table_name="history_events")
