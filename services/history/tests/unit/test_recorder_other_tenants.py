"""Events naming another tenant never change, nor make history drop, anything of a request:
not when they come under the ids the request's own events will come with (event ids are
public: inference derives its replies' and usage records' from their request's), and not
when they reach history before the request, whose own reply and usage came meanwhile."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY

from switchyard.common.events import ChatRequested, EnvelopeFields, TerminalStatus
from switchyard.history import rollup
from switchyard.history.queries import UsageQuery

INTRUDER = "intruder"
# Around the events' times (the factory's clock starts on 2025-03-01).
SINCE, UNTIL = datetime(2025, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC)


def inference_id(request: ChatRequested, suffix: str) -> str:
    """The id inference gives the reply (`reply`) or usage record (`usage`) of `request`
    (switchyard.inference.outcomes), which anyone reading the requests topic can compute."""
    owner = hashlib.blake2b(
        f"{request.tenant}\0{request.request_id}".encode(), digest_size=8
    ).hexdigest()
    return f"{request.id}.{suffix}.{owner}"


def forged(event: EnvelopeFields, **update: object) -> EnvelopeFields:
    """`event` as a producer writes it under another tenant."""
    return event.model_copy(update={"tenant": INTRUDER, **update})


def counted(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def usage_of(engine, queries, tenant: str) -> list[tuple]:
    """The tenant's usage report over the events' year, once the rollup has caught up."""
    await rollup.refresh(engine, settle=timedelta(0))
    query = UsageQuery(since=SINCE, until=UNTIL, bucket=None, tenant=tenant)
    return [
        (row.requests, row.completed, row.errors, row.input_tokens, row.cost_usd)
        for row in await queries.usage(query)
        if row.requests
    ]


def assert_answered(row: dict, request: ChatRequested) -> None:
    """The row of `request` as its own events make it: completed with its answer and cost."""
    assert (row["tenant"], row["status"], row["request_body"]) == (
        "acme",
        "completed",
        request.data.body,
    )
    assert row["response"]["choices"][0]["message"]["content"] == "4"
    assert (row["cost_usd"], row["input_tokens"], row["error"]) == (0.01, 7, None)


@pytest.mark.parametrize("forgery", ["failed", "usage", "refusal"])
async def test_a_request_after_another_tenants_events_keeps_its_own_reply_and_usage(
    recorder, tables, events, engine, queries, forgery
):
    """Batch 1: another tenant's event under the request's id makes its row; batch 2: the
    request's own reply and usage (a reply overtaking its request is a normal order), which
    that row ignores; batch 3: the request, which takes the row back. The row ends as the
    request's own events make it, not pending with no answer and no cost (then expired
    though the client had its answer)."""
    request = events.requested()
    reply = events.completed(request, answer="4")
    usage = events.usage(request, input_tokens=7, cost_usd=0.01)
    made_by = {
        "failed": [forged(events.failed(request))],
        "usage": [forged(events.usage(request, cost_usd=99.0))],
        # A refusal counts in its tenant's usage: the other tenant's stops counting it.
        "refusal": [forged(event) for event in events.refusal(request.request_id, tenant="acme")],
    }[forgery]

    await recorder.record(made_by)
    taken = await tables.request(request.request_id)
    if forgery == "refusal":
        assert await usage_of(engine, queries, INTRUDER) == [(1, 0, 1, 0, 0.0)]
    await recorder.record([reply, usage])
    await recorder.record([request])

    assert taken["tenant"] == INTRUDER
    row = await tables.request(request.request_id)
    assert_answered(row, request)
    assert sorted(await tables.event_ids()) == sorted(
        event.id for event in [*made_by, reply, usage, request]
    )
    assert await usage_of(engine, queries, "acme") == [(1, 1, 0, 7, 0.01)]
    assert await usage_of(engine, queries, INTRUDER) == []

    # Redelivered, every event is a copy: nothing changes, nothing is counted again.
    await recorder.record([*made_by, reply, usage, request])
    assert await tables.request(request.request_id) == row
    assert await usage_of(engine, queries, "acme") == [(1, 1, 0, 7, 0.01)]


async def test_own_events_stored_before_the_request_fold_in_arrival_order(recorder, tables, events):
    """The request's own outcome that came first is its outcome, as without the other
    tenant's event."""
    request = events.requested()
    first = events.completed(request, answer="4")
    late = events.failed(request, status=TerminalStatus.EXPIRED)
    await recorder.record([forged(events.usage(request, cost_usd=99.0))])
    await recorder.record([first])
    await recorder.record([late, events.usage(request, input_tokens=7, cost_usd=0.01)])
    await recorder.record([request])

    assert_answered(await tables.request(request.request_id), request)


