"""An operator's bad day, replayed under load on real Kafka and PostgreSQL: the broker
stopped for 10 s and restarted, the history service killed, the expiry sweeper racing
replies that reached their clients, an inference replica killed before it committed the
offsets of requests it had answered, and SIGTERM to every process while the broker is down.

Load: 10 requests a second (`SWITCHYARD_FAULTS_RATE`), half of them streaming, each with
its own text, against a provider that answers after 1 s. After each fault (once every
accepted request had time to reach its terminal state) the suite checks what a user would
notice:

- every 2xx (a JSON reply, or a stream that ended normally) has exactly one `completed`
  history entry, with its usage;
- no accepted request stays pending, and none is lost;
- no entry holds two terminal states (two terminal events, or a row that disagrees with
  its terminal event);
- no request ran upstream more often than it was accepted (counted per request by the
  counting upstream; a request refused with 503 must not run at all);
- every "Kafka unreachable" 503 came within 2 s;
- after a broker restart every process serves again within 15 s without help, and its
  readiness was red while the broker was away.

The figures of every fault are printed as a table at the end of the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
import pytest
import uvloop
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from sqlalchemy import create_engine, text

from switchyard.common.db import sync_url

pytestmark = [pytest.mark.faults, pytest.mark.timeout(900)]

# As the deployment is configured (conftest.py).
REQUEST_TIMEOUT_S = 8
EXPIRY_GRACE_S = 2
SERVICES = ("gateway", "inference-1", "inference-2", "history")

# Requests a second (half streaming); the deployment took about 15. On a shared
# 2-core machine fewer keep the services from saturating before any fault.
RATE_PER_S = float(os.environ.get("SWITCHYARD_FAULTS_RATE", "10"))
WARMUP_S = 8
AFTER_FAULT_S = 12
RECOVERY_BOUND_S = 15
UNREACHABLE_BOUND_S = 2.0
SETTLE_S = REQUEST_TIMEOUT_S + EXPIRY_GRACE_S + 60


@dataclass
class Outcome:
    """What one client saw."""

    tag: str
    stream: bool
    started: float
    sent_at: float = 0.0  # wall clock, to line up with the services' logs
    elapsed: float = 0.0
    status: int | None = None
    request_id: str | None = None
    code: str | None = None
    completed: bool = False
    error: str | None = None

    @property
    def accepted(self) -> bool | None:
        """True: published; False: refused before it was published (a 4xx, or 503
        `bus_unavailable`: every answer names a request id, refusals included); None:
        unknown (the connection failed, or 504 `publish_outcome_unknown`: the bus never
        confirmed taking it; it may run once, or not at all)."""
        if self.status is None or self.code == "publish_outcome_unknown":
            return None
        if 400 <= self.status < 500 or (self.status == 503 and self.code == "bus_unavailable"):
            return False
        return bool(self.request_id)


class Load:
    """Requests at a steady rate until stopped; every one is remembered."""

    def __init__(self, deployment: Any, label: str, rate: float = RATE_PER_S) -> None:
        self.deployment = deployment
        self.label = label
        self.rate = rate
        self.outcomes: list[Outcome] = []

    async def run(self, stop: asyncio.Event) -> list[Outcome]:
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
        async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S + 20, limits=limits) as client:
            tasks = []
            started = time.monotonic()
            index = 0
            while not stop.is_set():
                tasks.append(asyncio.create_task(self._one(client, index)))
                index += 1
                await asyncio.sleep(max(0.0, started + index / self.rate - time.monotonic()))
            await asyncio.gather(*tasks)
        return self.outcomes

    async def _one(self, client: httpx.AsyncClient, index: int) -> None:
        outcome = Outcome(
            tag=f"{self.label} {index} {uuid.uuid4().hex[:12]}",
            stream=index % 2 == 1,
            started=time.monotonic(),
            sent_at=time.time(),
        )
        self.outcomes.append(outcome)
        await ask(self.deployment, client, outcome)


async def ask(deployment: Any, client: httpx.AsyncClient, outcome: Outcome) -> None:
    """Send one request (its text is `outcome.tag`) and note what its client saw."""
    body = {
        "model": "sim-small",
        "messages": [{"role": "user", "content": outcome.tag}],
        "stream": outcome.stream,
    }
    headers = {"Authorization": f"Bearer {deployment.api_key}"}
    url = f"{deployment.url('gateway')}/v1/chat/completions"
    try:
        async with client.stream("POST", url, json=body, headers=headers) as response:
            outcome.elapsed = time.monotonic() - outcome.started
            outcome.status = response.status_code
            outcome.request_id = response.headers.get("x-request-id")
            if response.status_code != 200:
                error = orjson.loads(await response.aread()).get("error") or {}
                outcome.code = error.get("code")
                return
            if not outcome.stream:
                reply = orjson.loads(await response.aread())
                outcome.completed = bool(reply.get("choices"))
                return
            done = failed = False
            async for line in response.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: ") and "error" in orjson.loads(line[6:]):
                    failed = True
                    outcome.code = orjson.loads(line[6:])["error"].get("code")
            outcome.completed = done and not failed
    except (httpx.HTTPError, orjson.JSONDecodeError) as exc:
        outcome.error = repr(exc)


class ReadinessLog:
    """Every process's /readyz, twice a second, while a fault runs."""

    def __init__(self, deployment: Any) -> None:
        self.deployment = deployment
        self.readings: list[tuple[float, str, bool]] = []

    async def run(self, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(timeout=3) as client:
            while not stop.is_set():
                await asyncio.gather(*(self._read(client, name) for name in SERVICES))
                await asyncio.sleep(0.5)

    async def _read(self, client: httpx.AsyncClient, name: str) -> None:
        at = time.monotonic()
        try:
            ok = (await client.get(f"{self.deployment.url(name)}/readyz")).status_code == 200
        except httpx.HTTPError:
            ok = False
        self.readings.append((at, name, ok))

    def between(self, start: float, end: float) -> dict[str, list[bool]]:
        found: dict[str, list[bool]] = defaultdict(list)
        for at, name, ok in self.readings:
            if start <= at <= end:
                found[name].append(ok)
        return found


async def under_load(
    deployment: Any, label: str, fault: Callable[[ReadinessLog], Awaitable[dict]]
) -> tuple[list[Outcome], dict]:
    stop, stop_readiness = asyncio.Event(), asyncio.Event()
    load = Load(deployment, label)
    readiness = ReadinessLog(deployment)
    lag = LoopLag()
    running = asyncio.create_task(load.run(stop))
    watching = asyncio.create_task(readiness.run(stop_readiness))
    lagging = asyncio.create_task(lag.run(stop_readiness))
    try:
        await asyncio.sleep(WARMUP_S)
        details = await fault(readiness)
        await asyncio.sleep(AFTER_FAULT_S)
    finally:
        stop.set()
        outcomes = await running
        stop_readiness.set()
        await watching
        await lagging
    details["load_client_loop_lag_s"] = round(lag.worst, 2)
    return outcomes, details


# A client of its own (a separate process, one blocking request at a time) measuring how
# long "Kafka unreachable" answers take, free of the load generator's own queueing.
PROBE = """
import http.client, json, sys, time
port, key, until = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
body = json.dumps({"model": "sim-small", "messages": [{"role": "user", "content": "probe"}]})
while time.time() < until:
    started = time.monotonic()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("POST", "/v1/chat/completions", body,
                           {"Authorization": "Bearer " + key, "Content-Type": "application/json"})
        response = connection.getresponse()
        answer = response.read()
        code = json.loads(answer).get("error", {}).get("code") if response.status != 200 else None
        status = response.status
    except Exception as exc:
        status, code = None, repr(exc)
    print(json.dumps({"at": time.time(), "elapsed": time.monotonic() - started,
                      "status": status, "code": code}), flush=True)
    time.sleep(max(0.0, 0.5 - (time.monotonic() - started)))
"""


class Probe:
    """Runs PROBE against the gateway until `stop()`; `answers()` are what it saw."""

    def __init__(self, deployment: Any) -> None:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                PROBE,
                str(deployment.ports["gateway"]),
                deployment.api_key,
                str(time.time() + 600),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )

    def stop(self) -> list[dict]:
        self.process.terminate()
        out, _ = self.process.communicate(timeout=30)
        return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


