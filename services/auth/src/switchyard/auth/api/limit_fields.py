"""Request and response fields of budgets and rate limits, and of the response cache
opt-in of teams and keys, shared by the key and admin routers."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidatorFunctionWrapHandler, WrapValidator

from switchyard.auth.governance import CACHE_FIELDS, limits_of
from switchyard.auth.models import LimitColumns
from switchyard.common.governance import LIMIT_FIELDS
from switchyard.common.nulfree import NulFreeBody


def _integer_as_sent(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """A strict float field's value, but an integer kept one: the messages of
    `check_limit_values` then echo -1 as sent, not as -1.0."""
    checked = handler(value)
    # `type(...) is int`: a boolean is refused by the handler above anyway.
    return value if type(value) is int else checked


# Any JSON number (integers included): the range checks of `check_limit_values` answer with
# a 400 that names the field and says what is wrong (negative, absurd, unknown period).
# Never a boolean or a numeric string: the models below are strict. Not `int | float`: a
# union's errors name its member (`rpm_limit.int`), not the field.
Number = Annotated[float | None, WrapValidator(_integer_as_sent)]
# Request models take each field in its own JSON type only: pydantic's lax mode would store
# `true` as 1 and `"60"` as 60. Strict floats still take JSON integers.
# Unknown fields are refused, not dropped: a caller who misnames one learns of it.
STRICT = ConfigDict(strict=True, extra="forbid")


class LimitsIn(NulFreeBody):
    """Limits to set; a field sent as null removes that limit, an absent one keeps it."""

    model_config = ConfigDict(extra="forbid", strict=True)

    max_budget_usd: Number = Field(default=None, description="USD per budget period.")
    budget_period: str | None = Field(default=None, description="1d, 7d, 30d or none.")
    rpm_limit: Number = Field(default=None, description="Requests per minute.")
    tpm_limit: Number = Field(default=None, description="Tokens per minute.")
    max_parallel_requests: Number = Field(default=None, description="Requests at once.")

    def patch(self) -> dict[str, Any]:
        """The limit fields the request sent, name to value (None: remove that limit); absent
        fields are left out."""
        return {name: getattr(self, name) for name in LIMIT_FIELDS if name in self.model_fields_set}


class LimitsOut(BaseModel):
    """The limits set at one level (null: no limit): budget in USD per period (`1d`, `7d`,
    `30d`, or null for a lifetime budget), requests and tokens per minute, and concurrent
    requests."""

    max_budget_usd: float | None
    budget_period: str | None
    budget_anchor_at: datetime | None = Field(
        description="Budget periods start at this instant plus whole periods."
    )
    rpm_limit: int | None
    tpm_limit: int | None
    max_parallel_requests: int | None

    @classmethod
    def of(cls, row: LimitColumns | None) -> LimitsOut:
        """The limits stored on a tenant, team, user or key row, with its budget anchor; all null
        for None."""
        limits = limits_of(row)
        return cls(
            **limits.model_dump(),
            budget_anchor_at=getattr(row, "budget_anchor_at", None) if row is not None else None,
        )


class CacheIn(NulFreeBody):
    """The response cache opt-in of a team or key; an absent field keeps its value, null
    removes it (the level above decides: key, then team, then the tenant's setting)."""

    model_config = STRICT

    cache_enabled: bool | None = Field(
        default=None,
        description="Answer repeated deterministic requests from the response cache.",
    )
    # Any number: `apply_cache` answers one out of range with a 400 saying the range.
    cache_ttl_s: Number = Field(
        default=None, description="Seconds a cached answer is reused (1 to 604800)."
    )

    def cache_patch(self) -> dict[str, Any]:
        """The cache fields the request sent, name to value (None: unset); absent fields are left
        out."""
        return {name: getattr(self, name) for name in CACHE_FIELDS if name in self.model_fields_set}


class CacheOut(BaseModel):
    """A team's or key's response cache opt-in (null: not set at this level)."""

    cache_enabled: bool | None = None
    cache_ttl_s: int | None = None
