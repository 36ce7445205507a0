"""What a new user's mistakes look like from the `switchyard` command: one line on stderr
naming the setting, option or file at fault, and exit status 1, never a traceback; and
what embedded mode tells them (its banner, its `--help`)."""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from switchyard.common import cli, dev
from switchyard.common.httpserver import configured_limits


@pytest.fixture(autouse=True)
def fresh_limits() -> Iterator[None]:
    # `configured_limits` reads the environment once per process: each test its own.
    configured_limits.cache_clear()
    yield
    configured_limits.cache_clear()


# ------------------------------------------------------------- SWITCHYARD_HTTP_* limits


BAD_LIMITS = [
    ("SWITCHYARD_HTTP_BODY_TIMEOUT_S", "abc", "number"),
    ("SWITCHYARD_HTTP_HEADER_TIMEOUT_S", "-1", "greater than 0"),
    ("SWITCHYARD_HTTP_MAX_HEADERS", "abc", "integer"),
    ("SWITCHYARD_HTTP_MAX_HEADER_BYTES", "-1", "greater than 0"),
]


@pytest.mark.parametrize(("variable", "value", "words"), BAD_LIMITS)
@pytest.mark.parametrize(
    "argv", [("simulator", "--port", "18755"), ("history", "--port", "18756"), ("dev",)]
)
def test_a_bad_http_limit_stops_start_up_naming_its_variable(
    monkeypatch: pytest.MonkeyPatch,
    main_fails: Callable[..., str],
    tmp_path: Path,
    argv: tuple[str, ...],
    variable: str,
    value: str,
    words: str,
) -> None:
    """Read per connection, a bad limit used to fail every request of a server that had
    started and printed its banner; now it is refused before anything listens."""
    import uvicorn

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(variable, value)

    def never(*_: object, **__: object) -> None:  # pragma: no cover - the bug
        raise AssertionError("the server started with an invalid limit")

    monkeypatch.setattr(uvicorn, "run", never)
    # Nor does embedded mode start: it would make its state directory first.
    monkeypatch.setattr(dev, "private_state_dir", never)
    line = main_fails(*argv)
    assert line.startswith(f"error: {variable}: ") and words in line


def test_valid_http_limits_are_read_once() -> None:
    assert configured_limits() is configured_limits()


# ------------------------------------------------------------------- SWITCHYARD_LOG_LEVEL


def test_an_unknown_log_level_is_one_line_naming_the_variable() -> None:
    from switchyard.common.logging import configure_logging
    from switchyard.common.settings import ConfigurationError

    with pytest.raises(ConfigurationError) as refused:
        configure_logging("test", "bogus", "console")
    assert str(refused.value).startswith("SWITCHYARD_LOG_LEVEL: unknown log level 'bogus'")
    assert "WARNING" in str(refused.value)


@pytest.mark.parametrize("level", ["debug", "Warning", "WARN", "ERROR"])
def test_known_log_levels_of_any_case_are_taken(level: str) -> None:
    from switchyard.common.logging import log_level

    assert log_level(level) == level.upper()


def test_a_service_with_an_unknown_log_level_stops_in_one_line(
    monkeypatch: pytest.MonkeyPatch, main_fails: Callable[..., str]
) -> None:
    monkeypatch.setenv("SWITCHYARD_LOG_LEVEL", "bogus")
    line = main_fails("history", "--port", "18757")
    assert line.startswith("error: SWITCHYARD_LOG_LEVEL: unknown log level 'bogus'")


# --------------------------------------------------------------- addresses that are not ours


def test_an_address_not_of_this_machine_is_blamed_not_the_port() -> None:
    from switchyard.common.httpserver import PortInUseError, bind

    # TEST-NET-1 (RFC 5737): never an address of this machine; bind fails at once.
    with pytest.raises(PortInUseError) as refused:
        bind("192.0.2.1", 18758, "gateway", "SWITCHYARD_GATEWAY_PORT", "--host")
    message = str(refused.value)
    assert "192.0.2.1 is not an address of this machine" in message
    assert "give --host one that is" in message
    assert "SWITCHYARD_GATEWAY_PORT" not in message


