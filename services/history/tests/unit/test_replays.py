"""Replays: selection, sending on the batch lane (once per request, at the rate), pairing
and comparing, metadata-only requests reported per request, stop/resume, a dead runner's
requests in doubt resolved by a probe, and bad input. Inference is a fake on the bus."""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import select, update

from switchyard.common.events import (
    ChatCompleted,
    ChatCompletedData,
    ChatFailed,
    ChatFailedData,
    ChatRequested,
    ClientAPI,
    ErrorInfo,
    Event,
    Priority,
    TerminalStatus,
    TokenUsage,
    UsageData,
    UsageRecorded,
)
from switchyard.common.http import INTERNAL_KEEPALIVE_EXPIRY_S, SERVER_KEEP_ALIVE_S
from switchyard.common.testing.infra import async_wait_until
from switchyard.history.models import replay_items_table, replays_table
from switchyard.history.replay_admission import (
    AdmissionUnavailable,
    Admitted,
    Denied,
    GatewayAdmission,
    Held,
)
from switchyard.history.replays import (
    ReplayError,
    ReplayRunner,
    format_rate,
    output_text,
    parse_rate,
    similarity,
)

SINCE = "2025-01-01T00:00:00Z"


class FakeInference:
    """Answers every request of the batch lane: `answer(request)` gives the text."""

    def __init__(self, service, answer=lambda request: "Hi there!") -> None:
        self.service = service
        self.answer = answer
        self.requests: list[ChatRequested] = []
        # Requests whose stream fails after giving `answer(request)` (as inference's
        # `chat.failed` keeps what a stream gave).
        self.fails_midway = lambda request: False

    async def __call__(self, event: Event) -> None:
        if not isinstance(event, ChatRequested):
            return
        self.requests.append(event)
        midway = self.fails_midway(event)
        response = {
            "id": "chatcmpl-r",
            "object": "chat.completion",
            "model": event.data.model,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": None if midway else "stop",
                    "message": {"role": "assistant", "content": self.answer(event)},
                }
            ],
        }
        if event.data.api == ClientAPI.ANTHROPIC_MESSAGES:
            response = {
                "id": "msg_r",
                "type": "message",
                "role": "assistant",
                "model": event.data.model,
                "content": [{"type": "text", "text": self.answer(event)}],
                "stop_reason": "end_turn",
            }
        envelope = {"source": "inference", "tenant": event.tenant, "request_id": event.request_id}
        usage = TokenUsage(input_tokens=7, output_tokens=2 if midway else 4)
        outcome: ChatCompleted | ChatFailed
        if midway:
            error = ErrorInfo(status=500, type="server_error", message="The upstream failed.")
            outcome = ChatFailed(
                **envelope,
                data=ChatFailedData(status=TerminalStatus.FAILED, error=error, response=response),
            )
        else:
            outcome = ChatCompleted(
                **envelope,
                data=ChatCompletedData(
                    api=event.data.api,
                    response=response,
                    provider="simulator",
                    deployment="sim-large-1",
                    usage=usage,
                    latency_ms=80,
                ),
            )
        await self.service.publish(
            outcome,
            UsageRecorded(
                **envelope,
                data=UsageData(
                    api=event.data.api,
                    model=event.data.model,
                    user_id=event.data.user_id,
                    api_key_id=event.data.api_key_id,
                    status=TerminalStatus.FAILED if midway else TerminalStatus.COMPLETED,
                    usage=usage,
                    cost_usd=0.005 if midway else 0.01,
                    latency_ms=80,
                    replay_of=event.data.replay_of,
                ),
            ),
        )


class GatewayDouble:
    """The gateway's admission as the replay runner sees it: answers with `current`'s
    `admit` (a test swaps `current` to change what the gateway says)."""

    def __init__(self) -> None:
        self.current = ScriptedAdmission([], then=Admitted(None))

    async def admit(self, event: ChatRequested, timeout_s: float):
        return await self.current.admit(event, timeout_s)


@pytest.fixture
def admission(request) -> GatewayDouble | None:
    """What the runner asks before sending: no gateway (as `service_settings` says), or a
    `GatewayDouble` for a test parametrized indirectly with "gateway"."""
    return GatewayDouble() if getattr(request, "param", None) == "gateway" else None


@pytest.fixture
async def service(service_settings, admission, start_service):
    async with start_service(service_settings, admission=admission) as running:
        yield running


@pytest.fixture
async def inference(service):
    fake = FakeInference(service)
    await service.bus.subscribe([service.topics.requests_batch], "inference", fake)
    return fake


async def record_traffic(service, events, prompts, **options) -> list[ChatRequested]:
    originals = []
    for prompt in prompts:
        request = events.requested(prompt=prompt, **options)
        await service.publish(request, events.completed(request, answer=f"Answer to {prompt}"))
        await service.publish(events.usage(request))
        originals.append(request)
    for request in originals:
        await service.wait_for(
            request.request_id, "completed", tenant=request.tenant, user_id=request.data.user_id
        )
    return originals


async def replay(service, headers: dict | None = None, **body) -> dict:
    response = await service.client.post(
        "/v1/replays",
        json={"since": SINCE, "to_model": "sim-large", **body},
        headers=headers or service.headers(),
    )
    assert response.status_code == 201, response.text
    return response.json()


async def report_of(service, replay_id: str, headers: dict | None = None) -> dict:
    response = await service.client.get(
        f"/v1/replays/{replay_id}", headers=headers or service.headers()
    )
    assert response.status_code == 200, response.text
    return response.json()


async def finished(service, replay_id: str, headers: dict | None = None) -> dict:
    async def done():
        report = await report_of(service, replay_id, headers)
        return report if report["status"] == "completed" else None

    return await async_wait_until(done, timeout=20, message="the replay to complete")


