"""Migrating an SQLite database leaves it in WAL mode, which SQLite keeps in the file: the
services' first connection then finds it set instead of switching a rollback-journal
database over under an exclusive lock."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from switchyard.common.db import upgrade
from switchyard.history.config import MIGRATIONS_DIR, VERSION_TABLE


def _journal_mode(path: Path) -> str:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return str(connection.execute("PRAGMA journal_mode").fetchone()[0])


def test_a_new_database_is_migrated_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "state" / "history.db"
    upgrade(MIGRATIONS_DIR, f"sqlite+aiosqlite:///{path}", VERSION_TABLE)
    assert _journal_mode(path) == "wal"
    with contextlib.closing(sqlite3.connect(path)) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    assert VERSION_TABLE in tables


def test_an_existing_rollback_journal_database_is_switched_at_its_next_upgrade(
    tmp_path: Path,
) -> None:
    path = tmp_path / "history.db"
    url = f"sqlite+aiosqlite:///{path}"
    upgrade(MIGRATIONS_DIR, url, VERSION_TABLE)
    with contextlib.closing(sqlite3.connect(path)) as connection:
        connection.execute("PRAGMA journal_mode=DELETE")
    assert _journal_mode(path) == "delete"

    upgrade(MIGRATIONS_DIR, url, VERSION_TABLE)  # nothing left to migrate

    assert _journal_mode(path) == "wal"


def test_an_in_memory_database_is_left_alone() -> None:
    upgrade(MIGRATIONS_DIR, "sqlite+aiosqlite://", VERSION_TABLE)
