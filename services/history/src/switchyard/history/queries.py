"""Reading request history: a caller's requests newest first, and one request by id.

Every query is scoped to the caller's tenant, so another tenant's request is simply not
found. An ordinary user sees only their own requests; the `admin` role sees the whole
tenant. A request appears once its `chat.requested` event is stored (a row that so far
only holds a reply that overtook its request is not shown yet).

Pagination is keyset-based on (created_at, request_id), newest first, with an opaque
cursor, so pages stay stable while new requests arrive.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select, tuple_
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.history.models import requests_table

ADMIN_ROLE = "admin"
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100


@dataclass(frozen=True)
class Caller:
    """The identity the gateway verified and passed on."""

    tenant: str
    user_id: str
    role: str

    @property
    def sees_whole_tenant(self) -> bool:
        return self.role == ADMIN_ROLE


class InvalidCursorError(ValueError):
    """A pagination cursor this service did not issue (or one that was altered)."""


@dataclass(frozen=True)
class Page:
    items: list[dict[str, Any]]
    next_cursor: str | None


def encode_cursor(created_at: datetime, request_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), request_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created_at_text, request_id = json.loads(base64.urlsafe_b64decode(padded.encode()))
        created_at = datetime.fromisoformat(created_at_text)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise InvalidCursorError("cursor is not one returned by this API") from exc
    if created_at.tzinfo is None or not isinstance(request_id, str):
        raise InvalidCursorError("cursor is not one returned by this API")
    return created_at, request_id


class HistoryQueries:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    def _visible_to(self, caller: Caller) -> Select:
        query = select(requests_table).where(
            requests_table.c.tenant == caller.tenant,
            requests_table.c.request_body.is_not(None),
        )
        if not caller.sees_whole_tenant:
            query = query.where(requests_table.c.user_id == caller.user_id)
        return query

    async def list_requests(
        self, caller: Caller, *, limit: int = DEFAULT_PAGE_SIZE, cursor: str | None = None
    ) -> Page:
        """The caller's requests, newest first. Raises InvalidCursorError for a bad cursor."""
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise ValueError(f"limit must be between 1 and {MAX_PAGE_SIZE}")
        order_key = tuple_(requests_table.c.created_at, requests_table.c.request_id)
        query = self._visible_to(caller)
        if cursor is not None:
            # A plain tuple on the right takes the column types (UTC handling on SQLite).
            query = query.where(order_key < decode_cursor(cursor))
        # One extra row tells whether there is a next page without a count query.
        query = query.order_by(
            requests_table.c.created_at.desc(), requests_table.c.request_id.desc()
        ).limit(limit + 1)
        async with self._engine.connect() as connection:
            rows = [dict(row) for row in (await connection.execute(query)).mappings()]
        page, more = rows[:limit], len(rows) > limit
        next_cursor = (
            encode_cursor(page[-1]["created_at"], page[-1]["request_id"]) if more else None
        )
        return Page(items=page, next_cursor=next_cursor)

    async def get_request(self, caller: Caller, request_id: str) -> dict[str, Any] | None:
        query = self._visible_to(caller).where(requests_table.c.request_id == request_id)
        async with self._engine.connect() as connection:
            row = (await connection.execute(query)).mappings().first()
        return dict(row) if row is not None else None
