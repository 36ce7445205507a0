"""Embedded mode's defaults (`apply_dev_environment`): what `switchyard dev` sets unless
the caller set it, and what it leaves alone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from switchyard.common.dev import apply_dev_environment, service_host
from switchyard.common.settings import DEV_INTERNAL_TOKEN

WAIT = "SWITCHYARD_HISTORY_MAX_BATCH_WAIT_MS"
BATCH = "SWITCHYARD_HISTORY_MAX_BATCH"
INDEX = "SWITCHYARD_INFERENCE_REDELIVERY_INDEX_MAX_MB"


@pytest.fixture
def environ(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    # apply_dev_environment writes os.environ: give it a copy this test owns.
    copy = dict(os.environ)
    copy.pop(WAIT, None)
    copy.pop(BATCH, None)
    copy.pop(INDEX, None)
    copy.pop("SWITCHYARD_INTERNAL_TOKEN", None)
    copy.pop("SWITCHYARD_AUTH_TRUST_FORWARDED_FOR", None)
    monkeypatch.setattr(os, "environ", copy)
    return copy


def test_embedded_history_batches_wait_longer_than_the_services_default(
    environ: dict[str, str],
) -> None:
    apply_dev_environment(plugins=[])

    # One SQLite transaction per request or two would cost the answering loop more CPU
    # than answering; 200 ms gathers many requests' events per transaction.
    assert environ[WAIT] == "200"
    assert environ["SWITCHYARD_BUS"] == "memory"


def test_an_explicit_history_batch_wait_is_kept(environ: dict[str, str]) -> None:
    environ[WAIT] = "5"

    apply_dev_environment(plugins=[])

    assert environ[WAIT] == "5"


def test_embedded_history_batches_are_small_enough_not_to_stall_answers(
    environ: dict[str, str],
) -> None:
    apply_dev_environment(plugins=[])

    # A batch is written on the answering loop without a pause: after a burst, batches of
    # the services' default 1,000 events held the next requests for up to half a second.
    assert environ[BATCH] == "200"


def test_embedded_inference_keeps_a_small_redelivery_index(environ: dict[str, str]) -> None:
    apply_dev_environment(plugins=[])

    # The in-memory bus retries a handler within seconds; the service's 64 MiB is for
    # Kafka's redeliveries minutes later.
    assert environ[INDEX] == "8"
    environ[INDEX] = "32"
    apply_dev_environment(plugins=[])
    assert environ[INDEX] == "32"


def test_the_services_calls_carry_a_secret_made_for_the_run(environ: dict[str, str]) -> None:
    apply_dev_environment(plugins=[])
    token = environ["SWITCHYARD_INTERNAL_TOKEN"]
    # Never the development default written in the source, which anyone can read.
    assert token != DEV_INTERNAL_TOKEN and len(token) >= 32
    del environ["SWITCHYARD_INTERNAL_TOKEN"]
    apply_dev_environment(plugins=[])
    assert environ["SWITCHYARD_INTERNAL_TOKEN"] != token
    # One chosen by the operator is kept.
    environ["SWITCHYARD_INTERNAL_TOKEN"] = "chosen"
    apply_dev_environment(plugins=[])
    assert environ["SWITCHYARD_INTERNAL_TOKEN"] == "chosen"


def test_an_internal_token_in_dotenv_is_kept(
    environ: dict[str, str], tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The services read `.env` too: a random one in the environment would override it.
    (tmp_path / ".env").write_text("SWITCHYARD_INTERNAL_TOKEN=from-dotenv\n")
    monkeypatch.chdir(tmp_path)
    apply_dev_environment(plugins=[])
    assert "SWITCHYARD_INTERNAL_TOKEN" not in environ


def test_auth_reads_the_callers_address_the_gateway_forwards(environ: dict[str, str]) -> None:
    # Sign-ins reach auth through the gateway: without it, every caller is 127.0.0.1 to
    # the login limits, and one client's failures lock out everyone.
    apply_dev_environment(plugins=[])
    assert environ["SWITCHYARD_AUTH_TRUST_FORWARDED_FOR"] == "true"


@pytest.mark.parametrize(
    ("host", "gateway", "others"),
    [
        ("127.0.0.1", "127.0.0.1", "127.0.0.1"),
        ("0.0.0.0", "0.0.0.0", "127.0.0.1"),
        ("192.0.2.7", "192.0.2.7", "127.0.0.1"),
        ("::", "::", "127.0.0.1"),
        ("::1", "::1", "::1"),
    ],
)
def test_only_the_gateway_listens_where_dev_is_asked_to(host, gateway, others) -> None:
    assert service_host("gateway", host) == gateway
    for name in ("auth", "history", "inference", "simulator"):
        assert service_host(name, host) == others


def test_the_databases_are_migrated_in_a_child_process(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Alembic runs in a process of its own, on the databases `switchyard dev` uses (here
    SQLite under the working directory's `.switchyard/`), never in the serving one."""
    import sqlite3
    import sys

    from switchyard.common.dev import migrate_in_child, wait_for_migrations

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SWITCHYARD_DEV_DATABASE_URL", raising=False)
    imported_before = "alembic" in sys.modules
    child = migrate_in_child(None)
    wait_for_migrations(child)

    assert child.returncode == 0
    assert ("alembic" in sys.modules) == imported_before  # this process imported nothing
    for service, table in (("history", "history_requests"), ("auth", "auth_users")):
        with sqlite3.connect(tmp_path / ".switchyard" / f"{service}.db") as db:
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master")}
        assert table in tables, (service, sorted(tables))


