"""Fixtures of the common unit tests: `main_fails`, which runs the `switchyard` command as
its console script does and returns the one error line it printed, and the process
environment restored after every test."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator

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


@pytest.fixture(autouse=True)
def environment_restored() -> Iterator[None]:
    """Put the process environment back as it was after each test: `switchyard dev` run
    in-process (`main_fails("dev", ...)`) writes its defaults into `os.environ`
    (`apply_dev_environment`: a fresh internal token, the memory bus, SQLite URLs), which
    would otherwise reach every later test of the worker."""
    saved = dict(os.environ)
    yield
    if dict(os.environ) != saved:
        os.environ.clear()
        os.environ.update(saved)
