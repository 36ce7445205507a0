"""The fleet's limit ledger: counters, the replicas' leases, and replica heartbeats; on
PostgreSQL also the `governance_grant` function (one round trip per grant).

Revision ID: 0001
Revises:
Create Date: 2025-03-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the limit ledger's counter, lease and replica tables, and on PostgreSQL the
    `governance_grant` function."""
    op.create_table(
        "governance_counters",
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        # Epoch seconds, so Python and SQL compare windows exactly.
        sa.Column("window_start", sa.Float(53), nullable=False),
        sa.Column("window_end", sa.Float(53), nullable=True),
        sa.Column("limit_value", sa.Float(53), nullable=False),
        sa.Column("committed", sa.Float(53), nullable=False),
        sa.Column("spent", sa.Float(53), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("scope", "kind", name="pk_governance_counters"),
    )
    op.create_table(
        "governance_leases",
        sa.Column("replica", sa.Text(), nullable=False),
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("window_start", sa.Float(53), nullable=False),
        sa.Column("held", sa.Float(53), nullable=False),
        sa.PrimaryKeyConstraint("replica", "scope", "kind", name="pk_governance_leases"),
    )
    op.create_table(
        "governance_replicas",
        sa.Column("replica", sa.Text(), primary_key=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
    )
    if op.get_bind().dialect.name == "postgresql":
        from switchyard.gateway.governance.postgres import GRANT_FUNCTION

        op.execute(GRANT_FUNCTION)


def downgrade() -> None:
    """Drop the ledger's function and tables."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS governance_grant(text, jsonb)")
    op.drop_table("governance_replicas")
    op.drop_table("governance_leases")
    op.drop_table("governance_counters")
