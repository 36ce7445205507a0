"""A misconfiguration is one line from the `switchyard` command, naming the setting and
the cause, with exit status 1: never a traceback, never a server started in a broken
state. Numbers out of bounds (not finite, negative, 20 digits), database URLs no service
can use, a limit ledger the URL cannot hold, an unknown ledger store, and `db downgrade`
where there is no database."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from switchyard.common import dev
from switchyard.common.httpserver import configured_limits


@pytest.fixture(autouse=True)
def clean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """In an empty directory (no `.env`, no `.switchyard/`), with no Switchyard or database
    variable from outside, and no server or embedded mode able to start: a test that
    reached them found the bug."""
    import uvicorn

    monkeypatch.chdir(tmp_path)
    for variable in list(os.environ):
        if variable.startswith("SWITCHYARD_") or variable in (
            "DATABASE_URL",
            "KAFKA_BOOTSTRAP_SERVERS",
        ):
            monkeypatch.delenv(variable)

    def never(*_: object, **__: object) -> None:  # pragma: no cover - the bug
        raise AssertionError("started although misconfigured")

    monkeypatch.setattr(uvicorn, "run", never)
    monkeypatch.setattr(dev, "private_state_dir", never)
    configured_limits.cache_clear()
    yield
    configured_limits.cache_clear()


# (command, variable, value): each kind of number a service took, then failed on.
OUT_OF_BOUNDS = [
    (("auth", "--port", "18720"), "SWITCHYARD_AUTH_ACCESS_TOKEN_TTL_S", "99999999999999999999"),
    (("auth", "--port", "18720"), "SWITCHYARD_AUTH_REFRESH_TOKEN_TTL_S", "99999999999999999999"),
    (("history", "--port", "18721"), "SWITCHYARD_HISTORY_EXPIRY_GRACE_S", "1e309"),
    (("history", "--port", "18721"), "SWITCHYARD_HISTORY_RETENTION_DAYS", "99999999"),
    (("gateway", "--port", "18722"), "SWITCHYARD_GATEWAY_REQUEST_TIMEOUT_S", "1e309"),
    (("gateway", "--port", "18722"), "SWITCHYARD_GATEWAY_JOB_TIMEOUT_S", "nan"),
    (("gateway", "--port", "18722"), "SWITCHYARD_BUDGET_DAY_S", "inf"),
    (("gateway", "--port", "18722"), "SWITCHYARD_GATEWAY_MAX_BODY_BYTES", "-1"),
    (("inference", "--port", "18723"), "SWITCHYARD_INFERENCE_BATCH_CONCURRENCY", "100000000"),
    (("inference", "--port", "18723"), "SWITCHYARD_INFERENCE_MAX_BODY_BYTES", "1e309"),
    (
        ("inference", "--port", "18723"),
        "SWITCHYARD_KAFKA_MAX_MESSAGE_BYTES",
        "99999999999999999999",
    ),
    (("dev",), "SWITCHYARD_INFERENCE_CONSUMER_CONCURRENCY", "100000000"),
    (("dev",), "SWITCHYARD_INFERENCE_INTERACTIVE_CONCURRENCY", "99999999999999999999"),
    (("dev",), "SWITCHYARD_KAFKA_COMMIT_INTERVAL_MS", "99999999999999999999"),
    (("dev",), "SWITCHYARD_AUTH_ACCESS_TOKEN_TTL_S", "99999999999999999999"),
    (("dev",), "SWITCHYARD_HTTP_BODY_TIMEOUT_S", "1e309"),
    (("topics", "list"), "SWITCHYARD_KAFKA_COMMIT_INTERVAL_MS", "99999999999999999999"),
]


@pytest.mark.parametrize(("argv", "variable", "value"), OUT_OF_BOUNDS)
def test_a_number_out_of_bounds_stops_the_command_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
    main_fails: Callable[..., str],
    argv: tuple[str, ...],
    variable: str,
    value: str,
) -> None:
    monkeypatch.setenv(variable, value)
    line = main_fails(*argv)
    assert line.startswith(f"error: {variable}: "), line


BAD_URLS = [
    ("bogus://x", "Can't load plugin"),
    ("mysql://u@127.0.0.1/x", "a mysql database"),
    ("postgresql+asyncpg://u@127.0.0.1/x", "asyncpg is not installed"),
    ("not a url", "Could not parse"),
    ("postgresql+psycopg://u:secret@127.0.0.1:abc/db", "invalid literal for int()"),
]


@pytest.mark.parametrize(("url", "why"), BAD_URLS)
@pytest.mark.parametrize(
    "argv", [("auth", "--port", "18724"), ("history", "--port", "18725")], ids=["auth", "history"]
)
def test_a_database_url_no_service_can_use_stops_start_up_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
    main_fails: Callable[..., str],
    argv: tuple[str, ...],
    url: str,
    why: str,
) -> None:
    """It used to start the server, whose lifespan failed with a traceback (exit 3)."""
    monkeypatch.setenv("DATABASE_URL", url)
    line = main_fails(*argv)
    assert line.startswith("error: DATABASE_URL is not a usable database URL ("), line
    assert why in line
    assert "secret" not in line


def test_the_service_variable_is_named_when_it_is_the_one_set(
    monkeypatch: pytest.MonkeyPatch, main_fails: Callable[..., str]
) -> None:
    monkeypatch.setenv("SWITCHYARD_HISTORY_DATABASE_URL", "bogus://x")
    line = main_fails("history", "--port", "18725")
    assert line.startswith("error: SWITCHYARD_HISTORY_DATABASE_URL is not a usable database URL")


@pytest.mark.parametrize(
    "url",
    [
        "postgres://u:p@127.0.0.1:1/db",
        "postgresql://u:p@127.0.0.1:1/db",
        "postgresql+psycopg2://u:p@127.0.0.1:1/db",
        "postgresql+psycopg://u:p@127.0.0.1:1/db",
        "sqlite:///x.db",
        "sqlite+aiosqlite:///x.db",
    ],
)
def test_every_alias_of_a_usable_database_is_accepted(url: str) -> None:
    from switchyard.common.db import database_kind, database_url_problem

    assert database_url_problem(url) is None
    assert database_kind(url) == ("sqlite" if url.startswith("sqlite") else "postgres")


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("mysql://u@127.0.0.1/x", "a mysql database"),
        ("bogus://x", "Can't load plugin"),
        ("postgresql+pg8000://u@127.0.0.1/x", "pg8000 is not installed"),
    ],
)
def test_the_gateway_refuses_a_url_its_ledger_cannot_use_instead_of_memory(
    monkeypatch: pytest.MonkeyPatch, main_fails: Callable[..., str], url: str, why: str
) -> None:
    """It used to keep limits in one process's memory, saying nothing."""
    monkeypatch.setenv("DATABASE_URL", url)
    line = main_fails("gateway", "--port", "18726")
    assert line.startswith("error: DATABASE_URL is not a usable database URL for the limit ledger")
    assert why in line and "SWITCHYARD_GATEWAY_GOVERNANCE_STORE=memory" in line