@pytest.mark.parametrize("same_request", [True, False], ids=["same-request", "other-request"])
@pytest.mark.parametrize("after_request", [False, True], ids=["before-it", "after-it"])
async def test_events_under_the_ids_of_a_requests_coming_reply_and_usage_do_not_replace_them(
    recorder, tables, events, engine, queries, same_request, after_request
):
    """Another tenant's `chat.failed` and `usage.recorded` written under the ids of the
    request's reply and usage before these arrive are stored; the real ones are stored too
    (not dropped as copies of them): the row completes with the answer and cost, and a
    redelivered copy of the real ones is still recognised (stored and counted once)."""
    request = events.requested()
    reply = events.completed(request, answer="4").model_copy(
        update={"id": inference_id(request, "reply")}
    )
    usage = events.usage(request, input_tokens=7, cost_usd=0.01).model_copy(
        update={"id": inference_id(request, "usage")}
    )
    victim = request if same_request else events.requested()
    forgeries = [
        forged(events.failed(victim), id=reply.id),
        forged(events.usage(victim, cost_usd=0.0, input_tokens=0), id=usage.id),
    ]
    collisions = {
        kind: counted("switchyard_history_event_id_collisions_total", type=kind)
        for kind in ("chat.completed", "usage.recorded")
    }

    await recorder.record([request] if after_request else [])
    await recorder.record(forgeries)
    await recorder.record([] if after_request else [request])
    await recorder.record([reply])
    await recorder.record([usage])

    row = await tables.request(request.request_id)
    assert_answered(row, request)
    assert await tables.event_count() == 5
    for kind in ("chat.completed", "usage.recorded"):
        assert counted("switchyard_history_event_id_collisions_total", type=kind) == (
            collisions[kind] + 1
        )
    persisted = counted("switchyard_history_events_persisted_total", type="chat.completed")

    await recorder.record([reply, usage])
    await recorder.record([usage, forgeries[0], reply])

    assert await tables.event_count() == 5
    assert await tables.request(request.request_id) == row
    assert counted("switchyard_history_events_persisted_total", type="chat.completed") == (
        persisted
    )
    for kind in ("chat.completed", "usage.recorded"):
        assert counted("switchyard_history_event_id_collisions_total", type=kind) == (
            collisions[kind] + 1
        )
    assert await usage_of(engine, queries, "acme") == [(1, 1, 0, 7, 0.01)]
    assert await usage_of(engine, queries, INTRUDER) == []


async def test_an_event_under_the_id_of_a_coming_request_does_not_replace_it(
    recorder, tables, events, engine, queries
):
    """Another tenant's event copying the event id of a request history has not read yet:
    the request is recorded all the same, and its reply completes it."""
    request = events.requested()
    other = events.requested(tenant=INTRUDER).model_copy(update={"id": request.id})
    await recorder.record([other])

    await recorder.record([request])
    await recorder.record([events.completed(request, answer="4")])
    await recorder.record([events.usage(request, input_tokens=7, cost_usd=0.01)])
    await recorder.record([request])  # redelivered: a copy

    assert_answered(await tables.request(request.request_id), request)
    assert (await tables.request(other.request_id))["tenant"] == INTRUDER
    assert await tables.event_count() == 4
    assert await usage_of(engine, queries, "acme") == [(1, 1, 0, 7, 0.01)]
    assert await usage_of(engine, queries, INTRUDER) == [(1, 0, 0, 0, 0.0)]


async def test_two_events_under_one_id_in_one_batch_are_both_recorded(recorder, tables, events):
    """The forgeries and the real reply and usage in one batch, then redelivered in other
    orders: each event is stored once, the row is the request's own."""
    request = events.requested()
    reply = events.completed(request, answer="4")
    usage = events.usage(request, input_tokens=7, cost_usd=0.01)
    forgeries = [
        forged(events.failed(request), id=reply.id),
        forged(events.usage(request, cost_usd=99.0), id=usage.id),
    ]

    await recorder.record([request, *forgeries, reply, usage])
    row = await tables.request(request.request_id)
    await recorder.record([usage, reply, *reversed(forgeries)])
    await recorder.record([forgeries[1], usage])
    await recorder.record([usage, forgeries[1]])

    assert_answered(row, request)
    assert await tables.request(request.request_id) == row
    assert await tables.event_count() == 5


async def test_a_usage_record_under_its_replys_id_is_recorded_not_taken_for_a_copy(
    recorder, tables, events, engine, queries
):
    """An event of the request's own tenant and request, but of another type, under the
    id of one stored: not the same event (a usage record is no copy of a reply), so it is
    stored under an id derived from its type too, counted, and its own redelivery is still
    recognised. It was dropped as a duplicate: the row kept the reply's tokens and no
    cost."""
    request = events.requested()
    reply = events.completed(request, answer="4")
    usage = events.usage(request, input_tokens=7, cost_usd=0.01).model_copy(update={"id": reply.id})
    before = counted("switchyard_history_event_id_collisions_total", type="usage.recorded")

    await recorder.record([request, reply])
    await recorder.record([usage])

    row = await tables.request(request.request_id)
    assert_answered(row, request)
    assert await tables.event_count() == 3
    assert counted("switchyard_history_event_id_collisions_total", type="usage.recorded") == (
        before + 1
    )
    await recorder.record([usage, reply])
    assert await tables.event_count() == 3
    assert await tables.request(request.request_id) == row
    assert await usage_of(engine, queries, "acme") == [(1, 1, 0, 7, 0.01)]
