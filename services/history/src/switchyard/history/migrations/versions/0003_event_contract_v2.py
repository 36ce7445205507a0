"""Event contract version 2: the API of each request as a `ClientAPI` value, the API the
client called, the API its deployment was called with, and cache and reasoning tokens
(on each request and in the usage rollup).

Rows recorded from version 1 events are migrated the way `decode_event` upgrades those
events (`_upcast_v1`): version 1 bodies and replies were always in OpenAI's shapes, so
their `api` becomes `openai.chat_completions` (or `openai.embeddings`), including for
Anthropic clients, whose requests travelled translated; what the client called is kept
in `client_api` (`anthropic.messages` for them). Version 1 had no `operation` column in
this table: a request is taken for an embeddings one when its body has `input` and no
`messages`, or its reply is a `list` (the metadata-only form of a body keeps neither,
its reply keeps `object`). Their cache and reasoning tokens stay unknown (NULL).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TOKEN_COLUMNS = ("cache_read_input_tokens", "cache_creation_input_tokens", "reasoning_tokens")
ROLLUP_TABLES = ("history_usage_hourly", "history_usage_hourly_models")


def _is_postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def _embeddings_condition() -> str:
    """SQL true for a version 1 row of an embeddings request."""
    if _is_postgres():
        return (
            "((request_body -> 'input' IS NOT NULL AND request_body -> 'messages' IS NULL)"
            " OR response ->> 'object' = 'list')"
        )
    return (
        "((json_type(request_body, '$.input') IS NOT NULL"
        " AND json_type(request_body, '$.messages') IS NULL)"
        " OR json_extract(response, '$.object') = 'list')"
    )


def upgrade() -> None:
    """Add the version 2 API and token columns and migrate the version 1 rows (module docstring)."""
    with op.batch_alter_table("history_requests") as table:
        table.add_column(sa.Column("client_api", sa.String(32), nullable=True))
        table.add_column(sa.Column("upstream_api", sa.String(32), nullable=True))
        for name in TOKEN_COLUMNS:
            table.add_column(sa.Column(name, sa.Integer(), nullable=True))
    for rollup in ROLLUP_TABLES:
        with op.batch_alter_table(rollup) as table:
            for name in TOKEN_COLUMNS:
                table.add_column(
                    sa.Column(name, sa.BigInteger(), nullable=False, server_default="0")
                )
    # Every SET expression reads the row as it was, so `client_api` sees the old `api`.
    embeddings = _embeddings_condition()
    op.execute(
        "UPDATE history_requests SET "
        "client_api = CASE WHEN api = 'anthropic' THEN 'anthropic.messages' "
        f"WHEN {embeddings} THEN 'openai.embeddings' ELSE 'openai.chat_completions' END, "
        f"api = CASE WHEN api = 'openai' AND {embeddings} THEN 'openai.embeddings' "
        "ELSE 'openai.chat_completions' END "
        "WHERE api IN ('openai', 'anthropic')"
    )


def downgrade() -> None:
    """Back to version 1: `api` names only the client's vendor again; the new columns go."""
    # Version 1 named only the vendor whose API the client called.
    op.execute(
        "UPDATE history_requests SET api = CASE "
        "WHEN coalesce(client_api, api) LIKE 'anthropic.%' THEN 'anthropic' ELSE 'openai' END "
        "WHERE api IS NOT NULL"
    )
    for rollup in ROLLUP_TABLES:
        with op.batch_alter_table(rollup) as table:
            for name in TOKEN_COLUMNS:
                table.drop_column(name)
    with op.batch_alter_table("history_requests") as table:
        for name in reversed(TOKEN_COLUMNS):
            table.drop_column(name)
        table.drop_column("upstream_api")
        table.drop_column("client_api")
