"""Replaying recorded traffic against another model, and comparing the answers.

A replay is created from a selection of a tenant's recorded requests (time range, and
optionally model, API key, user, team; a `limit` or a random `sample`), and a target model.
A member selects only their own requests (naming another user, or a key or team they have no
requests with, is refused); answers from the response cache are never selected (their
original miss is). Each selected request becomes an item (`history_replay_items`), in the
order the requests were made; a request stored metadata-only (the tenant's privacy setting),
or of an API that cannot be replayed, is an item marked `not_replayable` with the reason,
and the rest of the run goes on.

The runner (`ReplayRunner`, one per history replica) sends the items of running replays at
the replay's rate, each replay in a task of its own, started only when its rate allows a
send (so a slow replay, or a slow publish, holds up no other): each item becomes a
`chat.requested` on the batch lane (inference serves it only with capacity interactive
traffic leaves free), with the original's body and provider headers, `model` replaced by the
target, `stream` removed (nobody reads a batch stream), `replay_of` naming the original, no
reply address, no webhook, and attributed to whoever created the replay (or, with `bill_to:
original`, to the original's user, key and team). Before it is published, a gateway admits
it only if that user and key could send it themselves right now (key not revoked or
expired and allowing the model, user not disabled), then against their budgets and rate
limits (`replay_admission.py`): a rate limit pauses the replay until it allows more; a
used-up budget or credentials that may not send it stop it (resumed by its id), the item
waiting with the gateway's message as its reason. With `bill_to: original` each item has
its own identity, so credentials that may not send one item settle that item alone as
`not_replayable` with the gateway's message, and the others are sent. It goes to inference
like any job,
never through a gateway's request path, so no Idempotency-Key is claimed and no webhook
fires for it.

Never twice: an item goes `pending` -> `sending` (committed) -> published -> `sent`, and a
runner only takes an item whose state it changed itself, so two runners never send the same
item. That change is made right before the item is published, and only while the replay is
running under that runner's unexpired lease, so once a stop has committed nothing more is
taken for sending (an item taken just before it still goes out, counted as `sending`). An
item goes back from `sending` to `pending` only while its replay is still that runner's,
so a runner that stalled past its lease cannot pull back an item another runner has taken
since. A runner that died
between `sending` and `sent` leaves the item in doubt: whoever resumes the replay publishes
a probe on the batch topic with the item's key (so, on Kafka, to the same partition, after
the request if the request was published), waits until this service has recorded the probe,
and then knows: the request is recorded (it was sent) or it never will be (it is sent now).
Probes are `chat.cancel_requested` events with reason `replay_probe`; inference ignores
everything but requests on the request topics.

A replay can be stopped and resumed by its id (`stopped` <-> `running`); a replay whose
runner died is taken over by any replica once its lease runs out. When every sent item's
replay has reached a terminal state it is compared with its original (`settle`): exact match
of the output text, and a similarity score from 0 to 1 (the standard library's
`difflib.SequenceMatcher.ratio()`: twice the matched characters over the total, on at most
the first `SIMILARITY_MAX_CHARS` characters of each, computed in a worker thread so the
sends and lease renewals of the event loop are not held up). Then the replay is `completed`.
"""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import json
import math
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