async def test_replay_pairs_originals_with_replays_on_the_batch_lane(service, events, inference):
    inference.answer = lambda request: (
        "Answer to one" if "one" in str(request.data.body) else "Something else entirely"
    )
    originals = await record_traffic(service, events, ["one", "two"], model="sim-small")
    originals += await record_traffic(
        service, events, ["three"], model="sim-claude", api=ClientAPI.ANTHROPIC_MESSAGES
    )

    created = await replay(service, rate="100/s")
    report = await finished(service, created["id"])

    assert created["total"] == 3 and created["rate"] == "100/s"
    assert len(inference.requests) == 3
    sent = {request.data.replay_of: request for request in inference.requests}
    assert set(sent) == {request.request_id for request in originals}
    for request in inference.requests:
        assert request.data.priority is Priority.BATCH
        assert request.data.reply_to is None and request.data.webhook_url is None
        assert request.data.model == request.data.body["model"] == "sim-large"
        assert request.source == "history"
    # The Anthropic original is replayed in its own API, with its own body.
    claude = sent[originals[2].request_id]
    assert claude.data.api is ClientAPI.ANTHROPIC_MESSAGES
    assert claude.data.body["max_tokens"] == 256

    pairs = {pair["original"]["request_id"]: pair for pair in report["data"]}
    one = pairs[originals[0].request_id]
    assert one["original"]["model"] == "sim-small" and one["replay"]["model"] == "sim-large"
    assert one["original"]["status"] == one["replay"]["status"] == "completed"
    assert (one["replay"]["input_tokens"], one["replay"]["output_tokens"]) == (7, 4)
    assert one["exact_match"] is True and one["similarity"] == 1.0
    two = pairs[originals[1].request_id]
    assert two["exact_match"] is False and 0 <= two["similarity"] < 0.6
    totals = report["totals"]
    assert totals["original"]["requests"] == totals["replay"]["requests"] == 3
    assert totals["replay"]["cost_usd"] == pytest.approx(0.03)
    assert totals["cost_delta_usd"] == pytest.approx(0.03 - 3 * 0.0021)
    assert totals["latency_delta_ms"] == pytest.approx(80 - 43.0)
    assert totals["exact_matches"] == 1 and totals["compared"] == 3
    # The originals are untouched, and the replays are in history, marked as such.
    for request in originals:
        item = await service.wait_for(request.request_id, "completed")
        assert item["model"] in ("sim-small", "sim-claude") and item["replay_of"] is None
    replayed = await service.wait_for(one["replay"]["request_id"], "completed")
    assert replayed["replay_of"] == originals[0].request_id


async def test_a_replay_whose_stream_failed_midway_is_not_compared(service, events, inference):
    """What a failed stream gave is kept in history, but it is no answer: even the very
    text of the original is neither an exact match nor similar."""
    inference.answer = lambda request: (
        "Answer to one" if "one" in str(request.data.body) else "Answer to two"
    )
    inference.fails_midway = lambda request: "two" in str(request.data.body)
    originals = await record_traffic(service, events, ["one", "two"], model="sim-small")

    report = await finished(service, (await replay(service))["id"])

    pairs = {pair["original"]["request_id"]: pair for pair in report["data"]}
    one, two = pairs[originals[0].request_id], pairs[originals[1].request_id]
    assert one["exact_match"] is True and one["similarity"] == 1.0
    assert two["replay"]["status"] == "failed"
    assert two["exact_match"] is None and two["similarity"] is None
    assert report["totals"]["compared"] == 1 and report["totals"]["exact_matches"] == 1
    kept = await service.wait_for(two["replay"]["request_id"], "failed")
    assert kept["response"]["choices"][0]["message"]["content"] == "Answer to two"


async def test_the_runners_client_of_the_gateway_expires_idle_connections_first() -> None:
    """A connection the gateway is closing for idling would fail the admission as if the
    gateway were unreachable: the pool lets go of it well before."""
    admission = GatewayAdmission("http://127.0.0.1:1", "token")
    try:
        pool = admission._client._transport._pool  # type: ignore[attr-defined]
        assert pool._keepalive_expiry == INTERNAL_KEEPALIVE_EXPIRY_S < SERVER_KEEP_ALIVE_S
    finally:
        await admission.close()


async def test_metadata_only_requests_are_reported_and_the_rest_still_runs(
    service, events, inference
):
    kept = await record_traffic(service, events, ["kept"])
    await service.client.put(
        "/v1/history/settings",
        json={"store_content": False},
        headers=service.headers(role="admin"),
    )
    hidden = await record_traffic(service, events, ["hidden"])

    report = await finished(service, (await replay(service))["id"])

    pairs = {pair["original"]["request_id"]: pair for pair in report["data"]}
    assert pairs[hidden[0].request_id]["replayable"] is False
    assert "metadata-only" in pairs[hidden[0].request_id]["reason"]
    assert pairs[hidden[0].request_id]["replay"] is None
    assert pairs[kept[0].request_id]["replay"]["status"] == "completed"
    assert report["totals"]["not_replayable"] == 1
    assert [r.data.replay_of for r in inference.requests] == [kept[0].request_id]


