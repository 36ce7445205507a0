"""Every numeric setting of every service has bounds: a value that is not finite (`1e309`,
`nan`), negative or absurdly large (20 digits) is refused when the settings are read, in
one line naming its variable, never later by a traceback at start-up or by every
request. docs/configuration.md states each upper bound."""

from __future__ import annotations

import re
import sys
import types
import typing
from pathlib import Path

import annotated_types
import pytest
from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from switchyard.auth import config as auth_config
from switchyard.common.httpserver import HttpLimits, configured_limits
from switchyard.common.settings import ServiceSettings, SettingsError
from switchyard.gateway import cli as gateway_cli
from switchyard.gateway import config as gateway_config
from switchyard.history import config as history_config
from switchyard.inference import config as inference_config

REPO = Path(__file__).resolve().parents[4]

# Every class a command reads settings from the environment with.
SETTINGS_CLASSES: list[type[BaseSettings]] = [
    ServiceSettings,
    HttpLimits,
    gateway_config.Settings,
    gateway_config.DatabaseSettings,
    gateway_cli.LedgerSettings,
    auth_config.Settings,
    auth_config.DatabaseSettings,
    history_config.Settings,
    history_config.DatabaseSettings,
    inference_config.Settings,
]

BAD_VALUES = ["1e309", "-1e309", "nan", "inf", "-1", "99999999999999999999"]


def _numeric(annotation: object) -> bool:
    """Whether a field of this annotation holds a number (`int`, `float`, or either or None)."""
    if annotation in (int, float):
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        arguments = [a for a in typing.get_args(annotation) if a is not type(None)]
        return bool(arguments) and all(a in (int, float) for a in arguments)
    return False


def _variable(settings: type[BaseSettings], name: str) -> str:
    """The environment variable a field is read from: its first alias that is a variable
    name, else the class's prefix and the field's name."""
    alias = settings.model_fields[name].validation_alias
    if isinstance(alias, AliasChoices):
        names = [c for c in alias.choices if isinstance(c, str) and c.isupper()]
        if names:
            return names[0]
    return f"{settings.model_config.get('env_prefix', '')}{name}".upper()


def _upper_bound(settings: type[BaseSettings], name: str) -> float | None:
    for item in settings.model_fields[name].metadata:
        if isinstance(item, annotated_types.Le):
            return float(item.le)  # type: ignore[arg-type]
        if isinstance(item, annotated_types.Lt):
            return float(item.lt)  # type: ignore[arg-type]
    return None


NUMERIC_FIELDS = sorted(
    {
        (settings, name)
        for settings in SETTINGS_CLASSES
        for name, field in settings.model_fields.items()
        if _numeric(field.annotation)
    },
    key=lambda pair: (pair[0].__module__, pair[0].__qualname__, pair[1]),
)
IDS = [f"{settings.__module__}.{settings.__qualname__}.{name}" for settings, name in NUMERIC_FIELDS]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No `.env` and no variable of a test before (a database URL among them)."""
    monkeypatch.chdir(tmp_path)
    for variable in list(__import__("os").environ):
        if variable.startswith("SWITCHYARD_") or variable in ("DATABASE_URL",):
            monkeypatch.delenv(variable)
    configured_limits.cache_clear()


def test_the_sweep_finds_the_settings_it_must() -> None:
    """A sweep that found nothing would pass every test below."""
    names = {_variable(settings, name) for settings, name in NUMERIC_FIELDS}
    assert {
        "SWITCHYARD_AUTH_ACCESS_TOKEN_TTL_S",
        "SWITCHYARD_HISTORY_EXPIRY_GRACE_S",
        "SWITCHYARD_GATEWAY_REQUEST_TIMEOUT_S",
        "SWITCHYARD_BUDGET_DAY_S",
        "SWITCHYARD_INFERENCE_INTERACTIVE_CONCURRENCY",
        "SWITCHYARD_KAFKA_COMMIT_INTERVAL_MS",
        "SWITCHYARD_HTTP_BODY_TIMEOUT_S",
        "SWITCHYARD_HISTORY_RETENTION_DAYS",
    } <= names
    assert len(NUMERIC_FIELDS) > 80


@pytest.mark.parametrize(("settings", "name"), NUMERIC_FIELDS, ids=IDS)
def test_every_numeric_setting_has_an_upper_bound(settings: type[BaseSettings], name: str) -> None:
    assert _upper_bound(settings, name) is not None, _variable(settings, name)


@pytest.mark.parametrize("value", BAD_VALUES)
@pytest.mark.parametrize(("settings", "name"), NUMERIC_FIELDS, ids=IDS)
def test_a_number_out_of_bounds_is_one_line_naming_its_variable(
    monkeypatch: pytest.MonkeyPatch, settings: type[BaseSettings], name: str, value: str
) -> None:
    variable = _variable(settings, name)
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as refused:
        settings()
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"{variable}: "), message


@pytest.mark.parametrize(("settings", "name"), NUMERIC_FIELDS, ids=IDS)
def test_the_upper_bound_itself_is_accepted(
    monkeypatch: pytest.MonkeyPatch, settings: type[BaseSettings], name: str
) -> None:
    """The bounds refuse only what no deployment means; the largest allowed value starts
    (given the settings that depend on it: history's body limit holds its largest
    stored Idempotency-Key response)."""
    bound = _upper_bound(settings, name)
    assert bound is not None
    annotation = settings.model_fields[name].annotation
    text = str(int(bound)) if annotation is int or bound.is_integer() else repr(bound)
    monkeypatch.setenv(_variable(settings, name), text)
    if settings is history_config.Settings and name == "idempotency_max_body_bytes":
        monkeypatch.setenv("SWITCHYARD_HISTORY_MAX_BODY_BYTES", str(1024**3))
    settings()


def test_an_alias_in_the_environment_is_the_variable_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The deprecated name is the one the operator set: the error names it."""
    monkeypatch.setenv("SWITCHYARD_INFERENCE_CONSUMER_CONCURRENCY", "100000000")
    with pytest.raises(SettingsError, match=r"^SWITCHYARD_INFERENCE_CONSUMER_CONCURRENCY: "):
        inference_config.Settings()


def _documented_bounds() -> dict[str, str]:
    """`variable -> its row` of docs/configuration.md."""
    rows: dict[str, str] = {}
    for line in (REPO / "docs" / "configuration.md").read_text().splitlines():
        if line.startswith("| `"):
            for variable in re.findall(r"`([A-Z][A-Z0-9_]+)`", line.split("|")[1]):
                rows.setdefault(variable, line)
    return rows


@pytest.mark.parametrize(("settings", "name"), NUMERIC_FIELDS, ids=IDS)
def test_the_documentation_states_each_upper_bound(settings: type[BaseSettings], name: str) -> None:
    variable = _variable(settings, name)
    if settings is ServiceSettings and name == "max_body_bytes":
        variable = "SWITCHYARD_AUTH_MAX_BODY_BYTES"  # documented as each service's
    row = _documented_bounds().get(variable)
    assert row is not None, f"{variable} is not in docs/configuration.md"
    bound = _upper_bound(settings, name)
    assert bound is not None
    assert re.search(rf"at most {int(bound)}(?![0-9])", row.lower()), row


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__]))
