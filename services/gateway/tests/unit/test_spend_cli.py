"""`switchyard spend` reads the limit ledger where the gateway keeps it: the SQLite file of
embedded mode (and of a gateway on SQLite) as well as PostgreSQL; a ledger kept in the
gateway's memory is said to be so, truly."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from switchyard.gateway.cli import spend

VARIABLES = (
    "SWITCHYARD_GATEWAY_DATABASE_URL",
    "DATABASE_URL",
    "SWITCHYARD_GATEWAY_GOVERNANCE_STORE",
)


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """`switchyard spend ARGS` in `tmp_path` (where embedded mode keeps `.switchyard/`),
    with no database variable set unless the test sets one."""
    monkeypatch.chdir(tmp_path)
    for variable in VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    app = typer.Typer()
    app.command()(spend)

    def invoke(*args: str):
        return CliRunner().invoke(app, list(args))

    return invoke


def _embedded_ledger(tmp_path: Path) -> Path:
    """Embedded mode's gateway database, migrated, with one team's budget counter."""
    from switchyard.common.db import upgrade
    from switchyard.gateway.plugin import service

    assert service.migrations is not None
    path = tmp_path / ".switchyard" / "gateway.db"
    upgrade(
        service.migrations.script_location,
        f"sqlite+aiosqlite:///{path}",
        service.migrations.version_table,
    )
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO governance_counters (scope, kind, window_start, window_end, "
            "limit_value, committed, spent, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            ("team:research", "spend", 0.0, None, 500.0, 12.5, 10.25, "2026-01-01 00:00:00"),
        )
    return path


def test_spend_reads_embedded_modes_sqlite_ledger(run, tmp_path: Path) -> None:
    _embedded_ledger(tmp_path)
    result = run("--group-by", "team", "--json")
    assert result.exit_code == 0, result.output
    [row] = [json.loads(line) for line in result.stdout.splitlines()]
    assert row["level"] == "team" and row["id"] == "research"
    assert row["spent_usd"] == 10.25 and row["reserved_usd"] == 2.25
    assert row["max_budget_usd"] == 500.0 and row["resets_at"] is None


def test_spend_prints_amounts_as_they_were_given_and_says_when_nothing_counts(
    run, tmp_path: Path
) -> None:
    path = _embedded_ledger(tmp_path)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE governance_counters SET limit_value = 0.00001")
    shown = run("--group-by", "team")
    assert shown.exit_code == 0, shown.output
    assert "of $0.00001 " in shown.stdout and "e-05" not in shown.stdout
    # No key has a budget: an empty answer would read as "nothing spent".
    empty = run("--group-by", "key")
    assert empty.exit_code == 0 and empty.stdout == ""
    assert "No key has a budget" in empty.stderr and "usage report" in empty.stderr
    as_json = run("--group-by", "key", "--json")
    assert as_json.stdout == "" and "No key has a budget" in as_json.stderr


def test_spend_without_the_embedded_database_says_where_it_looked(run, tmp_path: Path) -> None:
    result = run("--group-by", "team")
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("error: no limit ledger at .switchyard/gateway.db ")
    assert not (tmp_path / ".switchyard" / "gateway.db").exists()  # none made empty


def test_a_ledger_in_the_gateways_memory_is_said_to_be(
    run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWITCHYARD_GATEWAY_GOVERNANCE_STORE", "memory")
    result = run()
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert "in its own memory (SWITCHYARD_GATEWAY_GOVERNANCE_STORE is memory)" in line
    assert "PostgreSQL" not in line


def test_a_database_of_another_kind_is_refused_as_the_gateway_refuses_it(
    run, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gateway no longer keeps such a ledger in memory, silently: it refuses to start
    with the same line."""
    monkeypatch.setenv("DATABASE_URL", "mysql://u@127.0.0.1/x")
    result = run()
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(
        "error: DATABASE_URL is not a usable database URL for the limit ledger (a mysql database"
    )


@pytest.mark.parametrize(
    "url",
    [
        "postgres://u:p@127.0.0.1:18773/db",
        "postgresql://u:p@127.0.0.1:18773/db",
        "postgresql+psycopg://u:p@127.0.0.1:18773/db",
    ],
)
def test_every_postgres_alias_reads_the_postgres_ledger(
    run, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    """`postgres://` used to be "not a database URL" here while the gateway kept its
    ledger in memory; both now take it for PostgreSQL."""
    from switchyard.gateway import cli

    asked: list[tuple[str, str]] = []

    async def rows(database_url: str, level: str, store: str = "postgres"):
        asked.append((database_url, store))
        return []

    monkeypatch.setattr(cli, "spend_rows", rows)
    monkeypatch.setenv("DATABASE_URL", url)
    result = run()
    assert result.exit_code == 0, result.output
    assert asked == [(url, "postgres")]


def test_an_unreachable_postgres_ledger_is_one_line(run, monkeypatch: pytest.MonkeyPatch) -> None:
    from switchyard.gateway import cli

    async def refused(database_url: str, level: str, store: str = "postgres"):
        from sqlalchemy.exc import OperationalError

        from switchyard.gateway.governance.ledger import LedgerUnavailable

        cause = OperationalError(
            "SELECT 1",
            {},
            Exception('connection to server at "127.0.0.1", port 18773 failed: Connection refused'),
        )
        raise LedgerUnavailable(repr(cause)) from cause

    monkeypatch.setattr(cli, "spend_rows", refused)
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://u:p@127.0.0.1:18773/db")
    result = run()
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "error: cannot read the limit ledger at PostgreSQL (connection refused at 127.0.0.1:18773)"
    ]


def test_a_url_of_no_driver_names_the_variable(run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "bogus://x")
    result = run()
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(
        "error: DATABASE_URL is not a usable database URL for the limit ledger ("
    )


def test_a_period_that_is_over_is_not_shown_as_current(run, tmp_path: Path) -> None:
    """A daily budget's counter whose day ended says nothing of today's spend (none until
    today's first request): it is not shown as the current period."""
    import time

    path = _embedded_ledger(tmp_path)
    now = time.time()
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO governance_counters (scope, kind, window_start, window_end, "
            "limit_value, committed, spent, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            ("team:ended", "spend", now - 200, now - 100, 1.0, 0.5, 0.5, "2026-01-01 00:00:00"),
        )
        db.execute(
            "INSERT INTO governance_counters (scope, kind, window_start, window_end, "
            "limit_value, committed, spent, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            ("team:today", "spend", now - 100, now + 100, 1.0, 0.25, 0.25, "2026-01-01 00:00:00"),
        )
    result = run("--group-by", "team", "--json")

    assert result.exit_code == 0, result.output
    shown = {json.loads(line)["id"] for line in result.stdout.splitlines()}
    assert shown == {"research", "today"}
