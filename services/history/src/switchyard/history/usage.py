"""Usage reports: requests, errors, tokens and cost grouped by a time bucket (day or
hour) and any of model, user, API key and team (and tenant, for operators), as JSON or
CSV. Errors are failed, expired and refused requests.
Tokens are input and output tokens, with the parts of the input read from and written to
the provider's prompt cache and the part of the output spent on reasoning (these three
columns come last in CSV, so readers of the earlier columns are unaffected), and then
the requests answered from the response cache (`cache_hits`) with what those answers had
cost when they were made (`cache_saved_usd`, the saving).
Served by `GET /v1/usage` and printed by `switchyard usage report`; aggregated in SQL
(`HistoryQueries.usage`), so a report over a million requests costs one indexed query."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from switchyard.history.queries import DIMENSIONS, TIME_BUCKETS, UsageQuery, UsageRow
from switchyard.history.timeparse import isoformat_z

DEFAULT_RANGE = timedelta(days=30)
# Hourly buckets over years would be millions of rows; a quarter is plenty.
MAX_HOURLY_RANGE = timedelta(days=93)
METRICS = (
    "requests",
    "completed",
    "errors",
    "cancelled",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cost_usd",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "cache_creation_1h_input_tokens",
    "reasoning_tokens",
    "cache_hits",
    "cache_saved_usd",
)


class UsageParameterError(ValueError):
    """A bad usage report parameter; `param` names it, the message says what is wrong."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def parse_group_by(
    value: str | Sequence[str] | None, *, allow_tenant: bool = False
) -> tuple[str | None, tuple[str, ...]]:
    """(time bucket or None, dimensions) from e.g. 'day,model'. Default (absent or
    empty): by day. An empty name (`,,`, `day,`) is refused, not read as "no grouping"
    while an empty value means by day."""
    if value is None or value == "" or value == []:
        return "day", ()
    parts = value.split(",") if isinstance(value, str) else [p for v in value for p in v.split(",")]
    names = [part.strip() for part in parts]
    if "" in names:
        raise UsageParameterError(
            "group_by",
            "Invalid value for 'group_by': an empty name (a stray comma); list names "
            "separated by single commas, or leave it out to group by day.",
        )
    allowed = list(TIME_BUCKETS) + [d for d in DIMENSIONS if allow_tenant or d != "tenant"]
    unknown = [name for name in names if name not in allowed]
    if unknown:
        raise UsageParameterError(
            "group_by",
            f"Invalid value for 'group_by': '{unknown[0]}' is not one of {', '.join(allowed)}.",
        )
    if len(set(names)) != len(names):
        raise UsageParameterError("group_by", "Invalid value for 'group_by': a name is repeated.")
    buckets = [name for name in names if name in TIME_BUCKETS]
    if len(buckets) > 1:
        raise UsageParameterError(
            "group_by", "Invalid value for 'group_by': choose either day or hour, not both."
        )
    return (buckets[0] if buckets else None), tuple(n for n in names if n not in TIME_BUCKETS)


# The refusal of a `since` later than now when no `until` was sent (it defaults to now).
SINCE_IN_THE_FUTURE = (
    "Invalid value for 'since': it must be before 'until', which is now when not given."
)


def time_range(
    since: datetime | None, until: datetime | None, bucket: str | None
) -> tuple[datetime, datetime]:
    """The report's `(since, until)`: `until` defaults to now and `since` to 30 days before it.

    Raises:
        UsageParameterError: `until` is not after `since`, or an hourly report spans more than
            93 days.
    """
    given_until = until is not None
    until = until or datetime.now(UTC)
    since = since or until - DEFAULT_RANGE
    if since >= until:
        if not given_until:  # the client sent no `until`: its `since` is in the future
            raise UsageParameterError("since", SINCE_IN_THE_FUTURE)
        raise UsageParameterError("until", "Invalid value for 'until': it must be after 'since'.")
    if bucket == "hour" and until - since > MAX_HOURLY_RANGE:
        raise UsageParameterError(
            "since",
            f"Invalid value for 'since': hourly reports cover at most {MAX_HOURLY_RANGE.days} "
            "days; group by day for longer ranges.",
        )
    return since, until