async def test_selection_filters_and_limit(service, events, inference):
    await record_traffic(service, events, ["a", "b"], model="sim-small")
    await record_traffic(service, events, ["c"], model="sim-claude", api_key_id="key-2")
    only_small = await replay(service, model="sim-small", limit=1)
    by_key = await replay(service, api_key_id="key-2")
    sample = await replay(service, sample=2)
    assert (only_small["total"], by_key["total"], sample["total"]) == (1, 1, 2)
    # Replays are not replayed again: they are not recorded traffic.
    await finished(service, only_small["id"])
    again = await replay(service)
    assert again["total"] == 3


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"since": "2030-01-01T00:00:00Z"}, 400, "empty_selection"),
        ({"rate": "0/s"}, 400, "invalid_rate"),
        ({"rate": 0}, 400, "invalid_rate"),
        ({"rate": "fast"}, 400, "invalid_rate"),
        ({"rate": "0.0000001/h"}, 400, "invalid_rate"),
        ({"rate": "0.5/h"}, 400, "invalid_rate"),
        ({"limit": 1, "sample": 1}, 400, "invalid_request"),
        ({"until": "2024-01-01T00:00:00Z"}, 400, "invalid_request"),
        ({"since": "yesterday-ish"}, 400, None),
        ({"to_model": ""}, 400, None),
    ],
)
async def test_bad_replays_are_clear_400s(service, events, body, status, code):
    await record_traffic(service, events, ["x"])
    response = await service.client.post(
        "/v1/replays", json={"since": SINCE, "to_model": "m", **body}, headers=service.headers()
    )
    assert response.status_code == status
    if code is not None:
        assert response.json()["error"]["code"] == code


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("rate", True, "not a boolean"),
        ("rate", False, "not a boolean"),
        ("rate", [5], "not an array"),
        ("rate", {"per_s": 5}, "not an object"),
        ("rate", "\uff12/s", "Use a positive number"),  # fullwidth 2
        ("rate", "\u0665/s", "Use a positive number"),  # Arabic-Indic 5
        ("rate", "5\u2003/s", "Use a positive number"),  # em space
        ("limit", True, "valid integer"),
        ("limit", "10", "valid integer"),
        ("limit", 10.0, "valid integer"),
        ("sample", False, "valid integer"),
        ("sample", "3", "valid integer"),
        ("to_model", 5, "valid string"),
        ("since", 1700000000, "valid string"),
        ("model", True, "valid string"),
        ("user_id", 7, "valid string"),
    ],
)
async def test_each_replay_field_takes_only_its_own_json_type(
    service, events, inference, field, value, expected
):
    await record_traffic(service, events, ["x"])
    response = await service.client.post(
        "/v1/replays",
        json={"since": SINCE, "to_model": "sim-large", field: value},
        headers=service.headers(),
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == field
    assert error["message"].startswith(f"Invalid value for '{field}': ")
    assert expected in error["message"]
    listed = await service.client.get("/v1/replays", headers=service.headers())
    assert listed.json()["data"] == []


@pytest.mark.parametrize(("rate", "shown"), [(None, "5/s"), (2, "2/s"), (0.5, "30/m")])
async def test_a_null_rate_is_the_default_and_numbers_are_per_second(
    service, events, inference, rate, shown
):
    await record_traffic(service, events, ["x"])
    created = await replay(service, rate=rate)
    assert created["rate"] == shown


async def test_unknown_replays_are_404_and_other_users_cannot_see_them(service, events, inference):
    await record_traffic(service, events, ["x"])
    created = await replay(service)
    other = service.headers(user_id="mallory")
    for path in (f"/v1/replays/{created['id']}", "/v1/replays/nope"):
        assert (await service.client.get(path, headers=other)).status_code == 404
    for action in ("stop", "resume"):
        refused = await service.client.post(f"/v1/replays/nope/{action}", headers=service.headers())
        assert refused.status_code == 404
        # The same error as the read's, naming the path parameter (it named none).
        assert refused.json()["error"]["param"] == "replay_id"
        assert refused.json()["error"]["code"] == "replay_not_found"


async def test_the_list_is_paged_newest_first_and_filtered_by_status(service, events, inference):
    await record_traffic(service, events, ["x"])
    created = [await replay(service) for _ in range(3)]
    stopped = await service.client.post(
        f"/v1/replays/{created[1]['id']}/stop", headers=service.headers()
    )
    assert stopped.status_code == 200, stopped.text

    async def listed(query: str) -> dict:
        response = await service.client.get(f"/v1/replays?{query}", headers=service.headers())
        assert response.status_code == 200, response.text
        return response.json()

    first = await listed("limit=2")
    assert len(first["data"]) == 2 and first["next_cursor"]
    second = await listed(f"limit=2&cursor={first['next_cursor']}")
    assert len(second["data"]) == 1 and second["next_cursor"] is None
    ids = [item["id"] for item in first["data"] + second["data"]]
    assert sorted(ids) == sorted(item["id"] for item in created)
    assert len(set(ids)) == 3
    only_stopped = await listed("status=stopped")
    assert [item["id"] for item in only_stopped["data"]] == [created[1]["id"]]
    assert only_stopped["data"][0]["status"] == "stopped"


@pytest.mark.parametrize(
    ("query", "param", "code"),
    [
        ("limit=0", "limit", "invalid_limit"),
        ("limit=101", "limit", "invalid_limit"),
        ("limit=ten", "limit", "invalid_limit"),
        ("limit=%D9%A3", "limit", "invalid_limit"),  # an Arabic-Indic 3
        ("cursor=not-a-cursor", "cursor", "invalid_cursor"),
        ("status=bogus", "status", "invalid_status"),
        ("status=running,bogus", "status", "invalid_status"),
    ],
)
async def test_bad_list_parameters_are_400s_naming_them(service, query, param, code):
    response = await service.client.get(f"/v1/replays?{query}", headers=service.headers())
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, code)


