"""Budgets and rate limits: the vocabulary auth (which stores them) and the gateway (which
enforces them) share.

A tenant, a team, a user and an API key may each carry `Limits`: a budget in US dollars
per period (`max_budget_usd`, `budget_period` of `1d`, `7d`, `30d` or none for a lifetime
budget), requests and tokens per minute (`rpm_limit`, `tpm_limit`) and requests in
progress at once (`max_parallel_requests`). `None` means "no limit at this level". A
request is admitted only if every level above it allows it.

Budget periods are anchored: a budget set at instant A with period P resets at A + k·P.
`BudgetClock` computes the current period; the length of a day is a setting
(`SWITCHYARD_BUDGET_DAY_S`, 86400) so tests can watch a period end in seconds.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from switchyard.common.text import fixed_point, quantity

# The levels, from the narrowest to the widest; a request is checked at each it has.
LEVELS = ("api_key", "user", "team", "tenant")
Level = Literal["api_key", "user", "team", "tenant"]
LEVEL_NAMES = {"api_key": "key", "user": "user", "team": "team", "tenant": "tenant"}

BUDGET_PERIODS = {"1d": 1, "7d": 7, "30d": 30}

# Anything above these is a typing mistake, not a plan: refused with 400.
MAX_RPM = 10_000_000
MAX_TPM = 10_000_000_000
MAX_PARALLEL = 1_000_000
MAX_BUDGET_USD = 1_000_000_000.0
# Below this a positive budget is a typing mistake too (`5e-324` is a float's last digit,
# not a plan, and prints as hundreds of digits): at least a millionth of a dollar. Zero
# stays allowed (no spending at all).
MIN_BUDGET_USD = 0.000001

LIMIT_FIELDS = (
    "max_budget_usd",
    "budget_period",
    "rpm_limit",
    "tpm_limit",
    "max_parallel_requests",
)
# Fields compared with the same field of a parent level (a key's limit may not exceed its
# team's); budgets are compared only when both levels use the same period.
NUMERIC_LIMIT_FIELDS = ("max_budget_usd", "rpm_limit", "tpm_limit", "max_parallel_requests")


def normalise_period(value: Any) -> Any:
    """A budget period as stored: `1d`, `7d` or `30d` in any case and with surrounding
    spaces read as such, and none or null (any case) or blank as None; anything else
    unchanged, for the caller to refuse."""
    if not isinstance(value, str):
        return value
    # Every spelling is read in any case, not just "none": "30D" is as clearly meant as "NONE".
    folded = value.strip().lower()
    if folded in ("", "none", "null"):
        return None
    return folded if folded in BUDGET_PERIODS else value


class LimitError(ValueError):
    """An invalid limit; `param` names the field, the message is safe to show."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


class FailureMode(StrEnum):
    """What the gateway does when the limit store cannot answer in time."""

    CLOSED = "closed"  # refuse (503): never exceed a limit
    OPEN = "open"  # admit without counting: never refuse because of the store


