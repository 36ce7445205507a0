"""Teams: the caller's team on each request (`team_id`, from `chat.requested` and
`usage.recorded`, event contract version 2), an index for the team filter, and the team as
a dimension of both usage rollup grains (part of their primary keys; '' for none).

Requests recorded before this migration get their team from the `chat.requested` event
the event store kept, or, for a request refused at admission (which has none), from its
`usage.recorded` (events published before teams existed have no team); the rollup hours of
every request that got one are marked for recomputation (reports read those hours from
the requests until the service has recomputed them).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-10
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Each rollup table and its primary key columns before this migration.
ROLLUP_KEYS = {
    "history_usage_hourly": ["tenant", "hour", "user_id", "api_key_id", "model"],
    "history_usage_hourly_models": ["tenant", "hour", "model"],
}


def _is_postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def _with_team(columns: list[str]) -> list[str]:
    """The key with `team_id` before `model`, as the models declare it."""
    return [*columns[:-1], "team_id", columns[-1]]


def upgrade() -> None:
    """Add `team_id` to requests and the rollup keys and backfill it (module docstring)."""
    with op.batch_alter_table("history_requests") as table:
        table.add_column(sa.Column("team_id", sa.String(128), nullable=True))
    op.create_index(
        "ix_history_requests_tenant_team_created",
        "history_requests",
        ["tenant", "team_id", sa.text("created_at DESC"), sa.text("request_id DESC")],
    )
    for name, key in ROLLUP_KEYS.items():
        with op.batch_alter_table(name) as table:
            table.add_column(
                sa.Column("team_id", sa.String(128), nullable=False, server_default="")
            )
            table.drop_constraint(f"pk_{name}", type_="primary")
            table.create_primary_key(f"pk_{name}", _with_team(key))
    op.create_index(
        "ix_history_usage_hourly_team", "history_usage_hourly", ["tenant", "team_id", "hour"]
    )

    # The team of requests already recorded, from their stored `chat.requested`.
    if _is_postgres():
        team = "(e.payload -> 'data' ->> 'team_id')"
        for event_type in ("chat.requested", "usage.recorded"):
            op.execute(
                f"UPDATE history_requests AS r SET team_id = {team} FROM history_events AS e "
                f"WHERE e.request_id = r.request_id AND e.type = '{event_type}' "
                f"AND r.team_id IS NULL AND {team} IS NOT NULL"
            )
        op.execute(
            "INSERT INTO history_usage_dirty (tenant, hour, marked_at) "
            "SELECT DISTINCT tenant, date_trunc('hour', created_at AT TIME ZONE 'UTC') "
            "AT TIME ZONE 'UTC', now() - interval '1 hour' FROM history_requests "
            "WHERE team_id IS NOT NULL "
            "ON CONFLICT (tenant, hour) DO NOTHING"
        )
    else:
        team = "json_extract(e.payload, '$.data.team_id')"
        for event_type in ("chat.requested", "usage.recorded"):
            op.execute(
                "UPDATE history_requests SET team_id = (SELECT "
                f"{team} FROM history_events AS e "
                "WHERE e.request_id = history_requests.request_id "
                f"AND e.type = '{event_type}' AND {team} IS NOT NULL LIMIT 1) "
                "WHERE team_id IS NULL AND request_id IN (SELECT request_id FROM "
                f"history_events WHERE type = '{event_type}')"
            )
        op.execute(
            "INSERT INTO history_usage_dirty (tenant, hour, marked_at) "
            "SELECT DISTINCT tenant, substr(created_at, 1, 13) || ':00:00.000000', "
            "'2000-01-01 00:00:00.000000' FROM history_requests WHERE team_id IS NOT NULL "
            "ON CONFLICT (tenant, hour) DO NOTHING"
        )


def _mark_every_hour_dirty() -> None:
    """Have the service recompute every hour of the rollup from the requests."""
    if _is_postgres():
        op.execute(
            "INSERT INTO history_usage_dirty (tenant, hour, marked_at) "
            "SELECT DISTINCT tenant, date_trunc('hour', created_at AT TIME ZONE 'UTC') "
            "AT TIME ZONE 'UTC', now() - interval '1 hour' FROM history_requests "
            "ON CONFLICT (tenant, hour) DO NOTHING"
        )
    else:
        op.execute(
            "INSERT INTO history_usage_dirty (tenant, hour, marked_at) "
            "SELECT DISTINCT tenant, substr(created_at, 1, 13) || ':00:00.000000', "
            "'2000-01-01 00:00:00.000000' FROM history_requests WHERE true "
            "ON CONFLICT (tenant, hour) DO NOTHING"
        )


def downgrade() -> None:
    """Remove the team from requests and the rollup (emptied, its hours marked for
    recomputation)."""
    # The rollup is derived from the requests: it is emptied and recomputed without teams.
    op.drop_index("ix_history_usage_hourly_team", table_name="history_usage_hourly")
    for name, key in ROLLUP_KEYS.items():
        op.execute(f"DELETE FROM {name}")
        with op.batch_alter_table(name) as table:
            table.drop_constraint(f"pk_{name}", type_="primary")
            table.drop_column("team_id")
            table.create_primary_key(f"pk_{name}", key)
    _mark_every_hour_dirty()
    op.drop_index("ix_history_requests_tenant_team_created", table_name="history_requests")
    with op.batch_alter_table("history_requests") as table:
        table.drop_column("team_id")
