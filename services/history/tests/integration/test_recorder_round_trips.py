"""What one batch costs the database on a real PostgreSQL server: the statements (round
trips) the recorder sends for a batch holding a request with its reply and usage, and that
the fewer statements still record exactly what the separate ones did: a tenant switched
to metadata only is honoured by the very next batch, replays (whole, or mixed with new
events) are no-ops for what is stored, the usage rollup's hour is marked dirty."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.common.db import upgrade
from switchyard.history.bootstrap import history_engine
from switchyard.history.config import MIGRATIONS_DIR, VERSION_TABLE
from switchyard.history.handlers import EventRecorder
from switchyard.history.models import events_table, requests_table, usage_dirty_table
from switchyard.history.rollup import hour_of
from switchyard.history.tenants import TenantSettingsStore

pytestmark = pytest.mark.integration


@pytest.fixture
async def engine(postgres_url: str) -> AsyncIterator[AsyncEngine]:
    upgrade(MIGRATIONS_DIR, postgres_url, VERSION_TABLE)
    engine = history_engine(postgres_url)
    yield engine
    await engine.dispose()


class Statements:
    """Counts the statements sent to the server (BEGIN and COMMIT aside)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.sent: list[str] = []
        event.listen(engine.sync_engine, "before_cursor_execute", self._sent)

    def _sent(self, conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001
        self.sent.append(statement)


async def row_of(engine: AsyncEngine, request_id: str) -> dict:
    """The projection's row of `request_id`."""
    async with engine.connect() as connection:
        result = await connection.execute(
            select(requests_table).where(requests_table.c.request_id == request_id)
        )
        return dict(result.mappings().one())


async def test_a_request_with_its_reply_and_usage_costs_two_statements(engine, events):
    recorder = EventRecorder(engine)
    await recorder.record([events.requested()])  # connections and statements warmed up
    statements = Statements(engine)
    request = events.requested()

    await recorder.record([request, events.completed(request), events.usage(request)])

    # Settings and row locks; the event store with the projection and the rollup's marks.
    assert len(statements.sent) == 2, statements.sent
    row = await row_of(engine, request.request_id)
    async with engine.connect() as connection:
        marks = (await connection.execute(select(usage_dirty_table))).mappings().all()
    assert row["status"] == "completed"
    assert row["cost_usd"] == pytest.approx(0.0021)
    assert row["request_body"] is not None
    assert {(mark["tenant"], mark["hour"]) for mark in marks} == {
        ("acme", hour_of(row["created_at"]))
    }


async def test_a_replayed_batch_changes_nothing(engine, events):
    recorder = EventRecorder(engine)
    request = events.requested()
    batch = [request, events.completed(request), events.usage(request)]
    await recorder.record(batch)
    async with engine.connect() as connection:
        before = (await connection.execute(select(requests_table))).mappings().all()

    await recorder.record(batch)
    await recorder.record(list(reversed(batch)))

    async with engine.connect() as connection:
        after = (await connection.execute(select(requests_table))).mappings().all()
        stored = (await connection.execute(select(events_table.c.event_id))).scalars().all()
    assert after == before
    assert sorted(stored) == sorted(e.id for e in batch)


async def test_a_batch_mixing_stored_and_new_events_projects_only_the_new_ones(engine, events):
    recorder = EventRecorder(engine)
    answered = events.requested()
    completed = events.completed(answered)
    await recorder.record([answered, completed])
    late = events.failed(answered)  # a second outcome: never recorded
    fresh = events.requested()
    statements = Statements(engine)

    await recorder.record([completed, late, events.usage(answered), fresh, answered])
    sent = [statement.split()[0] for statement in statements.sent]

    async with engine.connect() as connection:
        rows = {
            row["request_id"]: row
            for row in (await connection.execute(select(requests_table))).mappings()
        }
        stored = set((await connection.execute(select(events_table.c.event_id))).scalars())
    assert rows[answered.request_id]["status"] == "completed"
    assert rows[answered.request_id]["cost_usd"] == pytest.approx(0.0021)
    assert rows[fresh.request_id]["status"] == "pending"
    assert late.id not in stored and fresh.id in stored
    # The redelivered events are found out by the event store, and their ids alone looked
    # up (the same events, or another tenant's under their ids?): the projection is then
    # written on its own, for the new events only.
    assert sent[-3:] == ["WITH", "SELECT", "WITH"]


async def test_a_tenant_switched_to_metadata_only_is_honoured_by_the_next_batch(engine, events):
    recorder = EventRecorder(engine)
    tenants = TenantSettingsStore(engine)
    first = events.requested()
    await recorder.record([first, events.completed(first)])

    await tenants.update("acme", store_content=False)
    second = events.requested()
    await recorder.record([second, events.completed(second), events.usage(second)])

    await tenants.update("acme", store_content=True)
    third = events.requested()
    await recorder.record([third, events.completed(third)])

    async with engine.connect() as connection:
        rows = {
            row["request_id"]: row
            for row in (await connection.execute(select(requests_table))).mappings()
        }
        payloads = {
            event_id: payload
            for event_id, payload in await connection.execute(
                select(events_table.c.event_id, events_table.c.payload)
            )
        }
    prompt = first.data.body["messages"][0]["content"]
    assert prompt in str(rows[first.request_id]["request_body"])
    assert prompt not in str(rows[second.request_id]["request_body"])
    assert prompt not in str(rows[second.request_id]["response"])
    assert prompt not in str(payloads[second.id])
    assert prompt in str(rows[third.request_id]["request_body"])


async def test_events_naming_another_tenant_leave_the_row_as_it_was(engine, events):
    recorder = EventRecorder(engine)
    request = events.requested()
    await recorder.record([request])
    forged_reply = events.completed(request, answer="forged")
    forged_usage = events.usage(request)

    await recorder.record(
        [
            forged_reply.model_copy(update={"tenant": "intruder"}),
            forged_usage.model_copy(update={"tenant": "intruder"}),
        ]
    )

    row = await row_of(engine, request.request_id)
    assert (row["tenant"], row["status"], row["response"], row["cost_usd"]) == (
        "acme",
        "pending",
        None,
        None,
    )


async def test_a_request_takes_back_a_row_another_tenants_events_made_first(engine, events):
    recorder = EventRecorder(engine)
    request = events.requested()
    forged = events.usage(request).model_copy(update={"tenant": "intruder", "id": "forged-usage"})
    await recorder.record([forged])

    await recorder.record([request])

    row = await row_of(engine, request.request_id)
    assert (row["tenant"], row["cost_usd"], row["status"]) == ("acme", None, "pending")
    assert row["request_body"] is not None


async def test_a_forged_outcome_of_another_tenant_never_stands_in_for_the_requests_own(
    engine, events
):
    """An outcome written under another tenant before the request arrived made history
    drop the request's own reply as a second outcome: the row stayed pending, then
    expired, though the client had its answer."""
    recorder = EventRecorder(engine)
    request = events.requested()
    forged = events.completed(request, answer="forged").model_copy(
        update={"tenant": "intruder", "id": "forged-reply"}
    )
    await recorder.record([forged])

    await recorder.record([request, events.completed(request, answer="4")])

    row = await row_of(engine, request.request_id)
    assert (row["tenant"], row["status"]) == ("acme", "completed")
    assert row["response"]["choices"][0]["message"]["content"] == "4"


async def events_of(engine: AsyncEngine, *request_ids: str) -> list[tuple[str, str]]:
    """The (tenant, type) of the stored events of `request_ids`."""
    async with engine.connect() as connection:
        result = await connection.execute(
            select(events_table.c.tenant, events_table.c.type).where(
                events_table.c.request_id.in_(request_ids)
            )
        )
        return sorted((tenant, kind) for tenant, kind in result)


@pytest.mark.parametrize("forgery", ["failed", "usage"])
async def test_a_request_after_another_tenants_events_keeps_its_own_reply_and_usage(
    engine, events, forgery
):
    """Another tenant's event first, then the request's own reply and usage, then the
    request: the row ends completed with its answer and cost (not pending, then expired)."""
    recorder = EventRecorder(engine)
    request = events.requested()
    made_by = (
        events.failed(request) if forgery == "failed" else events.usage(request, cost_usd=99.0)
    ).model_copy(update={"tenant": "intruder"})
    await recorder.record([made_by])
    await recorder.record(
        [events.completed(request, answer="4"), events.usage(request, cost_usd=0.01)]
    )

    await recorder.record([request])

    row = await row_of(engine, request.request_id)
    assert (row["tenant"], row["status"], row["cost_usd"]) == ("acme", "completed", 0.01)
    assert row["response"]["choices"][0]["message"]["content"] == "4"


@pytest.mark.parametrize("same_request", [True, False], ids=["same-request", "other-request"])
async def test_events_under_the_ids_of_a_requests_reply_and_usage_do_not_replace_them(
    engine, events, same_request
):
    """Another tenant's events written under the ids of the request's coming reply and
    usage: stored, and so are the real ones, which complete the row; redelivered, every
    event is a copy (stored once)."""
    recorder = EventRecorder(engine)
    request = events.requested()
    reply = events.completed(request, answer="4")
    usage = events.usage(request, cost_usd=0.01)
    victim = request if same_request else events.requested()
    forgeries = [
        events.failed(victim).model_copy(update={"tenant": "intruder", "id": reply.id}),
        events.usage(victim).model_copy(update={"tenant": "intruder", "id": usage.id}),
    ]
    await recorder.record([request])
    await recorder.record(forgeries)
    await recorder.record([reply, usage])
    await recorder.record([usage, *forgeries, reply])

    row = await row_of(engine, request.request_id)
    assert (row["tenant"], row["status"], row["cost_usd"]) == ("acme", "completed", 0.01)
    assert row["response"]["choices"][0]["message"]["content"] == "4"
    assert await events_of(engine, request.request_id, victim.request_id) == [
        ("acme", "chat.completed"),
        ("acme", "chat.requested"),
        ("acme", "usage.recorded"),
        ("intruder", "chat.failed"),
        ("intruder", "usage.recorded"),
    ]


async def test_usage_records_of_two_runs_add_up_and_copies_count_once(engine, events):
    # One request ended by a replica that never called the upstream (0 tokens) while its
    # first run went on and billed its call: two usage records with ids of their own.
    recorder = EventRecorder(engine)
    request = events.requested()
    taken_over = events.usage(request, input_tokens=0, output_tokens=0, cost_usd=0.0)
    real = events.usage(request, input_tokens=8, output_tokens=1, cost_usd=0.25)

    await recorder.record([request, taken_over])  # one batch: the combined statement
    await recorder.record([events.failed(request), real])
    await recorder.record([real, taken_over])  # copies: no change
    await recorder.record([request, events.failed(request), real])  # a mixed batch

    row = await row_of(engine, request.request_id)
    assert (row["input_tokens"], row["output_tokens"]) == (8, 1)
    assert row["cost_usd"] == pytest.approx(0.25)
    both = events.requested()
    await recorder.record(
        [
            both,
            events.usage(both, input_tokens=3, output_tokens=2, cost_usd=0.5),
            events.usage(both, input_tokens=4, output_tokens=5, cost_usd=0.25),
        ]
    )
    row = await row_of(engine, both.request_id)
    assert (row["input_tokens"], row["output_tokens"]) == (7, 7)
    assert row["cost_usd"] == pytest.approx(0.75)


async def test_usage_sums_stop_at_what_a_record_may_say_on_postgres(engine, events):
    # A sum past a BIGINT would fail the statement, and the batch with it, on every retry.
    from switchyard.common.events import MAX_COST_USD, MAX_TOKEN_COUNT

    recorder = EventRecorder(engine)
    request = events.requested()
    huge = [
        events.usage(request, input_tokens=MAX_TOKEN_COUNT, output_tokens=1, cost_usd=MAX_COST_USD)
        for _ in range(3)
    ]
    await recorder.record([request, *huge[:2]])  # one batch: the combined statement
    await recorder.record(huge[2:])  # then the upsert alone

    row = await row_of(engine, request.request_id)
    assert row["input_tokens"] == MAX_TOKEN_COUNT
    assert row["output_tokens"] == 3
    assert row["cost_usd"] == MAX_COST_USD
