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
saving once it is known (`rollup.saved_cost`, read when an hour is computed).

The usage rollup must then recompute the hit's hour once both the link and the cost are
committed, without costing anything to batches that hold no hit:

- `link_hits`, the only cache work of the recorder, runs for batches holding hit replies.
  In the same transaction as the link, it records in `history_cache_hit_pending` each
  link whose source has no cost recorded in the transaction's view.
- The sweeper, right before it refreshes the rollup, runs `resolve_pending_hits`: for the
  pending links whose source's cost is now recorded, it marks the hit's hour dirty and
  deletes them, in one transaction; links older than `PENDING_MAX_AGE` are dropped (a
  source whose usage is never recorded keeps no row for ever).

Why no hour is left with a stale saving: if the hit's transaction sees the source's cost,
that cost was committed before it, and the hit's own row write marks its hour dirty; the
rollup recomputes an hour only once its mark has been quiet for a settle time and its
writer has committed (the mark's row lock), so it reads the link and the cost together.
Otherwise the hit's transaction leaves a pending row, committed with the link; whichever
of it and the source's usage commits last, a later resolver run sees both committed, marks
the hit's hour, and the rollup recomputes it after that. Nothing takes a lock on the
source's row, and the source's recording knows nothing of its hits.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import bindparam, delete, literal, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from switchyard.common import exactjson
from switchyard.common.db import dialect_insert, read_only
from switchyard.common.events import ChatCompleted, EnvelopeFields
from switchyard.history.models import (
    UTCDateTime,
    cache_entries_table,
    cache_hit_pending_table,
    requests_table,
)
from switchyard.history.rollup import mark_dirty

# How the gateway names the answerer of a hit in its reply (provider, deployment).
HIT_PROVIDER = "switchyard"
HIT_DEPLOYMENT = "response-cache"


def response_digest(response: dict[str, Any]) -> str:
    """SHA-256 (hex) of `response` as stable JSON (sorted keys): equal for equal answers,
    however their keys were ordered on the way."""
    return hashlib.sha256(exactjson.dumps(response, option=orjson.OPT_SORT_KEYS)).hexdigest()


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
    # Response headers describing the body (`x-switchyard-token-count`), None if none kept.
    headers: dict[str, str] | None = None

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
            **({"headers": self.headers} if self.headers else {}),
        }


class CacheStore:
    """The tenant-scoped response cache entries in the history database."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        # For the lookup of each request the gateway's own cache misses.
        self._reads = read_only(engine)
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
                c.headers,
                r.cost_usd,
            )
            .select_from(
                cache_entries_table.outerjoin(requests_table, r.request_id == c.source_request_id)
            )
            .where(c.tenant == tenant, c.key == key, c.expires_at > (now or datetime.now(UTC)))
        )
        async with self._reads.connect() as connection:
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
            headers=row.headers or None,
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
        headers: dict[str, str] | None = None,
        now: datetime | None = None,
    ) -> datetime:
        """Store (or replace) the entry, with the response `headers` describing its body;
        returns when it expires."""
        now = now or datetime.now(UTC)
        expires_at = now + timedelta(seconds=ttl_s)
        size = len(exactjson.dumps(response)) + (
            len(exactjson.dumps(stream_events)) if stream_events is not None else 0
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
            "headers": headers or None,
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

    Each link whose source has no cost recorded in this transaction's view is also
    recorded as pending (`history_cache_hit_pending`), for `resolve_pending_hits` to mark
    the hit's hour once the cost is there (see the module docstring). Batches without hit
    replies cost nothing: no statement is run."""
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
    sources: dict[tuple[str, str], str] = {}
    for tenant, digest, source in found:
        # Two keys with the very same answer: either source will do (the same answer).
        sources.setdefault((tenant, digest), source)
    links = sorted(
        (hit, source) for pair, source in sources.items() for hit in hits[pair] if hit != source
    )
    if not links:
        return 0
    r = requests_table.c
    await connection.execute(
        requests_table.update()
        .where(r.request_id == bindparam("hit_id"))
        .values(cache_source_request_id=bindparam("source_id")),
        [{"hit_id": hit, "source_id": source} for hit, source in links],
    )
    # The links whose source's cost is not recorded yet (no row, or no usage on it), read
    # from the hit rows just written.
    hit, source = requests_table.alias("hit"), requests_table.alias("source")
    waiting = (
        select(
            hit.c.request_id,
            hit.c.cache_source_request_id,
            hit.c.tenant,
            literal(datetime.now(UTC), UTCDateTime()),
        )
        .select_from(hit.outerjoin(source, source.c.request_id == hit.c.cache_source_request_id))
        .where(
            hit.c.request_id.in_([hit_id for hit_id, _ in links]),
            hit.c.cache_source_request_id.is_not(None),
            source.c.cost_usd.is_(None),
        )
    )
    p = cache_hit_pending_table.c
    await connection.execute(
        dialect_insert(cache_hit_pending_table, dialect)
        .from_select([p.hit_request_id, p.source_request_id, p.tenant, p.linked_at], waiting)
        .on_conflict_do_nothing(index_elements=[p.hit_request_id])
    )
    return len(links)


# Pending links older than this are dropped: a source's usage comes seconds after its
# reply, so one missing for a week (its events lost, or purged) will not come.
PENDING_MAX_AGE = timedelta(days=7)


async def resolve_pending_hits(
    engine: AsyncEngine,
    *,
    max_age: timedelta = PENDING_MAX_AGE,
    now: datetime | None = None,
    batch: int = 500,
    max_rounds: int = 20,
) -> int:
    """Mark for the usage rollup the hours of the pending cache hits whose source's cost
    is now recorded, and delete those pending rows, in one transaction per `batch` (at
    most `max_rounds`); then delete pending rows linked more than `max_age` before `now`.
    Returns how many hits were resolved. Run by the sweeper right before
    `rollup.refresh`; safe to run on several replicas at once (on PostgreSQL each skips
    the rows another is resolving). Database errors propagate."""
    dialect = engine.dialect.name
    p = cache_hit_pending_table.c
    hit, source = requests_table.alias("hit"), requests_table.alias("source")
    due = (
        select(p.hit_request_id, hit.c.tenant, hit.c.created_at)
        .select_from(
            cache_hit_pending_table.join(
                source, source.c.request_id == p.source_request_id
            ).outerjoin(hit, hit.c.request_id == p.hit_request_id)
        )
        .where(source.c.cost_usd.is_not(None))
        .order_by(p.hit_request_id)
        .limit(batch)
    )
    if dialect == "postgresql":
        due = due.with_for_update(of=cache_hit_pending_table, skip_locked=True)
    resolved = 0
    for _ in range(max_rounds):
        async with engine.begin() as connection:
            rows = (await connection.execute(due)).all()
            if not rows:
                break
            # A hit row purged meanwhile has no hour left to recompute.
            await mark_dirty(
                connection,
                dialect,
                [(tenant, created_at) for _, tenant, created_at in rows if tenant is not None],
            )
            await connection.execute(
                delete(cache_hit_pending_table).where(
                    p.hit_request_id.in_([hit_id for hit_id, _, _ in rows])
                )
            )
        resolved += len(rows)
        if len(rows) < batch:
            break
    cutoff = (now or datetime.now(UTC)) - max_age
    async with engine.begin() as connection:
        await connection.execute(delete(cache_hit_pending_table).where(p.linked_at < cutoff))
    return resolved
