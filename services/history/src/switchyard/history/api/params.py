"""Query parameters shared by the history, usage and jobs routes, validated into 400s
that name the parameter."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import Query

from switchyard.common.errors import APIError
from switchyard.history.queries import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, InvalidCursorError
from switchyard.history.timeparse import TimeFormatError, parse_instant


def parse_limit(value: str | None, maximum: int, default: int, minimum: int = 1) -> int:
    """A `limit` query parameter: ASCII digits for an integer from `minimum` to `maximum`;
    `default` when it is not given (int() alone would also read "３", "1_0" and " 5 ").

    Raises:
        APIError: 400 `invalid_limit` when it is not such an integer.
    """
    if value is None:
        return default
    number = int(value) if value.isascii() and value.isdigit() and len(value) <= 9 else None
    if number is None or not minimum <= number <= maximum:
        raise APIError(
            400,
            f"Invalid value for 'limit': must be an integer from {minimum} to {maximum}.",
            param="limit",
            code="invalid_limit",
        )
    return number


def page_limit(
    limit: Annotated[str | None, Query(description=f"Page size, 1 to {MAX_PAGE_SIZE}.")] = None,
) -> int:
    """The `limit` query parameter of the lists of requests, jobs and replays
    (`parse_limit`: 1 to `MAX_PAGE_SIZE`, default `DEFAULT_PAGE_SIZE`)."""
    return parse_limit(limit, MAX_PAGE_SIZE, DEFAULT_PAGE_SIZE)


def cursor_refusal(exc: InvalidCursorError) -> APIError:
    """The 400 `invalid_cursor` for a `cursor` query parameter this API did not issue."""
    return APIError(
        400, f"Invalid value for 'cursor': {exc}", param="cursor", code="invalid_cursor"
    )


def parse_time(value: str | None, param: str) -> datetime | None:
    """An ISO 8601 instant (or a relative time such as `1h`, see `parse_instant`) as an aware UTC
    datetime; None when `value` is missing or empty.

    Raises:
        APIError: 400 `invalid_time` naming `param` when it cannot be parsed.
    """
    if value is None or value == "":
        return None
    try:
        return parse_instant(value)
    except TimeFormatError as exc:
        raise APIError(
            400, f"Invalid value for '{param}': {exc}.", param=param, code="invalid_time"
        ) from None


def parse_time_range(since: str | None, until: str | None) -> tuple[datetime | None, ...]:
    """The `since` and `until` query parameters as `(since, until)`, each None when not given.

    Raises:
        APIError: 400 `invalid_time` when one cannot be parsed, `invalid_time_range` when
            `until` is not after `since`.
    """
    time_from, time_to = parse_time(since, "since"), parse_time(until, "until")
    if time_from is not None and time_to is not None and time_from >= time_to:
        raise APIError(
            400,
            "Invalid value for 'until': it must be after 'since'.",
            param="until",
            code="invalid_time_range",
        )
    return time_from, time_to


def parse_statuses(value: str | None, allowed: tuple[str, ...], param: str = "status") -> list[str]:
    """A comma-separated list of statuses, each one of `allowed`; empty when not given.

    Raises:
        APIError: 400 `invalid_status` naming `param` for an unknown (or empty) status.
    """
    if value is None or value == "":
        return []
    statuses = [part.strip() for part in value.split(",") if part.strip()]
    unknown = [status for status in statuses if status not in allowed]
    if unknown or not statuses:
        raise APIError(
            400,
            f"Invalid value for '{param}': '{', '.join(unknown) or value}' is not one of "
            f"{', '.join(allowed)}.",
            param=param,
            code="invalid_status",
        )
    return statuses
