"""The history API as the gateway calls it, with events arriving over the in-memory bus."""

from __future__ import annotations

import asyncio
import base64

import httpx
import pytest
from prometheus_client import REGISTRY

from switchyard.common.bus import InMemoryBus
from switchyard.common.db import upgrade
from switchyard.common.events import Priority
from switchyard.common.testing.bodies import WatchedBody
from switchyard.common.testing.infra import async_ready, async_wait_until
from switchyard.history.app import create_app
from switchyard.history.config import MIGRATIONS_DIR, VERSION_TABLE, Settings

TOKEN = "test-internal-token"


async def test_a_finished_request_is_served_with_reply_and_usage(service, events):
    request = events.requested(prompt="Tell me a joke")
    await service.publish(
        request,
        events.chunk(request),
        events.completed(request, answer="Knock knock"),
        events.usage(request, input_tokens=6, output_tokens=4),
    )

    item = await service.wait_for(request.request_id, "completed")
    await async_wait_until(
        lambda: _has_cost(service, request.request_id), timeout=10, message="usage to be recorded"
    )
    item = (
        await service.client.get(f"/v1/history/{request.request_id}", headers=service.headers())
    ).json()

    assert item["id"] == request.request_id
    assert item["object"] == "chat.history"
    assert item["model"] == "sim-small"
    assert item["request"]["messages"][0]["content"] == "Tell me a joke"
    assert item["response"]["choices"][0]["message"]["content"] == "Knock knock"
    assert item["error"] is None
    assert item["usage"] == {
        "input_tokens": 6,
        "output_tokens": 4,
        "total_tokens": 10,
        "cache_read_input_tokens": 0,
        "cache_creation_input_tokens": 0,
        "cache_creation_1h_input_tokens": 0,
        "reasoning_tokens": 0,
    }
    assert item["api"] == "openai.chat_completions"
    assert (item["provider"], item["deployment"], item["latency_ms"]) == (
        "simulator",
        "sim-small-1",
        43.0,
    )
    assert (item["user_id"], item["api_key_id"]) == ("alice", "key-1")
    assert item["created_at"].startswith("2025-03-01T12:00:01")
    assert item["completed_at"] is not None


async def _has_cost(service, request_id: str) -> bool:
    response = await service.client.get(f"/v1/history/{request_id}", headers=service.headers())
    return response.json()["usage"]["total_tokens"] == 10


async def test_a_failed_request_shows_its_error(service, events):
    request = events.requested()
    await service.publish(request, events.failed(request))

    item = await service.wait_for(request.request_id, "failed")

    assert item["error"]["message"] == "The provider did not answer."
    assert item["response"] is None


