"""History run apart from the gateway admits replays through the gateway at the port it
is set to (`SWITCHYARD_GATEWAY_PORT`) unless `SWITCHYARD_GATEWAY_URL` says where."""

from __future__ import annotations

import pytest

from switchyard.common.settings import SettingsError
from switchyard.history.config import Settings

VARIABLES = ["SWITCHYARD_GATEWAY_PORT", "SWITCHYARD_GATEWAY_URL", "SWITCHYARD_HISTORY_GATEWAY_URL"]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    for variable in VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.chdir(tmp_path)  # no .env of the checkout


def test_the_default_is_the_gateways_default_port() -> None:
    assert Settings().gateway_url == "http://127.0.0.1:8000"


def test_the_default_follows_the_gateway_port_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWITCHYARD_GATEWAY_PORT", "9100")
    assert Settings().gateway_url == "http://127.0.0.1:9100"


@pytest.mark.parametrize("variable", ["SWITCHYARD_GATEWAY_URL", "SWITCHYARD_HISTORY_GATEWAY_URL"])
def test_a_url_set_wins_over_the_port(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    monkeypatch.setenv("SWITCHYARD_GATEWAY_PORT", "9100")
    monkeypatch.setenv(variable, "http://gateway:8000")
    assert Settings().gateway_url == "http://gateway:8000"


def test_an_empty_url_still_turns_admission_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWITCHYARD_GATEWAY_PORT", "9100")
    monkeypatch.setenv("SWITCHYARD_GATEWAY_URL", "")
    assert Settings().gateway_url == ""


def test_a_bad_gateway_port_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWITCHYARD_GATEWAY_PORT", "99999")
    with pytest.raises(SettingsError, match=r"^SWITCHYARD_GATEWAY_PORT: [^;]*$"):
        Settings()