def test_a_host_that_cannot_be_resolved_is_blamed_not_the_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from switchyard.common import httpserver
    from switchyard.common.httpserver import PortInUseError, bind

    class Unresolvable:
        """A socket whose address lookup fails as 999.1.1.1's does (no DNS asked)."""

        def __init__(self, *_: object) -> None:
            pass

        def setsockopt(self, *_: object) -> None:
            pass

        def bind(self, _: object) -> None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

        def close(self) -> None:
            pass

    monkeypatch.setattr(httpserver.socket, "socket", Unresolvable)
    with pytest.raises(PortInUseError) as refused:
        bind("999.1.1.1", 18750, "gateway", "SWITCHYARD_GATEWAY_PORT", "--host")
    message = str(refused.value)
    assert message.startswith("cannot listen on 999.1.1.1:18750 (gateway): Name or service")
    assert "give --host one that is" in message and "SWITCHYARD_GATEWAY_PORT" not in message


def test_a_port_in_use_still_names_the_port_setting() -> None:
    from switchyard.common.httpserver import PortInUseError, bind

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        with pytest.raises(PortInUseError) as refused:
            bind("127.0.0.1", taken.getsockname()[1], "gateway", "SWITCHYARD_GATEWAY_PORT")
    finally:
        taken.close()
    assert "already in use" in str(refused.value)
    assert "SWITCHYARD_GATEWAY_PORT" in str(refused.value)


# ---------------------------------------------------------------------------- dev --help


def test_dev_help_says_only_the_gateway_binds_to_host() -> None:
    shown = " ".join(CliRunner().invoke(cli.build(), ["dev", "--help"]).output.split())
    assert "every embedded service" not in shown
    assert "Interface the gateway" in shown and "stay on 127.0.0.1" in shown


# ------------------------------------------------------------------------------ Kafka


@pytest.mark.parametrize(
    ("argv", "function"),
    [(["topics", "list"], "list_topics"), (["topics", "create"], "create_topics")],
)
def test_kafka_unreachable_is_one_line_for_topics(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], function: str
) -> None:
    from aiokafka.errors import KafkaConnectionError

    from switchyard.common import kafka_admin

    async def unreachable(*_: object, **__: object) -> object:
        raise KafkaConnectionError("Unable to bootstrap from [('127.0.0.1', 18772)]")

    monkeypatch.setattr(kafka_admin, function, unreachable)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:18772")
    result = CliRunner().invoke(cli.app, argv)
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    [line] = result.stderr.splitlines()
    assert line.startswith("error: cannot ") and "on 127.0.0.1:18772: " in line
    assert "Unable to bootstrap" in line


