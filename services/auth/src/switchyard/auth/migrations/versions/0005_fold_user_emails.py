"""Stored emails in the form accounts are now found by: compatibility forms folded (NFKC,
so a full-width `ａｌｉｃｅ@acme.test` is `alice@acme.test`), lower-cased and without a
trailing dot (`acme.test.`), as `names.fold_email` does. Before, emails were stored
composed (NFC) and lower-cased: only emails with such forms or a trailing dot change.

An email whose folded form is another account's is left as it is and named in the log:
its address reads as the other account's, so it no longer signs in with a password (its
API keys keep working); `switchyard users ... --email` still finds it by its stored
address, typed exactly.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 00:00:00
"""

from __future__ import annotations

import logging
import unicodedata
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("alembic.runtime.migration")

USERS = sa.table(
    "auth_users",
    sa.column("id", sa.String),
    sa.column("email", sa.String),
    sa.column("created_at", sa.DateTime),
)


def _folded(email: str) -> str:
    # The rule of this revision, kept here as it is: `names.fold_email` may change later.
    folded = unicodedata.normalize("NFKC", email.strip()).lower()
    return unicodedata.normalize("NFKC", folded).removesuffix(".")


def upgrade() -> None:
    """Rewrite every non-ASCII email of `auth_users` in its folded form, unless another
    account already has that form."""
    bind = op.get_bind()
    # Oldest first: of two addresses folding to one free form, the older account gets it.
    rows = bind.execute(
        sa.select(USERS.c.id, USERS.c.email).order_by(USERS.c.created_at, USERS.c.id)
    ).all()
    taken = {email for _, email in rows}
    for user_id, email in rows:
        if email.isascii() and not email.endswith("."):
            continue
        folded = _folded(email)
        if folded == email:
            continue
        if folded in taken:
            log.warning(
                "auth_users %s keeps its email %r: its folded form %r is another account's",
                user_id,
                email,
                folded,
            )
            continue
        bind.execute(sa.update(USERS).where(USERS.c.id == user_id).values(email=folded))
        taken.discard(email)
        taken.add(folded)


def downgrade() -> None:
    """Nothing to undo: a folded email is composed and lower-cased, as the earlier
    revision stores emails."""
