"""The deployment the fault suite breaks: its own Kafka broker (on free ports, with its own
state directory, so the shared broker is never touched), a fresh PostgreSQL database on the
shared server, and every service as its own `switchyard <service>` process (two inference
replicas), configured as in production. The provider simulator answers after 1 s, behind a
counting upstream (`upstream_counter.py`) that tells how often each request ran upstream.

The table of every fault's figures is printed at the end of the run."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from switchyard.common.testing.infra import (
    database_url,
    temporary_database,
    unique_prefix,
    wait_until,
)
from switchyard.common.testing.processes import Process, ProcessGroup, free_port
from switchyard.simulator.testing import simulator_at

REPO = Path(__file__).resolve().parents[2]
KAFKA_SH = REPO / "deploy" / "local" / "kafka.sh"
COUNTER = Path(__file__).with_name("upstream_counter.py")

# Short deadlines so that expiry (deadline + grace) happens within a fault's duration.
REQUEST_TIMEOUT_S = 8
EXPIRY_GRACE_S = 2
UPSTREAM_LATENCY_MS = 1000

RESULTS: list[dict] = []


class Broker:
    """A single-node Kafka broker of this suite's own (deploy/local/kafka.sh)."""

    def __init__(self, state_root: Path) -> None:
        self.port = free_port()
        self.controller_port = free_port()
        self.state_root = state_root
        self.env = {
            **os.environ,
            "KAFKA_PORT": str(self.port),
            "KAFKA_CONTROLLER_PORT": str(self.controller_port),
            # The SASL and TLS listeners are the shared broker's only.
            "KAFKA_SASL_PORT": "",
            "KAFKA_SASL_SSL_PORT": "",
            "KAFKA_SSL_PORT": "",
            "SWITCHYARD_STATE_DIR": str(state_root),
            "KAFKA_HEAP_OPTS": "-Xms256m -Xmx768m",
            "KAFKA_START_TIMEOUT": "240",
        }

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self, command: str) -> None:
        result = subprocess.run(
            [str(KAFKA_SH), command],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode != 0:
            raise AssertionError(f"kafka.sh {command} failed:\n{result.stdout}\n{result.stderr}")

    def up(self) -> None:
        self._run("up")

    def down(self) -> None:
        self._run("down")


async def create_probe_topic(broker: Broker, name: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 1, 1)])
    finally:
        await admin.close()


