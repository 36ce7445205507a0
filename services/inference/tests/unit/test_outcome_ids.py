"""The ids of the events inference writes for a request: the same on every redelivery of
it, never those of another request's events (history keeps one event per id)."""

from __future__ import annotations

from switchyard.inference.outcomes import FixedPrices, OutcomeEvents
from switchyard.inference.pricing import PriceTable
from switchyard.inference.testing import chat_request


def test_a_request_copying_another_s_event_id_gets_ids_of_its_own() -> None:
    outcomes = OutcomeEvents(FixedPrices(PriceTable()))
    victim = chat_request()
    copy = victim.model_copy(update={"tenant": "intruder", "request_id": "forged-request"})
    redelivered = victim.model_copy()

    ids = {suffix: outcomes.envelope(victim, suffix)["id"] for suffix in ("reply", "usage")}

    assert ids == {s: outcomes.envelope(redelivered, s)["id"] for s in ("reply", "usage")}
    assert all(outcomes.envelope(copy, s)["id"] != ids[s] for s in ("reply", "usage"))
    assert all(len(value) <= 64 for value in ids.values())  # history's event id column
