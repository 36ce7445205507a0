"""Request bodies checked for what PostgreSQL cannot bind: its text and jsonb values cannot
hold a NUL character (U+0000), so a NUL in a JSON body field that a service stores or
looks up would fail in the database (a 500). `NulFreeBody`, a base for request body models,
refuses it during validation instead, which the services answer as a 400 `invalid_request`
naming the field (`errors.validation_error`), on SQLite, which takes NUL, as on PostgreSQL.
A NUL in the URL is refused before any route (`limits.BodySizeLimit`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, field_validator

NUL = "\x00"
NUL_MESSAGE = "must not contain a NUL character (U+0000)"


def holds_nul(value: Any) -> bool:
    """Whether `value` (a string, or lists, tuples, sets, dicts or pydantic models holding
    them, dict keys included, at any depth) holds a NUL character anywhere; False for any
    other value. Walked with a list, not recursion: a deep value never raises
    RecursionError."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if NUL in item:
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            pending.extend(item)
        elif isinstance(item, BaseModel):
            pending.extend(item.__dict__.values())
    return False


class NulFreeBody(BaseModel):
    """A request body whose string fields (and the strings nested in their lists and
    objects, keys too) may not hold a NUL character: validating one that does raises
    pydantic's ValidationError naming the field."""

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        if holds_nul(value):
            raise ValueError(NUL_MESSAGE)
        return value
