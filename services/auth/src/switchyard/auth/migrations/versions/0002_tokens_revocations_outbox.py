"""Refresh-token families, the access-token blocklist, signing-key history and the
event outbox.

Revision ID: 0002
Revises: 0001
Create Date: 2025-02-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create `auth_token_families`, `auth_refresh_tokens`, `auth_revoked_tokens`,
    `auth_signing_keys` and `auth_outbox`, with their indexes."""
    op.create_table(
        "auth_token_families",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column(
            "user_id",
            sa.Text(),
            sa.ForeignKey(
                "auth_users.id", ondelete="CASCADE", name="fk_auth_token_families_user_id"
            ),
            nullable=False,
        ),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_reason", sa.String(32), nullable=True),
    )
    op.create_index("ix_auth_token_families_user_id", "auth_token_families", ["user_id"])
    op.create_table(
        "auth_refresh_tokens",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column(
            "family_id",
            sa.Text(),
            sa.ForeignKey(
                "auth_token_families.id",
                ondelete="CASCADE",
                name="fk_auth_refresh_tokens_family_id",
            ),
            nullable=False,
        ),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("token_hash", name="uq_auth_refresh_tokens_token_hash"),
    )
    op.create_index("ix_auth_refresh_tokens_family_id", "auth_refresh_tokens", ["family_id"])
    op.create_table(
        "auth_revoked_tokens",
        sa.Column("jti", sa.Text(), primary_key=True),
        sa.Column("user_id", sa.Text(), nullable=False),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
    )
    op.create_index("ix_auth_revoked_tokens_expires_at", "auth_revoked_tokens", ["expires_at"])
    op.create_table(
        "auth_signing_keys",
        sa.Column("kid", sa.String(128), primary_key=True),
        sa.Column("public_jwk", sa.JSON(), nullable=False),
        sa.Column("activated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "auth_outbox",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("key", sa.Text(), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_auth_outbox_published_at_id", "auth_outbox", ["published_at", "id"])


def downgrade() -> None:
    """Drop the tables revision 0002 created, with their indexes."""
    op.drop_index("ix_auth_outbox_published_at_id", table_name="auth_outbox")
    op.drop_table("auth_outbox")
    op.drop_table("auth_signing_keys")
    op.drop_index("ix_auth_revoked_tokens_expires_at", table_name="auth_revoked_tokens")
    op.drop_table("auth_revoked_tokens")
    op.drop_index("ix_auth_refresh_tokens_family_id", table_name="auth_refresh_tokens")
    op.drop_table("auth_refresh_tokens")
    op.drop_index("ix_auth_token_families_user_id", table_name="auth_token_families")
    op.drop_table("auth_token_families")
