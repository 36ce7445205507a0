"""The recorder: every event stored once, and one projection row per request that ends in
exactly one terminal state, whatever order and however often events are delivered."""

from __future__ import annotations

import itertools

import pytest
from sqlalchemy import select

from switchyard.common.db import create_engine, upgrade
from switchyard.common.events import TerminalStatus
from switchyard.history.config import MIGRATIONS_DIR, VERSION_TABLE
from switchyard.history.handlers import EventRecorder
from switchyard.history.models import requests_table


async def test_request_then_reply_gives_one_completed_row(recorder, tables, events):
    request = events.requested(prompt="What is 2+2?")
    reply = events.completed(request, answer="4")

    await recorder.record([request])
    pending = await tables.request(request.request_id)
    await recorder.record([reply])

    rows = await tables.requests()
    assert list(rows) == [request.request_id]
    row = rows[request.request_id]
    assert pending["status"] == "pending"
    assert row["status"] == "completed"
    assert row["request_body"]["messages"][0]["content"] == "What is 2+2?"
    assert row["response"]["choices"][0]["message"]["content"] == "4"
    assert (row["tenant"], row["user_id"], row["model"]) == ("acme", "alice", "sim-small")
    assert (row["input_tokens"], row["output_tokens"], row["latency_ms"]) == (5, 3, 42.5)
    assert row["created_at"] == request.time
    assert row["completed_at"] == reply.time
    assert row["error"] is None


async def test_usage_record_fills_tokens_and_cost(recorder, tables, events):
    request = events.requested()
    await recorder.record(
        [
            request,
            events.completed(request, input_tokens=5, output_tokens=3),
            events.usage(request, input_tokens=7, output_tokens=9, cost_usd=0.5),
        ]
    )

    row = await tables.request(request.request_id)
    assert (row["input_tokens"], row["output_tokens"], row["cost_usd"], row["latency_ms"]) == (
        7,
        9,
        0.5,
        43.0,
    )
    assert row["status"] == "completed"


async def _row_after(tmp_path, name: str, batches: list[list]) -> dict:
    url = f"sqlite+aiosqlite:///{tmp_path / name}.db"
    upgrade(MIGRATIONS_DIR, url, VERSION_TABLE)
    engine = create_engine(url)
    try:
        recorder = EventRecorder(engine)
        for batch in batches:
            await recorder.record(batch)
        async with engine.connect() as connection:
            rows = (await connection.execute(select(requests_table))).mappings().all()
        assert len(rows) == 1, "every order must produce exactly one row"
        return dict(rows[0])
    finally:
        await engine.dispose()


async def test_reply_before_request_gives_the_same_row(tmp_path, events):
    request = events.requested()
    reply = events.completed(request)

    in_order = await _row_after(tmp_path, "in-order", [[request], [reply]])
    reply_first = await _row_after(tmp_path, "reply-first", [[reply], [request]])

    assert reply_first == in_order
    assert reply_first["status"] == "completed"
    assert reply_first["created_at"] == request.time


async def test_any_delivery_order_and_batching_gives_the_same_row(tmp_path, events):
    request = events.requested()
    all_events = [request, events.completed(request), events.usage(request)]
    reference = await _row_after(tmp_path, "reference", [[event] for event in all_events])

    for index, order in enumerate(itertools.permutations(all_events)):
        one_by_one = await _row_after(tmp_path, f"single-{index}", [[event] for event in order])
        one_batch = await _row_after(tmp_path, f"batch-{index}", [list(order)])
        assert one_by_one == reference, [event.type for event in order]
        assert one_batch == reference, [event.type for event in order]
    assert reference["cost_usd"] == pytest.approx(0.0021)


async def test_usage_records_of_two_runs_add_up_in_any_order(tmp_path, events):
    # A run ended by another replica (0 tokens: it never called the upstream) while the
    # first run, frozen, went on and billed its call: two records with ids of their own.
    # The first to arrive used to win, dropping the real tokens.
    request = events.requested()
    taken_over = events.usage(request, input_tokens=0, output_tokens=0, cost_usd=0.0)
    real = events.usage(
        request, input_tokens=8, output_tokens=1, cost_usd=0.25, cache_read_input_tokens=2
    )
    reply = events.failed(request)
    reference = None
    for index, order in enumerate(itertools.permutations([request, reply, taken_over, real])):
        one_by_one = await _row_after(tmp_path, f"runs-{index}", [[event] for event in order])
        one_batch = await _row_after(tmp_path, f"runs-batch-{index}", [list(order)])
        assert one_by_one == one_batch, [event.type for event in order]
        reference = reference or one_by_one
        assert one_by_one == reference, [event.type for event in order]
    assert reference is not None
    assert (reference["input_tokens"], reference["output_tokens"]) == (8, 1)
    assert reference["cache_read_input_tokens"] == 2
    assert reference["cost_usd"] == pytest.approx(0.25)


