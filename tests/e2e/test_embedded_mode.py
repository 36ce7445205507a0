"""`make run` as a new user meets it: exactly the Makefile's command, from a fresh working
directory, with the test suite's DATABASE_URL and KAFKA_BOOTSTRAP_SERVERS exported.

It must run on SQLite and the in-memory bus and never open a connection to the database
or the broker it was handed; start up showing the banner and nothing else; serve Swagger UI
on every service without the internet; shrug off clients that hang up mid-upload; show
a request as completed in the history as soon as its answer came back; answer the
requests in flight when stopped, and finish the jobs one run left in the next.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from openai import OpenAI

from switchyard.common.testing.infra import wait_until
from switchyard.common.testing.processes import free_port

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SERVICES = ("gateway", "auth", "history", "inference", "simulator")
BANNER_END = "Press Ctrl+C to stop."
# What the Makefile's test targets export when the caller does not.
SUITE_DATABASE_URL = "postgresql+psycopg://switchyard:switchyard@127.0.0.1:5432/switchyard"
SUITE_KAFKA = "127.0.0.1:9092"
START_TIMEOUT_S = 300  # two shared cores: importing both provider SDKs takes a while


@dataclass
class Embedded:
    popen: subprocess.Popen
    workdir: Path
    log_path: Path
    ports: dict[str, int]
    socket_samples: list[set[tuple[str, int]]] = field(default_factory=list)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    @property
    def api_key(self) -> str:
        match = re.search(r"API key: (sk-sy-\S+)", self.output())
        assert match, self.output()
        return match.group(1)

    def processes(self) -> list[int]:
        return [self.popen.pid, *descendants(self.popen.pid)]

    def sample_connections(self) -> set[tuple[str, int]]:
        """Remote (address, port) of every TCP connection the process tree holds now."""
        remote = set()
        for pid in self.processes():
            remote |= connections_of(pid)
        self.socket_samples.append(remote)
        return remote

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGINT)
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _tcp_table() -> dict[str, tuple[str, int]]:
    """Socket inode -> remote (address, port) of every TCP socket in this network namespace."""
    table = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            remote_hex, inode = fields[2], fields[9]
            address, port = remote_hex.split(":")
            table[inode] = (address, int(port, 16))
    return table


def connections_of(pid: int) -> set[tuple[str, int]]:
    table = _tcp_table()
    remote = set()
    try:
        descriptors = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return remote
    for descriptor in descriptors:
        try:
            target = os.readlink(descriptor)
        except OSError:
            continue
        if target.startswith("socket:["):
            peer = table.get(target[8:-1])
            if peer is not None and peer[1] != 0:  # listening sockets have no peer
                remote.add(peer)
    return remote


def make_run(workdir: Path, env_overrides: dict[str, str]) -> Embedded:
    """Start `make run` of this repository from `workdir`, on free ports."""
    workdir.mkdir(parents=True, exist_ok=True)
    ports = {name: free_port() for name in SERVICES}
    env = {
        key: value
        for key, value in os.environ.items()
        # As typed in a new user's terminal: not inside another make, no Switchyard settings.
        if key not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS") and not key.startswith("SWITCHYARD_")
    }
    env.update(
        {
            "UV_PROJECT": str(REPO),  # uv finds the project; the state stays in `workdir`
            "SWITCHYARD_GATEWAY_PORT": str(ports["gateway"]),
            "SWITCHYARD_AUTH_PORT": str(ports["auth"]),
            "SWITCHYARD_HISTORY_PORT": str(ports["history"]),
            "SWITCHYARD_INFERENCE_PORT": str(ports["inference"]),
            "SWITCHYARD_SIMULATOR_URL": f"http://127.0.0.1:{ports['simulator']}/v1",
            **env_overrides,
        }
    )
    log_path = workdir / "make-run.log"
    popen = subprocess.Popen(
        ["make", "-s", "-f", str(REPO / "Makefile"), "run"],
        cwd=workdir,
        env=env,
        stdout=log_path.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, stopped as a whole
    )
    return Embedded(popen, workdir, log_path, ports)


def wait_for_banner(embedded: Embedded) -> None:
    def started() -> bool:
        embedded.sample_connections()
        if embedded.popen.poll() is not None:
            raise AssertionError(f"make run exited:\n{embedded.output()}")
        return BANNER_END in embedded.output()

    wait_until(started, timeout=START_TIMEOUT_S, interval=0.2, message="the banner")


def chat(embedded: Embedded, text: str = "Hello") -> str:
    client = OpenAI(base_url=embedded.url("gateway") + "/v1", api_key=embedded.api_key)
    reply = client.chat.completions.create(
        model="sim-small", messages=[{"role": "user", "content": text}]
    )
    return reply.choices[0].message.content or ""


@pytest.fixture(scope="module")
def embedded(tmp_path_factory) -> Iterator[Embedded]:
    infra = {
        "DATABASE_URL": os.environ.get("DATABASE_URL") or SUITE_DATABASE_URL,
        "KAFKA_BOOTSTRAP_SERVERS": os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or SUITE_KAFKA,
    }
    process = make_run(tmp_path_factory.mktemp("newcomer"), infra)
    process.infra = infra  # type: ignore[attr-defined]
    try:
        wait_for_banner(process)
        yield process
    finally:
        process.stop()


def _port(address: str) -> int:
    if "://" in address:
        return urlsplit(address).port or 5432
    return int(address.rsplit(":", 1)[1])


def test_make_run_uses_sqlite_and_the_memory_bus_whatever_the_environment_says(embedded):
    assert chat(embedded) == "Simulated reply to: Hello"
    listed = httpx.get(
        embedded.url("gateway") + "/v1/history",
        headers={"Authorization": f"Bearer {embedded.api_key}"},
        timeout=30,
    )
    assert listed.status_code == 200 and listed.json()["data"]
    embedded.sample_connections()

    # The history is in SQLite, in the directory make run was started from.
    database = embedded.workdir / ".switchyard" / "history.db"
    with sqlite3.connect(database) as connection:
        (count,) = connection.execute("SELECT count(*) FROM history_requests").fetchone()
    assert count >= 1
    assert (embedded.workdir / ".switchyard" / "auth.db").exists()
    assert "in-memory bus, SQLite" in embedded.output()

    # At no point did any process of make run hold a connection to PostgreSQL or Kafka.
    forbidden = {
        _port(embedded.infra["DATABASE_URL"]),
        _port(embedded.infra["KAFKA_BOOTSTRAP_SERVERS"]),
    }
    held = {peer for sample in embedded.socket_samples for peer in sample if peer[1] in forbidden}
    assert len(embedded.socket_samples) > 10
    assert held == set()


def test_start_up_shows_the_banner_and_nothing_else(embedded):
    before_banner = embedded.output().split("Switchyard is running")[0]
    assert [line for line in before_banner.splitlines() if line.strip()] == []
    banner = embedded.output().split("Switchyard is running")[1].split(BANNER_END)[0]
    assert f"http://127.0.0.1:{embedded.ports['gateway']}/v1" in banner
    assert "API key: sk-sy-" in banner


def test_make_clean_refuses_to_delete_the_state_of_a_running_make_run(embedded):
    """`make clean` beside a running `make run` would delete its databases and keys under
    it (the gateway answering on, the CLI finding nothing): it is refused instead."""
    cleaned = subprocess.run(
        ["make", "-s", "-f", str(REPO / "Makefile"), "clean"],
        cwd=embedded.workdir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cleaned.returncode != 0
    assert "is running in this directory; stop it first" in cleaned.stderr
    assert (embedded.workdir / ".switchyard" / "auth.db").exists()
    assert (embedded.workdir / ".switchyard" / "history.db").exists()


def test_swagger_ui_of_every_service_loads_from_local_files_only(embedded):
    for service in SERVICES:
        base = embedded.url(service)
        page = httpx.get(base + "/docs", timeout=30)
        assert page.status_code == 200, service
        references = re.findall(r"(?:src|href)=[\"']([^\"']+)", page.text)
        references += re.findall(r"url: ?'([^']+)'", page.text)
        assert len(references) >= 4, (service, references)
        for reference in references:
            # Nothing from another host: the page works without the internet.
            assert reference.startswith("/"), (service, reference)
            asset = httpx.get(base + reference, timeout=30)
            assert asset.status_code == 200 and asset.content, (service, reference)
        script = next(r for r in references if r.endswith(".js"))
        assert b"SwaggerUIBundle" in httpx.get(base + script, timeout=30).content
        assert httpx.get(base + "/livez", timeout=30).json() == {"status": "ok"}
        assert httpx.get(base + "/readyz", timeout=30).status_code == 200


def test_history_shows_a_request_completed_as_soon_as_its_answer_came_back(embedded):
    client = httpx.Client(
        base_url=embedded.url("gateway"),
        headers={"Authorization": f"Bearer {embedded.api_key}"},
        timeout=30,
    )
    for attempt in range(15):
        answer = client.post(
            "/v1/chat/completions",
            json={"model": "sim-small", "messages": [{"role": "user", "content": f"n{attempt}"}]},
        )
        assert answer.status_code == 200
        request_id = answer.headers["x-request-id"]
        item = client.get(f"/v1/history/{request_id}")
        assert item.status_code == 200
        assert item.json()["status"] == "completed", item.json()


def _half_send(port: int, head: bytes, clients: int) -> None:
    """Open `clients` connections that send a head and part of the body, then hang up."""
    sockets = []
    for _ in range(clients):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(head + b"{" + b'"x": 1, ' * 100)
        sockets.append(sock)
    time.sleep(0.2)
    for sock in sockets:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()  # reset: the server sees the client go away mid-upload


def test_clients_hanging_up_mid_upload_never_stall_the_services_or_fill_the_log(embedded):
    key = embedded.api_key.encode()
    targets = [
        (embedded.ports["gateway"], b"/v1/chat/completions", b"Authorization: Bearer " + key),
        (embedded.ports["gateway"], b"/v1/jobs", b"Authorization: Bearer " + key),
        (embedded.ports["auth"], b"/v1/auth/token", b"X-Client: test"),
        (embedded.ports["simulator"], b"/v1/chat/completions", b"X-Client: test"),
    ]
    latencies: list[float] = []
    storming = threading.Event()
    storming.set()

    def probe() -> None:
        with httpx.Client(timeout=60) as client:
            while storming.is_set():
                started = time.perf_counter()
                client.get(embedded.url("gateway") + "/livez")
                latencies.append(time.perf_counter() - started)
                time.sleep(0.05)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        for _ in range(3):
            for port, path, credential in targets:
                head = (
                    b"POST " + path + b" HTTP/1.1\r\nHost: x\r\n" + credential + b"\r\n"
                    b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
                )
                _half_send(port, head, 25)
        time.sleep(1.0)
    finally:
        storming.clear()
        prober.join()
    # 300 clients went away mid-upload; the event loop kept answering.
    assert len(latencies) > 5
    assert max(latencies) < 3.0, sorted(latencies)[-5:]
    output = embedded.output()
    assert "Exception in ASGI application" not in output
    assert "Traceback" not in output
    assert chat(embedded, "still here") == "Simulated reply to: still here"


def test_make_run_never_connects_to_a_database_or_broker_from_the_environment(tmp_path):
    """Every connection attempt to the addresses handed over is caught, not just sampled."""
    traps = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
    accepted: list[int] = []

    def catch(trap: socket.socket) -> None:
        trap.settimeout(0.2)
        while trap.fileno() != -1:
            try:
                connection, _ = trap.accept()
            except (TimeoutError, OSError):
                continue
            accepted.append(trap.getsockname()[1])
            connection.close()

    for trap in traps:
        threading.Thread(target=catch, args=(trap,), daemon=True).start()
    database_port, kafka_port = (trap.getsockname()[1] for trap in traps)
    trap_database = f"postgresql+psycopg://u:p@127.0.0.1:{database_port}/switchyard"
    # Also what a `.env` written for the separate services would say.
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / ".env").write_text(
        f"DATABASE_URL={trap_database}\nSWITCHYARD_BUS=kafka\n"
        f"KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{kafka_port}\n"
    )
    process = make_run(
        tmp_path,
        {
            "DATABASE_URL": trap_database,
            "SWITCHYARD_HISTORY_DATABASE_URL": trap_database,
            "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{kafka_port}",
            "SWITCHYARD_BUS": "kafka",
        },
    )
    try:
        wait_for_banner(process)
        assert chat(process) == "Simulated reply to: Hello"
    finally:
        process.stop()
        for trap in traps:
            trap.close()
    assert accepted == []


def test_a_port_in_use_is_one_line_naming_the_setting_that_changes_it(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        process = make_run(tmp_path, {"SWITCHYARD_GATEWAY_PORT": str(port)})
        try:
            returncode = process.popen.wait(timeout=START_TIMEOUT_S)
        finally:
            process.stop()
    lines = [
        line
        for line in process.output().splitlines()
        if line.strip() and not line.startswith("make: ***")  # make's own exit report
    ]
    assert returncode != 0
    assert len(lines) == 1, process.output()
    assert str(port) in lines[0] and "SWITCHYARD_GATEWAY_PORT" in lines[0]


def submit_jobs(
    client: httpx.Client,
    gateway: str,
    headers: dict[str, str],
    count: int,
    prefix: str,
    *,
    keyed: bool = False,
) -> list[str]:
    """Create `count` chat jobs (prompts `<prefix><n>`, each with `Idempotency-Key:
    <prefix><n>` when `keyed`), each answered 202; their ids in order."""
    ids = []
    for index in range(count):
        key = {"Idempotency-Key": f"{prefix}{index}"} if keyed else {}
        created = client.post(
            f"{gateway}/v1/jobs",
            headers={**headers, **key},
            json={
                "model": "sim-small",
                "messages": [{"role": "user", "content": f"{prefix}{index}"}],
            },
        )
        assert created.status_code == 202, created.text
        ids.append(created.json()["id"])
    return ids


def test_ctrl_c_answers_the_request_in_flight_and_the_next_run_finishes_the_jobs_left(tmp_path):
    """Ctrl+C used to stop every service at once: inference stopped while the gateway
    waited for its reply, whose client got 504 two minutes later, and the jobs the run held
    stayed `queued` for a day in the next run."""
    workdir = tmp_path / "restarted"
    first = make_run(workdir, {})
    try:
        wait_for_banner(first)
        simulator, gateway = first.url("simulator"), first.url("gateway")
        headers = {"Authorization": f"Bearer {first.api_key}"}
        with httpx.Client(timeout=30) as client:

            def upstream_calls() -> int:
                return client.get(f"{simulator}/_sim/stats").json()["total"]

            client.put(f"{simulator}/_sim/latency", json={"latency_ms": 120_000})
            jobs = submit_jobs(client, gateway, headers, 3, "j")
            wait_until(lambda: upstream_calls() == 3, timeout=30, message="the jobs running")
            client.put(f"{simulator}/_sim/latency", json={"latency_ms": 1500})
            with ThreadPoolExecutor(1) as pool:
                in_flight = pool.submit(chat, first, "in flight")
                wait_until(lambda: upstream_calls() == 4, timeout=30, message="the chat running")
                os.killpg(first.popen.pid, signal.SIGINT)
                assert in_flight.result(timeout=60) == "Simulated reply to: in flight"
        first.popen.wait(timeout=30)
    finally:
        first.stop()

    second = make_run(workdir, {})
    try:
        wait_for_banner(second)
        headers = {"Authorization": f"Bearer {second.api_key}"}
        with httpx.Client(base_url=second.url("gateway"), headers=headers, timeout=30) as client:

            def finished() -> list[str]:
                states = [client.get(f"/v1/jobs/{job}").json()["status"] for job in jobs]
                unfinished = {"queued", "in_progress"}
                return states if not unfinished & set(states) else []

            assert wait_until(finished, timeout=60, message="the jobs") == ["completed"] * 3
    finally:
        second.stop()


def test_a_job_answered_202_survives_a_kill_moments_later(tmp_path):
    """The in-memory bus keeps nothing across a crash, so a job answered 202 while it was
    only in the bus (history writes every 200 ms) was lost to a SIGKILL right after, and a
    retry with its Idempotency-Key got the lost job's id back. A job, or a background
    response, is now answered once history shows it, and the next run finishes it."""
    workdir = tmp_path / "killed"
    first = make_run(workdir, {})
    try:
        wait_for_banner(first)
        simulator, gateway = first.url("simulator"), first.url("gateway")
        headers = {"Authorization": f"Bearer {first.api_key}"}
        with httpx.Client(timeout=30) as client:
            client.put(f"{simulator}/_sim/latency", json={"latency_ms": 3000})
            jobs = submit_jobs(client, gateway, headers, 5, "k", keyed=True)
            background = client.post(
                f"{gateway}/v1/responses",
                headers=headers,
                json={"model": "sim-small", "input": "kept", "background": True},
            )
            assert background.status_code == 200, background.text
        os.killpg(first.popen.pid, signal.SIGKILL)
        first.popen.wait(timeout=30)
    finally:
        first.stop()

    second = make_run(workdir, {})
    try:
        wait_for_banner(second)
        headers = {"Authorization": f"Bearer {second.api_key}"}
        with httpx.Client(base_url=second.url("gateway"), headers=headers, timeout=30) as client:

            def finished() -> list[str]:
                states = [client.get(f"/v1/jobs/{job}").json().get("status") for job in jobs]
                states.append(
                    client.get(f"/v1/responses/{background.json()['id']}").json().get("status")
                )
                return states if set(states) == {"completed"} else []

            assert wait_until(finished, timeout=90, message="the jobs") == ["completed"] * 6
            retried = client.post(
                "/v1/jobs",
                headers={"Idempotency-Key": "k0"},
                json={"model": "sim-small", "messages": [{"role": "user", "content": "k0"}]},
            )
            assert retried.status_code == 202 and retried.json()["id"] == jobs[0]
    finally:
        second.stop()