async def test_list_is_newest_first_and_pages_through_everything(service, events):
    shared_instant = events.tick()
    requests = [events.requested(f"req-{index:02d}") for index in range(20)]
    # Five requests share one timestamp: the cursor must still neither skip nor repeat them.
    requests += [events.requested(f"same-{index}", at=shared_instant) for index in range(5)]
    await service.publish(*requests)
    await service.wait_for("req-19", "pending")
    await service.wait_for("same-4", "pending")

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 10} | ({"cursor": cursor} if cursor else {})
        response = await service.client.get("/v1/history", params=params, headers=service.headers())
        assert response.status_code == 200
        body = response.json()
        assert body["object"] == "list"
        assert len(body["data"]) <= 10
        seen += [item["id"] for item in body["data"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break

    expected = sorted(
        requests, key=lambda request: (request.time, request.request_id), reverse=True
    )
    assert seen == [request.request_id for request in expected]
    assert pages == 3
    assert seen[0] == "req-19"


async def test_default_page_is_twenty(service, events):
    await service.publish(*[events.requested(f"req-{index:02d}") for index in range(22)])
    await service.wait_for("req-21", "pending")

    body = (await service.client.get("/v1/history", headers=service.headers())).json()

    assert len(body["data"]) == 20
    assert body["next_cursor"] is not None


async def _pages(service, path: str, limit: int) -> list[list[str]]:
    pages, cursor = [], None
    while True:
        params = {"limit": limit} | ({"cursor": cursor} if cursor else {})
        response = await service.client.get(path, params=params, headers=service.headers())
        assert response.status_code == 200, response.text
        pages.append([item["id"] for item in response.json()["data"]])
        if (cursor := response.json()["next_cursor"]) is None:
            return pages


async def test_a_page_ends_before_its_stored_documents_pass_the_byte_bound(
    service, events, monkeypatch
):
    """Requests can hold tens of megabytes: a page of a hundred read at once would hold
    gigabytes. A page stops before its documents pass `PAGE_BYTES`, one request at least,
    and the cursor goes on from there, on lists of requests and of jobs alike."""
    from switchyard.history import queries

    monkeypatch.setattr(queries, "PAGE_BYTES", 10_000)
    shared_instant = events.tick()
    requests = [
        events.requested(f"big-{index}", prompt="x" * 3_000, priority=Priority.BATCH)
        for index in range(4)
    ]
    # Three share one timestamp: the cut must neither skip nor repeat them.
    requests += [
        events.requested(
            f"same-{index}", prompt="y" * 3_000, at=shared_instant, priority=Priority.BATCH
        )
        for index in range(3)
    ]
    # One alone is over the bound: it is a page of its own.
    requests.append(events.requested("huge", prompt="z" * 12_000, priority=Priority.BATCH))
    await service.publish(*requests)
    await service.wait_for("huge", "pending")
    await service.wait_for("same-2", "pending")

    expected = [
        request.request_id
        for request in sorted(
            requests, key=lambda request: (request.time, request.request_id), reverse=True
        )
    ]
    for path in ("/v1/history", "/v1/jobs"):
        pages = await _pages(service, path, limit=100)
        assert [item for page in pages for item in page] == expected, path
        assert pages[0] == ["huge"], path
        assert [len(page) for page in pages[1:]] == [3, 3, 1], path
        # The bound never makes a page longer than `limit`.
        assert [len(page) for page in await _pages(service, path, limit=2)] == [1, 2, 2, 2, 1]


# What happens to the table between a page's two reads (its sizes, then its rows), and
# the pages a client then reads, newest first.
BETWEEN_THE_READS = {
    # A purge or a deleted response: the page they emptied is read again further on.
    "deleted": (
        ["DELETE FROM history_requests WHERE request_id IN ('r-5', 'r-4', 'r-3')"],
        [["r-2", "r-1", "r-0"]],
    ),
    # A request recorded meanwhile is newer than the page: it does not push a row out.
    "inserted": (
        [
            "CREATE TEMP TABLE copied AS SELECT * FROM history_requests WHERE request_id = 'r-5'",
            "UPDATE copied SET request_id = 'new', created_at = '2999-01-01 00:00:00.000000'",
            "INSERT INTO history_requests SELECT * FROM copied",
        ],
        [["r-5", "r-4", "r-3"], ["r-2", "r-1", "r-0"]],
    ),
}


@pytest.mark.parametrize("change", sorted(BETWEEN_THE_READS))
async def test_rows_changed_between_a_pages_two_reads_are_neither_lost_nor_repeated(
    service, events, monkeypatch, change
):
    """A page's rows are sized first, then read by the keys sized: rows deleted in between
    shorten the page (one they emptied is read again further on), and a row recorded in
    between never pushes a sized one off the page or out of the list."""
    from sqlalchemy import event

    from switchyard.history import queries

    monkeypatch.setattr(queries, "PAGE_BYTES", 10_000)
    requests = [events.requested(f"r-{index}", prompt="x" * 3_000) for index in range(6)]
    await service.publish(*requests)
    await service.wait_for("r-5", "pending")
    statements, expected = BETWEEN_THE_READS[change]

    def change_the_table(connection, cursor, statement, parameters, context, many):
        if "AS size" in statement and not changed:
            changed.append(True)
            for sql in statements:
                connection.exec_driver_sql(sql)

    changed: list[bool] = []
    engine = service.components.engine
    event.listen(engine.sync_engine, "after_cursor_execute", change_the_table)
    try:
        pages = await _pages(service, "/v1/history", limit=100)
    finally:
        event.remove(engine.sync_engine, "after_cursor_execute", change_the_table)
    assert changed
    assert pages == expected


async def test_other_tenants_and_other_users_see_nothing(service, events):
    mine = events.requested(tenant="acme", user_id="alice")
    colleagues = events.requested(tenant="acme", user_id="bob")
    await service.publish(mine, colleagues, events.completed(mine))
    await service.wait_for(mine.request_id, "completed")
    await service.wait_for(colleagues.request_id, "pending", user_id="bob")

    outsider = service.headers(tenant="globex", user_id="alice", role="admin")
    response = await service.client.get(f"/v1/history/{mine.request_id}", headers=outsider)
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert (await service.client.get("/v1/history", headers=outsider)).json()["data"] == []

    alice_list = (await service.client.get("/v1/history", headers=service.headers())).json()["data"]
    assert [item["id"] for item in alice_list] == [mine.request_id]
    alice_peeks = await service.client.get(
        f"/v1/history/{colleagues.request_id}", headers=service.headers()
    )
    assert alice_peeks.status_code == 404

    admin = service.headers(user_id="root", role="admin")
    admin_list = (await service.client.get("/v1/history", headers=admin)).json()["data"]
    assert {item["id"] for item in admin_list} == {mine.request_id, colleagues.request_id}


async def test_unknown_request_is_404_in_the_common_error_format(service):
    response = await service.client.get("/v1/history/does-not-exist", headers=service.headers())

    assert response.status_code == 404
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "request_not_found"
    assert "does-not-exist" in error["message"]


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": base64.urlsafe_b64encode(b'["yesterday","x"]').decode()}, "cursor"),
        ({"cursor": base64.urlsafe_b64encode(b'["2025-01-01T00:00:00","x"]').decode()}, "cursor"),
        ({"limit": 0}, "limit"),
        ({"limit": 1000}, "limit"),
        ({"limit": "many"}, "limit"),
    ],
)
async def test_bad_query_parameters_are_400_naming_the_parameter(service, params, param):
    response = await service.client.get("/v1/history", params=params, headers=service.headers())

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert param in error["message"]


