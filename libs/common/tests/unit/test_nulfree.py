"""`holds_nul` finds a NUL character wherever a body holds one, at any depth, without
recursion; `NulFreeBody` refuses it naming the field."""

from __future__ import annotations

import pydantic
import pytest

from switchyard.common.nulfree import NulFreeBody, holds_nul


class Inner(pydantic.BaseModel):
    note: str


def test_a_nul_is_found_anywhere_in_a_value_and_nothing_else_counts() -> None:
    assert holds_nul("a\x00b")
    assert holds_nul({"k": [1, {"deep": ("x", "y\x00")}]})
    assert holds_nul({"key\x00": 1})
    assert holds_nul({"s": {"a", "b\x00"}})
    assert holds_nul([Inner(note="n\x00")])
    assert not holds_nul({"k": ["a", 1, 2.5, None, True, Inner(note="n")]})
    assert not holds_nul("\\u0000")  # the six characters of an escape are text


def test_a_deep_value_is_walked_without_running_out_of_stack() -> None:
    deep: object = "x\x00"
    for _ in range(5_000):
        deep = [deep]
    assert holds_nul(deep)
    deep = {"leaf": "clean"}
    for _ in range(5_000):
        deep = {"next": deep}
    assert not holds_nul(deep)


class Body(NulFreeBody):
    name: str
    tags: list[str] = []


def test_a_body_holding_a_nul_is_refused_naming_the_field() -> None:
    with pytest.raises(pydantic.ValidationError) as refused:
        Body(name="ok", tags=["a", "b\x00"])
    [error] = refused.value.errors()
    assert error["loc"] == ("tags",) and "NUL" in error["msg"]
    assert Body(name="ok", tags=["a"]).tags == ["a"]