class LoopLag:
    """The load generator's own event loop lag (its measurements are only as good as it)."""

    def __init__(self) -> None:
        self.worst = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            started = time.monotonic()
            await asyncio.sleep(0.1)
            self.worst = max(self.worst, time.monotonic() - started - 0.1)


# -- what history holds ------------------------------------------------------------------


@dataclass
class History:
    rows: dict[str, dict] = field(default_factory=dict)  # request id -> row
    by_tag: dict[str, list[dict]] = field(default_factory=dict)
    terminal_events: dict[str, list[str]] = field(default_factory=dict)  # id -> statuses


def read_history(deployment: Any) -> History:
    engine = create_engine(sync_url(deployment.database_url))
    history = History()
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text(
                    "SELECT request_id, status, input_tokens, output_tokens, cost_usd,"
                    " request_body #>> '{messages,0,content}' AS tag"
                    " FROM history_requests WHERE tenant = 'faults'"
                )
            ).mappings()
            for row in rows:
                history.rows[row["request_id"]] = dict(row)
                history.by_tag.setdefault(row["tag"], []).append(dict(row))
            events = connection.execute(
                text(
                    "SELECT request_id, type, payload #>> '{data,status}' AS status"
                    " FROM history_events WHERE tenant = 'faults'"
                    " AND type IN ('chat.completed', 'chat.failed')"
                )
            )
            for request_id, event_type, status in events:
                history.terminal_events.setdefault(request_id, []).append(
                    "completed" if event_type == "chat.completed" else status
                )
    finally:
        engine.dispose()
    return history