import structlog
from aiolimiter import AsyncLimiter
from sqlalchemy import (
    ColumnElement,
    RowMapping,
    and_,
    exists,
    func,
    insert,
    select,
    tuple_,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.orm import aliased

from switchyard.common.backoff import POLL_FAILURE_MAX_S, Backoff, poll_delay
from switchyard.common.errors import json_type
from switchyard.common.events import (
    CancelRequestData,
    ChatCancelRequested,
    ChatRequestData,
    ChatRequested,
    ClientAPI,
    EnvelopeFields,
    Priority,
    new_id,
)
from switchyard.common.topics import Topics
from switchyard.history.models import (
    ReplayItemState,
    ReplayStatus,
    RequestStatus,
    events_table,
    replay_items_table,
    replays_table,
    requests_table,
)
from switchyard.history.privacy import REDACTED_MARKER
from switchyard.history.queries import AnySelect, Caller, Page, decode_cursor, encode_cursor
from switchyard.history.replay_admission import (
    AdmissionUnavailable,
    Admitted,
    Denied,
    Held,
)

log = structlog.get_logger("switchyard.history.replays")

Publish = Callable[..., Awaitable[None]]

REPLAYABLE_APIS = frozenset(
    {
        ClientAPI.OPENAI_CHAT_COMPLETIONS.value,
        ClientAPI.OPENAI_EMBEDDINGS.value,
        ClientAPI.OPENAI_RESPONSES.value,
        ClientAPI.ANTHROPIC_MESSAGES.value,
    }
)
METADATA_ONLY_REASON = (
    "stored metadata-only (the tenant's privacy setting): its content was not kept, so it "
    "cannot be replayed"
)
SIMILARITY_MAX_CHARS = 20_000
MAX_RATE_PER_S = 1000.0
MIN_RATE_PER_H = 1.0
PROBE_REASON = "replay_probe"
ERROR_STATUSES = frozenset(
    {RequestStatus.FAILED.value, RequestStatus.EXPIRED.value, RequestStatus.REFUSED.value}
)
# ASCII only: `\d` would also read other scripts' digits (fullwidth `２`) as numbers.
_RATE = re.compile(
    r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(?:/\s*(s|sec|second|m|min|minute|h|hour))?\s*$", re.ASCII
)
_PERIODS = {"s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0}
_PERIODS.update({"h": 3600.0, "hour": 3600.0})
_UNITS = (("s", 1.0), ("m", 60.0), ("h", 3600.0))
# How long a replay whose send failed (gateway, database or bus down) waits to try again.
_RETRY = Backoff(0.5, POLL_FAILURE_MAX_S)


class Admission(Protocol):
    """What the runner asks before publishing an item (`GatewayAdmission`, or a double)."""

    async def admit(self, event: ChatRequested, timeout_s: float) -> Admitted | Held | Denied:
        """Whether `event` may be sent now; raises AdmissionUnavailable if unknown."""
        ...


class _Skipped:
    """The type of `_SKIPPED`: an item settled without being sent, the replay going on."""


_SKIPPED = _Skipped()


class ReplayError(ValueError):
    """A replay that cannot be created or changed as asked (the API answers `status`)."""

    def __init__(self, status: int, message: str, *, param: str | None, code: str) -> None:
        super().__init__(message)
        self.status, self.param, self.code = status, param, code


def parse_rate(value: object) -> tuple[int, float]:
    """A rate as (requests, per seconds), the shape of a leaky bucket: a string `5/s`, `30/m`,
    `100/h` (ASCII digits) or a JSON number of requests per second. Raises ReplayError for
    any other type (booleans included), for zero, negative or unreadable rates, and for
    rates above MAX_RATE_PER_S or below MIN_RATE_PER_H."""
    amount, period = 0.0, 1.0
    if isinstance(value, int | float) and not isinstance(value, bool):
        # An int too large for a float is far above the fastest rate all the same.
        amount = float(value) if abs(value) < 1e300 else math.inf
    elif isinstance(value, str):
        match = _RATE.match(value)
        if match is not None:
            amount, period = float(match.group(1)), _PERIODS[match.group(2) or "s"]
    else:
        raise ReplayError(
            400,
            f"Invalid value for 'rate': expected a string such as 5/s, 30/m or 100/h, or a "
            f"number of requests per second, not {json_type(value)}.",
            param="rate",
            code="invalid_rate",
        )
    if not amount > 0:  # NaN included
        raise ReplayError(
            400,
            f"Invalid value for 'rate': {str(value)[:32]!r}. Use a positive number of requests "
            "per second, minute or hour, e.g. 5/s, 30/m or 100/h.",
            param="rate",
            code="invalid_rate",
        )
    if amount / period > MAX_RATE_PER_S:
        raise ReplayError(
            400,
            f"Invalid value for 'rate': at most {MAX_RATE_PER_S:.0f} requests per second.",
            param="rate",
            code="invalid_rate",
        )
    # Slower than this, a replay of a handful of requests would outlive anyone reading it.
    if amount * 3600.0 / period < MIN_RATE_PER_H * (1 - 1e-9):
        raise ReplayError(
            400,
            f"Invalid value for 'rate': {str(value)[:32]!r} is below the slowest rate, "
            f"{MIN_RATE_PER_H:g} request per hour (1/h).",
            param="rate",
            code="invalid_rate",
        )
    if amount >= 1 and amount == int(amount):
        return int(amount), period
    return 1, period / amount


def format_rate(count: int, period_s: float) -> str:
    """A rate of `count` per `period_s` seconds as `parse_rate` reads it: `5/s`, `30/m` or
    `1/h` when the period is one of those units, else per the shortest unit in which it is
    at least 1 (`0.5/s` is `30/m`, `1.5/h` stays `1.5/h`)."""
    for unit, seconds in _UNITS:
        if math.isclose(period_s, seconds):
            return f"{count}/{unit}"
    for unit, seconds in _UNITS:
        amount = count * seconds / period_s
        if amount >= 1 - 1e-9 or unit == _UNITS[-1][0]:
            return f"{amount:.6g}/{unit}"
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Selection:
    """Which recorded requests a replay sends again (all filters combined with AND)."""

    since: datetime
    until: datetime | None = None
    model: str | None = None
    api_key_id: str | None = None
    user_id: str | None = None
    team_id: str | None = None
    limit: int | None = None
    sample: int | None = None

    def public(self) -> dict[str, Any]:
        """The selection as the replays API shows it (times in ISO 8601)."""
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat() if self.until else None,
            "model": self.model,
            "api_key_id": self.api_key_id,
            "user_id": self.user_id,
            "team_id": self.team_id,
            "limit": self.limit,
            "sample": self.sample,
        }


@dataclass(frozen=True)
class ReplaySpec:
    """A replay to create: the selected requests sent again on `to_model`, at most `rate` =
    (count, period in seconds), billed to the caller or (`original`) to each original's user,
    key and team."""

    to_model: str
    selection: Selection
    rate: tuple[int, float] = (5, 1.0)
    bill_to: Literal["caller", "original"] = "caller"


def replay_request_id(replay_id: str, original_request_id: str) -> str:
    """The request id of an item's replay: the same whoever sends it, however often asked."""
    return hashlib.sha256(f"{replay_id}/{original_request_id}".encode()).hexdigest()[:32]


# ---------------------------------------------------------------------------- comparing


def _text_parts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    parts = []
    if isinstance(content, list):
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    parts.append(text)
                elif part.get("type") in ("tool_use", "function_call"):
                    parts.append(_call_text(part.get("name"), part.get("input")))
    return parts


def _call_text(name: Any, arguments: Any) -> str:
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, sort_keys=True, separators=(",", ":"))
    return f"{name}({arguments})"


def output_text(api: str | None, response: dict[str, Any] | None) -> str | None:
    """The text of a reply in its API's shape (with tool calls as `name(arguments)`), to
    compare two answers; None when there is none (embeddings, no reply, metadata only)."""
    if not isinstance(response, dict) or response.get(REDACTED_MARKER):
        return None
    if api == ClientAPI.OPENAI_CHAT_COMPLETIONS.value:
        choices = response.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return None
        message = choices[0].get("message") or {}
        parts = _text_parts(message.get("content"))
        for call in message.get("tool_calls") or []:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                parts.append(_call_text(function.get("name"), function.get("arguments")))
        return "".join(parts)
    if api == ClientAPI.ANTHROPIC_MESSAGES.value:
        return "".join(_text_parts(response.get("content")))
    if api == ClientAPI.OPENAI_RESPONSES.value:
        parts = []
        for item in response.get("output") or []:
            if not isinstance(item, dict):
                continue
            if item.get("type") == "function_call":
                parts.append(_call_text(item.get("name"), item.get("arguments")))
            else:
                parts.extend(_text_parts(item.get("content")))
        return "".join(parts)
    return None


def similarity(a: str, b: str) -> float:
    """How alike two texts are, from 0 (nothing in common) to 1 (equal):
    `difflib.SequenceMatcher.ratio()` on at most SIMILARITY_MAX_CHARS of each."""
    if a == b:
        return 1.0
    return difflib.SequenceMatcher(None, a[:SIMILARITY_MAX_CHARS], b[:SIMILARITY_MAX_CHARS]).ratio()


