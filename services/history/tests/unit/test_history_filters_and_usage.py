"""History filters, the usage report (JSON and CSV), tenant settings, and what bad input
gets: the history service as the gateway calls it, on SQLite."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from switchyard.common.events import TerminalStatus, new_id


@pytest.fixture
async def recorded(service, recorder, events):
    """A small history: two users of acme, one of globex, several models and outcomes."""
    events.clock = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    rows = []
    plan = [
        # (tenant, user, model, key, outcome, day offset)
        ("acme", "alice", "sim-small", "key-a", "completed", 0),
        ("acme", "alice", "sim-large", "key-a", "failed", 0),
        ("acme", "alice", "sim-small", "key-b", "completed", 1),
        ("acme", "bob", "sim-small", "key-c", "completed", 1),
        ("acme", "alice", "sim-small", "key-a", "pending", 2),
        ("globex", "carol", "sim-small", "key-g", "completed", 2),
    ]
    batch = []
    for tenant, user, model, key, outcome, day in plan:
        at = datetime(2025, 3, 1 + day, 12, 0, tzinfo=UTC) + timedelta(minutes=len(batch))
        request = events.requested(tenant=tenant, user_id=user, model=model, api_key_id=key, at=at)
        batch.append(request)
        if outcome == "completed":
            batch += [
                events.completed(request),
                events.usage(
                    request,
                    input_tokens=10,
                    output_tokens=5,
                    cost_usd=0.5,
                    cache_read_input_tokens=4,
                    cache_creation_input_tokens=2,
                    cache_creation_1h_input_tokens=1,
                    reasoning_tokens=1,
                ),
            ]
        elif outcome == "failed":
            batch += [events.failed(request)]
        rows.append((request.request_id, tenant, user, model, key, outcome, at))
    await recorder.record(batch)
    return rows


async def _ids(service, **params) -> list[str]:
    identity = {
        key: params.pop(f"as_{key}")
        for key in ("tenant", "user_id", "role")
        if f"as_{key}" in params
    }
    response = await service.client.get(
        "/v1/history", params=params, headers=service.headers(**identity)
    )
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["data"]]


async def test_filters_by_time_model_status_and_key(service, recorded):
    by_id = {row[0]: row for row in recorded}
    alice = [row[0] for row in recorded if row[2] == "alice"]

    assert set(await _ids(service)) == set(alice)
    assert {by_id[i][3] for i in await _ids(service, model="sim-large")} == {"sim-large"}
    assert {by_id[i][5] for i in await _ids(service, status="completed")} == {"completed"}
    assert {by_id[i][5] for i in await _ids(service, status="failed,pending")} == {
        "failed",
        "pending",
    }
    assert {by_id[i][4] for i in await _ids(service, api_key_id="key-b")} == {"key-b"}
    day_two = await _ids(service, since="2025-03-02", until="2025-03-03T00:00:00Z")
    assert [by_id[i][6].day for i in day_two] == [2]
    assert await _ids(service, since="2025-03-03T12:30:00+00:00") == []
    # Relative and offset forms are understood too.
    assert len(await _ids(service, since="3650d")) == len(alice)
    assert len(await _ids(service, until="2025-03-02T13:00:00+01:00")) == 2


async def test_admins_filter_by_user_and_never_see_other_tenants(service, recorded):
    bob = await _ids(service, user_id="bob", as_role="admin")
    assert [row[2] for row in recorded if row[0] in bob] == ["bob"]
    everyone = await _ids(service, as_role="admin")
    assert {row[1] for row in recorded if row[0] in everyone} == {"acme"}
    # A non-admin asking for someone else's requests is refused (test_usage_performance.py).
    response = await service.client.get(
        "/v1/history", params={"user_id": "bob"}, headers=service.headers()
    )
    assert response.status_code == 403 and response.json()["error"]["code"] == "admin_only"


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"since": "yesterday"}, "since"),
        ({"since": "2025-13-01"}, "since"),
        ({"until": "2025-03-01T25:00:00Z"}, "until"),
        ({"since": "2025-03-02", "until": "2025-03-01"}, "until"),
        ({"status": "done"}, "status"),
        ({"status": "completed,bogus"}, "status"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "101"}, "limit"),
        # Digits int() reads but an integer parameter must not take: full-width,
        # Arabic-Indic, an underscore, spaces.
        ({"limit": "\uff13"}, "limit"),
        ({"limit": "\u0663"}, "limit"),
        ({"limit": "1_0"}, "limit"),
        ({"limit": " 5 "}, "limit"),
        ({"cursor": "eyJhIjoxfQ"}, "cursor"),
        ({"model": "m" * 300}, "model"),
    ],
)
async def test_bad_filters_are_400_naming_the_parameter(service, params, param):
    response = await service.client.get("/v1/history", params=params, headers=service.headers())

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert param in error["message"]


async def test_one_request_carries_reply_usage_latency_and_deployment(service, recorded):
    request_id = next(row[0] for row in recorded if row[5] == "completed")
    item = (await service.client.get(f"/v1/history/{request_id}", headers=service.headers())).json()

    assert item["response"]["choices"][0]["message"]["content"] == "Hi there!"
    assert item["usage"] == {
        "input_tokens": 10,
        "output_tokens": 5,
        "total_tokens": 15,
        "cache_read_input_tokens": 4,
        "cache_creation_input_tokens": 2,
        "cache_creation_1h_input_tokens": 1,
        "reasoning_tokens": 1,
    }
    assert (item["api"], item["client_api"], item["upstream_api"]) == (
        "openai.chat_completions",
        "openai.chat_completions",
        "openai.chat_completions",
    )
    assert item["latency_ms"] == 43.0
    assert (item["provider"], item["deployment"]) == ("simulator", "sim-small-1")


async def test_a_thousand_ids_of_another_tenant_are_all_not_found(service, recorder, events):
    theirs = [events.requested(tenant="globex", user_id="mallory") for _ in range(1000)]
    await recorder.record(theirs)
    ids = [request.request_id for request in theirs]
    outsider = service.headers(tenant="acme", user_id="mallory", role="admin")

    found = 0
    for request_id in ids:
        for path in (f"/v1/history/{request_id}", f"/v1/jobs/{request_id}"):
            response = await service.client.get(path, headers=outsider)
            assert response.status_code == 404
            found += response.status_code != 404
        cancel = await service.client.post(f"/v1/jobs/{request_id}/cancel", headers=outsider)
        found += cancel.status_code != 404

    assert found == 0
    assert await _ids(service, as_tenant="acme", as_user_id="mallory", as_role="admin") == []
    usage = await service.client.get("/v1/usage", params={"since": "3650d"}, headers=outsider)
    assert usage.json()["totals"]["requests"] == 0
    # The owner sees them all.
    assert len(await _ids(service, as_tenant="globex", as_user_id="mallory", limit=100)) == 100


async def test_usage_by_day_for_a_user_and_for_the_tenant(service, recorded):
    params = {"since": "2025-03-01", "until": "2025-03-04"}
    mine = (await service.client.get("/v1/usage", params=params, headers=service.headers())).json()
    tenant = (
        await service.client.get(
            "/v1/usage", params=params, headers=service.headers(user_id="root", role="admin")
        )
    ).json()

    assert mine["object"] == "usage.report"
    assert mine["group_by"] == ["day"]
    assert [(row["bucket"], row["requests"]) for row in mine["data"]] == [
        ("2025-03-01T00:00:00Z", 2),
        ("2025-03-02T00:00:00Z", 1),
        ("2025-03-03T00:00:00Z", 1),
    ]
    assert mine["data"][0]["errors"] == 1
    assert mine["totals"] == {
        "requests": 4,
        "completed": 2,
        "errors": 1,
        "cancelled": 0,
        "input_tokens": 20,
        "output_tokens": 10,
        "total_tokens": 30,
        "cost_usd": 1.0,
        "cache_read_input_tokens": 8,
        "cache_creation_input_tokens": 4,
        "cache_creation_1h_input_tokens": 2,
        "reasoning_tokens": 2,
        "cache_hits": 0,
        "cache_saved_usd": 0.0,
    }
    assert tenant["totals"]["requests"] == 5  # bob's too, never globex's
    assert tenant["totals"]["cost_usd"] == 1.5


async def test_usage_grouped_by_model_user_and_key_without_time_buckets(service, recorded):
    response = await service.client.get(
        "/v1/usage",
        params={"since": "2025-03-01", "until": "2025-03-04", "group_by": "model,user,api_key"},
        headers=service.headers(user_id="root", role="admin"),
    )
    report = response.json()

    assert report["group_by"] == ["model", "user", "api_key"]
    assert [(r["model"], r["user"], r["api_key"], r["requests"]) for r in report["data"]] == [
        ("sim-large", "alice", "key-a", 1),
        ("sim-small", "alice", "key-a", 2),
        ("sim-small", "alice", "key-b", 1),
        ("sim-small", "bob", "key-c", 1),
    ]
    assert "bucket" not in report["data"][0]


async def test_usage_by_hour_and_as_csv(service, recorded):
    csv_by_param = await service.client.get(
        "/v1/usage",
        params={
            "since": "2025-03-01",
            "until": "2025-03-02",
            "group_by": "hour,model",
            "format": "csv",
        },
        headers=service.headers(),
    )
    csv_by_accept = await service.client.get(
        "/v1/usage",
        params={"since": "2025-03-01", "until": "2025-03-02", "group_by": "hour,model"},
        headers=service.headers() | {"accept": "text/csv"},
    )

    assert csv_by_param.headers["content-type"].startswith("text/csv")
    assert csv_by_param.text == csv_by_accept.text
    rows = list(csv.DictReader(io.StringIO(csv_by_param.text)))
    assert [(row["bucket"], row["model"], row["requests"]) for row in rows] == [
        ("2025-03-01T12:00:00Z", "sim-large", "1"),
        ("2025-03-01T12:00:00Z", "sim-small", "1"),
    ]
    assert list(rows[0]) == [
        "bucket",
        "model",
        "requests",
        "completed",
        "errors",
        "cancelled",
        "input_tokens",
        "output_tokens",
        "total_tokens",
        "cost_usd",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
        "cache_creation_1h_input_tokens",
        "reasoning_tokens",
        "cache_hits",
        "cache_saved_usd",
    ]
    assert (rows[1]["cache_read_input_tokens"], rows[1]["reasoning_tokens"]) == ("4", "1")


async def test_usage_csv_cells_cannot_become_spreadsheet_formulas(service, recorder, events):
    request = events.requested(model='=HYPERLINK("http://evil")', at=datetime.now(UTC))
    await recorder.record([request])
    response = await service.client.get(
        "/v1/usage", params={"group_by": "model", "format": "csv"}, headers=service.headers()
    )
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert rows[0]["model"].startswith("'=HYPERLINK")


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"group_by": "week"}, "group_by"),
        ({"group_by": "day,hour"}, "group_by"),
        ({"group_by": "model,model"}, "group_by"),
        ({"group_by": "tenant"}, "group_by"),
        # An empty name is a stray comma: not "no grouping" while an empty value is "by day".
        ({"group_by": ",,"}, "group_by"),
        ({"group_by": "day,"}, "group_by"),
        ({"group_by": "model, ,user"}, "group_by"),
        ({"since": "soon"}, "since"),
        ({"since": "2025-03-02", "until": "2025-03-01"}, "until"),
        # No `until` sent (it is now): the `since` sent is what is wrong.
        ({"since": "2999-01-01T00:00:00Z"}, "since"),
        ({"group_by": "hour", "since": "365d"}, "since"),
        ({"format": "xml"}, "format"),
    ],
)
async def test_bad_usage_parameters_are_400(service, params, param):
    response = await service.client.get("/v1/usage", params=params, headers=service.headers())

    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


async def test_tenant_settings_are_for_admins_and_metadata_only_drops_content(
    service, recorder, tables, events
):
    admin = service.headers(user_id="root", role="admin")
    assert (
        await service.client.get("/v1/history/settings", headers=service.headers())
    ).status_code == 403
    settings = (await service.client.get("/v1/history/settings", headers=admin)).json()
    assert settings["store_content"] is True
    assert settings["webhook_secret"].startswith("whsec_")

    changed = await service.client.put(
        "/v1/history/settings", json={"store_content": False, "retention_days": 7}, headers=admin
    )
    assert changed.status_code == 200
    assert (changed.json()["store_content"], changed.json()["retention_days"]) == (False, 7)

    secret_prompt = "my bank password is hunter2"
    request = events.requested(prompt=secret_prompt)
    reply = events.completed(request, answer="I will never tell: hunter2")
    await recorder.record([request, reply, events.usage(request)])

    item = (
        await service.client.get(f"/v1/history/{request.request_id}", headers=service.headers())
    ).json()
    assert item["status"] == "completed"
    assert item["request"]["redacted"] is True
    assert item["request"]["message_count"] == 1
    assert item["response"]["choices"] == [{"index": 0, "finish_reason": "stop"}]
    assert item["usage"]["total_tokens"] == 8
    # Neither the projection nor the event store holds the text.
    dump = []
    async with tables.engine.connect() as connection:
        for table in ("history_requests", "history_events"):
            dump += [str(row) for row in (await connection.execute(text(f"SELECT * FROM {table}")))]
    assert dump
    assert not [row for row in dump if "hunter2" in row]
    # Another tenant still stores content.
    other = events.requested(tenant="globex", prompt="globex keeps this")
    await recorder.record([other])
    kept = await tables.request(other.request_id)
    assert kept["request_body"]["messages"][0]["content"] == "globex keeps this"

    restored = await service.client.put(
        "/v1/history/settings",
        json={"store_content": True, "clear_retention": True, "rotate_webhook_secret": True},
        headers=admin,
    )
    assert restored.json()["retention_days"] is None
    assert restored.json()["webhook_secret"] != settings["webhook_secret"]


async def test_unknown_ids_are_404_and_identity_is_required(service):
    for path in (f"/v1/history/{new_id()}", f"/v1/jobs/{new_id()}"):
        response = await service.client.get(path, headers=service.headers())
        assert response.status_code == 404
    headers = service.headers()
    del headers["x-switchyard-role"]
    for path in ("/v1/usage", "/v1/jobs", "/v1/history/settings"):
        assert (await service.client.get(path, headers=headers)).status_code == 401


async def test_failed_outcomes_are_counted_as_errors(service, recorder, events):
    request = events.requested(at=datetime.now(UTC))
    await recorder.record([request, events.failed(request, status=TerminalStatus.EXPIRED)])
    report = (await service.client.get("/v1/usage", headers=service.headers())).json()
    assert report["totals"]["errors"] == 1


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"store_bodies": False}, "store_bodies"),  # a typo, never silently ignored
        ({"tenant": "other"}, "tenant"),
        ({"retention_days": "7"}, "retention_days"),  # a string, never converted
        # Contradictory: neither is dropped silently.
        ({"clear_retention": True, "retention_days": 5}, "clear_retention"),
    ],
)
async def test_settings_changes_the_body_does_not_have_are_refused_naming_them(
    service, body, param
):
    admin = service.headers(user_id="root", role="admin")
    before = (await service.client.get("/v1/history/settings", headers=admin)).json()
    changed = await service.client.put("/v1/history/settings", json=body, headers=admin)
    assert changed.status_code == 400
    assert changed.json()["error"]["param"] == param
    assert (await service.client.get("/v1/history/settings", headers=admin)).json() == before


async def test_an_empty_group_by_is_the_default_grouping_by_day(service):
    for params in ({}, {"group_by": ""}):
        response = await service.client.get("/v1/usage", params=params, headers=service.headers())
        assert response.status_code == 200, response.text
        assert response.json()["group_by"] == ["day"]
