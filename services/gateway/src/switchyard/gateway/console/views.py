"""Small pure helpers the console's pages share: time ranges, number and time formats,
chart specifications, and the validation of query parameters (bad values fall back to
defaults: a page never answers 422 for a hand-edited URL)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import orjson

from switchyard.common.governance import BudgetClock


@dataclass(frozen=True)
class Range:
    """A named time range ending now, and the bucket its charts use."""

    key: str
    label: str
    span: timedelta
    bucket: str

    def since(self, now: datetime | None = None) -> datetime:
        """The start of the range: `span` before `now` (default: the current time, UTC)."""
        return (now or datetime.now(UTC)) - self.span


OVERVIEW_RANGES = {
    "hour": Range("hour", "Last hour", timedelta(hours=1), "minute"),
    "day": Range("day", "Last day", timedelta(days=1), "hour"),
    "30d": Range("30d", "Last 30 days", timedelta(days=30), "day"),
}
USAGE_RANGES = {
    "24h": Range("24h", "Last 24 hours", timedelta(days=1), "hour"),
    "7d": Range("7d", "Last 7 days", timedelta(days=7), "day"),
    "30d": Range("30d", "Last 30 days", timedelta(days=30), "day"),
    "90d": Range("90d", "Last 90 days", timedelta(days=90), "day"),
}
LOG_RANGES = {
    "1h": Range("1h", "Last hour", timedelta(hours=1), "minute"),
    "24h": Range("24h", "Last 24 hours", timedelta(days=1), "hour"),
    "7d": Range("7d", "Last 7 days", timedelta(days=7), "day"),
    "30d": Range("30d", "Last 30 days", timedelta(days=30), "day"),
}
USAGE_GROUPS = {
    "day": "Day",
    "hour": "Hour",
    "model": "Model",
    "user": "User",
    "api_key": "API key",
    "team": "Team",
}
# Budget periods as the governance API names them, in days.
BUDGET_PERIODS = {"1d": 1, "7d": 7, "30d": 30}


def choice(value: str | None, allowed: Any, default: str) -> str:
    """`value` if it is one of `allowed`, else `default` (for query parameters from the page)."""
    return value if value is not None and value in allowed else default


def iso(value: datetime) -> str:
    """`value` in ISO 8601, UTC, with a `Z` suffix."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_iso(value: Any) -> datetime | None:
    """An aware datetime from an ISO 8601 string (naive ones taken as UTC); None for anything
    else."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def format_time(value: Any, *, seconds: bool = True) -> str:
    """A datetime or ISO 8601 string as `YYYY-MM-DD HH:MM[:SS]` UTC; `—` when it is neither."""
    parsed = parse_iso(value) if not isinstance(value, datetime) else value
    if parsed is None:
        return "—"
    return parsed.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")


def bucket_label(value: Any, bucket: str) -> str:
    """A chart label for a bucket start: `Jan 31` for days, `31 14:00` for hours, `14:05`
    otherwise."""
    parsed = parse_iso(value)
    if parsed is None:
        return str(value)
    if bucket == "day":
        return parsed.strftime("%b %d")
    if bucket == "hour":
        return parsed.strftime("%d %H:00")
    return parsed.strftime("%H:%M")


def format_number(value: Any) -> str:
    """A count with thousands separators (one decimal for fractions); `—` for None."""
    if value is None:
        return "—"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.1f}"
    return f"{int(value):,}"


def format_usd(value: Any) -> str:
    """An amount in USD: four decimals below one dollar, two otherwise; `—` for None."""
    if value is None:
        return "—"
    amount = float(value)
    return f"${amount:,.4f}" if 0 < abs(amount) < 1 else f"${amount:,.2f}"


def format_ms(value: Any) -> str:
    """A duration given in milliseconds: `ms` below ten seconds, `s` above; `—` for None."""
    if value is None:
        return "—"
    amount = float(value)
    return f"{amount / 1000:,.2f} s" if amount >= 10_000 else f"{amount:,.0f} ms"


def format_percent(value: Any) -> str:
    """A fraction (0.25) as a percentage (`25.0%`); `—` for None."""
    if value is None:
        return "—"
    return f"{float(value) * 100:.1f}%"


def query_string(params: dict[str, Any]) -> str:
    """'?a=1&b=2' of the non-empty parameters, or ''."""
    clean = {key: value for key, value in params.items() if value not in (None, "")}
    return "?" + urlencode(clean) if clean else ""


def chart(kind: str, labels: list[str], series: dict[str, list[Any]], unit: str) -> dict[str, Any]:
    """What console.js draws with Chart.js: kind (line or bar), labels, named series and
    the unit of the values (count, usd, ms, percent)."""
    return {
        "kind": kind,
        "labels": labels,
        "series": [{"label": name, "data": data} for name, data in series.items()],
        "unit": unit,
    }


def fill_buckets(
    rows: list[dict[str, Any]], since: datetime, until: datetime, bucket: str
) -> list[tuple[str, dict[str, Any] | None]]:
    """Every bucket of [since, until) in order, with its row (None when it had no
    requests), so charts show quiet periods as zero rather than skipping them."""
    step = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1), "day": timedelta(days=1)}[
        bucket
    ]
    start = since.astimezone(UTC)
    if bucket == "day":
        start = start.replace(hour=0, minute=0, second=0, microsecond=0)
    elif bucket == "hour":
        start = start.replace(minute=0, second=0, microsecond=0)
    else:
        start = start.replace(second=0, microsecond=0)
    by_bucket = {row.get("bucket"): row for row in rows}
    filled: list[tuple[str, dict[str, Any] | None]] = []
    current = start
    while current < until and len(filled) < 2000:
        key = iso(current)
        filled.append((key, by_bucket.get(key)))
        current += step
    return filled


# How much of a stored body's JSON the request page shows: a request may be tens of MB,
# which the page would carry whole (and a browser struggle with). The API has it all.
MAX_JSON_CHARS = 200_000


def cut(text: str, limit: int) -> str:
    """`text`, or its first `limit` characters and a line saying how many were left out."""
    if len(text) <= limit:
        return text
    return (
        f"{text[:limit]}\n… {len(text) - limit:,} more characters not shown here "
        "(the whole record: GET /v1/history/{id})"
    )


def indented_json(value: Any) -> str:
    """`value` as JSON indented by two spaces. Written by orjson (a stored request may be
    tens of MB: Python's `json` module takes seconds to indent that, on the event loop that
    answers every request); by Python's `json` only for what orjson refuses (an integer
    beyond 64 bits, nesting beyond 254 levels). Values JSON has no form for are written as
    their `str`."""
    try:
        return orjson.dumps(
            value, default=str, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS
        ).decode()
    except (TypeError, orjson.JSONEncodeError):
        import json

        try:
            return json.dumps(value, indent=2, ensure_ascii=False, default=str)
        except (ValueError, RecursionError):
            return str(value)


def json_text(value: Any) -> str:
    """Indented JSON as plain text (escaped by the template like any other text), cut at
    MAX_JSON_CHARS."""
    return cut(indented_json(value), MAX_JSON_CHARS)


def budget_period(
    limits: dict[str, Any], now: datetime, day_s: float = 86_400.0
) -> tuple[datetime, datetime | None] | None:
    """(start, reset) of the budget period containing `now`, as admission counts it
    (`BudgetClock`: periods start at the budget's anchor plus whole periods of
    `day_s`-second days; a budget without a period runs from its anchor and never
    resets: reset None). None without a budget or an anchor."""
    anchor = parse_iso(limits.get("budget_anchor_at"))
    period = limits.get("budget_period") or None
    if limits.get("max_budget_usd") is None or anchor is None:
        return None
    if period is not None and period not in BUDGET_PERIODS:
        return None
    found = BudgetClock(day_s=day_s).period(period, anchor, now)
    return found.start, found.end
