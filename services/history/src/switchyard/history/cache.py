"""The response cache's shared store (`history_cache_entries`): answers the gateways
computed, per tenant and cache key, reused by every gateway replica until they expire.

The gateway decides what is cacheable and computes the key (the hash of the request's
normalised body, see the gateway's `cache` module); this store only keeps entries:

- `get(tenant, key)`: the live entry, with what the request that produced it cost
  (`source_cost_usd`, from its usage record; None while that is not recorded yet), which
  is what a hit saves;
- `put(...)`: store or replace an entry (a tenant storing metadata only keeps none: the
  caller checks `TenantSettingsView.store_content` first);
- `purge(...)`: delete entries (all, one tenant's, one model's, or only expired ones);
  the sweeper drops expired entries periodically.

Entries are scoped by tenant: the same key of another tenant is another entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.common.db import dialect_insert
from switchyard.history.models import cache_entries_table, requests_table


@dataclass(frozen=True)
class CachedAnswer:
    """A live response cache entry: the stored reply (`response`, or the SSE events of a streamed
    one in `stream_events`) of `source_request_id`, what making it cost (USD, None if unknown) and
    when it was created and expires (aware UTC)."""

    api: str
    model: str
    response: dict[str, Any]
    stream_events: list[dict[str, Any]] | None
    source_request_id: str
    source_cost_usd: float | None
    created_at: datetime
    expires_at: datetime

    def public(self) -> dict[str, Any]:
        """The entry as the internal cache API returns it (JSON-ready; times in ISO 8601)."""
        return {
            "api": self.api,
            "model": self.model,
            "response": self.response,
            "stream_events": self.stream_events,
            "source_request_id": self.source_request_id,
            "source_cost_usd": self.source_cost_usd,
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
        }


class CacheStore:
    """The tenant-scoped response cache entries in the history database."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._dialect = engine.dialect.name

    async def get(self, tenant: str, key: str, now: datetime | None = None) -> CachedAnswer | None:
        """The tenant's live entry for `key`, or None (absent or expired)."""
        c, r = cache_entries_table.c, requests_table.c
        query = (
            select(
                c.api,
                c.model,
                c.response,
                c.stream_events,
                c.source_request_id,
                c.created_at,
                c.expires_at,
                r.cost_usd,
            )
            .select_from(
                cache_entries_table.outerjoin(requests_table, r.request_id == c.source_request_id)
            )
            .where(c.tenant == tenant, c.key == key, c.expires_at > (now or datetime.now(UTC)))
        )
        async with self._engine.connect() as connection:
            row = (await connection.execute(query)).first()
        if row is None:
            return None
        return CachedAnswer(
            api=row.api,
            model=row.model,
            response=row.response,
            stream_events=row.stream_events,
            source_request_id=row.source_request_id,
            source_cost_usd=row.cost_usd,
            created_at=row.created_at,
            expires_at=row.expires_at,
        )

    async def put(
        self,
        tenant: str,
        key: str,
        *,
        api: str,
        model: str,
        response: dict[str, Any],
        stream_events: list[dict[str, Any]] | None,
        source_request_id: str,
        ttl_s: float,
        now: datetime | None = None,
    ) -> datetime:
        """Store (or replace) the entry; returns when it expires."""
        now = now or datetime.now(UTC)
        expires_at = now + timedelta(seconds=ttl_s)
        size = len(orjson.dumps(response)) + (
            len(orjson.dumps(stream_events)) if stream_events is not None else 0
        )
        values = {
            "tenant": tenant,
            "key": key,
            "api": api,
            "model": model,
            "response": response,
            "stream_events": stream_events,
            "source_request_id": source_request_id,
            "size_bytes": size,
            "created_at": now,
            "expires_at": expires_at,
        }
        insert = dialect_insert(cache_entries_table, self._dialect).values(values)
        async with self._engine.begin() as connection:
            await connection.execute(
                insert.on_conflict_do_update(
                    index_elements=["tenant", "key"],
                    set_={
                        name: insert.excluded[name]
                        for name in values
                        if name not in ("tenant", "key")
                    },
                )
            )
        return expires_at

    async def purge(
        self,
        *,
        tenant: str | None = None,
        model: str | None = None,
        expired_only: bool = False,
        now: datetime | None = None,
    ) -> int:
        """Delete entries (of one tenant and/or model, or only expired ones); returns how many."""
        c = cache_entries_table.c
        statement = delete(cache_entries_table)
        if tenant is not None:
            statement = statement.where(c.tenant == tenant)
        if model is not None:
            statement = statement.where(c.model == model)
        if expired_only:
            statement = statement.where(c.expires_at <= (now or datetime.now(UTC)))
        async with self._engine.begin() as connection:
            result = await connection.execute(statement)
        return result.rowcount or 0