@pytest.mark.parametrize("limit", ["-1", "1001", "ten", "%EF%BC%93"])
async def test_a_reports_page_size_is_checked_like_every_lists(service, events, inference, limit):
    await record_traffic(service, events, ["x"])
    created = await replay(service)
    response = await service.client.get(
        f"/v1/replays/{created['id']}?limit={limit}", headers=service.headers()
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("limit", "invalid_limit")
    assert "from 0 to 1000" in error["message"]


class HeldRunner:
    """Holds the replay runner at its `hold_at`-th publish until `release` is set, and
    counts what it sends and its rounds, so a test orders its steps by the runner's own
    progress instead of by the clock."""

    def __init__(self, runner, hold_at: int) -> None:
        self.runner = runner
        self.hold_at = hold_at
        self.sent: list[str] = []
        self.held = asyncio.Event()
        self.release = asyncio.Event()
        self.rounds = 0
        publish, tick = runner._publish, runner.tick

        async def held_publish(topic, event, **options) -> None:
            if len(self.sent) + 1 == self.hold_at:
                self.held.set()
                await self.release.wait()
            await publish(topic, event, **options)
            self.sent.append(event.request_id)

        async def counted_tick() -> bool:
            try:
                return await tick()
            finally:
                self.rounds += 1

        runner._publish, runner.tick = held_publish, counted_tick

    async def rounds_after(self, count: int) -> None:
        """Return once the runner has finished `count` more rounds."""
        target = self.rounds + count

        async def reached() -> bool:
            return self.rounds >= target

        await async_wait_until(reached, timeout=30, message="runner rounds")


async def test_stopped_replay_resumes_where_it_stopped_and_sends_nothing_twice(
    service, events, inference
):
    await record_traffic(service, events, [f"p{i}" for i in range(6)])
    runner = HeldRunner(service.components.runner, hold_at=2)
    created = await replay(service, rate="100/s")
    # The runner is held while sending the second request: the replay is stopped then.
    await asyncio.wait_for(runner.held.wait(), 30)
    stopped = await service.client.post(
        f"/v1/replays/{created['id']}/stop", headers=service.headers()
    )
    assert stopped.json()["status"] == "stopped"
    runner.release.set()
    # The request already being sent goes out; then the runner sees the stop, and later
    # rounds send nothing more.
    await runner.rounds_after(3)
    during = list(runner.sent)
    assert len(during) == 2
    await runner.rounds_after(3)
    assert runner.sent == during  # nothing sent while stopped

    resumed = await service.client.post(
        f"/v1/replays/{created['id']}/resume", headers=service.headers()
    )
    assert resumed.json()["status"] == "running"
    report = await finished(service, created["id"])
    ids = [request.request_id for request in inference.requests]
    assert len(ids) == len(set(ids)) == 6
    assert runner.sent[: len(during)] == during and len(runner.sent) == 6
    assert report["counts"]["settled"] == 6
    completed = await service.client.post(
        f"/v1/replays/{created['id']}/resume", headers=service.headers()
    )
    assert completed.status_code == 409


async def test_a_dead_runners_items_in_doubt_are_sent_once(service, events, inference):
    """A runner that died after marking items `sending`: the one it had published is
    found recorded and kept; the one it had not is sent now; neither twice."""
    await record_traffic(service, events, ["published", "lost"])

    idled = asyncio.Event()

    async def idle() -> bool:
        idled.set()
        return False

    service.app.state.replay_runner.tick = idle  # the service's own runner stays out
    # ...once a round it may have begun before (and that could still send) has ended.
    await asyncio.wait_for(idled.wait(), timeout=30)
    created = await replay(service, rate="100/s")
    replay_id = created["id"]
    engine = service.components.engine
    items = replay_items_table.c
    long_ago = datetime.now(UTC) - timedelta(minutes=5)
    async with engine.begin() as connection:
        await connection.execute(
            update(replay_items_table)
            .where(items.replay_id == replay_id)
            .values(state="sending", attempted_at=long_ago)
        )
        rows = (
            (
                await connection.execute(
                    select(replay_items_table)
                    .where(items.replay_id == replay_id)
                    .order_by(items.position)
                )
            )
            .mappings()
            .all()
        )
    # The dead runner had published the first one.
    dead = ReplayRunner(engine, service.bus.publish, service.topics, runner_id="dead")
    async with engine.connect() as connection:
        replay_row = (
            (
                await connection.execute(
                    select(replays_table).where(replays_table.c.replay_id == replay_id)
                )
            )
            .mappings()
            .first()
        )
    event = await dead._replay_event(dict(replay_row), {**dict(rows[0]), "state": "pending"})
    await service.bus.publish(service.topics.requests_batch, event, key=event.request_id)
    await service.wait_for(event.request_id, "completed")

    runner = ReplayRunner(
        engine, service.bus.publish, service.topics, runner_id="heir", recover_after_s=0
    )
    # The service's own runner is out, so the heir settles and completes it itself.
    deadline = asyncio.get_running_loop().time() + 30  # generous on a loaded machine
    while asyncio.get_running_loop().time() < deadline:
        await runner.tick()
        await runner.settle()
        report = (
            await service.client.get(f"/v1/replays/{replay_id}", headers=service.headers())
        ).json()
        if report["status"] == "completed":
            break
        await asyncio.sleep(0.1)
    await runner.close()
    sent = [request.request_id for request in inference.requests]
    assert sorted(sent) == sorted({row["replay_request_id"] for row in rows})
    assert report["counts"]["settled"] == 2


def test_rates():
    assert parse_rate("5/s") == (5, 1.0)
    assert parse_rate("30/m") == (30, 60.0)
    assert parse_rate("0.5/s") == (1, 2.0)
    assert parse_rate(2) == (2, 1.0)
    for bad in ("0", "0/s", "-1/s", "five", "5/d", "100000/s", "0.0000001/h", "0.01/m", "\uff15/s"):
        with pytest.raises(ReplayError):
            parse_rate(bad)
    for wrong_type in (True, None, [1], 10**400, float("nan")):
        with pytest.raises(ReplayError):
            parse_rate(wrong_type)
    # Shown as given, per second, minute or hour.
    shown = {"1/h": "1/h", "5/s": "5/s", "30/m": "30/m", "100/h": "100/h", "1.5/h": "1.5/h"}
    shown |= {"120/m": "120/m", "0.5/s": "30/m", "2": "2/s", "1 / hour": "1/h"}
    for given, expected in shown.items():
        assert format_rate(*parse_rate(given)) == expected, given


def test_output_text_and_similarity():
    chat = {
        "choices": [
            {
                "message": {
                    "content": "Hello",
                    "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}],
                }
            }
        ]
    }
    assert output_text("openai.chat_completions", chat) == "Hello" + "f({})"
    message = {
        "content": [
            {"type": "text", "text": "Hi"},
            {"type": "tool_use", "name": "g", "input": {"a": 1}},
        ]
    }
    assert output_text("anthropic.messages", message) == 'Hig({"a":1})'
    assert output_text("openai.embeddings", {"data": []}) is None
    assert output_text("openai.chat_completions", {"redacted": True}) is None
    assert similarity("abc", "abc") == 1.0
    assert similarity("abcd", "abce") == pytest.approx(0.75)
    assert similarity("", "xyz") == 0.0


class ScriptedAdmission:
    """The gateway's admission, faked: answers from `script` in order, then `then`."""

    def __init__(self, script: list, then) -> None:
        self.script = list(script)
        self.then = then
        self.asked: list[str] = []

    async def admit(self, event: ChatRequested, timeout_s: float):
        self.asked.append(event.request_id)
        return self.script.pop(0) if self.script else self.then


@pytest.mark.parametrize("admission", ["gateway"], indirect=True)
async def test_replayed_requests_wait_for_rate_limits_and_stop_at_a_used_up_budget(
    service, events, inference, admission
):
    await record_traffic(service, events, ["a", "b", "c"])
    admitted = Admitted(team_id="team-9")
    budget = Held("Budget of $1 for the key k1 is used up.", budget=True, retry_after_s=1)
    admission.current = ScriptedAdmission(
        [Held("Rate limit of 1 requests per minute.", budget=False, retry_after_s=0.5)]
        + [admitted, admitted, budget],
        then=admitted,
    )
    created = await replay(service, rate="100/s")

    async def stopped():
        report = (
            await service.client.get(f"/v1/replays/{created['id']}", headers=service.headers())
        ).json()
        return report if report["status"] == "stopped" else None

    report = await async_wait_until(stopped, timeout=20, message="the budget to stop it")
    assert len(inference.requests) == 2  # the rate limit delayed the first, sent later
    assert {request.data.team_id for request in inference.requests} == {"team-9"}
    [held] = [pair for pair in report["data"] if pair["state"] == "pending"]
    assert held["reason"] == budget.message and held["replay"] is None

    # The budget reset: resuming sends the rest, none twice.
    resumed = await service.client.post(
        f"/v1/replays/{created['id']}/resume", headers=service.headers()
    )
    assert resumed.json()["status"] == "running"
    done = await finished(service, created["id"])
    ids = [request.request_id for request in inference.requests]
    assert len(ids) == len(set(ids)) == 3
    assert done["counts"]["settled"] == 3
    assert all(pair["reason"] is None for pair in done["data"])


@pytest.mark.parametrize("admission", ["gateway"], indirect=True)
async def test_replay_items_are_kept_when_limits_cannot_be_checked(
    service, events, inference, admission
):
    await record_traffic(service, events, ["a"])
    asked: list[str] = []

    class Down:
        async def admit(self, event, timeout_s):
            asked.append(event.request_id)
            raise AdmissionUnavailable("gateway unreachable")

    admission.current = Down()
    created = await replay(service, rate="100/s")

    async def kept_after_asking():
        # The gateway was asked, and (that round over) the item is waiting again.
        if not asked:
            return None
        report = await report_of(service, created["id"])
        return report if report["counts"]["pending"] == 1 else None

    report = await async_wait_until(kept_after_asking, timeout=20, message="the item kept")
    assert inference.requests == []
    assert report["status"] == "running" and report["counts"]["pending"] == 1

    admission.current = ScriptedAdmission([], then=Admitted(None))
    done = await finished(service, created["id"])
    assert done["counts"]["settled"] == 1 and len(inference.requests) == 1


async def test_an_idle_runner_costs_one_lookup_per_round(service, events):
    """With no replay running, a round is one indexed lookup, not the settle join and the
    claim transaction (every replica polls twice a second)."""
    from sqlalchemy import event as sqlalchemy_event

    engine = service.components.engine
    runner = ReplayRunner(engine, service.bus.publish, service.topics, runner_id="idle")
    statements: list[str] = []

    def count(conn, cursor, statement, *args) -> None:
        if "history_replay" in statement:  # the service's other loops share the engine
            statements.append(statement)

    sqlalchemy_event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        assert await runner.tick() is False
    finally:
        sqlalchemy_event.remove(engine.sync_engine, "before_cursor_execute", count)
    assert statements, "the round looked for running replays"
    # Only lookups of running replays: no settle join over the items, no claim update.
    assert all(
        "history_replay_items" not in statement and statement.lstrip().startswith("SELECT")
        for statement in statements
    ), statements


async def test_a_stopped_replays_sent_requests_are_still_compared(service, events):
    """Stopping a replay stops sending, not the comparison of what it already sent: the
    answers arrive only after the stop, and are compared all the same."""
    released = asyncio.Event()

    class HeldInference(FakeInference):
        async def __call__(self, event: Event) -> None:
            if isinstance(event, ChatRequested):
                await released.wait()
            await super().__call__(event)

    held = HeldInference(service)
    await service.bus.subscribe([service.topics.requests_batch], "inference", held, concurrency=8)
    await record_traffic(service, events, [f"p{i}" for i in range(6)])
    created = await replay(service, rate="2/s")
    replay_id = created["id"]
    items = replay_items_table.c

    async def sent() -> int:
        async with service.components.engine.connect() as connection:
            rows = await connection.execute(
                select(items.position).where(items.replay_id == replay_id, items.state == "sent")
            )
            return len(rows.all())

    await async_wait_until(sent, timeout=10, message="a first request sent")
    stopped = await service.client.post(f"/v1/replays/{replay_id}/stop", headers=service.headers())
    assert stopped.json()["status"] == "stopped"
    released.set()

    async def compared():
        report = (
            await service.client.get(f"/v1/replays/{replay_id}", headers=service.headers())
        ).json()
        settled = report["counts"]["settled"]
        return report if settled and settled == len(held.requests) else None

    report = await async_wait_until(compared, timeout=20, message="sent requests compared")
    assert report["status"] == "stopped"


async def test_a_slow_replay_holds_up_no_other_replay_and_stops(service, events, inference):
    """A replay at the slowest rate sends one request and waits an hour for the next;
    another tenant's replay runs to the end meanwhile, and stopping the slow one works."""
    globex = service.headers(tenant="globex", user_id="bob")
    await record_traffic(service, events, ["a", "b", "c"], model="sim-small")
    await record_traffic(service, events, ["x", "y", "z"], tenant="globex", user_id="bob")
    slow = await replay(service, model="sim-small", rate="1/h")
    assert slow["rate"] == "1/h"

    fast = await replay(service, headers=globex, limit=3, rate="5/s")
    report = await finished(service, fast["id"], globex)
    assert report["counts"]["settled"] == 3

    waiting = await report_of(service, slow["id"])
    assert waiting["status"] == "running" and waiting["counts"]["pending"] == 2
    stopped = await service.client.post(f"/v1/replays/{slow['id']}/stop", headers=service.headers())
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"
    # ...and the tenant's next replay runs too.
    again = await replay(service, model="sim-small", limit=1, rate="100/s")
    assert (await finished(service, again["id"]))["counts"]["settled"] == 1
    assert (await report_of(service, slow["id"]))["counts"]["pending"] == 2


async def test_a_slow_publish_holds_up_no_other_replay(service, events, inference):
    """The bus takes its time over one replay's request: the other replays go on."""
    stuck = await record_traffic(service, events, ["stuck"], model="sim-small")
    await record_traffic(service, events, ["a", "b"], model="sim-claude")
    runner = service.components.runner
    publish, released = runner._publish, asyncio.Event()

    async def slow_publish(topic, event, **options) -> None:
        if getattr(event.data, "replay_of", None) == stuck[0].request_id:
            await released.wait()
        await publish(topic, event, **options)

    runner._publish = slow_publish
    slow = await replay(service, model="sim-small", rate="100/s")
    fast = await replay(service, model="sim-claude", rate="100/s")
    assert (await finished(service, fast["id"]))["counts"]["settled"] == 2
    assert (await report_of(service, slow["id"]))["counts"]["sending"] == 1
    released.set()
    assert (await finished(service, slow["id"]))["counts"]["settled"] == 1


async def test_nothing_is_sent_after_a_stop_returns(service, events, inference):
    """A replay stopped while it waits for its rate sends nothing more: the items are
    only taken for sending while the replay runs."""
    await record_traffic(service, events, [f"p{i}" for i in range(5)])
    runner = HeldRunner(service.components.runner, hold_at=0)
    created = await replay(service, rate="1/s")

    async def first_sent() -> bool:
        return len(inference.requests) >= 1

    await async_wait_until(first_sent, timeout=20, message="a first request sent")
    stopped = await service.client.post(
        f"/v1/replays/{created['id']}/stop", headers=service.headers()
    )
    counts = stopped.json()["counts"]
    at_stop = counts["sending"] + counts["sent"] + counts["settled"]
    # Long enough for the rate to allow two more sends (a round is half a second).
    await runner.rounds_after(6)
    assert len(runner.sent) <= at_stop and len(inference.requests) <= at_stop
    report = await report_of(service, created["id"])
    assert report["status"] == "stopped" and report["counts"]["pending"] == 5 - at_stop


class HeldAdmission:
    """The gateway's admission, holding its first answer until `release` is set."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()
        self.release = asyncio.Event()

    async def admit(self, event: ChatRequested, timeout_s: float):
        self.asked.set()
        await self.release.wait()
        return Admitted(team_id=None)


@pytest.mark.parametrize("admission", ["gateway"], indirect=True)
async def test_a_replay_stopped_while_the_gateway_admits_sends_nothing(
    service, events, inference, admission
):
    await record_traffic(service, events, ["a", "b"])
    held = admission.current = HeldAdmission()
    runner = HeldRunner(service.components.runner, hold_at=0)
    created = await replay(service, rate="100/s")
    await asyncio.wait_for(held.asked.wait(), 30)
    stopped = await service.client.post(
        f"/v1/replays/{created['id']}/stop", headers=service.headers()
    )
    assert stopped.json()["status"] == "stopped"
    held.release.set()

    async def back_to_pending():
        report = await report_of(service, created["id"])
        return report if report["counts"]["pending"] == 2 else None

    await async_wait_until(back_to_pending, timeout=20, message="the item back to pending")
    await runner.rounds_after(2)
    assert inference.requests == [] and runner.sent == []

    await service.client.post(f"/v1/replays/{created['id']}/resume", headers=service.headers())
    done = await finished(service, created["id"])
    ids = [request.request_id for request in inference.requests]
    assert len(ids) == len(set(ids)) == 2 and done["counts"]["settled"] == 2


async def test_members_select_only_their_own_requests(service, events, inference):
    """A member naming another user, or a key or team they have no requests with, is
    refused (403, OpenAI's error format), not quietly given their own requests."""
    await record_traffic(service, events, ["a1", "a2"], api_key_id="key-a", team_id="team-a")
    await record_traffic(
        service, events, ["b1"], user_id="bob", api_key_id="key-b", team_id="team-b"
    )
    admin = service.headers(user_id="root", role="admin")

    for selector in (
        {"user_id": "bob"},
        {"api_key_id": "key-b"},
        {"team_id": "team-b"},
        {"api_key_id": "key-unknown"},
    ):
        response = await service.client.post(
            "/v1/replays",
            json={"since": SINCE, "to_model": "sim-large", **selector},
            headers=service.headers(),
        )
        assert response.status_code == 403, selector
        error = response.json()["error"]
        [param] = selector
        assert error["type"] == "permission_error" and error["param"] == param
        assert error["code"] == "admin_only" and "admin" in error["message"]

    for selector in ({"user_id": "alice"}, {"api_key_id": "key-a"}, {"team_id": "team-a"}, {}):
        own = await replay(service, **selector)
        assert own["total"] == 2, selector
        assert own["selection"]["user_id"] == "alice"  # what was selected, as stored
    for selector in ({"user_id": "bob"}, {"api_key_id": "key-b"}, {"team_id": "team-b"}):
        theirs = await replay(service, headers=admin, **selector)
        assert theirs["total"] == 1, selector
    assert (await replay(service, headers=admin))["total"] == 3


async def test_answers_from_the_response_cache_are_not_replayed(service, events, inference):
    """A cache hit repeats an earlier answer at no cost; its original miss is what is
    replayed and compared."""
    [miss] = await record_traffic(service, events, ["same"])
    hit = events.requested(prompt="same", model="sim-cached")
    usage = events.usage(hit, cost_usd=0.0, input_tokens=0, output_tokens=0)
    usage = usage.model_copy(update={"data": usage.data.model_copy(update={"cache_hit": True})})
    await service.publish(hit, events.completed(hit, answer="Answer to same"), usage)

    async def hit_recorded() -> bool:
        response = await service.client.get(
            f"/v1/history/{hit.request_id}", headers=service.headers()
        )
        return response.status_code == 200 and response.json()["cache_hit"] is True

    await async_wait_until(hit_recorded, timeout=10, message="the cache hit recorded")

    report = await finished(service, (await replay(service, rate="100/s"))["id"])
    assert report["total"] == 1
    assert [pair["original"]["request_id"] for pair in report["data"]] == [miss.request_id]
    only_hits = await service.client.post(
        "/v1/replays",
        json={"since": SINCE, "to_model": "sim-large", "model": "sim-cached"},
        headers=service.headers(),
    )
    assert only_hits.status_code == 400
    assert only_hits.json()["error"]["code"] == "empty_selection"


class RevokingGateway:
    """A gateway's admission endpoint over HTTP: admits `admit_first` requests billed to
    `user_id`, then refuses the rest with 403 (their key was revoked meanwhile); requests
    billed to anyone else are admitted."""

    message = "API key key-a has been revoked."

    def __init__(self, user_id: str, admit_first: int) -> None:
        self.user_id = user_id
        self.left = admit_first
        self.asked: list[str] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.asked.append(body["user_id"])
        if body["user_id"] == self.user_id:
            if self.left <= 0:
                error = {"message": self.message, "type": "permission_error"}
                error.update(param="api_key_id", code="credentials_revoked")
                return httpx.Response(403, json={"error": error})
            self.left -= 1
        return httpx.Response(200, json={"team_id": None})


@pytest.mark.parametrize("admission", ["gateway"], indirect=True)
async def test_a_replay_whose_credentials_are_refused_stops_with_the_reason_shown(
    service, events, inference, admission
):
    await record_traffic(service, events, ["a", "b", "c"], api_key_id="key-a")
    gateway = RevokingGateway("alice", admit_first=1)
    admission.current = GatewayAdmission(
        "http://gateway", "token", transport=httpx.MockTransport(gateway.handle)
    )
    created = await replay(service, rate="100/s")
    # Another caller's replay of the same traffic is not affected.
    admin = service.headers(user_id="root", role="admin")
    other = await replay(service, headers=admin)

    async def stopped():
        report = await report_of(service, created["id"])
        return report if report["status"] == "stopped" else None

    report = await async_wait_until(stopped, timeout=20, message="the refusal to stop it")
    [waiting] = [pair for pair in report["data"] if pair["reason"] is not None]
    assert waiting["state"] == "pending" and waiting["reason"] == RevokingGateway.message
    assert report["counts"]["pending"] == 2
    # Rounds went on after the stop (the other replay finished): nothing more of the
    # stopped replay was asked for or sent.
    assert (await finished(service, other["id"], admin))["counts"]["settled"] == 3
    assert gateway.asked.count("alice") == 2
    alices = [r for r in inference.requests if r.data.user_id == "alice"]
    assert len(alices) == 1
    assert (await report_of(service, created["id"]))["status"] == "stopped"


async def test_the_gateway_s_refusals_of_credentials_are_final_and_its_outages_are_not(events):
    """403 and a 404 in OpenAI's error format are refusals the runner stops on; a 503, or a
    404 that is not the gateway's own answer, is asked again later."""
    answers = {
        "403": httpx.Response(
            403, json={"error": {"message": "User u1 is disabled.", "code": "user_disabled"}}
        ),
        "404": httpx.Response(
            404, json={"error": {"message": "No API key k9.", "code": "api_key_not_found"}}
        ),
        "503": httpx.Response(
            503, json={"error": {"message": "auth down", "code": "auth_unavailable"}}
        ),
        "no-route": httpx.Response(404, text="Not Found"),
    }
    for status, answer in answers.items():
        gateway = GatewayAdmission(
            "http://gateway", "token", transport=httpx.MockTransport(lambda _, a=answer: a)
        )
        request = events.requested(prompt="a")
        if status in ("403", "404"):
            decision = await gateway.admit(request, 60.0)
            assert isinstance(decision, Denied)
            assert decision.message == answer.json()["error"]["message"]
            assert decision.code == answer.json()["error"]["code"]
        else:
            with pytest.raises(AdmissionUnavailable):
                await gateway.admit(request, 60.0)
        await gateway.close()


class TooLargeGateway:
    """A gateway's admission endpoint refusing one request's body as too large (413), as
    its body limit did for every recorded request over 1 MiB, and admitting the rest."""

    message = "Request body exceeds the limit of 1048576 bytes."

    def __init__(self, prompt: str) -> None:
        self.prompt = prompt
        self.bodies: list[bytes] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(request.content)
        body = json.loads(request.content)
        if body["body"]["messages"][0]["content"] == self.prompt:
            return httpx.Response(413, json={"error": {"message": self.message}})
        return httpx.Response(200, json={"team_id": None})


@pytest.mark.parametrize("admission", ["gateway"], indirect=True)
async def test_a_request_too_large_to_admit_is_not_replayable_and_the_replay_goes_on(
    service, events, inference, admission
):
    """The 413 was taken for the gateway being unavailable: the item went back to pending
    every round, and the replay stalled on it for good, saying nothing."""
    await record_traffic(service, events, ["a", "é big", "c"])
    gateway = TooLargeGateway("é big")
    admission.current = GatewayAdmission(
        "http://gateway", "token", transport=httpx.MockTransport(gateway.handle)
    )
    created = await replay(service, rate="100/s")

    report = await finished(service, created["id"])
    assert report["counts"]["settled"] == 2 and report["counts"]["not_replayable"] == 1
    [skipped] = [pair for pair in report["data"] if pair["state"] == "not_replayable"]
    assert skipped["reason"] == TooLargeGateway.message
    # Sent as compact UTF-8, not with every non-ASCII character escaped.
    assert any("é big".encode() in body for body in gateway.bodies)


class DenyingAdmission:
    """The gateway's admission refusing the credentials of requests billed to `user_id`
    (as for a disabled user) and admitting the rest."""

    message = "User u1 is disabled."

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        self.asked: list[str | None] = []

    async def admit(self, event: ChatRequested, timeout_s: float):
        self.asked.append(event.data.user_id)
        if event.data.user_id == self.user_id:
            return Denied(self.message, code="user_disabled")
        return Admitted(team_id=None)


@pytest.mark.parametrize("admission", ["gateway"], indirect=True)
async def test_billed_to_the_originals_one_refused_identity_skips_only_its_request(
    service, events, inference, admission
):
    """With `bill_to: original` each request has its own identity: one that may not send
    its request settles that request alone (not replayable, the gateway's reason shown);
    the others are sent and compared, and the replay completes."""
    originals = []
    for user_id in ("u1", "u2", "u3"):
        originals += await record_traffic(service, events, [f"from {user_id}"], user_id=user_id)
    gateway = admission.current = DenyingAdmission("u1")
    admin = service.headers(user_id="root", role="admin")
    created = await replay(service, headers=admin, rate="100/s", bill_to="original")

    report = await finished(service, created["id"], admin)
    assert sorted(request.data.user_id for request in inference.requests) == ["u2", "u3"]
    pairs = {pair["original"]["request_id"]: pair for pair in report["data"]}
    refused = pairs[originals[0].request_id]
    assert refused["state"] == "not_replayable" and refused["replayable"] is False
    assert refused["reason"] == DenyingAdmission.message and refused["replay"] is None
    for original in originals[1:]:
        assert pairs[original.request_id]["state"] == "settled"
    assert report["counts"]["settled"] == 2 and report["totals"]["not_replayable"] == 1
    assert gateway.asked.count("u1") == 1  # asked once, not again every round


async def idle_service_runner(service) -> None:
    """Keep the service's own runner out, once a round it may have begun has ended, so a
    test drives runners of its own round by round."""
    idled = asyncio.Event()

    async def idle() -> bool:
        idled.set()
        return False

    service.app.state.replay_runner.tick = idle
    await asyncio.wait_for(idled.wait(), timeout=30)


async def sends_ended(runner: ReplayRunner) -> None:
    """Wait for the send tasks the runner's last round started."""
    await asyncio.wait_for(asyncio.gather(*runner._sending.values()), timeout=30)


async def test_a_replay_whose_items_are_all_in_flight_does_not_keep_the_runner_busy(
    service, events
):
    """The runner starts its next round at once only after a round that sent something:
    a replay whose last item is still being published (in `sending`, too recently to be
    in doubt) makes the rounds wait their interval, not spin."""
    await record_traffic(service, events, ["in flight", "waiting"])
    await idle_service_runner(service)
    created = await replay(service, rate="100/s")
    items = replay_items_table.c
    engine = service.components.engine
    async with engine.begin() as connection:
        await connection.execute(
            update(replay_items_table)
            .where(items.replay_id == created["id"], items.position == 0)
            .values(state="sending", attempted_at=datetime.now(UTC))
        )
    runner = ReplayRunner(engine, service.bus.publish, service.topics, runner_id="r1")
    try:
        await runner.tick()
        await sends_ended(runner)  # sends the waiting item
        assert await runner.tick() is True  # something was sent: go on at once
        busy = []
        for _ in range(4):
            await sends_ended(runner)  # each finds nothing it may send
            busy.append(await runner.tick())
    finally:
        await runner.close()
    assert busy == [False] * 4
    report = await report_of(service, created["id"])
    assert report["counts"]["sending"] == 1 and report["counts"]["sent"] == 1


async def test_a_runner_whose_lease_ran_out_sends_nothing(service, events, inference):
    """Once its lease has run out another runner may take the replay over: a runner that
    has not renewed it takes no item for sending."""
    await record_traffic(service, events, ["a"])
    await idle_service_runner(service)
    created = await replay(service, rate="100/s")
    engine = service.components.engine
    runner = ReplayRunner(engine, service.bus.publish, service.topics, runner_id="r1", lease_s=0)
    try:
        await runner.tick()  # claims it with a lease that has already run out
        await sends_ended(runner)
    finally:
        await runner.close()
    assert inference.requests == []
    assert (await report_of(service, created["id"]))["counts"]["pending"] == 1


class StalledAdmission:
    """The gateway's admission holding its first answer (`answer`) until `release`."""

    def __init__(self, answer) -> None:
        self.answer = answer
        self.asked = asyncio.Event()
        self.release = asyncio.Event()

    async def admit(self, event: ChatRequested, timeout_s: float):
        self.asked.set()
        await self.release.wait()
        return self.answer


async def test_a_runner_that_lost_its_replay_leaves_the_new_runners_item_alone(
    service, events, inference
):
    """A runner stalls while the gateway admits an item; the replay is stopped and resumed
    and another runner takes it over and publishes the item. When the stalled runner's
    answer (a rate limit) finally comes, it does not put that item back: it is sent once."""
    await record_traffic(service, events, ["a"])
    await idle_service_runner(service)
    created = await replay(service, rate="100/s")
    replay_id, engine = created["id"], service.components.engine
    held = Held("Rate limit of 1 requests per minute.", budget=False, retry_after_s=60)
    stalled = StalledAdmission(held)
    old = ReplayRunner(
        engine, service.bus.publish, service.topics, runner_id="old", admission=stalled
    )
    publishing, released = asyncio.Event(), asyncio.Event()

    async def held_publish(topic, event, **options) -> None:
        if isinstance(event, ChatRequested):  # probes go through
            publishing.set()
            await released.wait()
        await service.bus.publish(topic, event, **options)

    new = ReplayRunner(
        engine,
        held_publish,
        service.topics,
        runner_id="new",
        recover_after_s=0,
        admission=ScriptedAdmission([], then=Admitted(None)),
    )
    try:
        await old.tick()
        await asyncio.wait_for(stalled.asked.wait(), 30)
        for action in ("stop", "resume"):
            response = await service.client.post(
                f"/v1/replays/{replay_id}/{action}", headers=service.headers()
            )
            assert response.status_code == 200, response.text
        await new.tick()  # the item in doubt is probed, found unsent, taken and published
        await asyncio.wait_for(publishing.wait(), 30)
        stalled.release.set()
        await sends_ended(old)
        released.set()
        await sends_ended(new)
        assert (await report_of(service, replay_id))["counts"]["pending"] == 0

        async def completed():
            await new.tick()
            await sends_ended(new)
            report = await report_of(service, replay_id)
            return report if report["status"] == "completed" else None

        report = await async_wait_until(completed, timeout=20, message="the replay completed")
    finally:
        await old.close()
        await new.close()
    assert len(inference.requests) == 1 and report["counts"]["settled"] == 1


async def test_comparing_answers_leaves_the_event_loop_free(
    service, events, inference, monkeypatch
):
    """Comparing long answers takes a while: it runs beside the event loop, so the sends
    and lease renewals of every replay go on meanwhile."""
    from switchyard.history import replays as replays_module

    inference.answer = lambda request: "Something else entirely"
    await record_traffic(service, events, ["a"])
    await idle_service_runner(service)
    created = await replay(service, rate="100/s")
    runner = ReplayRunner(
        service.components.engine, service.bus.publish, service.topics, runner_id="r1"
    )
    await runner.tick()
    await sends_ended(runner)
    await service.wait_for(inference.requests[0].request_id, "completed")

    loop, loop_ran = asyncio.get_running_loop(), threading.Event()
    waited: list[bool] = []

    def slow_similarity(a: str, b: str) -> float:
        # The loop runs this callback only if the comparison is not blocking it.
        loop.call_soon_threadsafe(loop_ran.set)
        waited.append(loop_ran.wait(timeout=2))
        return 0.5

    monkeypatch.setattr(replays_module, "similarity", slow_similarity)
    try:
        assert await runner.settle() == 1
    finally:
        await runner.close()
    assert waited == [True]
    report = await report_of(service, created["id"])
    assert report["data"][0]["similarity"] == 0.5


async def test_the_rate_is_a_pace_not_a_burst(service, events, inference):
    """`100/h` is one request every 36 s: the first goes at once, the others wait their
    interval, however many the rate counts per hour."""
    await record_traffic(service, events, ["a", "b", "c"])
    await idle_service_runner(service)
    created = await replay(service, rate="100/h")
    runner = ReplayRunner(
        service.components.engine, service.bus.publish, service.topics, runner_id="r1"
    )
    try:
        for _ in range(3):
            await runner.tick()
            await sends_ended(runner)
    finally:
        await runner.close()
    report = await report_of(service, created["id"])
    assert report["counts"]["pending"] == 2
    assert report["counts"]["sent"] + report["counts"].get("settled", 0) == 1


async def test_a_fast_rate_is_kept_within_a_round(service, events, inference):
    """`20/s` sends its items 50 ms apart in one round of the runner, not one per round:
    the replay's own task waits for its next slot (holding up no other replay)."""
    await record_traffic(service, events, ["a", "b", "c", "d", "e", "f"])
    await idle_service_runner(service)
    created = await replay(service, rate="20/s")
    runner = ReplayRunner(
        service.components.engine, service.bus.publish, service.topics, runner_id="r1"
    )
    try:
        await runner.tick()  # one round starts the replay's task
        await sends_ended(runner)
    finally:
        await runner.close()
    counts = (await report_of(service, created["id"]))["counts"]
    assert counts["pending"] == 0, counts