class Limits(BaseModel):
    """The limits of one level; every field optional (None: no limit of that kind)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_budget_usd: float | None = Field(
        default=None,
        ge=0,
        le=MAX_BUDGET_USD,
        description="Most US dollars spent per budget period (or ever, without a period).",
    )
    budget_period: Literal["1d", "7d", "30d"] | None = Field(
        default=None, description="1d, 7d or 30d; none: the budget never resets."
    )
    rpm_limit: int | None = Field(
        default=None, ge=0, le=MAX_RPM, description="Requests per minute."
    )
    tpm_limit: int | None = Field(
        default=None, ge=0, le=MAX_TPM, description="Tokens (input + output) per minute."
    )
    max_parallel_requests: int | None = Field(
        default=None, ge=0, le=MAX_PARALLEL, description="Requests in progress at once."
    )

    @field_validator("max_budget_usd")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @field_validator("budget_period", mode="before")
    @classmethod
    def _period(cls, value: Any) -> Any:
        return normalise_period(value)

    @model_validator(mode="after")
    def _period_needs_budget(self) -> Limits:
        if self.budget_period is not None and self.max_budget_usd is None:
            raise ValueError("budget_period needs max_budget_usd")
        return self

    @property
    def empty(self) -> bool:
        """True when no limit is set at all."""
        return all(getattr(self, name) is None for name in LIMIT_FIELDS)


def check_limit_values(values: dict[str, Any], changed: Collection[str] | None = None) -> Limits:
    """`Limits` from loose input (CLI options, a PATCH body), raising LimitError naming
    the first bad field: negative or absurd numbers, unknown periods. `changed`: the
    fields being set now (None: all), the only ones held to `MIN_BUDGET_USD`, so that a
    budget stored before that bound does not block a change of another limit."""
    for name in NUMERIC_LIMIT_FIELDS:
        value = values.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise LimitError(f"'{name}' must be a number.", name)
        if isinstance(value, float) and not math.isfinite(value):
            raise LimitError(f"'{name}' must be a finite number.", name)
        if value < 0:
            raise LimitError(f"'{name}' must not be negative (got {value}).", name)
        if (
            name == "max_budget_usd"
            and 0 < value < MIN_BUDGET_USD
            and (changed is None or name in changed)
        ):
            raise LimitError(
                f"'{name}' must be 0 or at least {fixed_point(MIN_BUDGET_USD)} (got {value!r}).",
                name,
            )
        if name != "max_budget_usd" and value != int(value):
            raise LimitError(f"'{name}' must be a whole number (got {value}).", name)
        ceiling = {
            "max_budget_usd": MAX_BUDGET_USD,
            "rpm_limit": MAX_RPM,
            "tpm_limit": MAX_TPM,
            "max_parallel_requests": MAX_PARALLEL,
        }[name]
        if value > ceiling:
            raise LimitError(
                f"'{name}' is absurdly large ({value}); at most {quantity(ceiling)}.", name
            )
    period = normalise_period(values.get("budget_period"))
    if period is not None and period not in BUDGET_PERIODS:
        raise LimitError(
            f"'budget_period' must be one of {', '.join(BUDGET_PERIODS)} or none (got {period!r}).",
            "budget_period",
        )
    if period is not None and values.get("max_budget_usd") is None:
        raise LimitError("'budget_period' needs 'max_budget_usd'.", "budget_period")
    cleaned: dict[str, Any] = {name: values.get(name) for name in LIMIT_FIELDS}
    cleaned["budget_period"] = period
    for name in ("rpm_limit", "tpm_limit", "max_parallel_requests"):
        if cleaned[name] is not None:
            cleaned[name] = int(cleaned[name])
    if cleaned["max_budget_usd"] is not None:
        # + 0.0 makes -0.0 (a JSON `-0.0` passes the sign check) the zero it is.
        cleaned["max_budget_usd"] = float(cleaned["max_budget_usd"]) + 0.0
    return Limits(**cleaned)


def check_within(child: Limits, parent: Limits, child_level: str, parent_level: str) -> None:
    """Raise LimitError if a limit of `child` exceeds the same limit of `parent` (where the
    parent has one). Budgets are compared only when both use the same period."""
    for name in NUMERIC_LIMIT_FIELDS:
        mine, theirs = getattr(child, name), getattr(parent, name)
        if mine is None or theirs is None:
            continue
        if name == "max_budget_usd" and child.budget_period != parent.budget_period:
            continue
        if mine > theirs:
            lower = LEVEL_NAMES.get(child_level, child_level)
            upper = LEVEL_NAMES.get(parent_level, parent_level)
            raise LimitError(
                f"'{name}' of the {lower} ({quantity(mine)}) exceeds its {upper}'s "
                f"({quantity(theirs)}).",
                name,
            )


@dataclass(frozen=True)
class Period:
    """One budget period: from `start` to `end` (exclusive), or from `start` on for a
    lifetime budget (`end` None)."""

    start: datetime
    end: datetime | None  # None: a lifetime budget


@dataclass(frozen=True)
class BudgetClock:
    """Budget periods with a configurable day length (86400 s; seconds in tests)."""

    day_s: float = 86_400.0

    def period(self, budget_period: str | None, anchor: datetime, now: datetime) -> Period:
        """The period containing `now` of a budget anchored at `anchor`."""
        if budget_period is None:
            return Period(start=anchor, end=None)
        length = timedelta(seconds=BUDGET_PERIODS[budget_period] * self.day_s)
        elapsed = max(0.0, (now - anchor).total_seconds())
        index = math.floor(elapsed / length.total_seconds())
        start = anchor + index * length
        return Period(start=start, end=start + length)


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


def scope_key(level: str, scope_id: str) -> str:
    """The name of one level's counters in the limit store, e.g. `team:7f3a...`."""
    return f"{level}:{scope_id}"


# A request's output caps, by API: Chat Completions' (and a lenient server's)
# `max_completion_tokens` and `max_tokens`, Anthropic's `max_tokens`, the Responses API's
# `max_output_tokens`.
OUTPUT_FIELDS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


# The largest count a lenient reading takes from a request's cap or `n`: beyond any
# model's, and far within a float's exact integers.
_MAX_COUNT = 10**12


def lenient_count(value: Any) -> int | None:
    """`value` as a count the way a lenient server reads it (pydantic's lax mode, as vLLM
    parses requests: `100`, `100.0`, `"100"`, `"1e5"`), rounded up and at most
    `_MAX_COUNT`; None for anything else (a boolean, a non-finite or non-positive
    number, text). OpenAI refuses all but integers, but a request is passed through as
    sent, so what it reserves must be what any upstream may read."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, int | float) and math.isfinite(value) and value > 0:
        return min(math.ceil(value), _MAX_COUNT)
    return None


def choices(body: dict[str, Any]) -> int:
    """How many completions the request asks for (Chat Completions' `n`, read leniently:
    `lenient_count`; 1 otherwise): each may use the whole output cap."""
    n = lenient_count(body.get("n"))
    return n if n is not None and n > 1 else 1


def output_cap(body: dict[str, Any], default: int) -> int:
    """The most output tokens the request allows: the largest of its own caps, else
    `default`. The largest, whichever API was called: which field a deployment honours
    depends on it (Anthropic's `max_tokens`, OpenAI's `max_completion_tokens`, a lenient
    server's either), and a smaller one sent beside it must not shrink the reservation.
    Each is read leniently (`lenient_count`): `"100000"` is 100,000 to some servers."""
    caps = [value for name in OUTPUT_FIELDS if (value := lenient_count(body.get(name)))]
    return max(caps, default=default)
