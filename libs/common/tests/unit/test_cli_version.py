"""`switchyard --version` names the installed release."""

from __future__ import annotations

from importlib.metadata import version

from typer.testing import CliRunner

from switchyard.common.cli import app


def test_version_prints_the_installed_release_and_exits():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.splitlines()[0] == f"switchyard {version('switchyard-common')}"