def settle(deployment: Any, outcomes: list[Outcome]) -> History:
    """Wait until every accepted request has a terminal state (or SETTLE_S passed)."""
    accepted = {o.request_id for o in outcomes if o.accepted}
    deadline = time.monotonic() + SETTLE_S
    while True:
        history = read_history(deployment)
        unsettled = [
            request_id
            for request_id in accepted
            if history.rows.get(request_id, {}).get("status", "pending") == "pending"
        ]
        if not unsettled or time.monotonic() > deadline:
            break
        time.sleep(1)
    time.sleep(2)  # anything arriving now would be a second outcome or a re-execution
    return read_history(deployment)


def judge(
    deployment: Any, results: list[dict], fault: str, outcomes: list[Outcome], details: dict
) -> dict:
    """The figures of one fault and the checks it failed."""
    history = settle(deployment, outcomes)
    calls = deployment.upstream_calls()
    problems: list[str] = []
    ok = [o for o in outcomes if o.completed]
    errors = [o for o in outcomes if not o.completed]
    lost: set[str] = set()

    for outcome in ok:
        row = history.rows.get(outcome.request_id or "")
        terminal = history.terminal_events.get(outcome.request_id or "", [])
        if row is None or row["status"] != "completed" or terminal != ["completed"]:
            lost.add(outcome.tag)
            problems.append(
                f"2xx {outcome.request_id} ({'stream' if outcome.stream else 'json'}) has "
                f"history {row and row['status']} with terminal events {terminal}"
            )
        elif None in (row["input_tokens"], row["output_tokens"], row["cost_usd"]):
            problems.append(f"2xx {outcome.request_id} has no usage in history")
    for outcome in outcomes:
        if outcome.accepted and outcome.tag not in lost:
            row = history.rows.get(outcome.request_id)
            if row is None:
                lost.add(outcome.tag)
                problems.append(f"accepted {outcome.request_id} is not in history")
            elif row["status"] == "pending":
                lost.add(outcome.tag)
                problems.append(f"accepted {outcome.request_id} stays pending")
    tags = {o.tag for o in outcomes}
    for tag in tags:
        for row in history.by_tag.get(tag, []):
            terminal = history.terminal_events.get(row["request_id"], [])
            if len(terminal) > 1:
                problems.append(f"{row['request_id']} holds terminal states {terminal}")
            elif terminal and terminal[0] != row["status"]:
                problems.append(
                    f"{row['request_id']} is {row['status']} but its outcome was {terminal[0]}"
                )

    reexecuted = 0
    refused_but_ran = 0
    for outcome in outcomes:
        count = calls.get(outcome.tag, 0)
        allowed = 0 if outcome.accepted is False else 1
        if count > allowed:
            problems.append(
                f"{outcome.request_id or outcome.tag} ran upstream {count} times "
                f"(accepted: {outcome.accepted}, client got {outcome.status} {outcome.code})"
            )
        reexecuted += max(0, count - 1)
        refused_but_ran += int(outcome.accepted is False and count > 0)

    unreachable = [o for o in outcomes if o.status == 503 and o.code == "bus_unavailable"]
    slow = [o for o in unreachable if o.elapsed > UNREACHABLE_BOUND_S]
    # The load client's own figures count only while its event loop kept up; the lone
    # probe client (broker fault) measures the bound regardless.
    if slow and details.get("load_client_loop_lag_s", 0) < 0.25:
        problems.append(
            f"{len(slow)} of {len(unreachable)} 'Kafka unreachable' answers took more than "
            f"{UNREACHABLE_BOUND_S} s (slowest {max(o.elapsed for o in slow):.2f} s)"
        )
    problems += details.get("problems", [])

    codes = Counter(f"{o.status} {o.code}" if o.status else "no answer" for o in errors)
    result = {
        "fault": fault,
        "sent": len(outcomes),
        "ok": len(ok),
        "client_errors": len(errors),
        "lost": len(lost),
        "reexecuted": reexecuted,
        "refused_but_ran": refused_but_ran,
        "slow_503": f"{len(slow)}/{len(unreachable)}",
        "recovery": details.get("recovery", "-"),
        "errors_by_code": dict(codes),
        "problems": problems,
    }
    results.append(result)
    dump = deployment.workdir / f"{fault.replace(' ', '-')}.json"
    dump.write_text(
        json.dumps(
            {
                "result": result,
                "details": details,
                "outcomes": [{**vars(o), "calls": calls.get(o.tag, 0)} for o in outcomes],
            },
            default=str,
        )
    )
    return result