@pytest.mark.parametrize(
    "argv",
    [
        ["topics", "create"],
        ["topics", "list"],
        ["deadletter", "list"],
        ["deadletter", "replay", "--all"],
    ],
)
def test_kafka_commands_touch_no_broker_none_was_named_for(
    monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    """Embedded mode has no topics: with neither `SWITCHYARD_BUS=kafka` nor a bootstrap
    variable, the default broker (anybody's, on a shared machine) is never contacted."""
    from switchyard.common import deadletter, kafka_admin

    async def contacted(*_: object, **__: object) -> object:
        raise AssertionError("a broker was contacted")

    for module, name in (
        (kafka_admin, "create_topics"),
        (kafka_admin, "list_topics"),
        (deadletter, "read_dead_letters"),
    ):
        monkeypatch.setattr(module, name, contacted)
    for variable in (
        "SWITCHYARD_BUS",
        "KAFKA_BOOTSTRAP_SERVERS",
        "SWITCHYARD_KAFKA_BOOTSTRAP_SERVERS",
    ):
        monkeypatch.delenv(variable, raising=False)
    result = CliRunner().invoke(cli.app, argv)
    assert result.exit_code == 1, result.output
    [line] = result.stderr.splitlines()
    assert line.startswith("error: `switchyard ") and "no broker is named" in line
    assert "KAFKA_BOOTSTRAP_SERVERS" in line and "SWITCHYARD_BUS=kafka" in line


# --------------------------------------------------------------------------- databases


def test_db_upgrade_with_a_url_of_no_driver_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for variable in ("SWITCHYARD_AUTH_DATABASE_URL", "SWITCHYARD_HISTORY_DATABASE_URL"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.delenv("SWITCHYARD_GATEWAY_DATABASE_URL", raising=False)
    monkeypatch.setenv("DATABASE_URL", "bogus://x")
    result = CliRunner().invoke(cli.build(), ["db", "upgrade"])
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("error: DATABASE_URL is not a usable database URL (")
    assert "bogus" in line


def test_db_upgrade_with_the_database_down_says_where_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sqlalchemy.exc import OperationalError

    from switchyard.common import db

    def refused(*_: object, **__: object) -> None:
        raise OperationalError(
            "SELECT 1",
            {},
            Exception(
                'connection failed: connection to server at "127.0.0.1", port 18773 failed: '
                "Connection refused\n\tIs the server running on that host and accepting "
                "TCP/IP connections?"
            ),
        )

    monkeypatch.setattr(db, "upgrade", refused)
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://u:p@127.0.0.1:18773/db")
    for service in ("AUTH", "GATEWAY", "HISTORY"):
        monkeypatch.delenv(f"SWITCHYARD_{service}_DATABASE_URL", raising=False)
    result = CliRunner().invoke(cli.build(), ["db", "upgrade", "--service", "auth"])
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert line == (
        "error: the auth database (DATABASE_URL) could not be migrated: "
        "connection refused at 127.0.0.1:18773"
    )


def test_db_downgrade_to_an_unknown_revision_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".switchyard").mkdir()
    (tmp_path / ".switchyard" / "history.db").touch()  # an (empty) database to revert
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("SWITCHYARD_HISTORY_DATABASE_URL", raising=False)
    result = CliRunner().invoke(
        cli.build(), ["db", "downgrade", "--service", "history", "--revision", "nope"]
    )
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("error: the history database (") and "'nope'" in line


def test_describe_database_error_drops_the_background_link() -> None:
    from sqlalchemy.exc import OperationalError

    error = OperationalError("SELECT 1", {}, Exception("FATAL: password authentication failed"))
    assert "sqlalche.me" in str(error)  # SQLAlchemy's own text ends with the link
    assert cli.describe_database_error(error) == "FATAL: password authentication failed"


def test_a_url_of_no_driver_anywhere_is_one_line(
    monkeypatch: pytest.MonkeyPatch, main_fails: Callable[..., str]
) -> None:
    """`users list` (auth's command) opens its engine in shared code: the entry point turns
    SQLAlchemy's refusal of the URL into one line."""
    from sqlalchemy.engine import make_url

    def command() -> None:
        make_url("bogus://x").get_dialect()

    monkeypatch.setattr(cli, "build", lambda: command)
    line = main_fails()
    assert "DATABASE_URL" in line and "sqlalchemy.dialects:bogus" in line


def test_other_errors_still_reach_the_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    def command() -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "build", lambda: command)
    monkeypatch.setattr(sys, "argv", ["switchyard"])
    with pytest.raises(RuntimeError):
        cli.main()


# -------------------------------------------------------------------------- --output


@pytest.mark.parametrize("command", ["schema", "asyncapi"])
def test_an_output_file_that_cannot_be_written_is_one_line(command: str, tmp_path: Path) -> None:
    target = tmp_path / "missing" / "x.json"
    result = CliRunner().invoke(cli.app, ["events", command, "--output", str(target)])
    assert result.exit_code == 1
    assert not isinstance(result.exception, OSError)
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: cannot write --output {target}: No such file")


