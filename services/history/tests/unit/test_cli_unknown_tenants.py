"""The history commands given a tenant history knows nothing of (no settings stored, no
request recorded), most often a typo: `tenant-settings set` refuses it unless
`--new-tenant` says it is new, `tenant-settings show` refuses it, and the reports and
purges filtered by it say so on stderr; and the usage report's errors name its options."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
import typer
from typer.testing import CliRunner

from switchyard.history.cli import cache_app, retention_app, tenant_settings_app, usage_app

TYPO = "acmee"


@pytest.fixture
def cli(database_url, monkeypatch):
    monkeypatch.setenv("SWITCHYARD_HISTORY_DATABASE_URL", database_url)
    monkeypatch.setenv("SWITCHYARD_BUS", "memory")
    runner = CliRunner()

    def run(app, *args: str):
        root = typer.Typer()
        root.add_typer(app)
        return runner.invoke(root, [app.info.name, *args], catch_exceptions=False)

    return run


@pytest.fixture
async def acme(recorder, events):
    """Tenant `acme` with one recorded request, and no settings of its own."""
    request = events.requested(tenant="acme", model="sim-small", at=datetime.now(UTC))
    await recorder.record([request, events.completed(request), events.usage(request)])


def _unknown(output: str) -> bool:
    return f"History knows nothing of tenant {TYPO!r} (a typo?)" in output


def test_settings_of_a_tenant_history_knows_nothing_of_are_refused(cli, acme):
    """`--tenant acmee` for `acme`: refused naming the tenant and how to configure a new
    one, and nothing is stored for it (it stays unknown)."""
    for options in (("--retention-days", "7"), ("--metadata-only",), ("--rotate-webhook-secret",)):
        refused = cli(tenant_settings_app, "set", "--tenant", TYPO, *options)

        assert refused.exit_code == 1, refused.output
        assert refused.stdout == ""
        assert _unknown(refused.stderr) and "--new-tenant" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
    assert cli(tenant_settings_app, "show", "--tenant", TYPO).exit_code == 1
    # The tenant with a recorded request is known: no flag needed.
    known = cli(tenant_settings_app, "set", "--tenant", "acme", "--retention-days", "7")
    assert known.exit_code == 0, known.output
    assert json.loads(known.stdout)["retention_days"] == 7


def test_a_new_tenant_is_configured_before_its_first_request(cli):
    created = cli(
        tenant_settings_app, "set", "--tenant", "newco", "--new-tenant", "--metadata-only"
    )

    assert created.exit_code == 0, created.output
    assert json.loads(created.stdout)["store_content"] is False
    # Known by its settings from then on: shown, and changed without the flag.
    shown = cli(tenant_settings_app, "show", "--tenant", "newco")
    assert shown.exit_code == 0 and json.loads(shown.stdout)["store_content"] is False
    changed = cli(tenant_settings_app, "set", "--tenant", "newco", "--retention-days", "3")
    assert changed.exit_code == 0 and json.loads(changed.stdout)["retention_days"] == 3


def test_show_of_a_tenant_history_knows_nothing_of_exits_1(cli, acme):
    shown = cli(tenant_settings_app, "show", "--tenant", TYPO)

    assert shown.exit_code == 1
    assert shown.stdout == "" and _unknown(shown.stderr)
    assert json.loads(cli(tenant_settings_app, "show", "--tenant", "acme").stdout)["tenant"] == (
        "acme"
    )


@pytest.mark.parametrize(
    "command",
    [
        (usage_app, "report", "--since", "7d"),
        (usage_app, "report", "--since", "7d", "--format", "json"),
        (retention_app, "purge", "--older-than", "30d"),
        (retention_app, "purge", "--older-than", "30d", "--dry-run"),
        (cache_app, "purge"),
    ],
)
def test_reports_and_purges_of_an_unknown_tenant_say_so_on_stderr(cli, acme, command):
    """An empty answer is right for a tenant without traffic, so the command succeeds; but
    a typo is said to be one, on stderr, and a known tenant gets no such note."""
    app, *args = command
    typo = cli(app, *args, "--tenant", TYPO)
    known = cli(app, *args, "--tenant", "acme")

    assert typo.exit_code == 0, typo.output
    assert _unknown(typo.stderr) and not _unknown(typo.stdout)
    assert known.exit_code == 0, known.output
    assert "History knows nothing" not in known.output


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("--since", "2999-01-01"), "Invalid value for --since: it must be before --until"),
        (("--since", "2d", "--until", "3d"), "Invalid value for --until: it must be after --since"),
    ],
)
def test_usage_report_errors_name_its_options(cli, args, said):
    result = cli(usage_app, "report", *args)

    assert result.exit_code == 1
    assert said in result.stderr and "'since'" not in result.stderr