def assert_no_problems(result: dict) -> None:
    assert not result["problems"], (
        f"{result['fault']}: {len(result['problems'])} problems "
        f"(client errors: {result['errors_by_code']}):\n" + "\n".join(result["problems"][:40])
    )


# -- recovery ----------------------------------------------------------------------------


async def broker_serving(deployment: Any, timeout_s: float = 240) -> float:
    """Wait until the broker serves again: every partition of the deployment's topics has a
    leader and a plain producer's event is acknowledged. Returns when (monotonic)."""
    servers = deployment.broker.bootstrap_servers
    prefix = deployment.env["SWITCHYARD_TOPIC_PREFIX"]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        admin = AIOKafkaAdminClient(bootstrap_servers=servers)
        producer = AIOKafkaProducer(bootstrap_servers=servers, acks="all")
        try:
            await admin.start()
            names = [n for n in await admin.list_topics() if n.startswith(prefix + ".")]
            described = await admin.describe_topics(names)
            if all(
                item["error_code"] == 0 and all(p["leader"] >= 0 for p in item["partitions"])
                for item in described
            ):
                await producer.start()
                await asyncio.wait_for(
                    producer.send_and_wait(f"{prefix}.faults-probe", b"probe"), timeout=5
                )
                return time.monotonic()
        except Exception:  # noqa: BLE001 - not serving yet
            pass
        finally:
            with contextlib.suppress(Exception):
                await producer.stop()
            with contextlib.suppress(Exception):
                await admin.close()
        await asyncio.sleep(0.5)
    raise AssertionError(f"the broker did not serve again within {timeout_s} s")