async def test_usage_records_adding_up_past_what_a_record_may_say_stop_at_it(tmp_path, events):
    # Each record is within the contract's bounds; their sum was not, and failed the batch
    # (on every retry: history stalled for every tenant).
    from switchyard.common.events import MAX_COST_USD, MAX_TOKEN_COUNT

    request = events.requested()
    huge = [
        events.usage(request, input_tokens=MAX_TOKEN_COUNT, output_tokens=1, cost_usd=MAX_COST_USD)
        for _ in range(2)
    ]
    for name, batches in (("one", [[request, *huge]]), ("apart", [[request], huge[:1], huge[1:]])):
        row = await _row_after(tmp_path, f"huge-{name}", batches)
        assert row["input_tokens"] == MAX_TOKEN_COUNT and isinstance(row["input_tokens"], int)
        assert row["output_tokens"] == 2
        assert row["cost_usd"] == MAX_COST_USD


async def test_a_copy_of_a_usage_record_is_counted_once(recorder, tables, events):
    request = events.requested()
    first = events.usage(request, input_tokens=7, output_tokens=9, cost_usd=0.5)
    second = events.usage(request, input_tokens=1, output_tokens=1, cost_usd=0.25)
    await recorder.record([request, first, second])
    await recorder.record([first, second, first])
    await recorder.record([second])

    row = await tables.request(request.request_id)
    assert (row["input_tokens"], row["output_tokens"]) == (8, 10)
    assert row["cost_usd"] == pytest.approx(0.75)


async def test_every_copy_skipped_is_counted_within_a_batch_too(recorder, tables, events):
    # The counter's help: events received again and skipped. Copies within one batch
    # were left out of it (3 copies of a stored event counted 1).
    from prometheus_client import REGISTRY

    def skipped() -> float:
        return REGISTRY.get_sample_value("switchyard_history_events_duplicate_total") or 0.0

    request = events.requested()
    usage = events.usage(request, input_tokens=7, output_tokens=9, cost_usd=0.5)
    await recorder.record([request, usage])
    before = skipped()
    await recorder.record([usage, usage, usage])
    assert skipped() - before == 3
    fresh = events.requested()
    await recorder.record([fresh, fresh])  # one stored, one skipped
    assert skipped() - before == 4


async def test_replaying_every_event_changes_nothing(recorder, tables, events):
    first, second = events.requested(), events.requested(user_id="bob")
    history = [first, events.completed(first), events.usage(first), second, events.failed(second)]
    await recorder.record(history)
    rows_before, events_before = await tables.requests(), sorted(await tables.event_ids())

    # Redelivery of a whole batch, one by one, and twice within one batch.
    await recorder.record(history)
    for event in reversed(history):
        await recorder.record([event])
    await recorder.record(history + history)

    assert await tables.requests() == rows_before
    assert (
        sorted(await tables.event_ids()) == events_before == sorted(event.id for event in history)
    )


async def test_failure_after_completion_keeps_the_completed_result(recorder, tables, events):
    request = events.requested()
    await recorder.record([request, events.completed(request, answer="done")])
    await recorder.record([events.failed(request, status=TerminalStatus.EXPIRED)])

    row = await tables.request(request.request_id)
    assert row["status"] == "completed"
    assert row["response"]["choices"][0]["message"]["content"] == "done"
    assert row["error"] is None
    assert row["latency_ms"] == 42.5  # the losing event's details are not mixed in
    # A request has one terminal state in history: the late second outcome is not stored
    # (it is logged and counted in switchyard_history_outcomes_superseded_total).
    assert await tables.event_count() == 2


async def test_completion_after_failure_keeps_the_failure(recorder, tables, events):
    request = events.requested()
    failure = events.failed(request, status=TerminalStatus.CANCELLED)
    await recorder.record([request, failure])
    await recorder.record([events.completed(request)])

    row = await tables.request(request.request_id)
    assert row["status"] == "cancelled"
    assert row["error"]["code"] == "provider_down"
    assert row["response"] is None
    assert row["completed_at"] == failure.time