# Readable label columns added after an id column when names are given (see `row_dict`).
NAME_COLUMNS = {"user": "user_email", "api_key": "api_key_name", "team": "team_name"}


def row_dict(
    row: UsageRow, query: UsageQuery, names: Mapping[str, Mapping[str, str]] | None = None
) -> dict[str, Any]:
    """One report row. With `names` ({"user": {id: email}, "api_key": {id: name},
    "team": {id: name}}), the user, API key and team ids are followed by `user_email`,
    `api_key_name` and `team_name`."""
    data: dict[str, Any] = {}
    if query.bucket is not None:
        data["bucket"] = isoformat_z(row.bucket) if row.bucket else None
    for dimension, value in row.groups.items():
        data[dimension] = value
        if names is not None and dimension in NAME_COLUMNS:
            data[NAME_COLUMNS[dimension]] = (
                names.get(dimension, {}).get(value) if value is not None else None
            )
    data.update(
        requests=row.requests,
        completed=row.completed,
        errors=row.errors,
        cancelled=row.cancelled,
        input_tokens=row.input_tokens,
        output_tokens=row.output_tokens,
        total_tokens=row.input_tokens + row.output_tokens,
        cost_usd=round(row.cost_usd, 8),
        cache_read_input_tokens=row.cache_read_input_tokens,
        cache_creation_input_tokens=row.cache_creation_input_tokens,
        cache_creation_1h_input_tokens=row.cache_creation_1h_input_tokens,
        reasoning_tokens=row.reasoning_tokens,
        cache_hits=row.cache_hits,
        cache_saved_usd=round(row.cache_saved_usd, 8),
    )
    return data


def report_json(
    rows: list[UsageRow], query: UsageQuery, names: Mapping[str, Mapping[str, str]] | None = None
) -> dict[str, Any]:
    """The `usage.report` JSON document: the query, one entry per row (with the user, key and
    team `names` when given) and the totals (cost in USD, rounded to 8 decimals)."""
    totals = {metric: 0 for metric in METRICS}
    data = [row_dict(row, query, names) for row in rows]
    for item in data:
        for metric in METRICS:
            totals[metric] += item[metric]
    totals["cost_usd"] = round(totals["cost_usd"], 8)
    totals["cache_saved_usd"] = round(totals["cache_saved_usd"], 8)
    return {
        "object": "usage.report",
        "since": isoformat_z(query.since),
        "until": isoformat_z(query.until),
        "group_by": ([query.bucket] if query.bucket else []) + list(query.dimensions),
        "data": data,
        "totals": totals,
    }


def _cell(value: Any) -> Any:
    # Spreadsheets run cells starting with these as formulas (CSV injection).
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    if isinstance(value, float) and math.isfinite(value):
        # Positional, with the float's own shortest digits: `0.0000195`, never `1.95e-05`,
        # which some spreadsheets and scripts read as text.
        return format(Decimal(repr(value)), "f")
    return "" if value is None else value


def report_csv(
    rows: list[UsageRow], query: UsageQuery, names: Mapping[str, Mapping[str, str]] | None = None
) -> str:
    """CSV of the report; ids stay in their columns, `names` adds the readable ones."""
    dimensions: list[str] = []
    for dimension in query.dimensions:
        dimensions.append(dimension)
        if names is not None and dimension in NAME_COLUMNS:
            dimensions.append(NAME_COLUMNS[dimension])
    columns = (["bucket"] if query.bucket else []) + dimensions + list(METRICS)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        item = row_dict(row, query, names)
        writer.writerow([_cell(item[column]) for column in columns])
    return buffer.getvalue()
