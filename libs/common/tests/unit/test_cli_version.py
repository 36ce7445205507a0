"""`switchyard --version` names the installed release."""

from __future__ import annotations

from importlib.metadata import version

from typer.testing import CliRunner

from switchyard.common.cli import app


def test_version_prints_the_installed_release_and_exits():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.splitlines()[0] == f"switchyard {version('switchyard-common')}"


def test_help_shows_on_off_flags_without_a_value() -> None:
    """`--json` takes no value (`--json true` is refused): help must not show one."""
    from typer.testing import CliRunner

    from switchyard.common.cli import build

    shown = CliRunner().invoke(build(), ["users", "list", "--help"]).output
    assert "--json " in shown and "<bool>" not in shown
    assert "--tenant <str>" in shown
