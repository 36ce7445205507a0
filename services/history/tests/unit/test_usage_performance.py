"""`GET /v1/usage/performance`: latency percentiles and error rates per bucket, model and
deployment, scoped like every history read (tenant; a member sees only their own)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from switchyard.history.performance import percentile


def _completed(events, request, latency_ms: float, deployment: str = "sim-small-1"):
    event = events.completed(request)
    data = event.data.model_copy(update={"latency_ms": latency_ms, "deployment": deployment})
    return event.model_copy(update={"data": data})


@pytest.fixture
async def timed(service, recorder, events):
    """acme/alice: 10 completed requests with latencies 10..100 ms and 2 failures in hour
    12; acme/bob one slow request on another deployment; globex one request."""
    start = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    batch = []
    for index in range(10):
        request = events.requested(at=start + timedelta(minutes=index))
        batch += [request, _completed(events, request, 10.0 * (index + 1))]
    for index in range(2):
        request = events.requested(at=start + timedelta(minutes=20 + index))
        batch += [request, events.failed(request)]
    slow = events.requested(user_id="bob", at=start + timedelta(hours=1))
    batch += [slow, _completed(events, slow, 5000.0, deployment="sim-small-2")]
    other = events.requested(tenant="globex", user_id="carol", at=start)
    batch += [other, _completed(events, other, 1.0)]
    await recorder.record(batch)
    return start


async def _report(service, *, role="user", user_id="alice", tenant="acme", **params):
    response = await service.client.get(
        "/v1/usage/performance",
        params={"since": "2025-03-01T00:00:00Z", "until": "2025-03-02T00:00:00Z", **params},
        headers=service.headers(tenant=tenant, user_id=user_id, role=role),
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_percentiles_interpolate_like_postgres_percentile_cont():
    values = [10.0 * n for n in range(1, 11)]
    assert percentile(values, 0.5) == pytest.approx(55.0)
    assert percentile(values, 0.95) == pytest.approx(95.5)
    assert percentile([7.0], 0.95) == 7.0
    assert percentile([], 0.5) is None


async def test_a_member_sees_their_own_latency_and_error_rate_by_hour(service, timed):
    report = await _report(service, group_by="hour")
    assert [row["bucket"] for row in report["data"]] == ["2025-03-01T12:00:00Z"]
    row = report["data"][0]
    assert (row["requests"], row["errors"]) == (12, 2)
    assert row["error_rate"] == pytest.approx(2 / 12, abs=1e-6)
    assert row["latency_ms_p50"] == pytest.approx(55.0)
    assert row["latency_ms_p95"] == pytest.approx(95.5)
    assert row["total_tokens"] == 10 * 8  # the fixture's completions: 5 in, 3 out


async def test_minute_buckets_over_at_most_two_days(service, timed):
    report = await _report(service, group_by="minute,model")
    assert report["data"][0]["bucket"] == "2025-03-01T12:00:00Z"
    assert len(report["data"]) == 12 and report["data"][0]["model"] == "sim-small"
    response = await service.client.get(
        "/v1/usage/performance",
        params={
            "since": "2025-03-01T00:00:00Z",
            "until": "2025-03-04T00:00:00Z",
            "group_by": "minute",
        },
        headers=service.headers(),
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "since"


async def test_an_admin_sees_the_tenant_by_deployment_and_never_another_tenant(service, timed):
    report = await _report(service, role="admin", group_by="deployment")
    by_deployment = {row["deployment"]: row for row in report["data"]}
    assert set(by_deployment) == {"sim-small-1", "sim-small-2"}
    assert by_deployment["sim-small-2"]["latency_ms_p95"] == pytest.approx(5000.0)
    assert (report["totals"]["requests"], report["totals"]["errors"]) == (13, 2)


async def test_server_errors_leave_out_the_errors_a_request_caused(service, recorder, events):
    """A deployment's health: failures with a 5xx status and expired requests are server
    errors; a 4xx the request caused (invalid, over the provider's rate limit) is an error
    but not a server error."""
    from switchyard.common.events import TerminalStatus

    start = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    batch = []
    for index, (status, code) in enumerate(
        [
            (None, None),
            (None, None),
            ("failed", 400),
            ("failed", 429),
            ("failed", 503),
            ("expired", 504),
        ]
    ):
        request = events.requested(at=start + timedelta(minutes=index))
        if status is None:
            batch += [request, _completed(events, request, 10.0)]
            continue
        failed = events.failed(request, status=TerminalStatus(status))
        error = failed.data.error.model_copy(update={"status": code})
        batch += [
            request,
            failed.model_copy(update={"data": failed.data.model_copy(update={"error": error})}),
        ]
    await recorder.record(batch)

    report = await _report(service, group_by="deployment")
    [row] = report["data"]
    assert (row["requests"], row["errors"], row["server_errors"]) == (6, 4, 2)
    assert row["server_error_rate"] == pytest.approx(2 / 6, abs=1e-6)
    assert report["totals"]["server_errors"] == 2


async def test_a_since_in_the_future_without_until_is_400_naming_since(service):
    response = await service.client.get(
        "/v1/usage/performance",
        params={"since": "2999-01-01T00:00:00Z"},
        headers=service.headers(),
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "since"


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"group_by": "color"}, "group_by"),
        ({"group_by": "day,hour"}, "group_by"),
        ({"group_by": ",,"}, "group_by"),
        ({"group_by": "minute,,model"}, "group_by"),
        ({"since": "yesterday-ish"}, "since"),
        ({"since": "2025-03-02T00:00:00Z"}, "until"),
        ({"since": "2024-01-01T00:00:00Z"}, "since"),
    ],
)
async def test_bad_parameters_are_400_naming_the_parameter(service, params, param):
    response = await service.client.get(
        "/v1/usage/performance",
        params={"until": "2025-03-02T00:00:00Z", **params},
        headers=service.headers(),
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


async def test_the_caller_identity_is_required(service):
    response = await service.client.get(
        "/v1/usage/performance", headers={"x-switchyard-internal-token": "test-internal-token"}
    )
    assert response.status_code == 401


@pytest.mark.parametrize("path", ["/v1/usage", "/v1/usage/performance", "/v1/history"])
async def test_a_member_naming_another_user_is_refused_not_answered_with_their_own(
    service, timed, path
):
    window = {"since": "2025-03-01T00:00:00Z", "until": "2025-03-02T00:00:00Z"}

    async def get(user_id: str, role: str = "user"):
        return await service.client.get(
            path,
            params={**window, "user_id": user_id},
            headers=service.headers(tenant="acme", user_id="alice", role=role),
        )

    refused = await get("bob")
    assert refused.status_code == 403, refused.text
    error = refused.json()["error"]
    assert (error["code"], error["param"]) == ("admin_only", "user_id")
    assert (await get("alice")).status_code == 200  # naming oneself is fine
    assert (await get("bob", role="admin")).status_code == 200
