"""The request projection: how each event changes its request's row in `history_requests`.

Events of one request arrive on different topics (requests, replies, usage), so they can
be stored in any order and by different consumers at the same time. Every event therefore
becomes a *contribution*: a full row where the columns the event does not know are NULL.
One upsert statement merges a contribution into the row, and its rules make the result
independent of the order contributions are applied in:

- request fields (tenant, user, key, team, model, API, body, a Responses request's input
  items, deadline, created_at) come from `chat.requested`; a row a reply created first
  gets them when the request arrives; until then the usage record's (user, key, team,
  model, API) stand in. A request refused at admission never has a `chat.requested`: the
  gateway's `chat.failed` (status `refused`, the reason in its error) and `usage.recorded`
  (who, which model and API, zero usage) are its whole record;
- a contribution naming another tenant than the row's changes nothing (every event of a
  request carries the request's tenant; only a producer writing under another tenant's
  request id makes one differ), with one exception: the request itself, arriving at a row
  that has no request yet, makes the row its own again (what the other tenant's events
  put there is dropped; they stay in the event store), bringing its own events stored
  before it, which the row had ignored (the recorder folds them into the request's
  contribution: `handlers.EventRecorder._reclaimed`). These rules make the result
  depend on order only when two tenants write under one request id;
- the status leaves 'pending' once, to the first terminal status applied; the reply,
  error and completion time travel with that status and are never overwritten. One
  exception: history's own expiry (the sweeper's, `outcome_provisional`) only stands until
  a real outcome from inference arrives, which replaces it: what inference answered is
  what the client got, and an expiry must never win over it;
- tokens (input, output, cache read and written, reasoning), cost and latency come from
  `usage.recorded` when it is there, otherwise from the reply; tokens and cost add up
  over a request's usage records (one per run: a request run again, or ended by another
  replica while its first run went on, is billed every upstream call it made; a copy of
  a stored record is never applied twice); so do `cache_hit` and
  `saved_cost_usd` (a request answered from the response cache: what the gateway knew it
  saved; the request it reused, `cache_source_request_id`, is linked by the recorder, see
  cache.py), while `replay_of` (a replayed request) comes with the request.

Events are version 2 (`decode_event` upgrades version 1 ones): `api` is a `ClientAPI`
value, the body and the reply are in that API's shapes.

Because the rules live in the SQL statement, concurrent consumers writing the same row
are serialised by the database's row lock and each sees the other's result.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, case, false, func, or_
from sqlalchemy.dialects.postgresql import Insert as PgInsert
from sqlalchemy.dialects.sqlite import Insert as SqliteInsert

from switchyard.common.db import dialect_insert
from switchyard.common.events import (
    MAX_COST_USD,
    MAX_TOKEN_COUNT,
    ChatCompleted,
    ChatFailed,
    ChatRequestData,
    ChatRequested,
    ChatStarted,
    ClientAPI,
    EnvelopeFields,
    TokenUsage,
    UsageRecorded,
)
from switchyard.common.responses import input_items
from switchyard.history.jobs import is_history_expiry
from switchyard.history.models import RequestStatus, requests_table
from switchyard.history.privacy import redact_request_body, redact_response

PENDING = RequestStatus.PENDING.value
# TokenUsage fields, each stored in the column of the same name.
TOKEN_COLUMNS = (
    "input_tokens",
    "output_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "cache_creation_1h_input_tokens",
    "reasoning_tokens",
)

_EMPTY_CONTRIBUTION: dict[str, Any] = {column.name: None for column in requests_table.columns}


def contribution(event: EnvelopeFields, *, redact: bool = False) -> dict[str, Any] | None:
    """The row `event` contributes to its request, or None if it does not touch the projection.
    With `redact`, the request body and the reply keep their metadata only (privacy.py)."""
    row = dict(_EMPTY_CONTRIBUTION)
    row.update(
        request_id=event.request_id,
        tenant=event.tenant,
        status=PENDING,
        # Only a placeholder unless the event is the request itself: a row needs an order key
        # even while its request is still on the way.
        created_at=event.time,
    )
    if isinstance(event, ChatRequested):
        data = event.data
        row.update(
            user_id=data.user_id,
            api_key_id=data.api_key_id,
            team_id=data.team_id,
            model=data.model,
            api=data.api.value,
            client_api=data.api.value,
            priority=data.priority.value,
            request_body=redact_request_body(data.body) if redact else data.body,
            input_items=None if redact else responses_input_items(data, event.request_id),
            deadline=data.deadline,
            replay_of=data.replay_of,
        )
    elif isinstance(event, ChatCompleted):
        completed = event.data
        row.update(
            status=RequestStatus.COMPLETED.value,
            response=redact_response(completed.response) if redact else completed.response,
            provider=completed.provider,
            deployment=completed.deployment,
            upstream_api=completed.upstream_api.value if completed.upstream_api else None,
            **_tokens(completed.usage),
            latency_ms=completed.latency_ms,
            completed_at=event.time,
            outcome_provisional=False,
        )
    elif isinstance(event, ChatFailed):
        failed = event.data
        row.update(
            status=failed.status.value,
            outcome_provisional=is_history_expiry(event),
            error=failed.error.model_dump(mode="json"),
            # What a stream gave before it failed (None when nothing was streamed).
            response=redact_response(failed.response) if redact else failed.response,
            provider=failed.provider,
            deployment=failed.deployment,
            latency_ms=failed.latency_ms,
            completed_at=event.time,
        )
    elif isinstance(event, ChatStarted):
        row.update(started_at=event.time)
    elif isinstance(event, UsageRecorded):
        recorded = event.data
        row.update(
            user_id=recorded.user_id,
            api_key_id=recorded.api_key_id,
            team_id=recorded.team_id,
            model=recorded.model,
            api=recorded.api.value if recorded.api else None,
            client_api=recorded.api.value if recorded.api else None,
            provider=recorded.provider,
            deployment=recorded.deployment,
            **_tokens(recorded.usage),
            cost_usd=recorded.cost_usd,
            latency_ms=recorded.latency_ms,
            cache_hit=recorded.cache_hit,
            saved_cost_usd=recorded.saved_cost_usd,
        )
    else:
        return None
    return row


def responses_input_items(data: ChatRequestData, request_id: str) -> list[dict[str, Any]] | None:
    """The input items a Responses request's response is generated from, as stored: the
    previous conversation's, then the request's own `input` (ids given, see
    `switchyard.common.responses.input_items`). None for other APIs and for a response
    the client asked not to store (`store: false`)."""
    if data.api is not ClientAPI.OPENAI_RESPONSES or data.body.get("store") is False:
        return None
    return [*(data.previous_items or []), *input_items(data.body.get("input"), request_id)]


def _tokens(usage: TokenUsage) -> dict[str, int]:
    return {name: getattr(usage, name) for name in TOKEN_COLUMNS}


# The most a summed column may hold: what one usage record may say of it.
_SUM_BOUNDS: dict[str, float] = {
    **{name: MAX_TOKEN_COUNT for name in TOKEN_COLUMNS},
    "cost_usd": MAX_COST_USD,
}


# The merge rules, as data, so that the SQL statement and the in-memory merge of one
# batch's contributions (`merge`) cannot disagree. Each column is either
#   ("prefer_new", condition): the arriving value when `condition` holds (it is the
#       authoritative source), else the stored one; either falls back on the other;
#   ("replace", condition): the arriving value when `condition` holds, else the stored one;
#   ("sum", USAGE_ARRIVES): as "prefer_new", but when a usage record arrives at a row that
#       has one already, the two values added;
# Conditions: a request body arrives; a terminal status arrives on a pending row, or a real
# (not provisional) one on a row history expired itself; a usage record (which always
# carries a cost, 0 when free; a reply never does) arrives.
REQUEST_ARRIVES, TERMINAL_ARRIVES, USAGE_ARRIVES = "request", "terminal", "usage"
MERGE_RULES: dict[str, tuple[str, str]] = {
    **{
        name: ("prefer_new", REQUEST_ARRIVES)
        for name in (
            "tenant",
            "user_id",
            "api_key_id",
            "team_id",
            "model",
            "api",
            "client_api",
            "priority",
            "request_body",
            "input_items",
            "deadline",
            "replay_of",
            # Set only by a deletion through the Responses API, never by an event: kept.
            "response_deleted_at",
            # Set only by the recorder once the row is written (cache.link_hits): kept.
            "cache_source_request_id",
            # The first `chat.started` wins (a request carries none): kept.
            "started_at",
        )
    },
    "created_at": ("replace", REQUEST_ARRIVES),
    # The first terminal status wins (a provisional one only until a real one comes);
    # everything describing the outcome comes with it.
    "status": ("replace", TERMINAL_ARRIVES),
    "outcome_provisional": ("replace", TERMINAL_ARRIVES),
    "response": ("replace", TERMINAL_ARRIVES),
    "error": ("replace", TERMINAL_ARRIVES),
    "completed_at": ("replace", TERMINAL_ARRIVES),
    "provider": ("prefer_new", TERMINAL_ARRIVES),
    "deployment": ("prefer_new", TERMINAL_ARRIVES),
    "upstream_api": ("prefer_new", TERMINAL_ARRIVES),
    # Tokens and cost add up over the request's usage records: each is one run's (a
    # request run again, or ended by another replica while its first run went on, has
    # one per run, with ids of their own); a copy of a stored record is never applied.
    **{name: ("sum", USAGE_ARRIVES) for name in (*TOKEN_COLUMNS, "cost_usd")},
    **{
        name: ("prefer_new", USAGE_ARRIVES)
        for name in ("latency_ms", "cache_hit", "saved_cost_usd")
    },
}


def same_tenant(existing: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether contribution `new` may change row `existing`: not when both name a tenant
    and the tenants differ (an event under another tenant's request id is not that
    request's, whatever it says), unless `reclaims` holds."""
    return (
        existing["tenant"] is None or new["tenant"] is None or existing["tenant"] == new["tenant"]
    )