def _comparison(row: RowMapping) -> tuple[bool | None, float | None]:
    """An item's (exact_match, similarity) from its original's and its replay's responses
    (`o_api`, `o_status`, `o_response`, `r_api`, `r_status`, `r_response`); both None
    when either did not complete (a stream that failed midway keeps what it gave, which
    is not an answer to compare) or has no text."""
    completed = RequestStatus.COMPLETED.value
    if row["o_status"] != completed or row["r_status"] != completed:
        return None, None
    a = output_text(row["o_api"], row["o_response"])
    b = output_text(row["r_api"], row["r_response"])
    if a is None or b is None:
        return None, None
    similar = round(similarity(a, b), 4)
    return a == b, similar if math.isfinite(similar) else None


# ---------------------------------------------------------------------------- the store


def _now() -> datetime:
    return datetime.now(UTC)


class ReplayStore:
    """Creating, reading, stopping and resuming replays (the API's side)."""

    def __init__(self, engine: AsyncEngine, *, max_requests: int = 10_000) -> None:
        self._engine = engine
        self.max_requests = max_requests

    def _selection_query(self, caller: Caller, selection: Selection) -> AnySelect:
        """The requests `selection` names, among those the caller may replay (`_forbidden`
        has refused any selector naming someone else's requests)."""
        r = requests_table.c
        query = select(
            r.request_id,
            r.api,
            r.request_body[REDACTED_MARKER].as_boolean().label("redacted"),
        ).where(
            r.tenant == caller.tenant,
            r.request_body.is_not(None),
            r.replay_of.is_(None),
            # A cache hit repeats an answer to an earlier request; that original miss is
            # the real call to compare with (a hit's own cost and tokens are 0).
            r.cache_hit.is_not(True),
            r.status != RequestStatus.PENDING.value,
            r.created_at >= selection.since,
        )
        if selection.until is not None:
            query = query.where(r.created_at < selection.until)
        if not caller.sees_whole_tenant:
            query = query.where(r.user_id == caller.user_id)
        if selection.user_id is not None:
            query = query.where(r.user_id == selection.user_id)
        if selection.model is not None:
            query = query.where(r.model == selection.model)
        if selection.api_key_id is not None:
            query = query.where(r.api_key_id == selection.api_key_id)
        if selection.team_id is not None:
            query = query.where(r.team_id == selection.team_id)
        if selection.sample is not None:
            return query.order_by(func.random()).limit(selection.sample)
        query = query.order_by(r.created_at, r.request_id)
        return query.limit(selection.limit or self.max_requests + 1)

    async def _forbidden(
        self, connection: AsyncConnection, caller: Caller, selection: Selection
    ) -> ReplayError | None:
        """Why a member may not make this selection (a 403 naming the selector), or None.

        A member replays only their own requests: `user_id` must be theirs, and an
        `api_key_id` or `team_id` one they have made recorded requests with (history has
        no other record of who owns a key or belongs to a team). Admins may select any."""
        if caller.sees_whole_tenant:
            return None
        if selection.user_id is not None and selection.user_id != caller.user_id:
            return ReplayError(
                403,
                "Only an admin of the tenant can replay another user's requests: "
                f"'user_id' must be your own ({caller.user_id[:128]!r}) or left out.",
                param="user_id",
                code="admin_only",
            )
        r = requests_table.c
        for param, name, column, value in (
            ("api_key_id", "API key", r.api_key_id, selection.api_key_id),
            ("team_id", "team", r.team_id, selection.team_id),
        ):
            if value is None:
                continue
            mine = await connection.execute(
                select(r.request_id)
                .where(r.tenant == caller.tenant, r.user_id == caller.user_id, column == value)
                .limit(1)
            )
            if mine.first() is None:
                return ReplayError(
                    403,
                    f"You have no recorded request with the {name} {value[:128]!r}; only an "
                    f"admin of the tenant can replay other users' requests by '{param}'.",
                    param=param,
                    code="admin_only",
                )
        return None

    async def create(
        self, caller: Caller, api_key_id: str | None, spec: ReplaySpec
    ) -> dict[str, Any]:
        """Select the requests and record the replay (running); returns it. Raises
        ReplayError 400 for an empty selection or one over `max_requests`, 403 when a
        member names another user, or a key or team they have no requests with."""
        selection = spec.selection
        if not caller.sees_whole_tenant:
            # What is stored says what was selected: a member's own requests only.
            selection = replace(selection, user_id=caller.user_id)
        async with self._engine.begin() as connection:
            forbidden = await self._forbidden(connection, caller, spec.selection)
            if forbidden is not None:
                raise forbidden
            rows = (await connection.execute(self._selection_query(caller, selection))).all()
            if not rows:
                raise ReplayError(
                    400,
                    "No recorded request matches this selection (time range and filters); "
                    "nothing to replay.",
                    param="since",
                    code="empty_selection",
                )
            if selection.limit is None and selection.sample is None:
                if len(rows) > self.max_requests:
                    raise ReplayError(
                        400,
                        f"The selection has more than {self.max_requests} requests; narrow it, "
                        "or use 'limit' or 'sample'.",
                        param="limit",
                        code="selection_too_large",
                    )
            if selection.sample is not None:
                # A random sample, replayed in the order the requests were made.
                order = {row.request_id: i for i, row in enumerate(rows)}
                created = await connection.execute(
                    select(requests_table.c.request_id, requests_table.c.created_at).where(
                        requests_table.c.request_id.in_(list(order))
                    )
                )
                times = dict(created.all())
                rows = sorted(rows, key=lambda row: (times[row.request_id], row.request_id))
            now = _now()
            replay_id = new_id()
            items = []
            for position, row in enumerate(rows):
                state, reason = ReplayItemState.PENDING.value, None
                if row.redacted:
                    state, reason = ReplayItemState.NOT_REPLAYABLE.value, METADATA_ONLY_REASON
                elif row.api not in REPLAYABLE_APIS:
                    state = ReplayItemState.NOT_REPLAYABLE.value
                    reason = f"requests of the {row.api} API cannot be replayed"
                items.append(
                    {
                        "replay_id": replay_id,
                        "position": position,
                        "original_request_id": row.request_id,
                        "replay_request_id": replay_request_id(replay_id, row.request_id),
                        "state": state,
                        "reason": reason,
                    }
                )
            await connection.execute(
                insert(replays_table).values(
                    replay_id=replay_id,
                    tenant=caller.tenant,
                    user_id=caller.user_id,
                    api_key_id=api_key_id,
                    to_model=spec.to_model,
                    selection=selection.public(),
                    rate_count=spec.rate[0],
                    rate_period_s=spec.rate[1],
                    bill_to=spec.bill_to,
                    status=ReplayStatus.RUNNING.value,
                    total=len(items),
                    created_at=now,
                    updated_at=now,
                )
            )
            await connection.execute(insert(replay_items_table), items)
        log.info("replay created", replay_id=replay_id, requests=len(items))
        replay = await self.get(caller, replay_id, limit=0)
        assert replay is not None
        return replay

    async def _replay_row(self, caller: Caller, replay_id: str) -> RowMapping | None:
        p = replays_table.c
        query = select(replays_table).where(p.replay_id == replay_id, p.tenant == caller.tenant)
        if not caller.sees_whole_tenant:
            query = query.where(p.user_id == caller.user_id)
        async with self._engine.connect() as connection:
            return (await connection.execute(query)).mappings().first()

    async def list(
        self,
        caller: Caller,
        *,
        limit: int = 20,
        cursor: str | None = None,
        statuses: Sequence[str] = (),
    ) -> Page:
        """A page of the caller's replays (all of the tenant's for an admin), newest first,
        optionally only those in `statuses` (`ReplayStatus` values): up to `limit` replay
        summaries after `cursor` (a `next_cursor` of an earlier page), and the cursor of
        the next page (None on the last).

        Raises:
            InvalidCursorError: a cursor this API did not issue.
        """
        p = replays_table.c
        query = select(replays_table).where(p.tenant == caller.tenant)
        if not caller.sees_whole_tenant:
            query = query.where(p.user_id == caller.user_id)
        if statuses:
            query = query.where(p.status.in_(list(statuses)))
        if cursor is not None:
            query = query.where(tuple_(p.created_at, p.replay_id) < decode_cursor(cursor))
        # One extra row tells whether there is a next page without a count query.
        query = query.order_by(p.created_at.desc(), p.replay_id.desc()).limit(limit + 1)
        async with self._engine.connect() as connection:
            rows = (await connection.execute(query)).mappings().all()
        page, more = rows[:limit], len(rows) > limit
        return Page(
            items=[_replay_summary(row) for row in page],
            next_cursor=encode_cursor(page[-1]["created_at"], page[-1]["replay_id"])
            if more
            else None,
        )

    async def get(
        self, caller: Caller, replay_id: str, *, limit: int = 100, after: int = -1
    ) -> dict[str, Any] | None:
        """The replay with its counts, totals and up to `limit` paired items after position
        `after`; None if the caller cannot see it."""
        row = await self._replay_row(caller, replay_id)
        if row is None:
            return None
        original, replayed = aliased(requests_table), aliased(requests_table)
        i = replay_items_table.c
        columns = [
            i.position,
            i.state,
            i.reason,
            i.exact_match,
            i.similarity,
            i.original_request_id,
            i.replay_request_id,
        ]
        sides = []
        for prefix, table in (("o_", original), ("r_", replayed)):
            sides += [
                table.c.request_id.label(prefix + "request_id"),
                table.c.model.label(prefix + "model"),
                table.c.status.label(prefix + "status"),
                table.c.latency_ms.label(prefix + "latency_ms"),
                table.c.input_tokens.label(prefix + "input_tokens"),
                table.c.output_tokens.label(prefix + "output_tokens"),
                table.c.cost_usd.label(prefix + "cost_usd"),
            ]
        joined = replay_items_table.outerjoin(
            original, original.c.request_id == i.original_request_id
        ).outerjoin(replayed, replayed.c.request_id == i.replay_request_id)
        base = select(*columns, *sides).select_from(joined).where(i.replay_id == replay_id)
        async with self._engine.connect() as connection:
            every = (await connection.execute(base.order_by(i.position))).mappings().all()
        page = [item for item in every if item["position"] > after][:limit]
        replay = _replay_summary(row)
        replay["counts"] = _counts(every)
        replay["totals"] = _totals(every)
        replay["data"] = [_pair(item) for item in page]
        more = len([item for item in every if item["position"] > after]) > limit
        replay["next_after"] = page[-1]["position"] if page and more else None
        return replay

    async def set_status(
        self, caller: Caller, replay_id: str, status: ReplayStatus
    ) -> dict[str, Any]:
        """Stop a running replay, or resume a stopped (or interrupted) one. Raises
        ReplayError 404 if the caller cannot see it, 409 if it is completed."""
        row = await self._replay_row(caller, replay_id)
        if row is None:
            raise ReplayError(
                404,
                f"No replay found with id '{replay_id[:64]}'.",
                param="replay_id",
                code="replay_not_found",
            )
        if row["status"] == ReplayStatus.COMPLETED.value:
            raise ReplayError(
                409,
                "This replay has completed; there is nothing left to stop or resume.",
                param=None,
                code="replay_completed",
            )
        values: dict[str, Any] = {"status": status.value, "updated_at": _now()}
        if status is ReplayStatus.RUNNING and row["status"] == ReplayStatus.STOPPED.value:
            values.update(runner=None, lease_until=None)
        async with self._engine.begin() as connection:
            await connection.execute(
                update(replays_table)
                .where(
                    replays_table.c.replay_id == replay_id,
                    replays_table.c.status != ReplayStatus.COMPLETED.value,
                )
                .values(**values)
            )
        replay = await self.get(caller, replay_id, limit=0)
        assert replay is not None
        return replay


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def _replay_summary(row: RowMapping) -> dict[str, Any]:
    return {
        "id": row["replay_id"],
        "object": "replay",
        "status": row["status"],
        "to_model": row["to_model"],
        "selection": row["selection"],
        "rate": format_rate(row["rate_count"], row["rate_period_s"]),
        "bill_to": row["bill_to"],
        "total": row["total"],
        "created_at": _iso(row["created_at"]),
        "completed_at": _iso(row["completed_at"]),
    }


