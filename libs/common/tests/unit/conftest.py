"""Fixtures of the common unit tests: `main_fails`, which runs the `switchyard` command as
its console script does and returns the one error line it printed."""

from __future__ import annotations

import sys
from collections.abc import Callable

import pytest

from switchyard.common import cli


@pytest.fixture
def main_fails(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., str]:
    """`main_fails(*argv)`: run `switchyard *argv` as the console script does, check that it
    stopped with exit status 1 and printed one `error: ` line on stderr and no traceback,
    and return that line."""

    def run(*argv: str) -> str:
        monkeypatch.setattr(sys, "argv", ["switchyard", *argv])
        with pytest.raises(SystemExit) as stopped:
            cli.main()
        assert stopped.value.code == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err
        [line] = err.splitlines()
        assert line.startswith("error: ")
        return line

    return run