def test_a_failed_migration_is_reported_with_its_error(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from switchyard.common.dev import MigrationError, migrate_in_child, wait_for_migrations

    monkeypatch.chdir(tmp_path)
    (tmp_path / "not-a-directory").write_text("a file where the database's folder should be")
    child = migrate_in_child("sqlite+aiosqlite:///not-a-directory/dev.db")

    with pytest.raises(MigrationError) as refused:
        wait_for_migrations(child)
    assert child.returncode != 0
    # The error itself, one line, not the child's traceback.
    assert "not-a-directory" in str(refused.value)
    assert "\n" not in str(refused.value) and "Traceback" not in str(refused.value)


def test_ctrl_c_while_the_commands_load_exits_quietly(monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGINT before a command handles it (the plugins still importing) is exit 130, not
    a KeyboardInterrupt traceback."""
    from switchyard.common import cli

    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build", interrupted)
    with pytest.raises(SystemExit) as stopped:
        cli.main()
    assert stopped.value.code == 130


# ------------------------------------------------------- configuration refused in one line


def test_a_bad_setting_is_one_line_naming_its_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The first command a newcomer runs with a typo in a port: one line naming the
    variable and exit status 1, never pydantic's traceback."""
    import sys

    from switchyard.common import cli

    monkeypatch.setenv("SWITCHYARD_GATEWAY_PORT", "abc")
    monkeypatch.setattr(sys, "argv", ["switchyard", "gateway"])
    with pytest.raises(SystemExit) as stopped:
        cli.main()

    assert stopped.value.code == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error: SWITCHYARD_GATEWAY_PORT: ") and "integer" in line


@pytest.mark.parametrize(
    ("service", "variable", "value", "words"),
    [
        ("inference", "SWITCHYARD_INFERENCE_PORT", "70000", "less than or equal to 65535"),
        (
            "inference",
            "SWITCHYARD_SIMULATOR_URL",
            "http://127.0.0.1:99999/v1",
            "port from 1 to 65535",
        ),
        ("inference", "SWITCHYARD_SIMULATOR_URL", "http://127.0.0.1:0/v1", "port from 1 to 65535"),
        ("inference", "SWITCHYARD_SIMULATOR_URL", "127.0.0.1:8099/v1", "http:// or https://"),
        ("inference", "SWITCHYARD_ROUTING_FILE", "/no/such/routing.yaml", "cannot be read"),
        # A service URL that is not one fails every call to that service later, far from
        # the setting at fault.
        ("gateway", "SWITCHYARD_AUTH_URL", "127.0.0.1:8001", "http:// or https://"),
        ("gateway", "SWITCHYARD_HISTORY_URL", "http://127.0.0.1:80020", "port from 1 to 65535"),
        (
            "gateway",
            "SWITCHYARD_GATEWAY_CONSOLE_INFERENCE_METRICS_URLS",
            "http://127.0.0.1:8003/metrics,inference:8003/metrics",
            "http:// or https://",
        ),
        ("history", "SWITCHYARD_HISTORY_GATEWAY_URL", "gateway:8000", "http:// or https://"),
    ],
)
def test_bad_configuration_stops_a_service_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    service: str,
    variable: str,
    value: str,
    words: str,
) -> None:
    import sys

    from switchyard.common import cli

    monkeypatch.setenv(variable, value)
    monkeypatch.setattr(sys, "argv", ["switchyard", service])
    with pytest.raises(SystemExit) as stopped:
        cli.main()

    assert stopped.value.code == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error: ") and words in line
    assert variable in line or value in line


def test_a_routing_file_that_is_not_yaml_is_one_line(tmp_path) -> None:
    from switchyard.common.routing import RoutingError, load_routing

    broken = tmp_path / "routing.yaml"
    broken.write_text("models: [\n")
    with pytest.raises(RoutingError) as refused:
        load_routing(str(broken), "http://127.0.0.1:8099/v1")
    assert "not valid YAML" in str(refused.value) and "\n" not in str(refused.value)


def _service(name: str, port: int) -> object:
    from switchyard.common.dev import EmbeddedService

    return EmbeddedService(name, None, port, f"SWITCHYARD_{name.upper()}_PORT")


def test_two_services_on_one_port_are_refused_naming_both_settings() -> None:
    """Both sockets would bind (neither listens yet) and one service would be missing."""
    from switchyard.common.dev import bind_all
    from switchyard.common.httpserver import PortInUseError
    from switchyard.common.testing.processes import free_port

    port = free_port()
    with pytest.raises(PortInUseError) as refused:
        bind_all("127.0.0.1", [_service("auth", port), _service("gateway", port)])  # type: ignore[list-item]
    message = str(refused.value)
    assert "SWITCHYARD_AUTH_PORT" in message and "SWITCHYARD_GATEWAY_PORT" in message


def test_ports_taken_together_are_named_at_once_the_gateways_first() -> None:
    """A second `switchyard dev` finds every port taken: one message names them all (not
    one per attempt) and says what most likely holds them."""
    import socket

    from switchyard.common.dev import bind_all
    from switchyard.common.httpserver import PortInUseError
    from switchyard.common.testing.processes import free_port

    holders = []
    for _ in range(3):
        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        holders.append(holder)
    ports = [holder.getsockname()[1] for holder in holders]
    try:
        with pytest.raises(PortInUseError) as refused:
            bind_all(
                "127.0.0.1",
                [  # type: ignore[list-item]
                    _service("inference", ports[0]),
                    _service("history", ports[1]),
                    _service("gateway", ports[2]),
                ],
            )
        # One port taken keeps its own message.
        with pytest.raises(PortInUseError) as alone:
            bind_all("127.0.0.1", [_service("auth", free_port()), _service("gateway", ports[2])])  # type: ignore[list-item]
    finally:
        for holder in holders:
            holder.close()
    message = str(refused.value)
    assert message.startswith(f"ports {ports[2]} (gateway), {ports[0]} (inference)")
    assert "another Switchyard" in message
    assert "SWITCHYARD_GATEWAY_PORT, SWITCHYARD_INFERENCE_PORT, SWITCHYARD_HISTORY_PORT" in message
    assert str(alone.value).startswith(f"port {ports[2]} (gateway) is already in use")


def test_a_port_beyond_65535_is_refused_naming_its_setting() -> None:
    from switchyard.common.httpserver import PortInUseError, bind

    with pytest.raises(PortInUseError, match="SWITCHYARD_GATEWAY_PORT"):
        bind("127.0.0.1", 70000, "gateway", "SWITCHYARD_GATEWAY_PORT")


async def test_ctrl_c_while_the_services_start_stops_them_quietly(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """SIGINT while the apps are made is taken by the runner: nothing printed, nothing
    left running, and False (so `switchyard dev` exits 130), not a KeyboardInterrupt
    raised in the middle of a start-up."""
    import signal

    from fastapi import FastAPI

    from switchyard.common.dev import run_embedded
    from switchyard.common.plugins import ServicePlugin
    from switchyard.common.settings import ServiceSettings
    from switchyard.common.testing.processes import free_port

    made: list[str] = []

    def app(name: str) -> FastAPI:
        made.append(name)
        if name == "first":
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl+C while the first app is made
        return FastAPI()

    def plugin(name: str) -> ServicePlugin:
        plugin = ServicePlugin(name, free_port(), name, ServiceSettings, factory="unused:x")
        object.__setattr__(plugin, "create_app", lambda **_: app(name))
        return plugin

    assert await run_embedded("127.0.0.1", [plugin("first"), plugin("second")], False) is False
    assert made == ["first"]
    assert "Press Ctrl+C" not in capsys.readouterr().out


def test_the_console_reads_the_circuit_breakers_where_inference_listens(
    environ: dict[str, str],
) -> None:
    from switchyard.common.dev import wire_service_urls
    from switchyard.common.plugins import discover

    environ["SWITCHYARD_INFERENCE_PORT"] = "18633"
    environ["SWITCHYARD_GATEWAY_CONSOLE_INFERENCE_METRICS_URLS"] = "http://elsewhere:8003/metrics"
    wire_service_urls(discover(), "0.0.0.0")

    assert environ["SWITCHYARD_INFERENCE_URL"] == "http://127.0.0.1:18633"
    assert environ["SWITCHYARD_GATEWAY_CONSOLE_INFERENCE_METRICS_URLS"] == (
        "http://127.0.0.1:18633/metrics"
    )


def test_embedded_state_and_sqlite_databases_are_readable_by_their_owner_only(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`.switchyard/` holds every tenant's prompts, password and key hashes and the
    development secrets: never readable by other users, even under umask 022."""
    import stat

    from switchyard.common.db import ensure_sqlite_dir
    from switchyard.common.dev import STATE_DIR, private_state_dir

    monkeypatch.chdir(tmp_path)
    old = os.umask(0o022)
    try:
        (tmp_path / STATE_DIR).mkdir(mode=0o755)  # made by an earlier version
        private_state_dir()
        ensure_sqlite_dir(f"sqlite+aiosqlite:///{STATE_DIR}/history.db")
        ensure_sqlite_dir(f"sqlite:///{tmp_path}/elsewhere/new/auth.db")
    finally:
        os.umask(old)

    def mode(path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    assert mode(tmp_path / STATE_DIR) == 0o700
    assert mode(tmp_path / STATE_DIR / "history.db") == 0o600
    assert mode(tmp_path / "elsewhere" / "new") == 0o700
    assert mode(tmp_path / "elsewhere" / "new" / "auth.db") == 0o600


def test_a_second_dev_on_one_directory_is_refused_naming_the_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, main_fails
) -> None:
    """Two embedded instances on one `.switchyard/` (other ports) would share its
    databases, jobs and signing key: the second stops at once, naming the first's pid."""
    import subprocess
    import sys

    from switchyard.common import dev

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(dev, "_held_state_dir", None)
    dev.private_state_dir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from switchyard.common import dev; dev.hold_state_dir(); "
            "print('held', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(dev.StateDirInUseError) as refused:
            dev.hold_state_dir()
        assert f"(pid {holder.pid})" in str(refused.value)
        assert str(tmp_path / ".switchyard") in str(refused.value)
        # From the command: one line, exit status 1, before any migration or port.
        monkeypatch.setattr(dev, "migrate_in_child", lambda *_: pytest.fail("migrated"))
        line = main_fails("dev")
        assert line.startswith("error: another switchyard dev (pid ")
    finally:
        holder.communicate("")
    # Once the first has ended (however: the kernel drops its lock), the next one runs.
    dev.hold_state_dir()
    assert (tmp_path / ".switchyard" / "dev.lock").read_text() == f"{os.getpid()}\n"
    assert dev._held_state_dir is not None
    os.close(dev._held_state_dir)
