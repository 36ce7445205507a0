"""Create auth_users and auth_api_keys.

Revision ID: 0001
Revises:
Create Date: 2025-01-01 00:00:00
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
    """Create `auth_users` (unique email, tenant index) and `auth_api_keys` (unique key hash,
    user index)."""
    op.create_table(
        "auth_users",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("email", sa.String(320), nullable=False),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=True),
        sa.Column("disabled", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("email", name="uq_auth_users_email"),
        sa.CheckConstraint("role IN ('admin', 'member')", name="ck_auth_users_role"),
    )
    op.create_index("ix_auth_users_tenant", "auth_users", ["tenant"])
    op.create_table(
        "auth_api_keys",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column(
            "user_id",
            sa.Text(),
            sa.ForeignKey("auth_users.id", ondelete="CASCADE", name="fk_auth_api_keys_user_id"),
            nullable=False,
        ),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("allowed_models", sa.JSON(), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("secret_hash", name="uq_auth_api_keys_secret_hash"),
    )
    op.create_index("ix_auth_api_keys_user_id", "auth_api_keys", ["user_id"])


def downgrade() -> None:
    """Drop `auth_api_keys` and `auth_users` with their indexes."""
    op.drop_index("ix_auth_api_keys_user_id", table_name="auth_api_keys")
    op.drop_table("auth_api_keys")
    op.drop_index("ix_auth_users_tenant", table_name="auth_users")
    op.drop_table("auth_users")
