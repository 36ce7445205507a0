"""Limits validation and budget periods shared by auth and the gateway."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from switchyard.common.governance import (
    BudgetClock,
    LimitError,
    Limits,
    check_limit_values,
    check_within,
)


@pytest.mark.parametrize(
    ("values", "param"),
    [
        ({"rpm_limit": -1}, "rpm_limit"),
        ({"tpm_limit": 10**12}, "tpm_limit"),
        ({"max_budget_usd": float("inf")}, "max_budget_usd"),
        ({"max_budget_usd": -0.01}, "max_budget_usd"),
        ({"max_parallel_requests": 2.5}, "max_parallel_requests"),
        ({"max_budget_usd": 5, "budget_period": "2w"}, "budget_period"),
        ({"budget_period": "1d"}, "budget_period"),
        ({"rpm_limit": True}, "rpm_limit"),
        ({"max_budget_usd": 5e-324}, "max_budget_usd"),
        ({"max_budget_usd": 0.0000009}, "max_budget_usd"),
    ],
)
def test_bad_limits_are_refused_naming_the_field(values: dict, param: str) -> None:
    with pytest.raises(LimitError) as caught:
        check_limit_values(values)
    assert caught.value.param == param
    assert param in str(caught.value)


def test_good_limits_are_normalised() -> None:
    limits = check_limit_values(
        {"rpm_limit": 60.0, "max_budget_usd": 5, "budget_period": "none", "tpm_limit": None}
    )
    assert limits == Limits(rpm_limit=60, max_budget_usd=5.0)
    assert Limits().empty and not limits.empty


@pytest.mark.parametrize(
    ("values", "echoed"),
    [
        ({"rpm_limit": -1}, "(got -1)"),
        ({"max_budget_usd": -2}, "(got -2)"),
        ({"max_budget_usd": -0.5}, "(got -0.5)"),
        ({"tpm_limit": 10**12}, "(1000000000000)"),
        ({"max_budget_usd": 1e-300}, "(got 1e-300)"),
    ],
)
def test_a_refused_number_is_echoed_as_given(values: dict, echoed: str) -> None:
    with pytest.raises(LimitError) as caught:
        check_limit_values(values)
    assert echoed in str(caught.value)


@pytest.mark.parametrize("spelling", ["30D", " 30d ", "30d"])
def test_budget_periods_are_read_in_any_case_as_none_is(spelling: str) -> None:
    limits = check_limit_values({"max_budget_usd": 5, "budget_period": spelling})
    assert limits.budget_period == "30d"
    assert Limits(max_budget_usd=5, budget_period=spelling).budget_period == "30d"
    assert check_limit_values({"max_budget_usd": 5, "budget_period": "NONE"}).budget_period is None


def test_a_negative_zero_budget_is_stored_as_zero() -> None:
    # JSON's -0.0 passes the sign check; it is a budget of zero, shown as 0.0 ("-0.0" would
    # read as a typo, and a float's sign survives a round trip through storage).
    limits = check_limit_values({"max_budget_usd": -0.0})
    assert limits.max_budget_usd == 0.0
    assert str(limits.max_budget_usd) == "0.0"


def test_a_child_limit_above_its_parent_names_the_field() -> None:
    team = Limits(rpm_limit=50, max_budget_usd=10, budget_period="30d")
    with pytest.raises(LimitError) as caught:
        check_within(Limits(rpm_limit=100), team, "api_key", "team")
    assert caught.value.param == "rpm_limit"
    assert "team" in str(caught.value)
    # Budgets of different periods are not comparable; equal periods are.
    check_within(Limits(max_budget_usd=20, budget_period="1d"), team, "api_key", "team")
    with pytest.raises(LimitError):
        check_within(Limits(max_budget_usd=20, budget_period="30d"), team, "api_key", "team")


def test_budget_periods_are_anchored_and_scalable() -> None:
    anchor = datetime(2025, 1, 1, 12, tzinfo=UTC)
    clock = BudgetClock()
    period = clock.period("7d", anchor, anchor + timedelta(days=8))
    assert period.start == anchor + timedelta(days=7)
    assert period.end == anchor + timedelta(days=14)
    assert clock.period(None, anchor, anchor + timedelta(days=400)).end is None
    # Tests shorten the day: a "1d" budget then lasts two seconds.
    fast = BudgetClock(day_s=2)
    assert fast.period("1d", anchor, anchor + timedelta(seconds=5)).start == anchor + timedelta(
        seconds=4
    )


def test_the_budget_floor_holds_for_a_budget_being_set_not_one_stored_before_it() -> None:
    """A budget stored before the floor existed (1e-300) must not block a change of
    another limit of its row; setting such a budget now is refused."""
    stored = {"max_budget_usd": 1e-300, "rpm_limit": 60}
    assert check_limit_values(stored, changed={"rpm_limit"}).rpm_limit == 60
    with pytest.raises(LimitError) as refused:
        check_limit_values(stored, changed={"max_budget_usd"})
    assert refused.value.param == "max_budget_usd"
    with pytest.raises(LimitError):
        check_limit_values(stored)