@pytest.mark.parametrize("path", ["/v1/history", "/v1/history/some-id"])
async def test_calls_without_the_internal_token_are_refused(service, path):
    headers = service.headers()
    del headers["x-switchyard-internal-token"]
    missing = await service.client.get(path, headers=headers)
    wrong = await service.client.get(
        path, headers=headers | {"x-switchyard-internal-token": "guess"}
    )

    for response in (missing, wrong):
        assert response.status_code == 401
        assert response.json()["error"]["type"] == "invalid_request_error"


async def test_calls_without_caller_identity_are_refused(service):
    headers = service.headers()
    del headers["x-switchyard-tenant"]

    response = await service.client.get("/v1/history", headers=headers)

    assert response.status_code == 401
    assert "x-switchyard-tenant" in response.json()["error"]["message"]


async def test_ready_when_database_and_bus_answer_and_metrics_count_events(service, events):
    request = events.requested()
    await service.publish(request)
    await service.wait_for(request.request_id, "pending")

    ready = await async_ready(lambda: service.client.get("/readyz"))
    metrics = (await service.client.get("/metrics")).text

    assert ready.json()["checks"] == {"database": True, "bus": True}
    assert 'switchyard_history_events_persisted_total{type="chat.requested"}' in metrics
    assert "switchyard_history_persist_seconds_count" in metrics


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/readyz", {}),
        ("/v1/usage/performance", {"since": "1d"}),
        ("/internal/v1/cache/settings", {}),
        ("/internal/v1/cache/entries/" + "0" * 64, {}),
    ],
)
async def test_reads_answer_while_another_connection_writes(
    service, events, tmp_path, path, params
):
    """The readiness probe, the performance report and the cache lookups read without
    SQLite's write lock: a write in progress (the recorder's, or another process's held
    longer than a probe's 2 s) does not keep them waiting. They would otherwise wait up
    to SQLite's 15 s busy timeout (the probe answering 503 meanwhile), and hold the
    recorder up as they read. (History's pages still wait for a write in progress: it may
    be what was just answered.)"""
    import sqlite3
    import time

    request = events.requested()
    await service.publish(request)
    await service.wait_for(request.request_id, "pending")
    # (Waiting its turn behind the recorder, should it be writing.)
    holder = sqlite3.connect(tmp_path / "history.db", timeout=30, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        answer = await service.client.get(path, params=params, headers=service.headers())
        elapsed = time.monotonic() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()

    # (No entry is cached under that key: a miss, looked up as quickly.)
    assert answer.status_code == (404 if "/entries/" in path else 200), answer.text
    # Well short of the 15 s a read waiting for the lock would take, with room for a
    # loaded machine.
    assert elapsed < 5.0


async def test_not_ready_while_the_database_is_unreachable(events):
    settings = Settings(
        database_url="postgresql+psycopg://nobody:secret@127.0.0.1:1/none", internal_token=TOKEN
    )
    app = create_app(settings, bus=InMemoryBus())
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://h"
        ) as client:
            response = await client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["checks"]["database"] is False