def _counts(items: Sequence[RowMapping]) -> dict[str, int]:
    counts = {state.value: 0 for state in ReplayItemState}
    for item in items:
        counts[item["state"]] += 1
    return counts


def _side(item: RowMapping, prefix: str, request_id: str | None) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "model": item[prefix + "model"],
        "status": item[prefix + "status"],
        "latency_ms": item[prefix + "latency_ms"],
        "input_tokens": item[prefix + "input_tokens"],
        "output_tokens": item[prefix + "output_tokens"],
        "cost_usd": item[prefix + "cost_usd"],
    }


def _pair(item: RowMapping) -> dict[str, Any]:
    sent = item["state"] in (ReplayItemState.SENT.value, ReplayItemState.SETTLED.value)
    return {
        "position": item["position"],
        "state": item["state"],
        "replayable": item["state"] != ReplayItemState.NOT_REPLAYABLE.value,
        "reason": item["reason"],
        "original": _side(item, "o_", item["original_request_id"]),
        "replay": _side(item, "r_", item["replay_request_id"]) if sent else None,
        "exact_match": item["exact_match"],
        "similarity": item["similarity"],
    }


def _totals(items: Sequence[RowMapping]) -> dict[str, Any]:
    """Totals over the items that were replayed, each side over the same requests."""
    sent = [
        item
        for item in items
        if item["state"] in (ReplayItemState.SENT.value, ReplayItemState.SETTLED.value)
    ]

    def side(prefix: str) -> dict[str, Any]:
        latencies = [
            item[prefix + "latency_ms"]
            for item in sent
            if item[prefix + "status"] == RequestStatus.COMPLETED.value
            and item[prefix + "latency_ms"] is not None
        ]
        return {
            "requests": len(sent),
            "completed": sum(
                1 for item in sent if item[prefix + "status"] == RequestStatus.COMPLETED.value
            ),
            "errors": sum(1 for item in sent if item[prefix + "status"] in ERROR_STATUSES),
            "pending": sum(
                1 for item in sent if item[prefix + "status"] in (None, RequestStatus.PENDING.value)
            ),
            "input_tokens": sum(item[prefix + "input_tokens"] or 0 for item in sent),
            "output_tokens": sum(item[prefix + "output_tokens"] or 0 for item in sent),
            "cost_usd": round(sum(item[prefix + "cost_usd"] or 0.0 for item in sent), 8),
            "latency_ms_mean": round(sum(latencies) / len(latencies), 3) if latencies else None,
        }

    original, replay = side("o_"), side("r_")
    compared = [item for item in sent if item["similarity"] is not None]
    latency_delta = None
    if original["latency_ms_mean"] is not None and replay["latency_ms_mean"] is not None:
        latency_delta = round(replay["latency_ms_mean"] - original["latency_ms_mean"], 3)
    return {
        "original": original,
        "replay": replay,
        "cost_delta_usd": round(replay["cost_usd"] - original["cost_usd"], 8),
        "latency_delta_ms": latency_delta,
        "not_replayable": sum(
            1 for item in items if item["state"] == ReplayItemState.NOT_REPLAYABLE.value
        ),
        "compared": len(compared),
        "exact_matches": sum(1 for item in compared if item["exact_match"]),
        "similarity_mean": round(sum(item["similarity"] for item in compared) / len(compared), 4)
        if compared
        else None,
    }