def test_an_output_file_is_written(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    result = CliRunner().invoke(cli.app, ["events", "schema", "--output", str(target)])
    assert result.exit_code == 0 and target.read_text().startswith("{")


# ------------------------------------------------------------- embedded mode's migrations

_REFUSED = 'connection to server at "127.0.0.1", port 18773 failed: Connection refused'
_HINT = "\tIs the server running on that host and accepting TCP/IP connections?"
# What the migration child wrote on stderr when PostgreSQL was down.
PSYCOPG_REFUSED = "\n".join(
    [
        "Traceback (most recent call last):",
        '  File "x.py", line 1, in <module>',
        f"psycopg.OperationalError: connection failed: {_REFUSED}",
        _HINT,
        "",
        "The above exception was the direct cause of the following exception:",
        "",
        "Traceback (most recent call last):",
        '  File "x.py", line 2, in <module>',
        "sqlalchemy.exc.OperationalError: (psycopg.OperationalError) connection failed: "
        + _REFUSED,
        _HINT,
        "(Background on this error at: https://sqlalche.me/e/21/e3q8)",
        "",
    ]
)


def test_a_failed_migration_keeps_its_cause_not_the_background_link() -> None:
    from switchyard.common.dev import failure_line

    line = failure_line(PSYCOPG_REFUSED)
    assert line is not None and "sqlalche.me" not in line
    assert "port 18773 failed: Connection refused" in line
    assert failure_line("") is None


def test_embedded_mode_with_a_url_of_no_driver_names_the_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from switchyard.common.dev import MigrationError, migrate_in_child, wait_for_migrations

    monkeypatch.chdir(tmp_path)
    with pytest.raises(MigrationError) as refused:
        wait_for_migrations(migrate_in_child("bogus://x"))
    assert str(refused.value).startswith(
        "--database-url (SWITCHYARD_DEV_DATABASE_URL) is not a usable database URL ("
    )
    assert "bogus" in str(refused.value)


# ------------------------------------------------------------------ the banner's commands


def _plugin(name: str, with_database: bool = True) -> object:
    from switchyard.common.plugins import Migrations, ServicePlugin

    migrations = Migrations("x", f"alembic_version_{name}", lambda: "") if with_database else None
    return ServicePlugin(
        name=name,
        default_port=1,
        summary="",
        settings=lambda: None,  # type: ignore[arg-type,return-value]
        factory="x:y",
        migrations=migrations,
    )


def test_the_banners_commands_act_on_the_embedded_database(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With DATABASE_URL exported (embedded mode ignores it), `uv run switchyard tokens
    create` alone would go to that database; as printed, it goes to this instance's."""
    import os

    from switchyard.common.dev import apply_dev_environment, targeting_embedded
    from switchyard.common.plugins import DevContribution

    # apply_dev_environment writes os.environ: give it a copy this test owns.
    monkeypatch.setattr(os, "environ", dict(os.environ))
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://u:p@127.0.0.1:18773/db")
    monkeypatch.delenv("SWITCHYARD_DEV_DATABASE_URL", raising=False)
    auth = _plugin("auth")
    apply_dev_environment([auth])  # type: ignore[list-item]
    said = targeting_embedded(
        auth,  # type: ignore[arg-type]
        DevContribution(messages=["access token: uv run switchyard tokens create --email a@b"]),
    )
    # Absolute, so the command works from any directory.
    assert said.messages == [
        f"access token: SWITCHYARD_AUTH_DATABASE_URL=sqlite+aiosqlite:///{Path.cwd()}"
        "/.switchyard/auth.db uv run switchyard tokens create --email a@b"
    ]


def test_the_banners_commands_name_the_running_executable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Started as a `switchyard` executable (`make run`), the banner names it by its
    absolute path: `uv` need not be on PATH, nor the repository the current directory."""
    from switchyard.common.dev import targeting_embedded
    from switchyard.common.plugins import DevContribution

    executable = tmp_path / "venv bin" / "switchyard"
    executable.parent.mkdir()
    executable.write_text("#!/bin/sh\n")
    monkeypatch.setattr(sys, "argv", [str(executable), "dev"])
    monkeypatch.setenv("SWITCHYARD_AUTH_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path}/auth.db")
    said = targeting_embedded(
        _plugin("auth"),  # type: ignore[arg-type]
        DevContribution(messages=["access token: uv run switchyard tokens create"]),
    )
    assert said.messages == [
        f"access token: SWITCHYARD_AUTH_DATABASE_URL=sqlite+aiosqlite:///{tmp_path}/auth.db "
        f"'{executable}' tokens create"
    ]


def test_the_banner_never_prints_a_database_password(monkeypatch: pytest.MonkeyPatch) -> None:
    from switchyard.common.dev import targeting_embedded
    from switchyard.common.plugins import DevContribution

    monkeypatch.setenv("SWITCHYARD_AUTH_DATABASE_URL", "postgresql://u:secret@db:5432/x")
    said = targeting_embedded(
        _plugin("auth"),  # type: ignore[arg-type]
        DevContribution(messages=["uv run switchyard tokens create"]),
    )
    assert "secret" not in said.messages[0]
    assert said.messages[0].startswith("SWITCHYARD_AUTH_DATABASE_URL='<your --database-url>' ")


def test_a_service_without_a_database_keeps_its_lines() -> None:
    from switchyard.common.dev import targeting_embedded
    from switchyard.common.plugins import DevContribution

    lines = ["see uv run switchyard simulator --help"]
    said = targeting_embedded(
        _plugin("inference", with_database=False),  # type: ignore[arg-type]
        DevContribution(messages=list(lines)),
    )
    assert said.messages == lines


# ------------------------------------------------------------------------- routing files


def test_an_unset_credential_variable_names_the_routing_file_and_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from switchyard.common.routing import RoutingError, load_routing

    monkeypatch.delenv("OPENAI_BACKUP_KEY", raising=False)
    path = tmp_path / "routing.yaml"
    path.write_text(
        "models:\n  gpt-4o:\n    deployments:\n"
        "      - {name: openai, provider: openai, model: gpt-4o}\n"
        "      - {name: openai-backup, provider: openai, model: gpt-4o,"
        " api_key_env: OPENAI_BACKUP_KEY}\n"
    )
    backup = load_routing(str(path), "http://127.0.0.1:8099/v1").models["gpt-4o"].deployments[1]
    with pytest.raises(RoutingError) as refused:
        backup.api_key()
    assert str(refused.value).startswith(
        f"routing file {path}: models.gpt-4o.deployments[1].api_key_env: deployment "
        "'openai-backup' needs the environment variable OPENAI_BACKUP_KEY"
    )


def test_a_credential_of_the_built_in_routing_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    from switchyard.common.routing import Deployment, RoutingError

    monkeypatch.delenv("UNSET_TOKEN", raising=False)
    deployment = Deployment(
        name="v",
        provider="vertex",
        model="m",
        project_id="p",
        region="r",
        access_token_env="UNSET_TOKEN",
    )
    with pytest.raises(RoutingError) as refused:
        deployment.secret("UNSET_TOKEN")
    assert str(refused.value).startswith("built-in routing: deployment 'v'.access_token_env: ")


# ------------------------------------------------------------ the public development token


@pytest.mark.parametrize("argv", [("history", "--host", "0.0.0.0"), ("dev", "--host", "0.0.0.0")])
def test_the_development_token_is_refused_beyond_loopback(
    monkeypatch: pytest.MonkeyPatch,
    main_fails: Callable[..., str],
    tmp_path: Path,
    argv: tuple[str, ...],
) -> None:
    """It is in the source: a service listening beyond this machine with it would take
    internal calls (the gateway's admissions among them) from anyone who can connect."""
    import uvicorn

    from switchyard.common.settings import DEV_INTERNAL_TOKEN

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SWITCHYARD_INTERNAL_TOKEN", DEV_INTERNAL_TOKEN)

    def never(*_: object, **__: object) -> None:  # pragma: no cover - the fault
        raise AssertionError("the server started with the public token")

    from switchyard.common import http

    monkeypatch.setattr(uvicorn, "run", never)
    monkeypatch.setattr(http, "serve", never)  # one worker: not through uvicorn.run
    monkeypatch.setattr(dev, "private_state_dir", never)
    line = main_fails(*argv)
    assert line.startswith("error: SWITCHYARD_INTERNAL_TOKEN still has its development default")
    assert "0.0.0.0" in line


def test_the_development_token_is_taken_on_loopback_and_a_real_one_anywhere() -> None:
    from switchyard.common.settings import (
        DEV_INTERNAL_TOKEN,
        ConfigurationError,
        check_internal_token_for,
    )

    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "LOCALHOST"):
        check_internal_token_for(host, DEV_INTERNAL_TOKEN)
    for host in ("0.0.0.0", "::", "10.0.0.5", "gateway.internal", ""):
        check_internal_token_for(host, "a-random-token")
        with pytest.raises(ConfigurationError):
            check_internal_token_for(host, DEV_INTERNAL_TOKEN)


def test_an_empty_internal_token_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # It would match a call sending an empty header.
    from switchyard.common.settings import ServiceSettings, SettingsError

    monkeypatch.setenv("SWITCHYARD_INTERNAL_TOKEN", "")
    with pytest.raises(SettingsError, match="SWITCHYARD_INTERNAL_TOKEN"):
        ServiceSettings()