async def test_stream_chunks_are_not_stored(recorder, tables, events):
    request = events.requested()
    await recorder.record([request, events.chunk(request, 0), events.chunk(request, 1)])
    await recorder.record([events.chunk(request, 2)])

    assert await tables.event_ids() == [request.id]
    assert (await tables.request(request.request_id))["status"] == "pending"


async def test_a_reply_alone_creates_a_row_that_the_request_completes(recorder, tables, events):
    request = events.requested(user_id="carol", model="sim-large")
    await recorder.record([events.usage(request), events.completed(request)])
    orphan = await tables.request(request.request_id)
    await recorder.record([request])
    row = await tables.request(request.request_id)

    assert orphan["request_body"] is None and orphan["status"] == "completed"
    assert row["request_body"] == request.data.body
    assert (row["user_id"], row["model"], row["status"]) == ("carol", "sim-large", "completed")
    assert row["deadline"] == request.data.deadline


@pytest.mark.parametrize("together", [False, True], ids=["apart", "in-one-batch"])
async def test_events_naming_another_tenant_do_not_change_a_requests_row(
    recorder, tables, events, together
):
    """A reply or usage record written under another tenant's request id (a producer with
    access to the topics) is stored as an event, but is not that request's outcome: the
    row keeps its tenant, status, answer and cost, and the request's own reply still
    completes it."""
    request = events.requested()
    forged = [
        events.completed(request, answer="forged").model_copy(update={"tenant": "intruder"}),
        events.usage(request, cost_usd=99.0).model_copy(update={"tenant": "intruder"}),
    ]
    if together:
        await recorder.record([request, *forged])
    else:
        await recorder.record([request])
        await recorder.record(forged)
    row = await tables.request(request.request_id)
    assert (row["tenant"], row["status"], row["response"], row["cost_usd"]) == (
        "acme",
        "pending",
        None,
        None,
    )

    await recorder.record([events.completed(request, answer="4")])
    row = await tables.request(request.request_id)
    assert row["tenant"] == "acme" and row["status"] == "completed"
    assert row["response"]["choices"][0]["message"]["content"] == "4"


@pytest.mark.parametrize(
    "batches",
    [[0, 1, 1, 1], [0, 0, 0, 0], [0, 1, 2, 2]],
    ids=["apart", "in-one-batch", "reply-later"],
)
async def test_a_request_takes_back_a_row_another_tenants_events_made_before_it(
    recorder, tables, events, batches
):
    """Events of another tenant under a request id that arrive before the request make a
    row; the request, when it comes, makes the row its own: nothing the other tenant's
    events said (answer, cost) is shown as the request's, and its own reply is its
    outcome (a forged outcome under another tenant never stands in for it). A second
    request under that id from another tenant changes nothing."""
    request = events.requested()
    forged = [
        events.usage(request, cost_usd=99.0).model_copy(update={"tenant": "intruder"}),
        events.completed(request, answer="forged").model_copy(update={"tenant": "intruder"}),
    ]
    own = [request, events.completed(request, answer="4"), events.usage(request, cost_usd=0.01)]
    # `batches`: the batch each of [the forged events, the request, its reply, its usage]
    # is recorded in.
    grouped: dict[int, list] = {}
    for index, chunk in zip(batches, [forged, [own[0]], [own[1]], [own[2]]], strict=True):
        grouped.setdefault(index, []).extend(chunk)
    for index in sorted(grouped):
        await recorder.record(grouped[index])
    await recorder.record(
        [
            events.requested().model_copy(
                update={
                    "tenant": "intruder",
                    "request_id": request.request_id,
                    "id": "forged-request",
                }
            )
        ]
    )

    row = await tables.request(request.request_id)
    assert (row["tenant"], row["status"], row["cost_usd"], row["request_body"]) == (
        "acme",
        "completed",
        0.01,
        request.data.body,
    )
    assert row["response"]["choices"][0]["message"]["content"] == "4"


async def test_integers_beyond_64_bits_in_a_reply_are_stored_and_read_exactly(
    recorder, tables, events
):
    """A reply may hold integers orjson cannot write (a model's tool input): history keeps
    their digits instead of failing the batch on them."""
    big = 123456789012345678901234567890
    request = events.requested()
    reply = events.completed(request, answer="4")
    reply.data.response["choices"][0]["message"]["big"] = big

    await recorder.record([request, reply])

    row = await tables.request(request.request_id)
    assert row["status"] == "completed"
    assert row["response"]["choices"][0]["message"]["big"] == big
    assert await tables.event_count() == 2
