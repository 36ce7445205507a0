"""`switchyard usage report`, `switchyard retention purge`, `switchyard tenant-settings` and
`switchyard cache purge` against the database the settings name."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta

import pytest
import typer
from typer.testing import CliRunner

from switchyard.common.events import CachePurged, CachePurgedData
from switchyard.history.cli import cache_app, retention_app, tenant_settings_app, usage_app


@pytest.fixture
def cli(database_url, monkeypatch):
    monkeypatch.setenv("SWITCHYARD_HISTORY_DATABASE_URL", database_url)
    runner = CliRunner()

    def run(app, *args: str):
        # As `switchyard` mounts them: each group under its name.
        root = typer.Typer()
        root.add_typer(app)
        return runner.invoke(root, [app.info.name, *args], catch_exceptions=False)

    return run


@pytest.fixture
async def history(recorder, events):
    now = datetime.now(UTC)
    batch = []
    for index, (tenant, model, age_days) in enumerate(
        [
            ("acme", "sim-small", 1),
            ("acme", "sim-large", 1),
            ("globex", "sim-small", 2),
            ("acme", "sim-small", 40),
        ]
    ):
        request = events.requested(
            tenant=tenant,
            model=model,
            at=now - timedelta(days=age_days, minutes=index),
            team_id="team-1" if model == "sim-large" else None,
        )
        batch += [request, events.completed(request), events.usage(request, cost_usd=1.0)]
    await recorder.record(batch)


def test_usage_report_as_csv_grouped_by_model(cli, history):
    result = cli(usage_app, "report", "--since", "7d", "--group-by", "model", "--format", "csv")

    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert [(row["model"], row["requests"], row["cost_usd"]) for row in rows] == [
        ("sim-large", "1", "1.0"),
        ("sim-small", "2", "2.0"),
    ]


def test_usage_report_as_json_per_tenant_and_as_a_table(cli, history):
    report = json.loads(
        cli(usage_app, "report", "--since", "7d", "--group-by", "tenant", "--format", "json").output
    )
    table = cli(usage_app, "report", "--since", "60d", "--group-by", "day", "--tenant", "acme")

    assert {row["tenant"]: row["requests"] for row in report["data"]} == {"acme": 2, "globex": 1}
    assert "TOTAL" in table.output and "requests" in table.output
    assert table.output.splitlines()[-1].split()[1] == "3"


def test_bad_options_exit_1_with_one_line(cli):
    for args in (
        ("report", "--since", "last tuesday"),
        ("report", "--group-by", "week"),
        ("report", "--group-by", "day,,model"),
        ("report", "--format", "xml"),
    ):
        result = cli(usage_app, *args)
        assert result.exit_code == 1
        assert result.output.startswith("error:")
        assert "Traceback" not in result.output


def test_purge_older_than_and_dry_run(cli, history, tables):
    dry = cli(retention_app, "purge", "--older-than", "30d", "--dry-run")
    assert dry.exit_code == 0 and "would delete 1 request(s)" in dry.output
    done = cli(retention_app, "purge", "--older-than", "30d")
    assert "deleted 1 request(s), 3 event(s) and 0 cached answer(s)" in done.output
    bad = cli(retention_app, "purge", "--older-than", "a while")
    assert bad.exit_code == 1


def test_tenant_settings_set_and_show(cli, database_url):
    result = cli(
        tenant_settings_app,
        "set",
        "--tenant",
        "acme",
        "--new-tenant",
        "--metadata-only",
        "--retention-days",
        "30",
    )
    shown = json.loads(cli(tenant_settings_app, "show", "--tenant", "acme").output)

    assert result.exit_code == 0, result.output
    assert (shown["store_content"], shown["retention_days"]) == (False, 30)
    assert shown["webhook_secret"].startswith("whsec_")
    rotated = json.loads(
        cli(
            tenant_settings_app,
            "set",
            "--tenant",
            "acme",
            "--store-content",
            "--default-retention",
            "--rotate-webhook-secret",
        ).output
    )
    assert (rotated["store_content"], rotated["retention_days"]) == (True, None)
    assert rotated["webhook_secret"] != shown["webhook_secret"]


def test_contradictory_retention_options_exit_1_and_change_nothing(cli, database_url):
    cli(tenant_settings_app, "set", "--tenant", "acme", "--new-tenant", "--retention-days", "30")
    result = cli(
        tenant_settings_app,
        "set",
        "--tenant",
        "acme",
        "--default-retention",
        "--retention-days",
        "5",
    )
    shown = json.loads(cli(tenant_settings_app, "show", "--tenant", "acme").output)

    assert result.exit_code == 1
    assert result.output.startswith("error:") and "--retention-days" in result.output
    assert shown["retention_days"] == 30


def test_unreachable_database_is_one_line(monkeypatch):
    monkeypatch.setenv(
        "SWITCHYARD_HISTORY_DATABASE_URL", "postgresql+psycopg://nobody:x@127.0.0.1:1/none"
    )
    root = typer.Typer()
    root.add_typer(usage_app)
    result = CliRunner().invoke(root, ["usage", "report"])
    assert result.exit_code == 1
    assert result.output.startswith("error: database error")


def test_a_missing_sqlite_database_is_named_and_not_created(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(
        "SWITCHYARD_HISTORY_DATABASE_URL", "sqlite+aiosqlite:///.switchyard/history.db"
    )
    root = typer.Typer()
    root.add_typer(usage_app)
    result = CliRunner().invoke(root, ["usage", "report"])
    assert result.exit_code == 1
    assert result.output.startswith(f"error: no history database at {tmp_path}/.switchyard/")
    assert not (tmp_path / ".switchyard").exists()


def test_usage_report_shows_emails_and_key_names_and_keeps_ids_in_csv(cli, history, monkeypatch):
    from switchyard.common.plugins import PrincipalNames
    from switchyard.history import cli as history_cli

    async def names(user_ids, key_ids, team_ids):
        assert user_ids == {"alice"} and key_ids == {"key-1"} and team_ids == set()
        return PrincipalNames(
            emails={"alice": "alice@example.com"}, key_names={"key-1": "ci\x1b[31m"}
        )

    monkeypatch.setattr(history_cli, "lookup_principal_names", names)
    table = cli(usage_app, "report", "--since", "7d", "--group-by", "user,api_key")
    assert table.exit_code == 0, table.output
    assert "alice@example.com" in table.output and "ci\\x1b[31m" in table.output
    assert "\x1b" not in table.output  # a name cannot drive the terminal
    assert "alice  " not in table.output.replace("alice@example.com", "")

    result = cli(
        usage_app, "report", "--since", "7d", "--group-by", "user,api_key", "--format", "csv"
    )
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert rows[0]["user"] == "alice" and rows[0]["user_email"] == "alice@example.com"
    assert rows[0]["api_key"] == "key-1" and rows[0]["api_key_name"] == "ci\x1b[31m"


def test_usage_report_by_team_shows_team_names_and_keeps_ids_in_csv(cli, history, monkeypatch):
    from switchyard.common.plugins import PrincipalNames
    from switchyard.history import cli as history_cli

    async def names(user_ids, key_ids, team_ids):
        assert team_ids == {"team-1"}
        return PrincipalNames(team_names={"team-1": "research"})

    monkeypatch.setattr(history_cli, "lookup_principal_names", names)
    table = cli(usage_app, "report", "--since", "7d", "--group-by", "team", "--tenant", "acme")
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert lines[0].split()[:2] == ["team", "requests"]
    # One request of team-1 (shown by name), one of no team, and the total.
    assert lines[2].split()[:2] == ["research", "1"]
    assert lines[3].split()[:3] == ["(no", "team)", "1"]

    result = cli(
        usage_app,
        "report",
        "--since",
        "7d",
        "--group-by",
        "team",
        "--format",
        "csv",
        "--tenant",
        "acme",
        "--team",
        "team-1",
    )
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert [(row["team"], row["team_name"], row["requests"]) for row in rows] == [
        ("team-1", "research", "1")
    ]


def test_usage_report_falls_back_to_ids_when_names_cannot_be_looked_up(cli, history, monkeypatch):
    from switchyard.history import cli as history_cli

    async def unreachable(user_ids, key_ids, team_ids):
        raise ConnectionError("auth database unreachable")

    monkeypatch.setattr(history_cli, "lookup_principal_names", unreachable)
    result = cli(usage_app, "report", "--since", "7d", "--group-by", "user")
    assert result.exit_code == 0
    assert "alice" in result.stdout
    assert "names unavailable (auth database unreachable)" in result.stderr


# -- switchyard cache purge ---------------------------------------------------------------


@pytest.fixture
async def cached(engine):
    from switchyard.history.cache import CacheStore

    store = CacheStore(engine)
    for tenant, model in (("acme", "sim-small"), ("acme", "sim-large"), ("globex", "sim-small")):
        await store.put(
            tenant,
            f"{tenant}-{model}".ljust(64, "0"),
            api="openai.chat_completions",
            model=model,
            response={"id": "x"},
            stream_events=None,
            source_request_id="r",
            ttl_s=600,
        )
    return store


@pytest.fixture
def kafka_bus(monkeypatch):
    """The bus `switchyard cache purge` would reach with SWITCHYARD_BUS=kafka: an in-memory
    one that keeps what was published, or (`down`) one that refuses it."""
    from switchyard.common import bus as bus_module

    published: list = []
    state = {"down": False}

    class Recording(bus_module.InMemoryBus):
        async def publish(self, topic, event, *, key=None, partition=None):
            if state["down"]:
                raise bus_module.BusUnavailableError("Kafka is not reachable")
            published.append((topic, event, key))

    monkeypatch.setenv("SWITCHYARD_BUS", "kafka")
    monkeypatch.setenv("SWITCHYARD_TOPIC_PREFIX", "unitpurge")
    monkeypatch.setattr(bus_module, "create_bus", lambda settings, client_id: Recording())
    return published, state


def test_cache_purge_deletes_and_tells_every_gateway_on_the_bus(cli, cached, kafka_bus):
    published, _ = kafka_bus
    result = cli(cache_app, "purge", "--tenant", "acme", "--model", "sim-small")

    assert result.exit_code == 0, result.output
    assert "deleted 1 cached answer(s)" in result.output
    assert "every gateway replica dropped them" in result.output
    [(topic, event, key)] = published
    assert topic == "unitpurge.cache.events"
    assert isinstance(event, CachePurged)
    assert (event.tenant, key) == ("acme", "acme")
    assert event.data == CachePurgedData(tenant="acme", model="sim-small", expired_only=False)


def test_cache_purge_of_every_tenant_names_none(cli, cached, kafka_bus):
    published, _ = kafka_bus
    result = cli(cache_app, "purge", "--expired")

    assert result.exit_code == 0, result.output
    assert "deleted 0 cached answer(s)" in result.output  # none expired yet
    [(_, event, key)] = published
    assert (event.tenant, key, event.data.tenant, event.data.expired_only) == ("*", "*", None, True)


def test_cache_purge_with_kafka_down_deletes_and_says_the_gateways_were_not_told(
    cli, cached, kafka_bus
):
    _, state = kafka_bus
    state["down"] = True
    result = cli(cache_app, "purge")

    assert result.exit_code == 1
    assert "deleted 3 cached answer(s)" in result.output
    assert "could not be told" in result.output
    assert "SWITCHYARD_GATEWAY_CACHE_LOCAL_TTL_S" in result.output


def test_cache_purge_in_embedded_mode_publishes_nothing(cli, cached, monkeypatch):
    monkeypatch.setenv("SWITCHYARD_BUS", "memory")
    result = cli(cache_app, "purge", "--tenant", "globex")

    assert result.exit_code == 0, result.output
    assert "deleted 1 cached answer(s)" in result.output
    assert "embedded mode" in result.output


def test_csv_cells_write_small_amounts_positionally_and_defuse_formulas():
    from switchyard.history.usage import _cell

    assert _cell(1.95e-05) == "0.0000195"  # never `1.95e-05`, text to some spreadsheets
    assert (_cell(2.0), _cell(12.5), _cell(7), _cell(None)) == ("2.0", "12.5", 7, "")
    assert _cell("=HYPERLINK(1)") == "'=HYPERLINK(1)"
