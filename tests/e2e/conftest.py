"""The whole system for e2e tests: the provider simulator, auth, history, inference and
the gateway, each started as its own `switchyard <service>` process, on the real Kafka
broker and a fresh PostgreSQL database, configured as in production (no development
secrets). Logs of every process are attached to a failing test's report."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from switchyard.common.testing.infra import (
    database_url,
    kafka_bootstrap_servers,
    temporary_database,
    unique_prefix,
)
from switchyard.common.testing.processes import Process, ProcessGroup, free_port

pytestmark = pytest.mark.e2e


@dataclass
class System(ProcessGroup):
    ports: dict[str, int] | None = None
    database_url: str = ""
    api_key: str = ""
    password: str = ""
    email: str = "e2e@example.com"

    def url(self, service: str) -> str:
        assert self.ports is not None
        return f"http://127.0.0.1:{self.ports[service]}"

    def start_service(
        self,
        name: str,
        command: str | None = None,
        *,
        port: int | None = None,
        env: dict[str, str] | None = None,
        ready_path: str = "/readyz",
    ) -> Process:
        assert self.ports is not None
        port = port or self.ports[name]
        # Generous: on two shared cores under load, importing a service can take a minute.
        return self.start(
            name,
            command or name,
            "--port",
            str(port),
            port=port,
            env=env,
            ready_path=ready_path,
            timeout=240,
        )


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


@pytest.fixture(scope="session")
def system(tmp_path_factory) -> Iterator[System]:
    workdir = tmp_path_factory.mktemp("switchyard-e2e")
    servers = kafka_bootstrap_servers()
    with temporary_database(database_url(), prefix="sye2e") as db_url:
        signing_key = workdir / "signing-key.pem"
        write_signing_key(signing_key)
        names = ("gateway", "auth", "history", "inference", "simulator")
        ports = {name: free_port() for name in names}
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
            "SWITCHYARD_GATEWAY_URL": f"http://127.0.0.1:{ports['gateway']}",
            "SWITCHYARD_SIMULATOR_URL": f"http://127.0.0.1:{ports['simulator']}/v1",
            "SWITCHYARD_LOG_LEVEL": "INFO",
            # The webhook receivers of these tests listen on this machine.
            "SWITCHYARD_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",
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
            created = system.cli("keys", "create", "--email", system.email, "--json")
            system.api_key = json.loads(created)["key"]
            system.start_service("simulator", ready_path="/v1/models")
            for name in ("auth", "history", "inference", "gateway"):
                system.start_service(name)
            yield system
        finally:
            system.stop_all()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    system = item.funcargs.get("system") if hasattr(item, "funcargs") else None
    if report.failed and system is not None:
        report.sections.append(("switchyard service logs", system.logs()))
