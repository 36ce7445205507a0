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


def test_the_ids_of_a_request_with_the_longest_ids_fit_history() -> None:
    # A request event id of 64 characters (the most the contract takes) made reply and
    # usage ids of 87, which history's database refused: answered, recorded as expired.
    from switchyard.common.events import StreamEvent
    from switchyard.inference.publishing import chunk_records

    outcomes = OutcomeEvents(FixedPrices(PriceTable()))
    request = chat_request().model_copy(update={"id": "e" * 64, "request_id": "r" * 64})

    ids = [outcomes.envelope(request, suffix)["id"] for suffix in ("reply", "usage")]
    chunks = chunk_records(request.request_id, request.id, request.tenant, "0123456789abcdef")

    assert all(len(value) <= 64 for value in ids)
    assert len(ids[0]) == len(ids[1]) and ids[0] != ids[1]
    assert len(chunks(99_999_999, [StreamEvent(data={})]).id) <= 64


def test_a_cost_beyond_what_an_event_says_is_the_most_it_says() -> None:
    # The most tokens an upstream may report at a custom price: never a usage record
    # refused by the contract (lost), the most a cost may say instead.
    from switchyard.common.events import MAX_COST_USD, MAX_TOKEN_COUNT, TerminalStatus, TokenUsage
    from switchyard.common.pricing import Price
    from switchyard.common.routing import Deployment
    from switchyard.inference.outcomes import Outcome

    prices = PriceTable(deployments={"d": Price(input_per_1m=1e300, output_per_1m=1e300)})
    outcomes = OutcomeEvents(FixedPrices(prices))
    request = chat_request()
    deployment = Deployment(
        name="d", provider="openai", model="m", base_url="http://127.0.0.1:9/v1"
    )
    outcome = Outcome(
        TerminalStatus.COMPLETED,
        response={"choices": []},
        deployment=deployment,
        usage=TokenUsage(input_tokens=MAX_TOKEN_COUNT, output_tokens=MAX_TOKEN_COUNT),
    )

    cost = outcomes.cost(request, outcome)

    assert cost == MAX_COST_USD
    assert outcomes.usage(request, outcome, cost, None).data.cost_usd == MAX_COST_USD


def test_each_run_of_a_request_has_a_usage_id_of_its_own() -> None:
    # A replica frozen mid-run, its request ended meanwhile by another (0 tokens, it never
    # called the upstream), wrote its real usage under the same id when it resumed:
    # history kept the first record and dropped the real tokens as a copy.
    from switchyard.common.events import TerminalStatus, TokenUsage
    from switchyard.inference.outcomes import Outcome
    from switchyard.inference.runs import RequestRun

    outcomes = OutcomeEvents(FixedPrices(PriceTable()))
    request = chat_request().model_copy(update={"id": "e" * 64, "request_id": "r" * 64})
    first, takeover = RequestRun(request), RequestRun(request)
    outcome = Outcome(TerminalStatus.COMPLETED, usage=TokenUsage(input_tokens=8))

    ids = {
        run.run_id: outcomes.usage(request, outcome, 0.0, None, run.run_id).id
        for run in (first, takeover)
    }
    again = outcomes.usage(request, outcome, 0.0, None, first.run_id).id

    assert len(set(ids.values())) == 2
    assert again == ids[first.run_id]  # the same run's record is the same event
    assert all(len(value) <= 64 for value in ids.values())