async def measure_recovery(deployment: Any, since: float, limit_s: float) -> dict:
    """Seconds from `since` until each process is ready, the gateway answers a new request
    and history has recorded it; None for what did not happen within `limit_s`. Readiness
    and requests are polled side by side (a slow answer delays nothing else)."""
    ready_at: dict[str, float] = {}
    not_ready: dict[str, object] = {}
    answered: dict[str, float] = {}
    recorded: dict[str, float] = {}
    headers = {"Authorization": f"Bearer {deployment.api_key}"}
    deadline = since + limit_s

    async def readiness(client: httpx.AsyncClient, name: str) -> None:
        while name not in ready_at and time.monotonic() < deadline:
            try:
                response = await client.get(f"{deployment.url(name)}/readyz", timeout=2)
                if response.status_code == 200:
                    ready_at[name] = time.monotonic()
                    return
                not_ready[name] = response.json().get("checks")
            except httpx.HTTPError as exc:
                not_ready[name] = repr(exc)
            await asyncio.sleep(0.5)

    async def ask(client: httpx.AsyncClient) -> None:
        body = {"model": "sim-small", "messages": [{"role": "user", "content": "probe"}]}
        try:
            response = await client.post(
                f"{deployment.url('gateway')}/v1/chat/completions", headers=headers, json=body
            )
        except httpx.HTTPError:
            return
        if response.status_code == 200 and "at" not in answered:
            answered["at"] = time.monotonic()
            request_id = response.headers["x-request-id"]
            while time.monotonic() < deadline:
                history = await asyncio.to_thread(read_history, deployment)
                if history.rows.get(request_id, {}).get("status") == "completed":
                    recorded["at"] = time.monotonic()
                    return
                await asyncio.sleep(0.5)

    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S + 5) as client:
        pollers = [asyncio.create_task(readiness(client, name)) for name in SERVICES]
        askers = []
        while time.monotonic() < deadline and not (
            len(ready_at) == len(SERVICES) and "at" in recorded
        ):
            if "at" not in answered:
                askers.append(asyncio.create_task(ask(client)))
            await asyncio.sleep(1)
        for task in [*pollers, *askers]:
            task.cancel()
        await asyncio.gather(*pollers, *askers, return_exceptions=True)

    def after(at: float | None) -> float | None:
        return None if at is None else round(at - since, 1)

    return {
        "ready": {name: after(ready_at.get(name)) for name in SERVICES},
        "answers": after(answered.get("at")),
        "recorded": after(recorded.get("at")),
        "last_not_ready": {n: v for n, v in not_ready.items() if n not in ready_at},
    }


# -- the faults --------------------------------------------------------------------------


def test_a_broker_restart_under_load(deployment: Any, fault_results: list[dict]):
    """The broker stops for 10 s while requests are in flight, then starts again."""
    broker = deployment.broker
    assert broker is not None

    async def restart(readiness: ReadinessLog) -> dict:
        probe = Probe(deployment)
        await asyncio.to_thread(broker.down)
        down = time.monotonic()
        await asyncio.sleep(10)
        up_started = time.monotonic()
        await asyncio.to_thread(broker.up)
        up = await broker_serving(deployment)
        probed = await asyncio.to_thread(probe.stop)
        recovery = await measure_recovery(deployment, up, limit_s=60)
        problems = []
        unreachable = [p for p in probed if p["code"] == "bus_unavailable"]
        slow = [p for p in unreachable if p["elapsed"] > UNREACHABLE_BOUND_S]
        if slow:
            problems.append(
                f"{len(slow)} of {len(unreachable)} 'Kafka unreachable' answers to a lone "
                f"client took more than {UNREACHABLE_BOUND_S} s "
                f"(slowest {max(p['elapsed'] for p in slow):.2f} s)"
            )
        times = [
            t for t in (recovery["answers"], recovery["recorded"], *recovery["ready"].values())
        ]
        if any(t is None or t > RECOVERY_BOUND_S for t in times):
            problems.append(f"not serving again within {RECOVERY_BOUND_S} s: {recovery}")
        for name, readings in readiness.between(down + 2, up_started).items():
            if any(readings):
                problems.append(f"{name} was ready while the broker was down: {readings}")
        recovered = None if None in times else max(times)
        return {
            "recovery": f"{recovered} s" if recovered is not None else "never",
            "broker_down_s": round(up - down, 1),
            "probe_503": f"{len(slow)}/{len(unreachable)} over {UNREACHABLE_BOUND_S} s, slowest "
            f"{max((p['elapsed'] for p in unreachable), default=0):.2f} s",
            "recovery_detail": recovery,
            "problems": problems,
        }

    outcomes, details = uvloop.run(under_load(deployment, "broker", restart))
    assert_no_problems(judge(deployment, fault_results, "broker stopped 10 s", outcomes, details))