async def _stored_once_migrated(service, events, url: str) -> tuple[dict, list]:
    """Publish a request and its reply, wait for their first write to fail, migrate the
    database to head, and return the request's history item and the dead letters."""
    request = events.requested()
    failures_before = _persist_failures()
    await service.publish(request, events.completed(request))
    await async_wait_until(
        lambda: _async(_persist_failures() > failures_before),
        timeout=10,
        message="the first write to fail",
    )
    # Off the event loop: a retry of the service may be holding SQLite's write lock,
    # which it releases only when the loop runs on (blocked, the migration would wait
    # for it until "database is locked").
    await asyncio.to_thread(upgrade, MIGRATIONS_DIR, url, VERSION_TABLE)
    item = await service.wait_for(request.request_id, "completed")
    return item, service.bus.dead_letters


async def test_events_received_while_the_database_is_unusable_are_stored_once_it_recovers(
    tmp_path, events, start_service
):
    # The tables do not exist yet, so every write fails until the migration has run.
    url = f"sqlite+aiosqlite:///{tmp_path / 'late.db'}"
    settings = Settings(database_url=url, internal_token=TOKEN, topic_prefix="t2")
    async with start_service(settings) as service:
        item, dead_letters = await _stored_once_migrated(service, events, url)

    assert item["response"]["choices"][0]["message"]["content"] == "Hi there!"
    assert not dead_letters


async def test_a_schema_behind_this_version_is_an_outage_not_bad_events(
    tmp_path, events, start_service
):
    """New code on a database the previous version migrated (its `switchyard db upgrade`
    not run yet, one column missing): not ready, and the batches that need the column are
    retried, never dead-lettered, until the upgrade runs."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'behind.db'}"
    await asyncio.to_thread(upgrade, MIGRATIONS_DIR, url, VERSION_TABLE, "0011")
    settings = Settings(database_url=url, internal_token=TOKEN, topic_prefix="t3")
    async with start_service(settings) as service:
        ready = await service.client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["database"] is False
        item, dead_letters = await _stored_once_migrated(service, events, url)
        await async_ready(lambda: service.client.get("/readyz"))

    assert item["status"] == "completed"
    assert not dead_letters


def _persist_failures() -> float:
    return REGISTRY.get_sample_value("switchyard_history_persist_failures_total") or 0.0


async def _async(value):
    return value


async def test_a_request_read_right_after_its_answer_is_already_completed(service, events):
    # Embedded mode: the reply reaches the client and the history consumer at the same
    # moment; a read that follows at once must not see the request still pending.
    for _ in range(5):
        request = events.requested()
        await service.publish(request, events.completed(request))
        response = await service.client.get(
            f"/v1/history/{request.request_id}", headers=service.headers()
        )
        assert response.status_code == 200
        assert response.json()["status"] == "completed"


@pytest.mark.parametrize(
    "path", ["/v1/replays", "/v1/jobs/x/cancel", "/internal/v1/idempotency/claim"]
)
async def test_a_body_without_the_internal_token_is_refused_before_it_is_read(service, path):
    # FastAPI decodes a JSON body before the route's dependencies: a caller without the
    # token made history decode megabytes of JSON for each 401 (seconds of the loop the
    # gateway's reads wait on). It is answered first now, whatever the body.
    headers = service.headers()
    del headers["x-switchyard-internal-token"]
    body = WatchedBody()

    refused = await service.client.post(path, headers=headers, content=body.stream())
    wrong = await service.client.post(
        path, headers=headers | {"x-switchyard-internal-token": "guess"}, content=b"{bad"
    )
    judged = await service.client.post(path, headers=service.headers(), content=b"{bad")

    for response in (refused, wrong):
        assert response.status_code == 401, response.text
        assert response.json()["error"]["message"] == "internal token required"
    assert not body.read
    assert judged.status_code in (400, 404)  # with the token, the request itself is judged
