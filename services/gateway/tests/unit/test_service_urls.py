"""The gateway run apart from the other services finds them at the ports they are set to
(`SWITCHYARD_AUTH_PORT`, `..._HISTORY_PORT`, `..._INFERENCE_PORT`) unless their URLs are
set, and a port it cannot use is refused in one line naming only that variable."""

from __future__ import annotations

import pytest

from switchyard.common.settings import SettingsError
from switchyard.gateway.config import Settings

VARIABLES = [
    "SWITCHYARD_AUTH_PORT",
    "SWITCHYARD_HISTORY_PORT",
    "SWITCHYARD_INFERENCE_PORT",
    "SWITCHYARD_AUTH_URL",
    "SWITCHYARD_HISTORY_URL",
    "SWITCHYARD_GATEWAY_CONSOLE_INFERENCE_METRICS_URLS",
]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    for variable in VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.chdir(tmp_path)  # no .env of the checkout


@pytest.mark.parametrize("ports", [None, (9101, 9102, 9103)], ids=["defaults", "ports-set"])
def test_the_urls_follow_the_ports(
    monkeypatch: pytest.MonkeyPatch, ports: tuple[int, int, int] | None
) -> None:
    auth, history, inference = ports or (8001, 8002, 8003)
    if ports is not None:
        for variable, port in zip(VARIABLES[:3], ports, strict=True):
            monkeypatch.setenv(variable, str(port))
    settings = Settings()
    assert settings.auth_url == f"http://127.0.0.1:{auth}"
    assert settings.history_url == f"http://127.0.0.1:{history}"
    assert settings.console_inference_metrics_urls == [f"http://127.0.0.1:{inference}/metrics"]


def test_a_url_set_wins_over_the_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWITCHYARD_AUTH_PORT", "9101")
    monkeypatch.setenv("SWITCHYARD_AUTH_URL", "http://auth.internal:8001")
    assert Settings().auth_url == "http://auth.internal:8001"


@pytest.mark.parametrize("value", ["abc", "0", "65536"])
def test_a_bad_port_is_one_problem_naming_its_variable(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("SWITCHYARD_INFERENCE_PORT", value)
    with pytest.raises(SettingsError) as refused:
        Settings()
    message = str(refused.value)
    assert message.startswith("SWITCHYARD_INFERENCE_PORT: ")
    # The URL built from it is not blamed as well.
    assert ";" not in message and "METRICS_URLS" not in message