def test_history_killed_under_load(deployment: Any, fault_results: list[dict]):
    """The history service is killed (SIGKILL) and started again 5 s later."""

    async def kill(readiness: ReadinessLog) -> dict:
        history = deployment.process("history")
        history.popen.send_signal(signal.SIGKILL)
        await asyncio.to_thread(history.popen.wait)
        await asyncio.sleep(5)
        started = time.monotonic()
        await asyncio.to_thread(deployment.restart, "history")
        return {"recovery": f"{time.monotonic() - started:.1f} s (restart to ready)"}

    outcomes, details = uvloop.run(under_load(deployment, "history-kill", kill))
    assert_no_problems(judge(deployment, fault_results, "history killed", outcomes, details))


def test_the_sweeper_racing_replies_that_reached_their_clients(
    deployment: Any, fault_results: list[dict]
):
    """History is frozen (SIGSTOP) longer than deadline + grace while requests are answered,
    then resumes: the sweeper finds requests past their deadline whose replies are still in
    Kafka. It must wait for the consumer; a reply always wins over its expiry."""

    async def freeze(readiness: ReadinessLog) -> dict:
        history = deployment.process("history")
        history.popen.send_signal(signal.SIGSTOP)
        await asyncio.sleep(REQUEST_TIMEOUT_S + EXPIRY_GRACE_S + 4)
        history.popen.send_signal(signal.SIGCONT)
        return {}

    outcomes, details = uvloop.run(under_load(deployment, "sweeper", freeze))
    assert_no_problems(judge(deployment, fault_results, "sweeper vs replies", outcomes, details))


# The killed-replica scenario runs with a longer request timeout than the suite's: a
# killed member's partitions move only after the consumer group's session timeout (10 s),
# and a redelivered request must still be within its deadline for the scenario to mean
# anything (past it, a request is answered `expired` without an upstream call).
REDELIVERY_TIMEOUT_S = 40
# Streams held this long by the counting upstream after their first events (a slow model).
HOLD_S = 20
HOLDERS = 16
ANSWERED = 32
# Sent at the suite's rate, not in one burst (a burst measures the machine, not the fault).


def _redelivered(deployment: Any, name: str) -> dict[str, float]:
    """switchyard_inference_redelivered_total of one inference replica, by action."""
    found: dict[str, float] = {}
    text_ = httpx.get(f"{deployment.url(name)}/metrics", timeout=5).text
    for line in text_.splitlines():
        if line.startswith("switchyard_inference_redelivered_total{"):
            labels, value = line.rsplit(" ", 1)
            found[labels.split('action="')[1].split('"')[0]] = float(value)
    return found


def _restart_gateway(deployment: Any, env: dict[str, str] | None = None) -> None:
    old = deployment.process("gateway")
    old.stop()
    deployment.processes.remove(old)
    deployment.start_service("gateway", env=env)


