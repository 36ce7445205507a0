"""`history_requests`' token counts become 64-bit (`bigint`), as the usage rollups' are: a
count beyond 2**31 - 1 (an upstream may report one; the event contract takes up to
2**63 - 1) failed the row's write, so the request's outcome and usage were parked and it
expired. On PostgreSQL the type change rewrites the table (once, at upgrade); SQLite's
integers are 64-bit already, so there only the declared type changes.

Revision ID: 0010
Revises: 0009
Create Date: 2025-03-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "reasoning_tokens",
)


def _retype(old: sa.types.TypeEngine[int], new: sa.types.TypeEngine[int]) -> None:
    if op.get_bind().dialect.name == "sqlite":
        return  # SQLite stores every integer in up to 8 bytes whatever its declared type
    for column in COLUMNS:
        op.alter_column(
            "history_requests", column, type_=new, existing_type=old, existing_nullable=True
        )


def upgrade() -> None:
    """Widen every token count of `history_requests` to bigint."""
    _retype(sa.Integer(), sa.BigInteger())


def downgrade() -> None:
    """Narrow them back (fails if a row holds a count beyond 32 bits)."""
    _retype(sa.BigInteger(), sa.Integer())