def write_signing_key(path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


@dataclass
class Deployment(ProcessGroup):
    broker: Broker | None = None
    ports: dict[str, int] = field(default_factory=dict)
    database_url: str = ""
    api_key: str = ""
    request_timeout_s: float = REQUEST_TIMEOUT_S
    expiry_grace_s: float = EXPIRY_GRACE_S
    # The processes whose readiness and recovery the suite watches.
    services: tuple[str, ...] = ("gateway", "inference-1", "inference-2", "history")

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def start_service(self, name: str, command: str | None = None, **kwargs) -> Process:
        port = self.ports[name]
        kwargs.setdefault("timeout", 300)  # a busy 2-core machine imports slowly
        return self.start(name, command or name, "--port", str(port), port=port, **kwargs)

    def process(self, name: str) -> Process:
        return next(p for p in reversed(self.processes) if p.name == name)

    def restart(self, name: str, command: str | None = None) -> Process:
        old = self.process(name)
        self.processes.remove(old)
        return self.start_service(name, command)

    def upstream_calls(self) -> dict[str, int]:
        return httpx.get(f"{self.url('counter')}/_counts", timeout=10).json()["calls"]

    def simulator_total(self) -> int:
        with simulator_at(self.url("simulator")) as simulator:
            return simulator.calls()


@pytest.fixture(scope="session")
def fault_results() -> list[dict]:
    """Each fault's figures, printed as a table at the end of the run."""
    return RESULTS


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    workdir = Path(tempfile.mkdtemp(prefix="switchyard-faults-"))
    broker = Broker(workdir / "infra")
    with temporary_database(database_url(), prefix="syfaults") as db_url:
        signing_key = workdir / "signing-key.pem"
        write_signing_key(signing_key)
        names = ("simulator", "counter", "auth", "history", "inference-1", "inference-2", "gateway")
        ports = {name: free_port() for name in names}
        env = {
            **os.environ,
            "SWITCHYARD_ENVIRONMENT": "test",
            "SWITCHYARD_BUS": "kafka",
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "SWITCHYARD_TOPIC_PREFIX": unique_prefix("syfaults"),
            "SWITCHYARD_INTERNAL_TOKEN": secrets.token_urlsafe(24),
            "DATABASE_URL": db_url,
            "SWITCHYARD_AUTH_SIGNING_KEY_FILE": str(signing_key),
            "SWITCHYARD_AUTH_URL": f"http://127.0.0.1:{ports['auth']}",
            "SWITCHYARD_HISTORY_URL": f"http://127.0.0.1:{ports['history']}",
            "SWITCHYARD_SIMULATOR_URL": f"http://127.0.0.1:{ports['counter']}/v1",
            "SWITCHYARD_GATEWAY_REQUEST_TIMEOUT_S": str(REQUEST_TIMEOUT_S),
            # Streams too: every request's deadline passes within a fault's duration.
            "SWITCHYARD_GATEWAY_STREAM_TIMEOUT_S": str(REQUEST_TIMEOUT_S),
            "SWITCHYARD_HISTORY_EXPIRY_GRACE_S": str(EXPIRY_GRACE_S),
            "SWITCHYARD_HISTORY_SWEEP_INTERVAL_S": "0.5",
            "SWITCHYARD_LOG_LEVEL": "INFO",
        }
        deployment = Deployment(
            env=env, workdir=workdir, broker=broker, ports=ports, database_url=db_url
        )
        try:
            broker.up()
            deployment.cli("topics", "create")
            # A topic of the suite's own, to tell when the broker takes events again.
            asyncio.run(
                create_probe_topic(broker, f"{env['SWITCHYARD_TOPIC_PREFIX']}.faults-probe")
            )
            deployment.cli("db", "upgrade")
            email = "faults@example.com"
            deployment.cli(
                "users", "create", "--email", email, "--tenant", "faults", "--no-password"
            )
            created = deployment.cli("keys", "create", "--email", email, "--json")
            deployment.api_key = json.loads(created)["key"]
            deployment.start_service("simulator", ready_path="/v1/models")
            with simulator_at(deployment.url("simulator")) as simulator:
                simulator.latency(UPSTREAM_LATENCY_MS)
            counter = subprocess.Popen(
                [sys.executable, str(COUNTER), str(ports["counter"]), deployment.url("simulator")],
                stdout=(workdir / "counter.log").open("w"),
                stderr=subprocess.STDOUT,
            )
            deployment.processes.append(Process("counter", counter, workdir / "counter.log"))
            wait_until(
                lambda: httpx.get(f"{deployment.url('counter')}/_counts", timeout=2).is_success,
                timeout=30,
                message="the counting upstream",
            )
            for name in ("auth", "history", "inference-1", "inference-2", "gateway"):
                deployment.start_service(name, name.split("-")[0])
            yield deployment
        finally:
            deployment.stop_all()
            try:
                broker.down()
            finally:
                if os.environ.get("SWITCHYARD_KEEP_FAULT_LOGS"):
                    print(f"fault suite logs kept in {workdir}")
                else:
                    shutil.rmtree(workdir, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    deployment = item.funcargs.get("deployment") if hasattr(item, "funcargs") else None
    if report.failed and deployment is not None:
        report.sections.append(("switchyard service logs", deployment.logs()))


COLUMNS = (
    ("fault", "fault"),
    ("sent", "sent"),
    ("2xx", "ok"),
    ("client errors", "client_errors"),
    ("lost", "lost"),
    ("upstream re-executions", "reexecuted"),
    ("ran though refused", "refused_but_ran"),
    ("503 > 2 s", "slow_503"),
    ("recovery time", "recovery"),
)


def pytest_terminal_summary(terminalreporter) -> None:
    if not RESULTS:
        return
    rows = [[str(result.get(key, "")) for _, key in COLUMNS] for result in RESULTS]
    widths = [
        max(len(title), *(len(row[i]) for row in rows)) for i, (title, _) in enumerate(COLUMNS)
    ]
    terminalreporter.section("fault suite")
    terminalreporter.write_line(
        " | ".join(title.ljust(width) for (title, _), width in zip(COLUMNS, widths, strict=True))
    )
    terminalreporter.write_line("-+-".join("-" * width for width in widths))
    for row in rows:
        terminalreporter.write_line(
            " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        )
    for result in RESULTS:
        for problem in result.get("problems", []):
            terminalreporter.write_line(f"{result['fault']}: {problem}")
