"""Instants and durations as people and scripts write them.

- An instant is ISO 8601: `2025-03-01T12:00:00Z`, `2025-03-01T13:00:00+01:00`, a date
  (`2025-03-01`, midnight UTC), or a naive date-time (taken as UTC); or a time relative
  to now, `30d`, `12h`, `90m`, `2w` (that long ago).
- A duration is `<number><unit>` with unit s, m, h, d or w (`30d`).

Everything is returned timezone-aware in UTC.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class TimeFormatError(ValueError):
    pass


def parse_duration(text: str) -> timedelta:
    match = _DURATION.match(text or "")
    if match is None:
        raise TimeFormatError(
            f"'{text}' is not a duration; use a number and a unit s, m, h, d or w (e.g. 30d)"
        )
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def parse_instant(text: str, *, now: datetime | None = None) -> datetime:
    value = (text or "").strip()
    if not value:
        raise TimeFormatError("an empty string is not a time")
    if _DURATION.match(value):
        return (now or datetime.now(UTC)) - parse_duration(value)
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        parsed = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise TimeFormatError(
            f"'{text}' is not an ISO 8601 time (e.g. 2025-03-01T12:00:00Z or 2025-03-01)"
            " nor a relative one (e.g. 7d)"
        ) from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def isoformat_z(value: datetime) -> str:
    """`2025-03-01T12:00:00Z` (UTC, with a Z)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