def test_a_killed_inference_replica_never_runs_an_answered_request_again(
    deployment: Any, fault_results: list[dict]
):
    """inference-1 is killed (SIGKILL) while JSON replies it published are not committed
    yet (offsets are committed only below the first unfinished request, and streams held
    by a slow upstream sit before them in their partitions) and while clients hold part of
    its streams; it is started again at once. After the consumer group's session timeout
    its partitions are handed over: every answered request is published again from its
    reply partition, never run upstream again, and every partly streamed one ends as
    `stream_interrupted`, in its client's stream and in history."""
    _restart_gateway(
        deployment, {"SWITCHYARD_GATEWAY_REQUEST_TIMEOUT_S": str(REDELIVERY_TIMEOUT_S)}
    )
    # What inference-2 logged before this scenario (the module's other faults) is not its.
    survivor_log_from = len(deployment.process("inference-2").log())

    def outcome(tag: str, stream: bool) -> Outcome:
        return Outcome(tag=tag, stream=stream, started=time.monotonic(), sent_at=time.time())

    async def scenario() -> tuple[list[Outcome], dict]:
        run = uuid.uuid4().hex[:8]
        holders = [
            outcome(f"hold:{HOLD_S}:redelivery {run} held {i}", True) for i in range(HOLDERS)
        ]
        answered = [outcome(f"redelivery {run} answered {i}", i % 4 == 3) for i in range(ANSWERED)]
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
        async with httpx.AsyncClient(timeout=REDELIVERY_TIMEOUT_S + 20, limits=limits) as client:

            async def paced(outcomes: list[Outcome]) -> list[asyncio.Task[None]]:
                tasks = []
                for o in outcomes:
                    o.started, o.sent_at = time.monotonic(), time.time()
                    tasks.append(asyncio.create_task(ask(deployment, client, o)))
                    await asyncio.sleep(1 / RATE_PER_S)
                return tasks

            held = await paced(holders)
            await asyncio.sleep(2)  # the held streams are running, each holding its offset
            await asyncio.gather(*await paced(answered))
            killed = deployment.process("inference-1")
            killed.popen.send_signal(signal.SIGKILL)
            await asyncio.to_thread(killed.popen.wait)
            killed_at = time.monotonic()
            restarting = asyncio.create_task(
                asyncio.to_thread(deployment.restart, "inference-1", "inference")
            )
            await asyncio.gather(*held)
            await restarting
            took_over = time.monotonic() - killed_at
        return holders + answered, {"recovery": f"{took_over:.1f} s (kill to last stream end)"}

    try:
        outcomes, details = uvloop.run(scenario())
        redelivered = [_redelivered(deployment, n) for n in ("inference-1", "inference-2")]
        actions = sorted({action for counts in redelivered for action in counts})
        details["recovery"] += "; redelivered: " + ", ".join(
            f"{action} {sum(counts.get(action, 0) for counts in redelivered):.0f}"
            for action in actions
        )
        result = judge(deployment, fault_results, "inference replica killed", outcomes, details)
        survivor_log = deployment.process("inference-2").log()[survivor_log_from:]
    finally:
        _restart_gateway(deployment)
    assert_no_problems(result)
    answered = [o for o in outcomes if not o.tag.startswith("hold:")]
    assert all(o.completed for o in answered), [o for o in answered if not o.completed]
    interrupted = [o for o in outcomes if o.code == "stream_interrupted"]
    history = read_history(deployment)
    # What a client of a stream cut by the kill saw, history says: a failure, not completed.
    assert interrupted, "no stream was cut by the kill: the scenario did not happen"
    for o in interrupted:
        assert history.rows[o.request_id]["status"] == "failed", o
        assert history.terminal_events[o.request_id] == ["failed"], o
    # The replica that lived waited for its handlers at each rebalance and stayed in the
    # group: a member dropped for rejoining late cannot commit, and all it had moves.
    dropped = [line for line in survivor_log.splitlines() if "dropped from the consumer" in line]
    assert not dropped, f"inference-2 was dropped from its group: {dropped}"
    assert "offset commit failed" not in survivor_log, "inference-2's commits were refused"
    republished = sum(counts.get("republished", 0) for counts in redelivered)
    assert republished > 0, f"no answered request was delivered again: {redelivered}"
    assert sum(counts.get("stream_interrupted", 0) for counts in redelivered) == len(interrupted)


def test_every_process_stops_on_sigterm_while_the_broker_is_down(
    deployment: Any, fault_results: list[dict]
):
    """Requests in flight, the broker gone, replies that cannot be published: SIGTERM
    still stops every process, well within its grace period."""
    broker = deployment.broker
    assert broker is not None

    async def run() -> dict[str, float | None]:
        stop = asyncio.Event()
        load = asyncio.create_task(Load(deployment, "sigterm").run(stop))
        await asyncio.sleep(3)
        await asyncio.to_thread(broker.down)
        await asyncio.sleep(5)
        started = time.monotonic()
        processes = [deployment.process(name) for name in SERVICES]
        for process in processes:
            process.popen.send_signal(signal.SIGTERM)

        async def exit_time(process) -> float | None:
            try:
                await asyncio.wait_for(asyncio.to_thread(process.popen.wait), timeout=45)
            except TimeoutError:
                return None
            return round(time.monotonic() - started, 1)

        times = await asyncio.gather(*(exit_time(p) for p in processes))
        stop.set()
        await load
        return dict(zip(SERVICES, times, strict=True))

    times = uvloop.run(run())
    fault_results.append(
        {"fault": "SIGTERM, broker down", "recovery": f"stopped in {times}", "problems": []}
    )
    for name, seconds in times.items():
        process = deployment.process(name)
        assert seconds is not None and seconds < 30, f"{name} did not stop: {times}"
        assert "Application shutdown complete" in process.log(), name
