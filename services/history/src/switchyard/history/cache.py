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

Entries are scoped by tenant: the same key of another tenant is another entry. A tenant
switching to metadata-only storage loses its entries at once (`tenants.py`): they hold
completions, the very content the setting says not to keep.

What a hit saved is the cost of the request whose answer it reused. The gateway says what
it knew when it answered (`saved_cost_usd` of its usage record, 0 while that cost was not
recorded yet), but a hit often comes moments after its source, before the source's usage
is recorded, and the events of different requests arrive in any order. So history links
each hit to its source itself (`link_hits`, as the recorder stores the hit's reply: the
reply is the entry's answer, found by its digest) and reports the source's cost as the
saving once it is known (`rollup.request_aggregates`); a source's usage recorded after its
hits marks their hours for the usage rollup to recompute (`hits_reusing`).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import bindparam, delete, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from switchyard.common.db import dialect_insert
from switchyard.common.events import ChatCompleted, EnvelopeFields
from switchyard.history.models import RequestStatus, cache_entries_table, requests_table

# How the gateway names the answerer of a hit in its reply (provider, deployment).
HIT_PROVIDER = "switchyard"
HIT_DEPLOYMENT = "response-cache"


def response_digest(response: dict[str, Any]) -> str:
    """SHA-256 (hex) of `response` as stable JSON (sorted keys): equal for equal answers,
    however their keys were ordered on the way."""
    return hashlib.sha256(orjson.dumps(response, option=orjson.OPT_SORT_KEYS)).hexdigest()


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
            "response_digest": response_digest(response),
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


def _is_hit_reply(event: EnvelopeFields) -> bool:
    return (
        isinstance(event, ChatCompleted)
        and event.data.provider == HIT_PROVIDER
        and event.data.deployment == HIT_DEPLOYMENT
    )


async def link_hits(
    connection: AsyncConnection, dialect: str, events: Iterable[EnvelopeFields]
) -> int:
    """Link the cache hits whose replies are among `events` (already merged into their
    rows, in this transaction) to the requests whose answers they reused; returns how many
    were linked. A hit whose entry is gone (purged, replaced, expired and swept before its
    reply was recorded) stays unlinked and keeps the saving the gateway reported.

    The source's row is written too (created as a placeholder if none of its events was
    recorded yet, else left as it is): that takes its row lock, which the recording of the
    source's usage takes as well, so of the two transactions the later one sees the
    other's work (the link, or the cost) and the hit's hour is marked for the rollup by
    whichever comes second."""
    hits: dict[tuple[str, str], list[str]] = defaultdict(list)
    for event in events:
        if _is_hit_reply(event):
            assert isinstance(event, ChatCompleted)
            hits[(event.tenant, response_digest(event.data.response))].append(event.request_id)
    if not hits:
        return 0
    c = cache_entries_table.c
    found = await connection.execute(
        select(c.tenant, c.response_digest, c.source_request_id).where(
            tuple_(c.tenant, c.response_digest).in_(sorted(hits))
        )
    )
    sources: dict[tuple[str, str], tuple[str, str]] = {}
    for tenant, digest, source in found:
        # Two keys with the very same answer: either source will do (the same answer).
        sources.setdefault((tenant, digest), (tenant, source))
    links = [
        {"hit_id": hit, "source_id": source}
        for pair, (tenant, source) in sources.items()
        for hit in hits[pair]
        if hit != source
    ]
    if not links:
        return 0
    now = datetime.now(UTC)
    placeholders = sorted(
        {(tenant, source) for tenant, source in sources.values()}, key=lambda pair: pair[1]
    )
    insert = dialect_insert(requests_table, dialect)
    await connection.execute(
        insert.on_conflict_do_update(
            index_elements=[requests_table.c.request_id],
            # A no-op update: it only takes the row's lock (see above).
            set_={"request_id": insert.excluded.request_id},
        ),
        [
            {
                "request_id": source,
                "tenant": tenant,
                "status": RequestStatus.PENDING.value,
                "created_at": now,
            }
            for tenant, source in placeholders
        ],
    )
    r = requests_table.c
    await connection.execute(
        requests_table.update()
        .where(r.request_id == bindparam("hit_id"))
        .values(cache_source_request_id=bindparam("source_id")),
        sorted(links, key=lambda link: link["hit_id"]),
    )
    return len(links)


async def hits_reusing(
    connection: AsyncConnection, request_ids: Sequence[str]
) -> list[tuple[str, datetime]]:
    """(tenant, created_at) of the recorded cache hits that reused the answer of one of
    `request_ids`: the rows whose reported saving changes when those requests' usage is
    recorded (for `rollup.mark_dirty`)."""
    if not request_ids:
        return []
    r = requests_table.c
    rows = await connection.execute(
        select(r.tenant, r.created_at).where(r.cache_source_request_id.in_(sorted(request_ids)))
    )
    return [(tenant, created_at) for tenant, created_at in rows]
