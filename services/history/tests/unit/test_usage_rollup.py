"""The usage rollup gives exactly what aggregating the requests gives: before and after
the sweeper recomputes hours, with hours dirtied again by late replies, over ranges that
cut hours in half, for every grouping and filter (teams included); cache and reasoning
tokens and refused requests (recorded from their refusal alone, as gateways publish it)
included."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from switchyard.common.events import TerminalStatus
from switchyard.history import rollup
from switchyard.history.models import usage_dirty_table, usage_hourly_table
from switchyard.history.queries import UsageQuery
from switchyard.history.sweeper import purge

START = datetime(2025, 3, 1, tzinfo=UTC)


def _expected(rows: dict, query: UsageQuery) -> list[tuple]:
    names = {
        "model": "model",
        "user": "user_id",
        "api_key": "api_key_id",
        "team": "team_id",
        "tenant": "tenant",
    }
    totals: dict[tuple, list] = defaultdict(lambda: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0.0])
    for row in rows.values():
        if row["request_body"] is None and row["status"] != "refused":
            continue  # a reply whose request has not arrived yet
        if not query.since <= row["created_at"] < query.until:
            continue
        if query.tenant is not None and row["tenant"] != query.tenant:
            continue
        if query.user_id is not None and row["user_id"] != query.user_id:
            continue
        if query.model is not None and row["model"] != query.model:
            continue
        if query.team_id is not None and row["team_id"] != query.team_id:
            continue
        bucket = None
        if query.bucket == "day":
            bucket = row["created_at"].replace(hour=0, minute=0, second=0, microsecond=0)
        elif query.bucket == "hour":
            bucket = rollup.hour_of(row["created_at"])
        key = (bucket, *[row[names[d]] for d in query.dimensions])
        total = totals[key]
        total[0] += 1
        total[1] += row["status"] == "completed"
        total[2] += row["status"] in ("failed", "expired", "refused")
        total[3] += row["status"] == "cancelled"
        for index, name in enumerate(rollup.TOKEN_SUMS, start=4):
            total[index] += row[name] or 0
        total[10] += row["cost_usd"] or 0.0
    return sorted(
        [key + (*t[:10], round(t[10], 6)) for key, t in totals.items()],
        key=_order,
    )


def _order(row: tuple) -> tuple:
    return tuple((value is None, "" if value is None else str(value)) for value in row)


def _actual(rows, query: UsageQuery) -> list[tuple]:
    return sorted(
        [
            (
                row.bucket,
                *row.groups.values(),
                row.requests,
                row.completed,
                row.errors,
                row.cancelled,
                row.input_tokens,
                row.output_tokens,
                row.cache_read_input_tokens,
                row.cache_creation_input_tokens,
                row.cache_creation_1h_input_tokens,
                row.reasoning_tokens,
                round(row.cost_usd, 6),
            )
            for row in rows
        ],
        key=_order,
    )


async def _history(recorder, events, generator, count: int, *, replies: bool = True):
    batch, requests = [], []
    for _ in range(count):
        at = START + timedelta(minutes=generator.randint(0, 6 * 60 - 1), seconds=generator.random())
        who = dict(
            tenant=generator.choice(["acme", "globex"]),
            user_id=generator.choice(["alice", "bob", "carol"]),
            model=generator.choice(["small", "large"]),
            api_key_id=generator.choice(["k1", "k2", None]),
            team_id=generator.choice(["t1", "t2", None]),
        )
        outcome = generator.random()
        if replies and outcome > 0.9:
            # Refused at admission: no request event, only the refusal.
            events.clock = at - timedelta(seconds=1)
            batch += [*events.refusal(**who)]
            continue
        request = events.requested(**who, at=at)
        requests.append(request)
        contributions = [request]
        if replies and outcome < 0.6:
            cached = generator.randint(0, 40)
            written = generator.randint(0, 9)
            contributions += [
                events.completed(request),
                events.usage(
                    request,
                    input_tokens=50 + cached,
                    cache_read_input_tokens=cached,
                    cache_creation_input_tokens=written,
                    cache_creation_1h_input_tokens=generator.randint(0, written),
                    reasoning_tokens=generator.randint(0, 3),
                ),
            ]
        elif replies and outcome < 0.75:
            contributions += [events.failed(request)]
        elif replies and outcome < 0.8:
            contributions += [events.failed(request, status=TerminalStatus.CANCELLED)]
        if generator.random() < 0.2:
            contributions.reverse()  # the reply overtook the request
        batch += contributions
    generator.shuffle(batch)
    await recorder.record(batch)
    return requests


QUERIES = [
    dict(),
    dict(bucket="hour"),
    dict(bucket=None, dimensions=("model", "user", "api_key")),
    dict(bucket="hour", dimensions=("model",), user_id="alice"),
    dict(bucket="day", dimensions=("api_key",), model="large"),
    dict(tenant=None, bucket="hour", dimensions=("tenant",)),
    dict(bucket="day", dimensions=("team",)),
    dict(bucket=None, dimensions=("team", "model"), team_id="t1"),
    dict(bucket="hour", dimensions=("team", "user"), user_id="bob"),
]
RANGES = [
    (START, START + timedelta(days=1)),
    (START + timedelta(minutes=37, seconds=5), START + timedelta(hours=4, minutes=12)),
    (START + timedelta(hours=2), START + timedelta(hours=3)),
    (START + timedelta(minutes=5), START + timedelta(minutes=50)),
]


async def _check_all(queries, tables):
    rows = await tables.requests()
    checked = 0
    for options in QUERIES:
        for since, until in RANGES:
            query = UsageQuery(**{"since": since, "until": until, "tenant": "acme", **options})
            assert _actual(await queries.usage(query), query) == _expected(rows, query), (
                options,
                since,
                until,
            )
            checked += 1
    return checked


@pytest.mark.parametrize("seed", [11, 12])
async def test_the_rollup_answers_exactly_what_the_requests_say(
    recorder, queries, tables, events, engine, seed
):
    generator = random.Random(seed)
    requests = await _history(recorder, events, generator, 150)

    await _check_all(queries, tables)  # every hour dirty: all read from the requests
    assert await rollup.refresh(engine, settle=timedelta(0)) > 0
    async with engine.connect() as connection:
        dirty = (
            await connection.execute(select(func.count()).select_from(usage_dirty_table))
        ).scalar_one()
        rolled = (
            await connection.execute(select(func.count()).select_from(usage_hourly_table))
        ).scalar_one()
    assert (dirty, rolled > 0) == (0, True)
    await _check_all(queries, tables)  # clean hours from the rollup

    # Late events: replies to old requests and new requests dirty some hours again.
    late = []
    for request in generator.sample(requests, 30):
        late += [events.completed(request), events.usage(request, cost_usd=0.25)]
    await recorder.record(late)
    await _history(recorder, events, generator, 40)
    await _check_all(queries, tables)
    await rollup.refresh(engine, settle=timedelta(0))
    assert await _check_all(queries, tables) == len(QUERIES) * len(RANGES)


async def test_a_refresh_waits_until_an_hour_is_quiet(recorder, engine, events):
    request = events.requested(at=START + timedelta(minutes=5))
    await recorder.record([request])

    assert await rollup.refresh(engine, settle=timedelta(minutes=5)) == 0
    assert await rollup.refresh(engine, settle=timedelta(0)) == 1


async def test_a_request_dated_in_the_last_hour_there_is_stops_no_other_hour(
    recorder, engine, events
):
    # A bad producer's date, stored before the contract refused the year 9000 on: the
    # rollup of that hour and of every other goes on.
    last_hour = datetime(9999, 12, 31, 23, 30, tzinfo=UTC)
    dated = events.requested(at=START).model_copy(update={"time": last_hour})
    await recorder.record([dated, events.requested(at=START + timedelta(minutes=5))])
    assert await rollup.refresh(engine, settle=timedelta(0)) == 2


async def test_purge_keeps_the_rollup_consistent(recorder, queries, tables, events, engine):
    generator = random.Random(5)
    await _history(recorder, events, generator, 80)
    await rollup.refresh(engine, settle=timedelta(0))

    await purge(engine, START + timedelta(hours=2, minutes=30))
    await _check_all(queries, tables)
    await rollup.refresh(engine, settle=timedelta(0))
    await _check_all(queries, tables)


def test_live_ranges_cover_edges_and_dirty_hours():
    since, until = START + timedelta(minutes=30), START + timedelta(hours=5, minutes=10)
    first, end, ranges = rollup.live_ranges(
        since, until, [START + timedelta(hours=1), START + timedelta(hours=2)]
    )
    assert (first, end) == (START + timedelta(hours=1), START + timedelta(hours=5))
    assert ranges == [(since, START + timedelta(hours=3)), (START + timedelta(hours=5), until)]
    inside_one_hour = rollup.live_ranges(since, since + timedelta(minutes=10), [])
    assert inside_one_hour[2] == [(since, since + timedelta(minutes=10))]
