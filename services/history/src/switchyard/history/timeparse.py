"""Instants and durations as people and scripts write them.

- An instant is ISO 8601: `2025-03-01T12:00:00Z`, `2025-03-01T13:00:00+01:00`, a date
  (`2025-03-01`, midnight UTC), or a naive date-time (taken as UTC); or a time relative
  to now, `30d`, `12h`, `90m`, `2w` (that long ago).
- A duration is `<number><unit>` with unit s, m, h, d or w (`30d`).

Everything is returned timezone-aware in UTC, between 1970-01-01 and 9000-01-01: instants
outside that range (which the date arithmetic of reports could overflow on) are refused
like malformed ones.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.ASCII)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)
_OUT_OF_RANGE = "is out of range (times must fall between 1970 and 9000)"


class TimeFormatError(ValueError):
    """A time or duration that cannot be read; the message says why."""

    pass


def parse_duration(text: str) -> timedelta:
    """A duration such as `30d`: a number and one of the units s, m, h, d, w.

    Raises:
        TimeFormatError: not such a duration, or too long to represent.
    """
    match = _DURATION.match(text or "")
    if match is None:
        raise TimeFormatError(
            f"'{text}' is not a duration; use a number and a unit s, m, h, d or w (e.g. 30d)"
        )
    try:
        return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
    except OverflowError:
        raise TimeFormatError(f"'{text}' {_OUT_OF_RANGE}") from None


def parse_instant(text: str, *, now: datetime | None = None) -> datetime:
    """An aware UTC datetime from an ISO 8601 instant (a naive one is taken as UTC), a date
    (`2025-01-31`, its midnight UTC) or a duration before `now` (`1h`: an hour ago).

    Raises:
        TimeFormatError: none of those, or out of the representable range.
    """
    value = (text or "").strip()
    if not value:
        raise TimeFormatError("an empty string is not a time")
    if _DURATION.match(value):
        try:
            return _within_range((now or datetime.now(UTC)) - parse_duration(value), text)
        except OverflowError:
            raise TimeFormatError(f"'{text}' {_OUT_OF_RANGE}") from None
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            parsed = datetime(day.year, day.month, day.day, tzinfo=UTC)
        else:
            parsed = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise TimeFormatError(
            f"'{text}' is not an ISO 8601 time (e.g. 2025-03-01T12:00:00Z or 2025-03-01)"
            " nor a relative one (e.g. 7d)"
        ) from None
    try:
        instant = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except OverflowError:
        raise TimeFormatError(f"'{text}' {_OUT_OF_RANGE}") from None
    return _within_range(instant, text)


def _within_range(instant: datetime, text: str) -> datetime:
    if not EARLIEST <= instant <= LATEST:
        raise TimeFormatError(f"'{text}' {_OUT_OF_RANGE}")
    return instant


def isoformat_z(value: datetime) -> str:
    """`2025-03-01T12:00:00Z` (UTC, with a Z)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
