"""Where `switchyard replay` looks for the gateway: `--url`, else SWITCHYARD_GATEWAY_URL,
else the gateway's own port (SWITCHYARD_GATEWAY_PORT, from the environment or `.env`, as
`make run` reads it) on this machine; and what it says when nothing answers there."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from typer.testing import CliRunner

from switchyard.gateway.replay_cli import replay_app

EMPTY_LIST = {"object": "list", "data": [], "next_cursor": None}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No gateway setting from the environment, and a working directory without `.env`."""
    for name in ("SWITCHYARD_GATEWAY_URL", "SWITCHYARD_GATEWAY_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SWITCHYARD_API_KEY", "sk-sy-test")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch) -> list[httpx.URL]:
    """A fake gateway answering an empty replay list wherever it is asked; returns the
    URLs the command asked."""
    asked: list[httpx.URL] = []

    def handle(request: httpx.Request) -> httpx.Response:
        asked.append(request.url)
        return httpx.Response(200, json=EMPTY_LIST)

    client = httpx.Client

    def with_fake(*args: Any, **kwargs: Any) -> httpx.Client:
        return client(*args, transport=httpx.MockTransport(handle), **kwargs)

    monkeypatch.setattr(httpx, "Client", with_fake)
    return asked


def run(*args: str):
    root = typer.Typer()
    root.add_typer(replay_app)
    return CliRunner().invoke(root, ["replay", *args], catch_exceptions=False)


def _closed_port() -> int:
    """A port nothing listens on (just released by this process)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize(
    ("environment", "dotenv", "options", "expected"),
    [
        ({}, "", (), "http://127.0.0.1:8000"),
        ({"SWITCHYARD_GATEWAY_PORT": "8123"}, "", (), "http://127.0.0.1:8123"),
        ({}, "SWITCHYARD_GATEWAY_PORT=8124\n", (), "http://127.0.0.1:8124"),
        (
            {"SWITCHYARD_GATEWAY_PORT": "8123", "SWITCHYARD_GATEWAY_URL": "http://gw.internal:9"},
            "",
            (),
            "http://gw.internal:9",
        ),
        (
            {"SWITCHYARD_GATEWAY_PORT": "8123", "SWITCHYARD_GATEWAY_URL": "http://gw.internal:9"},
            "",
            ("--url", "http://other:7/"),
            "http://other:7",
        ),
    ],
)
def test_the_gateway_is_looked_for_where_it_is_configured(
    gateway, monkeypatch, clean_environment, environment, dotenv, options, expected
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    if dotenv:
        (clean_environment / ".env").write_text(dotenv)

    result = run("list", *options)

    assert result.exit_code == 0, result.output
    assert [str(url).split("/v1/")[0] for url in gateway] == [expected]


@pytest.mark.parametrize(
    ("how", "origin"),
    [
        ("url", "that URL is given with --url."),
        ("variable", "that URL is from SWITCHYARD_GATEWAY_URL."),
        ("port", "that URL is built from SWITCHYARD_GATEWAY_PORT."),
    ],
)
@pytest.mark.parametrize("command", [("list",), ("show", "rp1"), ("stop", "rp1")])
def test_an_unreachable_gateway_is_named_with_where_its_url_came_from(
    monkeypatch, how, origin, command
) -> None:
    port = _closed_port()
    url = f"http://127.0.0.1:{port}"
    options: tuple[str, ...] = ()
    if how == "url":
        options = ("--url", url)
    elif how == "variable":
        monkeypatch.setenv("SWITCHYARD_GATEWAY_URL", url)
    else:
        monkeypatch.setenv("SWITCHYARD_GATEWAY_PORT", str(port))

    result = run(*command, *options)

    assert result.exit_code == 1 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: cannot reach the gateway at {url} ("), line
    assert origin in line
    assert line.endswith("Point the command at it with --url or SWITCHYARD_GATEWAY_URL")


_HTTPX_CLIENT = httpx.Client


def _refusing_client(*args: Any, **kwargs: Any) -> httpx.Client:
    """A client whose every connection is refused, as by a port nothing listens on (the
    default port may have a gateway on this machine)."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    return _HTTPX_CLIENT(*args, transport=httpx.MockTransport(refuse), **kwargs)


def test_the_default_url_says_which_settings_would_move_it(monkeypatch) -> None:
    monkeypatch.setattr(httpx, "Client", _refusing_client)

    result = run("list")

    assert result.exit_code == 1
    assert result.stderr.startswith(
        "error: cannot reach the gateway at http://127.0.0.1:8000 ([Errno 111] Connection "
        "refused); that URL is the default, as neither SWITCHYARD_GATEWAY_URL nor "
        "SWITCHYARD_GATEWAY_PORT is set."
    ), result.stderr


@pytest.mark.parametrize(
    ("environment", "options", "said"),
    [
        ({"SWITCHYARD_GATEWAY_PORT": "abc"}, (), "error: SWITCHYARD_GATEWAY_PORT: "),
        ({"SWITCHYARD_GATEWAY_PORT": "70000"}, (), "error: SWITCHYARD_GATEWAY_PORT: "),
        ({"SWITCHYARD_GATEWAY_URL": "gw:8000"}, (), "error: SWITCHYARD_GATEWAY_URL: "),
        ({}, ("--url", "127.0.0.1:8000"), "error: --url '127.0.0.1:8000': expected an http"),
    ],
)
def test_an_unusable_setting_is_one_line_naming_it(
    gateway, monkeypatch, environment, options, said
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)

    result = run("list", *options)

    assert result.exit_code == 1 and gateway == []
    assert result.stderr.startswith(said) and len(result.stderr.splitlines()) == 1, result.stderr
