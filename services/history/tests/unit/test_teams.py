"""Teams in history: every request keeps the team its caller was in, history and usage
filter by team, usage groups by team (admins read their tenant's teams, members only their
own requests), and a request refused at admission is shown from its refusal alone, with
its team and reason, and counted as an error. The history service as the gateway calls
it, on SQLite."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from switchyard.common.events import TerminalStatus

DAY = {"since": "2025-03-01", "until": "2025-03-02"}
ADMIN = {"user_id": "root", "role": "admin"}


@pytest.fixture
async def teams(service, recorder, events):
    """acme: alice in research (two completed requests, then one refused by the team's
    budget), bob in research, carol in no team; globex: dave in research too (same id,
    another tenant). Returns {name: request id}."""
    events.clock = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    ids, batch = {}, []
    plan = [
        ("alice-1", "acme", "alice", "research"),
        ("alice-2", "acme", "alice", "research"),
        ("bob-1", "acme", "bob", "research"),
        ("carol-1", "acme", "carol", None),
        ("dave-1", "globex", "dave", "research"),
    ]
    for name, tenant, user, team in plan:
        request = events.requested(tenant=tenant, user_id=user, team_id=team)
        batch += [
            request,
            events.completed(request),
            events.usage(request, input_tokens=10, output_tokens=5, cost_usd=0.25),
        ]
        ids[name] = request.request_id
    refusal = events.refusal(tenant="acme", user_id="alice", team_id="research")
    batch += refusal
    ids["alice-refused"] = refusal[0].request_id
    await recorder.record(batch)
    return ids


async def _history(service, identity: dict, **params) -> list[dict]:
    response = await service.client.get(
        "/v1/history", params=params, headers=service.headers(**identity)
    )
    assert response.status_code == 200, response.text
    return response.json()["data"]


async def _usage(service, identity: dict, **params) -> dict:
    response = await service.client.get(
        "/v1/usage", params={**DAY, **params}, headers=service.headers(**identity)
    )
    assert response.status_code == 200, response.text
    return response.json()


async def test_each_request_shows_the_team_its_caller_was_in(service, teams):
    items = {item["id"]: item for item in await _history(service, ADMIN)}

    assert items[teams["alice-1"]]["team_id"] == "research"
    assert items[teams["carol-1"]]["team_id"] is None
    assert teams["dave-1"] not in items  # another tenant's, though the same team id


async def test_a_refused_request_is_shown_with_its_team_and_reason_from_its_refusal_alone(
    service, teams
):
    [refused] = await _history(service, {}, status="refused")

    assert refused["id"] == teams["alice-refused"]
    assert refused["status"] == "refused"
    assert refused["team_id"] == "research"
    assert (refused["model"], refused["api_key_id"]) == ("sim-small", "key-1")
    assert refused["error"]["code"] == "insufficient_quota"
    assert "team research" in refused["error"]["message"]
    assert refused["request"] is None  # it never ran; nothing of its body was kept
    one = await service.client.get(
        f"/v1/history/{teams['alice-refused']}", headers=service.headers()
    )
    assert one.status_code == 200 and one.json()["status"] == "refused"


async def test_history_filters_by_team(service, teams):
    admin_sees = {item["id"] for item in await _history(service, ADMIN, team_id="research")}
    assert admin_sees == {
        teams["alice-1"],
        teams["alice-2"],
        teams["bob-1"],
        teams["alice-refused"],
    }
    # A member filtering by their team still sees only their own requests.
    bob_sees = [
        item["id"] for item in await _history(service, {"user_id": "bob"}, team_id="research")
    ]
    assert bob_sees == [teams["bob-1"]]
    assert await _history(service, ADMIN, team_id="nobody") == []


async def test_admins_read_usage_grouped_by_team_with_refusals_counted_as_errors(service, teams):
    report = await _usage(service, ADMIN, group_by="team")

    assert report["group_by"] == ["team"]
    rows = {row["team"]: row for row in report["data"]}
    assert set(rows) == {"research", None}
    research = rows["research"]
    assert (research["requests"], research["completed"], research["errors"]) == (4, 3, 1)
    assert research["cost_usd"] == pytest.approx(0.75)
    assert (rows[None]["requests"], rows[None]["cost_usd"]) == (1, pytest.approx(0.25))


async def test_usage_of_one_team_by_user_for_admins_and_of_themselves_for_members(service, teams):
    by_user = await _usage(service, ADMIN, group_by="user", team_id="research")
    assert [(row["user"], row["requests"]) for row in by_user["data"]] == [
        ("alice", 3),
        ("bob", 1),
    ]

    # A member's report is of their own requests, whatever team filter they pass.
    bob = await _usage(service, {"user_id": "bob"}, group_by="team,user", team_id="research")
    assert [(row["team"], row["user"], row["requests"]) for row in bob["data"]] == [
        ("research", "bob", 1)
    ]
    csv_report = await service.client.get(
        "/v1/usage",
        params={**DAY, "group_by": "team", "format": "csv"},
        headers=service.headers(**ADMIN),
    )
    assert csv_report.text.splitlines()[0].split(",")[:2] == ["team", "requests"]


async def test_usage_by_team_is_the_same_once_the_hours_are_rolled_up(service, teams, engine):
    from switchyard.history import rollup

    before = await _usage(service, ADMIN, group_by="day,team")
    assert await rollup.refresh(engine, settle=timedelta(0)) > 0
    after = await _usage(service, ADMIN, group_by="day,team")

    assert after["data"] == before["data"]
    assert {row["team"] for row in after["data"]} == {"research", None}


async def test_a_refusal_and_a_late_request_event_of_the_same_id_keep_the_refusal(
    service, recorder, events
):
    # A refusal never has a request event; if one ever arrived for the same id (a
    # gateway retrying after its refusal was recorded), the status stays `refused`.
    failed, usage = events.refusal(team_id="research")
    await recorder.record([failed, usage])
    late = events.requested(failed.request_id, team_id="research")
    await recorder.record([late])
    [item] = await _history(service, {}, status="refused")
    assert (item["id"], item["status"], item["team_id"]) == (
        failed.request_id,
        TerminalStatus.REFUSED.value,
        "research",
    )


@pytest.mark.parametrize("path", ["/v1/history", "/v1/usage"])
async def test_a_team_filter_too_long_is_400_naming_it(service, path):
    response = await service.client.get(
        path, params={"team_id": "t" * 129}, headers=service.headers()
    )

    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "team_id"


async def test_group_by_an_unknown_dimension_lists_team_among_the_choices(service):
    response = await service.client.get(
        "/v1/usage", params={"group_by": "squad"}, headers=service.headers()
    )

    assert response.status_code == 400
    assert "team" in response.json()["error"]["message"]


async def test_requests_recorded_before_teams_get_their_team_from_the_stored_events(
    tmp_path, events, teams_migration_check
):
    await teams_migration_check(f"sqlite+aiosqlite:///{tmp_path / 'teams.db'}", events)
