"""Teams, tenant limits, and budget and rate-limit columns on teams, users and keys.

Revision ID: 0003
Revises: 0002
Create Date: 2025-03-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _limit_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("max_budget_usd", sa.Float(), nullable=True),
        sa.Column("budget_period", sa.String(8), nullable=True),
        sa.Column("budget_anchor_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("rpm_limit", sa.BigInteger(), nullable=True),
        sa.Column("tpm_limit", sa.BigInteger(), nullable=True),
        sa.Column("max_parallel_requests", sa.Integer(), nullable=True),
    ]


def upgrade() -> None:
    """Create `auth_tenants` and `auth_teams`, and add the limit columns and `team_id` to
    `auth_users` and `auth_api_keys` (batch mode on SQLite)."""
    op.create_table(
        "auth_tenants",
        sa.Column("tenant", sa.String(128), primary_key=True),
        *_limit_columns(),
        sa.Column("rate_limit_failure_mode", sa.String(8), nullable=False),
        sa.Column("budget_failure_mode", sa.String(8), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "rate_limit_failure_mode IN ('open', 'closed') "
            "AND budget_failure_mode IN ('open', 'closed')",
            name="ck_auth_tenants_failure_modes",
        ),
    )
    op.create_table(
        "auth_teams",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        *_limit_columns(),
        sa.Column("allowed_models", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("tenant", "name", name="uq_auth_teams_tenant_name"),
    )
    op.create_index("ix_auth_teams_tenant", "auth_teams", ["tenant"])
    for table, fk in (
        ("auth_users", "fk_auth_users_team_id"),
        ("auth_api_keys", "fk_auth_api_keys_team_id"),
    ):
        with op.batch_alter_table(table) as batch:
            for column in _limit_columns():
                batch.add_column(column)
            batch.add_column(sa.Column("team_id", sa.Text(), nullable=True))
            batch.create_foreign_key(fk, "auth_teams", ["team_id"], ["id"], ondelete="SET NULL")


def downgrade() -> None:
    """Drop `team_id` and the limit columns of users and keys, then `auth_teams` and
    `auth_tenants`."""
    for table, fk in (
        ("auth_api_keys", "fk_auth_api_keys_team_id"),
        ("auth_users", "fk_auth_users_team_id"),
    ):
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(fk, type_="foreignkey")
            batch.drop_column("team_id")
            for column in reversed(_limit_columns()):
                batch.drop_column(column.name)
    op.drop_index("ix_auth_teams_tenant", table_name="auth_teams")
    op.drop_table("auth_teams")
    op.drop_table("auth_tenants")