# ---------------------------------------------------------------------------- the runner


class ReplayRunner:
    """Sends the items of running replays and settles finished ones (one per replica).

    One loop (`run`) settles, claims the running replays this runner may send for, and
    starts a send (`drive`, a task of its own) for each claimed replay that has none under
    way and whose rate allows one now; a replay whose rate allows none yet is skipped until
    it does. So nothing one replay does (a slow rate, many items, a slow admission or
    publish, a probe for an item in doubt) holds up the other replays or the settling."""

    def __init__(
        self,
        engine: AsyncEngine,
        publish: Publish,
        topics: Topics,
        *,
        runner_id: str,
        request_timeout_s: float = 3600.0,
        lease_s: float = 30.0,
        slice_s: float = 5.0,
        recover_after_s: float = 60.0,
        probe_timeout_s: float = 10.0,
        max_replays: int = 100,
        admission: Admission | None = None,
    ) -> None:
        self._engine = engine
        self._admission = admission
        # A replay held by a rate limit, or whose last send failed, is not driven again
        # before this (monotonic s).
        self._not_before: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._publish = publish
        self._topics = topics
        self.runner_id = runner_id
        self.request_timeout_s = request_timeout_s
        self.lease_s = lease_s
        self.slice_s = slice_s
        self.recover_after_s = recover_after_s
        self.probe_timeout_s = probe_timeout_s
        self.max_replays = max_replays
        self._limiters: dict[str, AsyncLimiter] = {}
        self._sending: dict[str, asyncio.Task[None]] = {}
        # Whether a send task sent anything since the last round looked: only then is the
        # next round started at once (a replay whose items are all in flight is not).
        self._progress = False

    async def run(self, interval_s: float) -> None:
        """Work until cancelled: settle, start the sends the replays' rates allow, wait.
        The sends under way are cancelled with it."""
        failures = 0
        try:
            while True:
                try:
                    busy = await self.tick()
                    failures = 0
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - e.g. the database or bus is down
                    failures += 1
                    if failures == 1 or failures % 10 == 0:
                        log.warning("replay round failed", error=repr(exc))
                    busy = False
                await asyncio.sleep(0 if busy else poll_delay(interval_s, failures))
        finally:
            await self.close()

    async def close(self) -> None:
        """Cancel the sends under way and wait for them to end (an item cut off while
        `sending` is resolved by whoever drives its replay next)."""
        tasks = list(self._sending.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._sending.clear()

    async def tick(self) -> bool:
        """One round: settle, claim, and start a send for every claimed replay that may
        send now. Returns True if the sends sent anything since the previous round, or this
        round compared items (so the next round starts at once); starting a send that then
        finds nothing to send (its items all in flight) is not progress."""
        progress, self._progress = self._progress, False
        if not await self._any_running():
            # Most of the time no replay runs: one indexed lookup instead of the settle
            # join and the claim transaction, every poll on every replica.
            return progress
        settled = await self.settle()
        replays = await self._claim()
        self._forget({replay["replay_id"] for replay in replays})
        for replay in replays:
            self._start(replay)
        return progress or settled > 0

    def _start(self, replay: RowMapping) -> bool:
        """Start sending for `replay` unless a send of it is under way, a limit holds it,
        or its rate allows no send now (then it waits for a later round, holding up no
        one). Returns whether it started."""
        replay_id = replay["replay_id"]
        under_way = self._sending.get(replay_id)
        if under_way is not None and not under_way.done():
            return False
        if self._not_before.get(replay_id, 0.0) > time.monotonic():
            return False
        if not self._limiter(replay).has_capacity():
            return False
        self._sending[replay_id] = asyncio.create_task(
            self._send(replay), name=f"replay-{replay_id}"
        )
        return True

    async def _send(self, replay: RowMapping) -> None:
        """`drive` as a task of its own: a failure waits (backing off) for a later round
        of this replay only."""
        replay_id = replay["replay_id"]
        try:
            if await self.drive(replay):
                self._progress = True
            self._failures.pop(replay_id, None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. the gateway, database or bus is down
            failures = self._failures[replay_id] = self._failures.get(replay_id, 0) + 1
            if failures == 1 or failures % 10 == 0:
                log.warning("replay send failed", replay_id=replay_id, error=repr(exc))
            self._not_before[replay_id] = time.monotonic() + _RETRY.delay(failures)

    def _limiter(self, replay: RowMapping) -> AsyncLimiter:
        limiter = self._limiters.get(replay["replay_id"])
        if limiter is None:
            # One request per interval: a bucket of `rate_count` would let that many go at
            # once (100/h sending 100 in a burst), where the rate is a pace.
            limiter = self._limiters[replay["replay_id"]] = AsyncLimiter(
                1, replay["rate_period_s"] / replay["rate_count"]
            )
        return limiter

    def _forget(self, claimed: set[str]) -> None:
        """Drop what this runner keeps of replays it no longer sends for: finished sends,
        past holds, and rate limiters whose bucket has drained (a new one is the same)."""
        now = time.monotonic()
        for replay_id, task in list(self._sending.items()):
            if task.done():
                del self._sending[replay_id]
        for replay_id, until in list(self._not_before.items()):
            if until <= now and replay_id not in claimed:
                del self._not_before[replay_id]
        for replay_id in list(self._failures):
            if replay_id not in claimed:
                del self._failures[replay_id]
        for replay_id, limiter in list(self._limiters.items()):
            idle = replay_id not in claimed and replay_id not in self._sending
            if idle and limiter.has_capacity(limiter.max_rate):
                del self._limiters[replay_id]

    async def _any_running(self) -> bool:
        """Whether any replay of any tenant is running, or was stopped recently enough that
        requests it sent may still get their outcome to compare (uses
        ix_history_replays_status)."""
        p = replays_table.c
        recently = _now() - timedelta(seconds=self.request_timeout_s)
        query = (
            select(p.replay_id)
            .where(
                (p.status == ReplayStatus.RUNNING.value)
                | ((p.status == ReplayStatus.STOPPED.value) & (p.updated_at > recently))
            )
            .limit(1)
        )
        async with self._engine.connect() as connection:
            return (await connection.execute(query)).first() is not None

    # -- claiming -----------------------------------------------------------------------

    async def _claim(self) -> list[RowMapping]:
        """Take, or keep, up to `max_replays` running replays with items to send (oldest
        first) whose lease is free or this runner's, renewing the lease; returns those now
        this runner's."""
        p, i = replays_table.c, replay_items_table.c
        now = _now()
        running = p.status == ReplayStatus.RUNNING.value
        free = (p.lease_until.is_(None)) | (p.lease_until < now) | (p.runner == self.runner_id)
        waiting = exists().where(
            i.replay_id == p.replay_id,
            i.state.in_([ReplayItemState.PENDING.value, ReplayItemState.SENDING.value]),
        )
        candidates = (
            select(p.replay_id)
            .where(running, free, waiting)
            .order_by(p.created_at)
            .limit(self.max_replays)
        )
        async with self._engine.begin() as connection:
            replay_ids = list((await connection.execute(candidates)).scalars())
            if not replay_ids:
                return []
            await connection.execute(
                update(replays_table)
                .where(p.replay_id.in_(replay_ids), running, free)
                .values(runner=self.runner_id, lease_until=now + timedelta(seconds=self.lease_s))
            )
            ours = await connection.execute(
                select(replays_table)
                .where(p.replay_id.in_(replay_ids), running, p.runner == self.runner_id)
                .order_by(p.created_at)
            )
            return list(ours.mappings().all())

    # -- sending ------------------------------------------------------------------------

    async def drive(self, replay: RowMapping) -> int:
        """Send the replay's items at its rate, for at most `slice_s` seconds; returns how
        many were sent. Between two sends it waits for the next slot of its pace, in this
        replay's own task (no other replay waits for it), as long as that slot comes within
        the slice; otherwise it returns and a later round goes on. Raises what the
        database, the bus or the admission raise (the item then waits in `pending`, or in
        doubt in `sending`)."""
        replay_id = replay["replay_id"]
        if self._not_before.get(replay_id, 0.0) > time.monotonic():
            return 0
        await self._recover(replay)
        limiter = self._limiter(replay)
        ends = time.monotonic() + self.slice_s
        sent = 0
        i = replay_items_table.c
        next_item = (
            select(replay_items_table)
            .where(i.replay_id == replay_id, i.state == ReplayItemState.PENDING.value)
            .order_by(i.position)
            .limit(1)
        )
        interval = replay["rate_period_s"] / replay["rate_count"]
        # When the bucket of one is full again: `interval` after the last send (unknown
        # before this slice's first: at most one interval away).
        due = time.monotonic() + interval
        while time.monotonic() < ends:
            if not limiter.has_capacity():
                wait = due - time.monotonic()
                if wait >= ends - time.monotonic():
                    break  # not within this slice: a later round sends it
                await asyncio.sleep(max(wait, 0.0))
                # Not full yet after all (clock granularity): look again a little later.
                due = time.monotonic() + interval / 100
                continue
            async with self._engine.connect() as connection:
                item = (await connection.execute(next_item)).mappings().first()
            if item is None:
                break
            event = await self._replay_event(replay, item)
            if event is None:
                continue
            if not await self._take(item, ReplayItemState.PENDING):
                break  # stopped, taken over, or the item taken by another runner
            await limiter.acquire()  # it has capacity: returns at once
            due = time.monotonic() + interval
            if self._admission is not None:
                admitted = await self._admit(replay, item, event)
                if isinstance(admitted, _Skipped):
                    self._progress = True  # settled: the next item may go at once
                    continue
                if admitted is None:
                    break
                event = admitted
                # The replay may have been stopped while the gateway was asked.
                if not await self._take(item, ReplayItemState.SENDING):
                    await self._move(
                        item, ReplayItemState.SENDING, ReplayItemState.PENDING, ours=True
                    )
                    break
            # Any failure from here leaves the item in doubt, resolved by `_recover`.
            await self._publish(self._topics.requests_batch, event, key=event.request_id)
            await self._move(item, ReplayItemState.SENDING, ReplayItemState.SENT)
            sent += 1
        return sent

    async def _take(self, item: RowMapping, source: ReplayItemState) -> bool:
        """Claim the item for publishing, right before it is published: `source` ->
        `sending`, only while its replay is running under this runner's unexpired lease, so
        nothing is taken once it is stopped, taken over, or free for another runner to
        take over (this runner stalled past its lease). Returns whether it did."""
        i, p = replay_items_table.c, replays_table.c
        now = _now()
        running = (
            select(p.replay_id)
            .where(
                p.replay_id == item["replay_id"],
                p.status == ReplayStatus.RUNNING.value,
                p.runner == self.runner_id,
                p.lease_until > now,
            )
            .exists()
        )
        async with self._engine.begin() as connection:
            result = await connection.execute(
                update(replay_items_table)
                .where(
                    i.replay_id == item["replay_id"],
                    i.position == item["position"],
                    i.state == source.value,
                    running,
                )
                # A limit that held it back before no longer does.
                .values(state=ReplayItemState.SENDING.value, attempted_at=now, reason=None)
            )
        return result.rowcount == 1

    async def _admit(
        self, replay: RowMapping, item: RowMapping, event: ChatRequested
    ) -> ChatRequested | _Skipped | None:
        """The event with the team admission found; `_SKIPPED` when, billed to the
        original's identity, that identity may not send it (revoked, disabled, not allowing
        the model): the item alone is settled `not_replayable` with the gateway's reason,
        the others go on. Otherwise None when it is not admitted (the item goes back to
        `pending` with the gateway's reason): a rate limit pauses this replay until it
        allows more; a used-up budget, or the caller's credentials that may not send it,
        stop it (resumed by its id). Raises AdmissionUnavailable (the item back to
        `pending`) when credentials or limits cannot be checked. Items move only while the
        replay is still this runner's."""
        assert self._admission is not None
        try:
            decision = await self._admission.admit(event, self.request_timeout_s)
        except AdmissionUnavailable:
            await self._move(item, ReplayItemState.SENDING, ReplayItemState.PENDING, ours=True)
            raise
        if isinstance(decision, Admitted):
            data = event.data.model_copy(update={"team_id": decision.team_id})
            return event.model_copy(update={"data": data})
        replay_id = replay["replay_id"]
        if isinstance(decision, Denied) and (replay["bill_to"] == "original" or decision.item_only):
            # This item's own identity may not send it (or nobody may: its body is beyond
            # the gateway's limit); the others have theirs, so asking again (or stopping
            # the replay for it) would only keep them from being sent.
            log.info(
                "replay item not admitted",
                replay_id=replay_id,
                position=item["position"],
                reason=decision.message,
                code=decision.code,
            )
            moved = await self._move(
                item,
                ReplayItemState.SENDING,
                ReplayItemState.NOT_REPLAYABLE,
                reason=decision.message,
                ours=True,
            )
            return _SKIPPED if moved else None
        await self._move(
            item,
            ReplayItemState.SENDING,
            ReplayItemState.PENDING,
            reason=decision.message,
            ours=True,
        )
        if isinstance(decision, Denied) or decision.budget:
            # Final for this replay: sending on would only be refused again.
            log.info(
                "replay stopped by its admission",
                replay_id=replay_id,
                reason=decision.message,
                code=decision.code if isinstance(decision, Denied) else "insufficient_quota",
            )
            p = replays_table.c
            async with self._engine.begin() as connection:
                await connection.execute(
                    update(replays_table)
                    .where(
                        p.replay_id == replay_id,
                        p.status == ReplayStatus.RUNNING.value,
                        p.runner == self.runner_id,
                    )
                    .values(status=ReplayStatus.STOPPED.value, updated_at=_now())
                )
        else:
            self._not_before[replay_id] = time.monotonic() + decision.retry_after_s
        return None

    async def _move(
        self,
        item: RowMapping,
        source: ReplayItemState,
        target: ReplayItemState,
        reason: str | None = None,
        *,
        ours: bool = False,
    ) -> bool:
        """Move the item from `source` to `target` (with `reason` if given); with `ours`,
        only while its replay is still this runner's (stopped or not): once another runner
        has taken it over, the item in `sending` may be that runner's, about to be published
        and marked sent. Returns whether it moved."""
        i, p = replay_items_table.c, replays_table.c
        values: dict[str, Any] = {"state": target.value}
        if reason is not None:
            values["reason"] = reason
        condition = [
            i.replay_id == item["replay_id"],
            i.position == item["position"],
            i.state == source.value,
        ]
        if ours:
            condition.append(
                select(p.replay_id)
                .where(p.replay_id == item["replay_id"], p.runner == self.runner_id)
                .exists()
            )
        async with self._engine.begin() as connection:
            result = await connection.execute(
                update(replay_items_table).where(*condition).values(**values)
            )
        return result.rowcount == 1

    async def _replay_event(self, replay: RowMapping, item: RowMapping) -> ChatRequested | None:
        """The item's request, built from its original as recorded (None, and the item
        marked not replayable, if the original is no longer stored)."""
        r, e = requests_table.c, events_table.c
        original_id = item["original_request_id"]
        async with self._engine.connect() as connection:
            row = (
                await connection.execute(
                    select(r.api, r.request_body, r.user_id, r.api_key_id, r.tenant).where(
                        r.request_id == original_id
                    )
                )
            ).first()
            payload = (
                await connection.execute(
                    select(e.payload)
                    .where(e.request_id == original_id, e.type == "chat.requested")
                    .limit(1)
                )
            ).scalar()
        body = row.request_body if row is not None else None
        if row is None or not isinstance(body, dict) or body.get(REDACTED_MARKER):
            await self._move(
                item,
                ReplayItemState.PENDING,
                ReplayItemState.NOT_REPLAYABLE,
                reason="the original request is no longer stored (retention)"
                if row is None or body is None
                else METADATA_ONLY_REASON,
            )
            return None
        data = (payload or {}).get("data") or {} if isinstance(payload, dict) else {}
        body = {**body, "model": replay["to_model"]}
        body.pop("stream", None)
        body.pop("stream_options", None)
        if replay["bill_to"] == "original":
            user_id, api_key_id, team_id = row.user_id, row.api_key_id, data.get("team_id")
        else:
            user_id, api_key_id, team_id = replay["user_id"], replay["api_key_id"], None
        request_id = item["replay_request_id"]
        return ChatRequested(
            id=request_id,
            source="history",
            tenant=row.tenant,
            request_id=request_id,
            data=ChatRequestData(
                api=ClientAPI(row.api),
                model=replay["to_model"],
                body=body,
                headers=data.get("headers") or {},
                stream=False,
                user_id=user_id or replay["user_id"],
                api_key_id=api_key_id,
                team_id=team_id,
                priority=Priority.BATCH,
                deadline=_now() + timedelta(seconds=self.request_timeout_s),
                reply_to=None,
                webhook_url=None,
                replay_of=original_id,
            ),
        )

    async def _recover(self, replay: RowMapping) -> None:
        """Resolve items a dead runner left `sending`: sent if their request is recorded
        once a probe published after it is; back to `pending` if it is not."""
        i, r = replay_items_table.c, requests_table.c
        before = _now() - timedelta(seconds=self.recover_after_s)
        query = select(replay_items_table).where(
            i.replay_id == replay["replay_id"],
            i.state == ReplayItemState.SENDING.value,
            i.attempted_at < before,
        )
        async with self._engine.connect() as connection:
            doubtful = (await connection.execute(query)).mappings().all()
        for item in doubtful:
            request_id = item["replay_request_id"]
            if not await self._recorded(r.request_id == request_id):
                probe = ChatCancelRequested(
                    source="history",
                    tenant=replay["tenant"],
                    request_id=request_id,
                    data=CancelRequestData(reason=PROBE_REASON),
                )
                await self._publish(self._topics.requests_batch, probe, key=request_id)
                if not await self._wait_recorded(probe):
                    continue  # history is behind: decided on a later round
            if await self._recorded(r.request_id == request_id):
                await self._move(item, ReplayItemState.SENDING, ReplayItemState.SENT, ours=True)
            elif await self._move(
                item, ReplayItemState.SENDING, ReplayItemState.PENDING, ours=True
            ):
                log.info("replay item never reached the bus: sending it", request_id=request_id)

    async def _recorded(self, condition: ColumnElement[bool]) -> bool:
        r = requests_table.c
        async with self._engine.connect() as connection:
            found = await connection.execute(
                select(r.request_id).where(condition, r.request_body.is_not(None)).limit(1)
            )
            return found.first() is not None

    async def _wait_recorded(self, event: EnvelopeFields) -> bool:
        e = events_table.c
        deadline = time.monotonic() + self.probe_timeout_s
        while time.monotonic() < deadline:
            async with self._engine.connect() as connection:
                found = await connection.execute(
                    select(e.event_id).where(e.event_id == event.id).limit(1)
                )
                if found.first() is not None:
                    return True
            await asyncio.sleep(0.1)
        return False

    # -- settling -----------------------------------------------------------------------

    async def settle(self, batch: int = 200) -> int:
        """Compare the items whose replay reached a terminal state; complete the replays
        with nothing left to send or wait for. Returns how many items were compared."""
        i, p = replay_items_table.c, replays_table.c
        original, replayed = aliased(requests_table), aliased(requests_table)
        query = (
            select(
                i.replay_id,
                i.position,
                original.c.api.label("o_api"),
                original.c.status.label("o_status"),
                original.c.response.label("o_response"),
                replayed.c.api.label("r_api"),
                replayed.c.status.label("r_status"),
                replayed.c.response.label("r_response"),
            )
            .select_from(
                replay_items_table.join(
                    replayed, replayed.c.request_id == i.replay_request_id
                ).outerjoin(original, original.c.request_id == i.original_request_id)
            )
            .where(
                i.state == ReplayItemState.SENT.value,
                replayed.c.status != RequestStatus.PENDING.value,
            )
            .limit(batch)
        )
        async with self._engine.connect() as connection:
            finished = (await connection.execute(query)).mappings().all()
        now = _now()
        # SequenceMatcher on long texts takes a while: in a thread, so the sends and the
        # lease renewals on the event loop are not held up by a batch of comparisons.
        comparisons = await asyncio.to_thread(lambda: [_comparison(row) for row in finished])
        for row, (exact_match, similar) in zip(finished, comparisons, strict=True):
            values = {
                "state": ReplayItemState.SETTLED.value,
                "settled_at": now,
                "exact_match": exact_match,
                "similarity": similar,
            }
            async with self._engine.begin() as connection:
                await connection.execute(
                    update(replay_items_table)
                    .where(
                        i.replay_id == row["replay_id"],
                        i.position == row["position"],
                        i.state == ReplayItemState.SENT.value,
                    )
                    .values(**values)
                )
        unfinished = exists().where(
            and_(
                i.replay_id == p.replay_id,
                i.state.in_(
                    [
                        ReplayItemState.PENDING.value,
                        ReplayItemState.SENDING.value,
                        ReplayItemState.SENT.value,
                    ]
                ),
            )
        )
        async with self._engine.begin() as connection:
            completed = await connection.execute(
                update(replays_table)
                .where(p.status == ReplayStatus.RUNNING.value, ~unfinished)
                .values(status=ReplayStatus.COMPLETED.value, completed_at=now, updated_at=now)
                .returning(p.replay_id)
            )
            for replay_id in completed.scalars():
                self._limiters.pop(replay_id, None)
                log.info("replay completed", replay_id=replay_id)
        return len(finished)
