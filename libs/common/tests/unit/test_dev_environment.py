"""Embedded mode's defaults (`apply_dev_environment`): what `switchyard dev` sets unless
the caller set it, and what it leaves alone."""

from __future__ import annotations

import os

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
