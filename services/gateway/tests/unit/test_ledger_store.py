"""Where the gateway keeps its limit ledger follows the database URL as every other
service reads it (`postgres://` and `postgresql://` are PostgreSQL), and as
`switchyard spend` reads it; memory only when asked for, never in place of a URL the
ledger cannot use."""

from __future__ import annotations

import pytest

from switchyard.common.settings import SettingsError
from switchyard.gateway.bootstrap import build_ledger
from switchyard.gateway.cli import ledger_store
from switchyard.gateway.config import Settings
from switchyard.gateway.governance.ledger import MemoryLedger
from switchyard.gateway.governance.postgres import PostgresLedger
from switchyard.gateway.governance.sqlite import SQLiteLedger


@pytest.fixture(autouse=True)
def no_database_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in (
        "DATABASE_URL",
        "SWITCHYARD_GATEWAY_DATABASE_URL",
        "SWITCHYARD_GATEWAY_GOVERNANCE_STORE",
    ):
        monkeypatch.delenv(variable, raising=False)


@pytest.mark.parametrize(
    "url",
    [
        "postgres://u:p@127.0.0.1:1/db",
        "postgresql://u:p@127.0.0.1:1/db",
        "postgresql+psycopg://u:p@127.0.0.1:1/db",
        "postgresql+psycopg2://u:p@127.0.0.1:1/db",
    ],
)
async def test_every_postgres_alias_is_the_fleets_ledger(url: str) -> None:
    """`postgres://` used to leave the limits in one process's memory, silently."""
    ledger = build_ledger(Settings(database_url=url))
    try:
        assert isinstance(ledger, PostgresLedger)
    finally:
        await ledger.close()
    assert ledger_store("auto", url) == "postgres"  # as `switchyard spend` reads it


async def test_a_sqlite_url_is_the_machines_ledger(tmp_path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"
    ledger = build_ledger(Settings(database_url=url))
    try:
        assert isinstance(ledger, SQLiteLedger)
    finally:
        await ledger.close()


def test_memory_only_when_asked_for_whatever_the_url() -> None:
    settings = Settings(database_url="mysql://u@127.0.0.1/x", governance_store="memory")
    assert isinstance(build_ledger(settings), MemoryLedger)


@pytest.mark.parametrize(
    ("store", "url", "words"),
    [
        ("auto", "mysql://u@127.0.0.1/x", "a mysql database"),
        ("auto", "bogus://x", "Can't load plugin"),
        ("postgres", "sqlite+aiosqlite:///x.db", "is postgres but"),
        ("sqlite", "postgres://u:p@127.0.0.1:1/db", "is sqlite but"),
    ],
)
def test_a_url_the_ledger_cannot_use_is_refused_with_the_settings(
    store: str, url: str, words: str
) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings(database_url=url, governance_store=store)
    message = str(refused.value)
    assert "\n" not in message and words in message
    with pytest.raises(ValueError, match=words):
        ledger_store(store, url)
