"""The routing table: which public model names exist and which upstream deployments serve
them, in fallback order. One source of truth: the gateway reads only the model names (to
refuse unknown models early and list them), the inference service reads the deployments.

The table comes from a YAML file (`routing_file` setting) or, without one, from a built-in
default: the provider simulator always, and OpenAI's models when `OPENAI_API_KEY` is set.

```yaml
models:
  sim-small:
    deployments:
      - name: simulator
        provider: openai
        model: sim-small
        base_url: http://127.0.0.1:8099/v1
  gpt-4o-mini:
    deployments:
      - {name: openai, provider: openai, model: gpt-4o-mini, api_key_env: OPENAI_API_KEY}
```
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# The SDKs refuse to start without an API key; deployments that need none (the simulator,
# a local vLLM or Ollama) get this placeholder.
PLACEHOLDER_API_KEY = "sim"

OPENAI_DEFAULT_MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini")
SIMULATOR_MODELS = ("sim-small", "sim-large")


class RoutingError(ValueError):
    """The routing table is missing, unreadable or invalid; the message names file and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Deployment(_Strict):
    """One upstream endpoint able to serve a model."""

    name: str = Field(min_length=1, description="Label used in events, logs and metrics.")
    provider: Literal["openai", "anthropic"]
    model: str = Field(min_length=1, description="Model name the upstream expects.")
    base_url: str | None = Field(default=None, description="None means the provider's public API.")
    api_key_env: str | None = Field(
        default=None, description="Name of the environment variable holding the API key."
    )
    timeout_s: float = Field(default=60, gt=0)
    max_retries: int = Field(default=2, ge=0)
    weight: int = Field(default=1, ge=0)
    max_concurrency: int | None = Field(default=None, ge=1)

    def api_key(self) -> str:
        """The key to send upstream. Raises RoutingError if the named variable is unset, so
        a missing secret is reported as such rather than as an upstream 401."""
        if self.api_key_env is None:
            return PLACEHOLDER_API_KEY
        value = os.environ.get(self.api_key_env)
        if not value:
            raise RoutingError(
                f"deployment {self.name!r} needs the environment variable {self.api_key_env}"
            )
        return value


class ModelRoute(_Strict):
    """A public model name and its deployments: the first is tried first, the others are
    fallbacks."""

    name: str = Field(min_length=1)
    deployments: list[Deployment] = Field(min_length=1)

    @field_validator("deployments")
    @classmethod
    def _unique_deployment_names(cls, deployments: list[Deployment]) -> list[Deployment]:
        names = [deployment.name for deployment in deployments]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"deployment names must be unique within a model: {duplicates}")
        return deployments


class RoutingTable(_Strict):
    models: dict[str, ModelRoute]

    @model_validator(mode="before")
    @classmethod
    def _name_routes_after_their_keys(cls, raw: Any) -> Any:
        # In YAML the key is the name; writing it twice would only invite mismatches.
        if not isinstance(raw, dict) or not isinstance(raw.get("models"), dict):
            return raw
        models = {}
        for key, route in raw["models"].items():
            if isinstance(route, dict):
                route = {"name": key, **route}
                if route["name"] != key:
                    raise ValueError(
                        f"models.{key}.name is {route['name']!r}; it must equal its key"
                    )
            models[key] = route
        return {**raw, "models": models}

    def model_names(self) -> list[str]:
        return sorted(self.models)

    def route(self, name: str) -> ModelRoute | None:
        return self.models.get(name)

    def deployments(self) -> list[Deployment]:
        """Every deployment of every model, in table order."""
        return [deployment for route in self.models.values() for deployment in route.deployments]


def load_routing(path: str | None, simulator_url: str) -> RoutingTable:
    """The routing table from the YAML file at `path`, or the built-in default."""
    if path:
        return _load_file(Path(path))
    return default_routing(simulator_url)


def default_routing(simulator_url: str) -> RoutingTable:
    routes = [
        ModelRoute(
            name=name,
            deployments=[
                Deployment(name="simulator", provider="openai", model=name, base_url=simulator_url)
            ],
        )
        for name in SIMULATOR_MODELS
    ]
    if os.environ.get("OPENAI_API_KEY"):
        base_url = os.environ.get("OPENAI_BASE_URL") or None
        routes += [
            ModelRoute(
                name=name,
                deployments=[
                    Deployment(
                        name="openai",
                        provider="openai",
                        model=name,
                        base_url=base_url,
                        api_key_env="OPENAI_API_KEY",
                    )
                ],
            )
            for name in OPENAI_DEFAULT_MODELS
        ]
    return RoutingTable(models={route.name: route for route in routes})


def _load_file(path: Path) -> RoutingTable:
    import yaml  # only needed when a file is configured

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RoutingError(f"routing file {path}: cannot be read ({exc.strerror or exc})") from exc
    except yaml.YAMLError as exc:
        raise RoutingError(f"routing file {path}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise RoutingError(f"routing file {path}: expected a mapping with a 'models' key")
    try:
        return RoutingTable.model_validate(raw)
    except ValidationError as exc:
        raise RoutingError(f"routing file {path}: {_describe(exc)}") from exc


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "(top level)"
        problems.append(f"{field}: {error['msg']}")
    return "; ".join(problems)