@pytest.mark.parametrize(("argv"), [("gateway", "--port", "18726"), ("spend",)])
def test_a_ledger_store_and_a_url_of_different_kinds_are_refused(
    monkeypatch: pytest.MonkeyPatch, main_fails: Callable[..., str], argv: tuple[str, ...]
) -> None:
    monkeypatch.setenv("SWITCHYARD_GATEWAY_GOVERNANCE_STORE", "postgres")
    monkeypatch.setenv("DATABASE_URL", "sqlite+aiosqlite:///x.db")
    line = main_fails(*argv)
    assert "SWITCHYARD_GATEWAY_GOVERNANCE_STORE is postgres but DATABASE_URL names a SQLite" in line


@pytest.mark.parametrize("dev_url", [None, "sqlite+aiosqlite:///elsewhere.db"])
def test_in_embedded_mode_a_ledger_store_of_another_kind_names_what_sets_the_database(
    monkeypatch: pytest.MonkeyPatch, main_fails: Callable[..., str], dev_url: str | None
) -> None:
    """Embedded mode ignores SWITCHYARD_GATEWAY_DATABASE_URL and DATABASE_URL, so naming
    them sent people to change a variable that changes nothing."""
    monkeypatch.setenv("SWITCHYARD_GATEWAY_GOVERNANCE_STORE", "postgres")
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://u@127.0.0.1:1/db")
    if dev_url is not None:
        monkeypatch.setenv("SWITCHYARD_DEV_DATABASE_URL", dev_url)
    line = main_fails("dev")
    assert "SWITCHYARD_GATEWAY_GOVERNANCE_STORE is postgres but " in line, line
    assert "SWITCHYARD_DEV_DATABASE_URL" in line and "--database-url" in line
    assert "DATABASE_URL names" not in line.replace("SWITCHYARD_DEV_DATABASE_URL", "")


def test_spend_with_an_unknown_ledger_store_is_one_line(
    monkeypatch: pytest.MonkeyPatch, main_fails: Callable[..., str]
) -> None:
    """It used to print pydantic's ValidationError as a traceback."""
    monkeypatch.setenv("SWITCHYARD_GATEWAY_GOVERNANCE_STORE", "bogus")
    line = main_fails("spend")
    assert line.startswith("error: SWITCHYARD_GATEWAY_GOVERNANCE_STORE: Input should be 'auto'")


def test_spend_with_a_number_out_of_bounds_elsewhere_still_reads_the_ledger_settings(
    monkeypatch: pytest.MonkeyPatch, main_fails: Callable[..., str]
) -> None:
    """`switchyard spend` reads only the ledger's settings, so it says what is missing."""
    monkeypatch.setenv("SWITCHYARD_GATEWAY_REQUEST_TIMEOUT_S", "1e309")
    line = main_fails("spend")
    assert line.startswith("error: no limit ledger at .switchyard/gateway.db ")


@pytest.mark.parametrize("service", ["auth", "history", "gateway"])
def test_db_downgrade_without_the_state_directory_says_what_is_missing(
    main_fails: Callable[..., str],
    tmp_path: Path,
    service: str,
) -> None:
    """It used to say only `unable to open database file`."""
    line = main_fails("db", "downgrade", "--service", service, "--revision", "-1")
    assert line.startswith(f"error: no {service} database to downgrade: the SQLite directory ")
    assert ".switchyard does not exist" in line
    assert f"SWITCHYARD_{service.upper()}_DATABASE_URL or DATABASE_URL" in line
    assert "`switchyard dev` ran" in line
    assert not (tmp_path / ".switchyard").exists()  # nothing made to revert


def test_db_downgrade_of_a_missing_file_names_the_file(
    main_fails: Callable[..., str], tmp_path: Path
) -> None:
    (tmp_path / ".switchyard").mkdir()
    line = main_fails("db", "downgrade", "--service", "auth", "--revision", "base")
    assert "the SQLite file .switchyard/auth.db does not exist" in line
    assert not (tmp_path / ".switchyard" / "auth.db").exists()
