"""The whole system for e2e tests: the provider simulator, auth, history, inference and
the gateway, each started as its own `switchyard <service>` process, on the real Kafka
broker and a fresh PostgreSQL database, configured as in production (no development
secrets). Logs of every process are printed when a test fails."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from switchyard.common.testing.infra import (
    database_url,
    kafka_bootstrap_servers,
    temporary_database,
    unique_prefix,
    wait_until,
)

SWITCHYARD = [sys.executable, "-m", "switchyard.common.cli"]
pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


@dataclass
class System:
    env: dict[str, str]
    workdir: Path
    ports: dict[str, int]
    database_url: str
    api_key: str = ""
    password: str = ""
    email: str = "e2e@example.com"
    processes: list[Process] = field(default_factory=list)

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def cli(self, *args: str, stdin: str | None = None) -> str:
        result = subprocess.run(
            [*SWITCHYARD, *args],
            env=self.env,
            cwd=self.workdir,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, (
            f"switchyard {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        )
        return result.stdout

    def start(
        self,
        name: str,
        *args: str,
        env: dict[str, str] | None = None,
        ready_path: str = "/readyz",
        port: int | None = None,
    ) -> Process:
        log_path = self.workdir / f"{name}.log"
        popen = subprocess.Popen(
            [*SWITCHYARD, *args],
            env={**self.env, **(env or {})},
            cwd=self.workdir,
            stdout=log_path.open("w"),
            stderr=subprocess.STDOUT,
        )
        process = Process(name, popen, log_path)
        self.processes.append(process)
        port = port or self.ports[name]

        def ready() -> bool:
            if popen.poll() is not None:
                raise AssertionError(
                    f"{name} exited with {popen.returncode}:\n{process.log()[-4000:]}"
                )
            return httpx.get(f"http://127.0.0.1:{port}{ready_path}", timeout=2).status_code == 200

        wait_until(ready, timeout=90, interval=0.2, message=f"{name} to be ready")
        return process

    def logs(self) -> str:
        return "\n".join(f"===== {p.name} =====\n{p.log()[-6000:]}" for p in self.processes)


def _signing_key(path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


@pytest.fixture(scope="session")
def system(tmp_path_factory) -> Iterator[System]:
    workdir = tmp_path_factory.mktemp("switchyard-e2e")
    servers = kafka_bootstrap_servers()
    with temporary_database(database_url(), prefix="sye2e") as db_url:
        signing_key = workdir / "signing-key.pem"
        _signing_key(signing_key)
        ports = {
            name: free_port() for name in ("gateway", "auth", "history", "inference", "simulator")
        }
        env = {
            **os.environ,
            "SWITCHYARD_ENVIRONMENT": "test",
            "SWITCHYARD_BUS": "kafka",
            "KAFKA_BOOTSTRAP_SERVERS": servers,
            "SWITCHYARD_TOPIC_PREFIX": unique_prefix("sye2e"),
            "SWITCHYARD_INTERNAL_TOKEN": secrets.token_urlsafe(24),
            "DATABASE_URL": db_url,
            "SWITCHYARD_AUTH_SIGNING_KEY_FILE": str(signing_key),
            "SWITCHYARD_AUTH_URL": f"http://127.0.0.1:{ports['auth']}",
            "SWITCHYARD_HISTORY_URL": f"http://127.0.0.1:{ports['history']}",
            "SWITCHYARD_SIMULATOR_URL": f"http://127.0.0.1:{ports['simulator']}/v1",
            "SWITCHYARD_LOG_LEVEL": "INFO",
        }
        system = System(env=env, workdir=workdir, ports=ports, database_url=db_url)
        try:
            # The operator's steps, in order: topics, migrations, a user and a key, services.
            system.cli("topics", "create")
            system.cli("db", "upgrade")
            system.password = secrets.token_urlsafe(12)
            system.cli(
                "users",
                "create",
                "--email",
                system.email,
                "--tenant",
                "e2e",
                "--role",
                "member",
                "--password-stdin",
                stdin=system.password + "\n",
            )
            import json

            system.api_key = json.loads(
                system.cli("keys", "create", "--email", system.email, "--json")
            )["key"]
            system.start(
                "simulator", "simulator", "--port", str(ports["simulator"]), ready_path="/v1/models"
            )
            system.start("auth", "auth", "--port", str(ports["auth"]))
            system.start("history", "history", "--port", str(ports["history"]))
            system.start("inference", "inference", "--port", str(ports["inference"]))
            system.start("gateway", "gateway", "--port", str(ports["gateway"]))
            yield system
        finally:
            for process in reversed(system.processes):
                process.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    system = item.funcargs.get("system") if hasattr(item, "funcargs") else None
    if report.failed and system is not None:
        report.sections.append(("switchyard service logs", system.logs()))
