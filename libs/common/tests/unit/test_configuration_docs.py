"""docs/configuration.md names every setting of every installed service, so the reference
cannot fall behind the code."""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices
from pydantic_settings import BaseSettings

from switchyard.common.httpserver import HttpLimits
from switchyard.common.plugins import discover
from switchyard.common.settings import ServiceSettings

DOCS = Path(__file__).resolve().parents[4] / "docs" / "configuration.md"


def variables(settings: type[BaseSettings]) -> dict[str, str]:
    """Field name -> the first environment variable it is read from."""
    prefix = settings.model_config.get("env_prefix", "")
    found = {}
    for name, field in settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            found[name] = next(choice for choice in alias.choices if choice.isupper())
        elif isinstance(alias, str):
            found[name] = alias
        else:
            found[name] = (prefix + name).upper()
    return found


def test_every_setting_of_every_service_is_documented():
    text = DOCS.read_text()
    # Each service's Settings subclasses ServiceSettings: its shared fields are read under
    # the service's own names (SWITCHYARD_AUTH_MAX_BODY_BYTES), checked there.
    classes = [HttpLimits] + [type(plugin.settings()) for plugin in discover()]
    assert len(classes) > 1 and all(issubclass(c, ServiceSettings) for c in classes[1:])
    missing = sorted(
        {
            variable
            for settings in classes
            for variable in variables(settings).values()
            if f"`{variable}`" not in text
        }
    )
    assert missing == []