def reclaims(existing: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether contribution `new` is a request taking back row `existing`, which events of
    another tenant made before the request arrived: the row becomes the request's alone."""
    return (
        not same_tenant(existing, new)
        and existing["request_body"] is None
        and new["request_body"] is not None
    )


def merge(existing: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """What the upsert makes of row `existing` when contribution `new` arrives (the same
    rules, in Python). Used to fold the contributions one batch holds for a request into
    one, so the database writes each request's row once per batch."""
    holds = {
        REQUEST_ARRIVES: existing["request_body"] is None and new["request_body"] is not None,
        TERMINAL_ARRIVES: new["status"] != PENDING
        and (
            existing["status"] == PENDING
            or (bool(existing["outcome_provisional"]) and not new["outcome_provisional"])
        ),
        USAGE_ARRIVES: existing["cost_usd"] is None and new["cost_usd"] is not None,
    }
    merged = {"request_id": existing["request_id"]}
    if reclaims(existing, new):
        merged.update((name, new[name]) for name in MERGE_RULES)
        return merged
    if not same_tenant(existing, new):
        merged.update((name, existing[name]) for name in MERGE_RULES)
        return merged
    both_usage = existing["cost_usd"] is not None and new["cost_usd"] is not None
    for name, (kind, condition) in MERGE_RULES.items():
        old_value, new_value = existing[name], new[name]
        if kind == "replace":
            merged[name] = new_value if holds[condition] else old_value
        elif kind == "sum" and both_usage:
            merged[name] = min((old_value or 0) + (new_value or 0), _SUM_BOUNDS[name])
        elif holds[condition]:
            merged[name] = new_value if new_value is not None else old_value
        else:
            merged[name] = old_value if old_value is not None else new_value
    return merged


def upsert_statement(
    dialect_name: str, insert: PgInsert | SqliteInsert | None = None
) -> PgInsert | SqliteInsert:
    """INSERT ... ON CONFLICT (request_id) DO UPDATE merging one contribution per row.
    `insert` may be given (e.g. an INSERT ... SELECT FROM json_to_recordset(...))."""
    if insert is None:
        insert = dialect_insert(requests_table, dialect_name)
    existing = requests_table.c
    new = insert.excluded
    conditions = {
        REQUEST_ARRIVES: and_(existing.request_body.is_(None), new.request_body.is_not(None)),
        TERMINAL_ARRIVES: and_(
            new.status != PENDING,
            or_(
                existing.status == PENDING,
                and_(
                    func.coalesce(existing.outcome_provisional, false()),
                    ~func.coalesce(new.outcome_provisional, false()),
                ),
            ),
        ),
        USAGE_ARRIVES: and_(existing.cost_usd.is_(None), new.cost_usd.is_not(None)),
    }
    both_usage = and_(existing.cost_usd.is_not(None), new.cost_usd.is_not(None))
    updates: dict[str, Any] = {}
    for name, (kind, condition) in MERGE_RULES.items():
        if kind == "replace":
            updates[name] = case((conditions[condition], new[name]), else_=existing[name])
        elif kind == "sum":
            old_value, new_value = func.coalesce(existing[name], 0), func.coalesce(new[name], 0)
            # Bounded as each record is (what the contract takes), compared before adding:
            # a sum past a BIGINT would fail the statement, and with it the batch, for ever.
            bound = _SUM_BOUNDS[name]
            updates[name] = case(
                (and_(both_usage, old_value > bound - new_value), bound),
                (both_usage, old_value + new_value),
                (conditions[condition], func.coalesce(new[name], existing[name])),
                else_=func.coalesce(existing[name], new[name]),
            )
        else:
            updates[name] = case(
                (conditions[condition], func.coalesce(new[name], existing[name])),
                else_=func.coalesce(existing[name], new[name]),
            )
    # A contribution naming another tenant than the row's is not the request's own (only a
    # producer writing events under someone else's request id makes one): it changes
    # nothing, unless it is the request reclaiming a row such events made before it came.
    same_tenant = or_(
        existing.tenant.is_(None), new.tenant.is_(None), existing.tenant == new.tenant
    )
    reclaim = and_(~same_tenant, existing.request_body.is_(None), new.request_body.is_not(None))
    updates = {name: case((reclaim, new[name]), else_=rule) for name, rule in updates.items()}
    return insert.on_conflict_do_update(
        index_elements=[existing.request_id], set_=updates, where=or_(same_tenant, reclaim)
    )
