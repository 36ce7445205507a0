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
      # Same priority: traffic is shared 3:1 between the two; either falls back on the other.
      - {name: azure, provider: openai, model: gpt-4o-mini, base_url: ..., priority: 0, weight: 3}
      - {name: openai, provider: openai, model: gpt-4o-mini, api_key_env: OPENAI_API_KEY,
         priority: 0, weight: 1}
      # Tried only when both above failed (or their circuits are open).
      - {name: claude, provider: anthropic, model: claude-haiku-4-5, api_key_env: ANTHROPIC_API_KEY,
         priority: 1}
```

Order of attempts for one request (`ModelRoute.attempt_order`):
- deployments are grouped by `priority` (lower first); without `priority` (on none of a
  model's deployments: it is all or none), each deployment is its own group in list
  order, so a plain list is an ordered fallback chain;
- within a group, the order is a weighted random draw: a deployment with weight 3 is
  tried first three times as often as one with weight 1; weight 0 means "never first
  while another of its group has weight", i.e. a standby inside the group;
- the inference service then puts a group's deployments that are at their
  `max_concurrency` after those with free capacity, and skips deployments whose circuit
  breaker is open.

Provider kinds (`provider`), each reached through its official SDK client; the protocol
column says which client APIs a deployment serves natively (passed through) and which are
translated (docs/protocols.md):

- `openai`: OpenAI's protocol (Chat Completions, embeddings); `base_url` (none: OpenAI),
  `api_key_env`.
- `anthropic`: Anthropic Messages; `base_url` (none: Anthropic), `api_key_env`.
- `azure_openai`: OpenAI's protocol; `base_url` (the resource endpoint), `api_version`, and
  one of `api_key_env`, `azure_ad_token_env`, `azure_ad_token_file`; `model` is the Azure
  deployment name.
- `bedrock`: Anthropic Messages; `region`; credentials from the standard AWS chain,
  `aws_profile`, the `aws_*_env` variables, or a Bedrock API key (`api_key_env`).
- `vertex`: Anthropic Messages; `project_id`, `region`; `credentials_file` (a service
  account), `access_token_env`, or Application Default Credentials.
- `gemini`: OpenAI's protocol; `api_key_env` (a Gemini API key); `base_url` defaults to
  Gemini's OpenAI-compatible endpoint.

Fields name environment variables or files, never secrets themselves: a routing file can
be shown and logged.

`RoutingSource` keeps the table current: it reloads the file when it changes (polling its
modification time, and on demand, e.g. on SIGHUP), keeping the previous table when the new
file is invalid.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal

import structlog
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from switchyard.common.events import MAX_MODEL_LENGTH
from switchyard.common.settings import ConfigurationError

# The SDKs refuse to start without an API key; deployments that need none (the simulator,
# a local vLLM or Ollama) get this placeholder.
PLACEHOLDER_API_KEY = "sim"

OPENAI_DEFAULT_MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini")
SIMULATOR_MODELS = ("sim-small", "sim-large")
# Simulator models whose deployment passes Responses requests through.
SIMULATOR_RESPONSES_MODELS = ("sim-small",)
# Served by the simulator's Anthropic protocol through the Anthropic provider.
SIMULATOR_ANTHROPIC_MODELS = ("sim-claude",)

log = structlog.get_logger("switchyard.routing")

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

ProviderKind = Literal["openai", "anthropic", "azure_openai", "bedrock", "vertex", "gemini"]
WireProtocol = Literal["openai", "anthropic"]

# The API family each provider kind speaks natively: requests in it are passed through,
# requests in the other are translated.
PROVIDER_PROTOCOLS: dict[str, WireProtocol] = {
    "openai": "openai",
    "anthropic": "anthropic",
    "azure_openai": "openai",
    "bedrock": "anthropic",
    "vertex": "anthropic",
    "gemini": "openai",
}
# Gemini's OpenAI-compatible endpoint (Google's "OpenAI compatibility" guide).
GEMINI_OPENAI_BASE_URL = "https://generativelanguage.googleapis.com/v1beta/openai/"

# Settings that belong to one provider kind only, and those a kind cannot do without.
_KIND_FIELDS: dict[str, frozenset[str]] = {
    "api_version": frozenset({"azure_openai"}),
    "azure_ad_token_env": frozenset({"azure_openai"}),
    "azure_ad_token_file": frozenset({"azure_openai"}),
    "region": frozenset({"bedrock", "vertex"}),
    "aws_profile": frozenset({"bedrock"}),
    "aws_access_key_id_env": frozenset({"bedrock"}),
    "aws_secret_access_key_env": frozenset({"bedrock"}),
    "aws_session_token_env": frozenset({"bedrock"}),
    "project_id": frozenset({"vertex"}),
    "credentials_file": frozenset({"vertex"}),
    "access_token_env": frozenset({"vertex"}),
    # Sent only to the Anthropic protocol, which requires max_tokens.
    "default_max_tokens": frozenset(
        kind for kind, protocol in PROVIDER_PROTOCOLS.items() if protocol == "anthropic"
    ),
    # How OpenAI clients' reasoning efforts are sent to the Anthropic protocol.
    "thinking_type": frozenset(
        kind for kind, protocol in PROVIDER_PROTOCOLS.items() if protocol == "anthropic"
    ),
    # How OpenAI clients' later system messages are sent to Anthropic's own API (Bedrock
    # and Vertex AI take none inside `messages`).
    "mid_conversation_system_messages": frozenset({"anthropic"}),
}
# The `max_tokens` an Anthropic-protocol deployment is sent for a Chat Completions or
# Responses request that set no output limit (the Messages API requires one), unless the
# deployment's `default_max_tokens` or inference's setting says otherwise.
DEFAULT_ANTHROPIC_MAX_TOKENS = 4096
# The thinking budget (`budget_tokens`) an OpenAI reasoning effort is sent to an
# Anthropic-protocol deployment as, with `thinking_type` `enabled`.
THINKING_BUDGET_BY_EFFORT: dict[str, int] = {
    "minimal": 1024,
    "low": 1024,
    "medium": 4096,
    "high": 16384,
    "xhigh": 32768,
}
_REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "azure_openai": ("base_url", "api_version"),
    "bedrock": ("region",),
    "vertex": ("project_id", "region"),
    "gemini": ("api_key_env",),
}


# The fields of a deployment that name an environment variable holding a credential.
CREDENTIAL_FIELDS = (
    "api_key_env",
    "azure_ad_token_env",
    "aws_access_key_id_env",
    "aws_secret_access_key_env",
    "aws_session_token_env",
    "access_token_env",
)


class RoutingError(ConfigurationError):
    """The routing table is missing, unreadable or invalid; the message names file and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Deployment(_Strict):
    """One upstream endpoint able to serve a model."""

    name: str = Field(
        min_length=1,
        max_length=MAX_MODEL_LENGTH,  # as events carry it
        description="Label used in events, logs and metrics.",
    )
    provider: ProviderKind
    model: str = Field(
        min_length=1,
        description="Model name the upstream expects (Azure: the deployment name; Bedrock: "
        "the model or inference profile id; Vertex: the publisher model id).",
    )
    base_url: str | None = Field(
        default=None,
        description="None means the provider's public API (Azure: the resource endpoint, "
        "required).",
    )
    api_key_env: str | None = Field(
        default=None, description="Name of the environment variable holding the API key."
    )
    api_version: str | None = Field(
        default=None, description="azure_openai: the `api-version` query parameter."
    )
    azure_ad_token_env: str | None = Field(
        default=None,
        description="azure_openai: variable holding a Microsoft Entra ID access token "
        "(sent as `Authorization: Bearer`), read at each call.",
    )
    azure_ad_token_file: str | None = Field(
        default=None,
        description="azure_openai: file holding a Microsoft Entra ID access token, read "
        "again whenever it changes (kept fresh by a sidecar or a cron job).",
    )
    region: str | None = Field(
        default=None, description="bedrock: the AWS region; vertex: the Google Cloud region."
    )
    aws_profile: str | None = Field(
        default=None, description="bedrock: a profile of the AWS config and credentials files."
    )
    aws_access_key_id_env: str | None = Field(
        default=None, description="bedrock: variable holding the access key id."
    )
    aws_secret_access_key_env: str | None = Field(
        default=None, description="bedrock: variable holding the secret access key."
    )
    aws_session_token_env: str | None = Field(
        default=None, description="bedrock: variable holding a session token (temporary keys)."
    )
    project_id: str | None = Field(default=None, description="vertex: the Google Cloud project.")
    credentials_file: str | None = Field(
        default=None, description="vertex: a service-account key file (JSON)."
    )
    access_token_env: str | None = Field(
        default=None,
        description="vertex: variable holding an OAuth 2.0 access token, read at each call.",
    )
    timeout_s: float = Field(
        default=60,
        gt=0,
        description="Per upstream call: connecting, and each read of a streamed reply (the "
        "longest silence between two events).",
    )
    response_timeout_s: float = Field(
        default=600,
        gt=0,
        le=86400,
        description="A non-streamed call: how long its reply is waited for (the upstream "
        "answers once it has generated all of it); within the request's deadline. "
        "Connecting is still bounded by timeout_s.",
    )
    default_max_tokens: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="Anthropic-protocol deployments: the `max_tokens` sent for a Chat "
        "Completions or Responses request that set no output limit (the Messages API "
        "requires one): the model's own output limit, say. Unset: "
        "SWITCHYARD_INFERENCE_ANTHROPIC_DEFAULT_MAX_TOKENS (4096).",
    )
    thinking_type: Literal["enabled", "adaptive"] | None = Field(
        default=None,
        description="Anthropic-protocol deployments: how an OpenAI client's reasoning "
        "effort (Chat Completions' `reasoning_effort`, the Responses API's "
        '`reasoning.effort`) turns thinking on. `enabled`: `thinking: {"type": '
        '"enabled", "budget_tokens": N}`, N by the effort (every Claude model with '
        "extended thinking before Claude Opus 4.7; deprecated on Opus 4.6 and Sonnet 4.6). "
        '`adaptive`: `thinking: {"type": "adaptive"}` and `output_config.effort` (Claude '
        "Opus 4.6, Sonnet 4.6, and the only way of Opus 4.7 and later, which refuse "
        "`enabled`). Unset: `enabled`.",
    )
    mid_conversation_system_messages: bool = Field(
        default=False,
        description='`anthropic` deployments: the model takes `role: "system"` '
        "messages inside `messages` (Claude Opus 4.8 and later, on Anthropic's API; "
        "Bedrock and Vertex AI take none, and refuse the setting), so a Chat Completions "
        "or Responses request's system or developer message after the conversation "
        "started stays one where Anthropic's "
        "placement rules allow it (right after a user turn, and last or followed by an "
        "assistant turn). Unset: every such message is appended to the top-level `system`, "
        "which every model takes.",
    )
    max_retries: int = Field(
        default=2,
        ge=0,
        description="Retries on this deployment (429, 5xx, timeouts) before "
        "falling back to the next one; with exponential backoff and full jitter.",
    )
    priority: int | None = Field(
        default=None,
        ge=0,
        description="Fallback group: lower is tried first. Unset: the position in the list.",
    )
    weight: int = Field(
        default=1,
        ge=0,
        description="Share of first attempts within its priority group (0: standby).",
    )
    max_concurrency: int | None = Field(
        default=None, ge=1, description="Calls in flight to this deployment at most."
    )
    responses_api: bool = Field(
        default=False,
        description="OpenAI-protocol deployments: the server offers OpenAI's Responses API "
        "(`POST {base_url}/responses`), so Responses requests are passed through; without it "
        "they are translated to Chat Completions (vLLM, Ollama and most compatible servers).",
    )
    responses_input_tokens: bool = Field(
        default=False,
        description="OpenAI-protocol deployments offering the Responses API: the server also "
        "counts a request's input tokens (`POST {base_url}/responses/input_tokens`, OpenAI's "
        "own API does), so `/v1/responses/input_tokens` is passed through; without it the "
        "count is estimated (Azure OpenAI, vLLM and Ollama serve no such endpoint).",
    )

    # Where it was read from (routing file, model, index), set by the loader; errors
    # name it (`where`). None: built in.
    _origin: tuple[str, str, int] | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _fields_of_its_kind(self) -> Deployment:
        for field, kinds in _KIND_FIELDS.items():
            # Given at all (a flag's `false` too), not only set to something.
            written = field in self.model_fields_set and getattr(self, field) is not None
            if written and self.provider not in kinds:
                raise ValueError(
                    f"'{field}' applies only to {' and '.join(sorted(kinds))} deployments"
                )
        for field in _REQUIRED_FIELDS.get(self.provider, ()):
            if getattr(self, field) is None:
                raise ValueError(f"a {self.provider} deployment needs '{field}'")
        if self.provider == "azure_openai":
            given = [
                field
                for field in ("api_key_env", "azure_ad_token_env", "azure_ad_token_file")
                if getattr(self, field) is not None
            ]
            if len(given) != 1:
                raise ValueError(
                    "an azure_openai deployment needs exactly one of 'api_key_env', "
                    "'azure_ad_token_env' and 'azure_ad_token_file'"
                )
        if self.provider == "bedrock":
            keys = (self.aws_access_key_id_env, self.aws_secret_access_key_env)
            if (keys[0] is None) != (keys[1] is None):
                raise ValueError(
                    "set both 'aws_access_key_id_env' and 'aws_secret_access_key_env', or neither"
                )
            if self.api_key_env is not None and (
                keys[0] is not None or self.aws_profile is not None
            ):
                raise ValueError(
                    "a bedrock deployment uses either a Bedrock API key ('api_key_env') or "
                    "AWS credentials, not both"
                )
        if self.provider == "vertex":
            if self.api_key_env is not None:
                raise ValueError("'api_key_env' does not apply to vertex deployments")
            if self.credentials_file is not None and self.access_token_env is not None:
                raise ValueError("set 'credentials_file' or 'access_token_env', not both")
        return self

    @property
    def protocol(self) -> WireProtocol:
        """The API family the deployment speaks natively: `openai` or `anthropic`."""
        return PROVIDER_PROTOCOLS[self.provider]

    def uncapped_max_tokens(
        self, effort: str | None, default_max_tokens: int = DEFAULT_ANTHROPIC_MAX_TOKENS
    ) -> int | None:
        """The `max_tokens` inference sends this deployment for an OpenAI client's request
        that set no output limit, asking for reasoning `effort` (None or `none`: no
        thinking), `default_max_tokens` being inference's default: None for OpenAI's
        protocol (sent without one); for Anthropic's, the deployment's
        `default_max_tokens` (else the default), raised above the thinking budget of
        `effort` (`THINKING_BUDGET_BY_EFFORT`) with `thinking_type` `enabled` when it is
        not above it. The gateway reserves budgets and token limits by it; inference's
        translation computes the same (`add_anthropic_thinking`, from the same constants,
        held to this by a test), or less when it sends no thinking."""
        if self.protocol != "anthropic":
            return None
        cap = self.default_max_tokens or default_max_tokens
        budget = THINKING_BUDGET_BY_EFFORT.get(effort or "none")
        if budget is not None and self.thinking_type != "adaptive" and cap <= budget:
            return budget + cap
        return cap

    def api_key(self) -> str:
        """The key to send upstream. Raises RoutingError if the named variable is unset, so
        a missing secret is reported as such rather than as an upstream 401."""
        if self.api_key_env is None:
            return PLACEHOLDER_API_KEY
        return self.secret(self.api_key_env)

    def secret(self, variable: str) -> str:
        """The value of the environment variable `variable`, which this deployment names
        for a credential. Raises RoutingError when it is unset or empty, naming the
        routing file and the field that names the variable (`where`)."""
        value = os.environ.get(variable)
        if not value:
            field = next(
                (name for name in CREDENTIAL_FIELDS if getattr(self, name) == variable),
                "api_key_env",
            )
            raise RoutingError(
                f"{self.where(field)}: deployment {self.name!r} needs the environment "
                f"variable {variable}, which is unset or empty; set it, or remove the "
                "deployment"
            )
        return value

    def where(self, field: str) -> str:
        """Where `field` of this deployment is configured, as routing errors name it:
        `routing file <path>: models.<model>.deployments[<i>].<field>` for a deployment
        read from a routing file, else `built-in routing: deployment '<name>'.<field>`."""
        if self._origin is None:
            return f"built-in routing: deployment {self.name!r}.{field}"
        path, model, index = self._origin
        return f"routing file {path}: models.{model}.deployments[{index}].{field}"

    def credential_variables(self) -> list[str]:
        """The environment variables this deployment reads credentials from (it cannot
        work while one of them is unset)."""
        return [
            getattr(self, field) for field in CREDENTIAL_FIELDS if getattr(self, field) is not None
        ]

    def secrets(self) -> tuple[str, ...]:
        """The credential values currently set for this deployment (to redact them from
        anything relayed or logged); unset ones are left out."""
        values = (os.environ.get(variable) for variable in self.credential_variables())
        return tuple(value for value in values if value)


class ModelRoute(_Strict):
    """A public model name and its deployments: the first is tried first, the others are
    fallbacks."""

    name: str = Field(min_length=1, max_length=MAX_MODEL_LENGTH)  # as events carry it
    deployments: list[Deployment] = Field(min_length=1)
    display_name: str | None = Field(
        default=None,
        max_length=256,
        description="Human-readable name in model lists (Anthropic's `display_name`); "
        "default: the model's name.",
    )
    created_at: datetime | None = Field(
        default=None,
        description="When the model was released, for model lists (Anthropic's "
        "`created_at`, OpenAI's `created`); unknown: the Unix epoch. A date without a "
        "time zone is taken as UTC.",
    )

    @field_validator("created_at", mode="before")
    @classmethod
    def _created_at_in_utc(cls, value: Any) -> Any:
        if isinstance(value, date) and not isinstance(value, datetime):
            value = datetime(value.year, value.month, value.day)
        if isinstance(value, datetime) and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value

    @property
    def label(self) -> str:
        """The name shown in model lists: `display_name`, or the model's name."""
        return self.display_name or self.name

    @property
    def released(self) -> datetime:
        """When the model was released (`created_at`), or the Unix epoch when unknown."""
        return self.created_at or EPOCH

    @field_validator("deployments")
    @classmethod
    def _unique_deployment_names(cls, deployments: list[Deployment]) -> list[Deployment]:
        names = [deployment.name for deployment in deployments]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"deployment names must be unique within a model: {duplicates}")
        with_priority = [deployment.priority is not None for deployment in deployments]
        if any(with_priority) and not all(with_priority):
            raise ValueError("set 'priority' on every deployment of a model, or on none")
        return deployments

    def priority_groups(self) -> list[list[Deployment]]:
        """Deployments grouped by priority, lowest first, each group in list order."""
        groups: dict[int, list[Deployment]] = {}
        for position, deployment in enumerate(self.deployments):
            key = deployment.priority if deployment.priority is not None else position
            groups.setdefault(key, []).append(deployment)
        return [groups[key] for key in sorted(groups)]

    def attempt_order(self, rng: random.Random | None = None) -> list[Deployment]:
        """The order in which one request tries the deployments (see the module doc)."""
        if len(self.deployments) == 1:
            return list(self.deployments)
        rng = rng or _random
        order: list[Deployment] = []
        for group in self.priority_groups():
            order += weighted_shuffle(group, rng)
        return order


_random = random.Random()


def weighted_shuffle(deployments: list[Deployment], rng: random.Random) -> list[Deployment]:
    """A random order in which each next deployment is drawn with probability proportional
    to its weight among those left; weight-0 deployments follow in list order."""
    if len(deployments) == 1:
        return list(deployments)
    weighted = [d for d in deployments if d.weight > 0]
    standby = [d for d in deployments if d.weight == 0]
    # Efraimidis-Spirakis: sort by u^(1/w) descending, one draw per item.
    keyed = sorted(weighted, key=lambda d: rng.random() ** (1.0 / d.weight), reverse=True)
    return keyed + standby


class RoutingTable(_Strict):
    """The routing configuration: public model name to its route (`models`). In YAML each
    route's key is its name."""

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
        """The public model names, sorted."""
        return sorted(self.models)

    def route(self, name: str) -> ModelRoute | None:
        """The route of public model `name`, or None when no such model is configured."""
        return self.models.get(name)

    def deployments(self) -> list[Deployment]:
        """Every deployment of every model, in table order."""
        return [deployment for route in self.models.values() for deployment in route.deployments]


def load_routing(path: str | None, simulator_url: str) -> RoutingTable:
    """The routing table from the YAML file at `path`, or the built-in default."""
    if path:
        return _load_file(Path(path))
    return default_routing(simulator_url)


def simulator_root(simulator_url: str) -> str:
    """The simulator's root URL (the Anthropic SDK adds `/v1/messages` itself)."""
    return simulator_url.rstrip("/").removesuffix("/v1")


def default_routing(simulator_url: str) -> RoutingTable:
    """The routing table used without a routing file: every simulated model served by the
    provider simulator at `simulator_url` (its OpenAI-compatible base URL; its root, without
    `/v1`, is read the same way)."""
    # The simulator serves the Responses API too; `sim-large` stands for a server that
    # offers Chat Completions only (Responses requests to it are translated).
    routes = [
        ModelRoute(
            name=name,
            deployments=[
                Deployment(
                    name="simulator",
                    provider="openai",
                    model=name,
                    # Given as the root (`http://127.0.0.1:8099`), as the simulator's
                    # own flag reads it, the OpenAI SDK would miss the `/v1` of its routes.
                    base_url=f"{simulator_root(simulator_url)}/v1",
                    responses_api=name in SIMULATOR_RESPONSES_MODELS,
                    responses_input_tokens=name in SIMULATOR_RESPONSES_MODELS,
                )
            ],
        )
        for name in SIMULATOR_MODELS
    ]
    routes += [
        ModelRoute(
            name=name,
            deployments=[
                Deployment(
                    name="simulator",
                    provider="anthropic",
                    model=name,
                    base_url=simulator_root(simulator_url),
                )
            ],
        )
        for name in SIMULATOR_ANTHROPIC_MODELS
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
                        responses_api=True,
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
        problem = " ".join(str(exc).split())  # one line: PyYAML's spans several
        raise RoutingError(f"routing file {path}: not valid YAML ({problem})") from exc
    if not isinstance(raw, dict):
        raise RoutingError(f"routing file {path}: expected a mapping with a 'models' key")
    try:
        table = RoutingTable.model_validate(raw)
    except ValidationError as exc:
        raise RoutingError(f"routing file {path}: {_describe(exc)}") from exc
    for model, route in table.models.items():
        for index, deployment in enumerate(route.deployments):
            # Errors found later (an unset credential variable) name the file and field.
            deployment._origin = (str(path), model, index)
    return table


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "(top level)"
        problems.append(f"{field}: {error['msg']}")
    return "; ".join(problems)


class RoutingSource:
    """The current routing table, reloaded from its file when the file changes.

    Readers take `source.table` for each request (one attribute read); a reload swaps it
    atomically. An invalid new file is logged and the previous table kept, so a typo
    never takes the service down. `validate` can refuse a table (e.g. a missing API key
    variable) the same way. `on_change(table)` callbacks run after each swap."""

    def __init__(
        self,
        path: str | None,
        simulator_url: str,
        *,
        validate: Callable[[RoutingTable], None] | None = None,
    ) -> None:
        self.path = path
        self.simulator_url = simulator_url
        self._validate = validate
        self.table = load_routing(path, simulator_url)
        if validate is not None:
            validate(self.table)
        self._signature = self._file_signature()
        self.version = 1
        self._listeners: list[Callable[[RoutingTable], None]] = []

    def on_change(self, listener: Callable[[RoutingTable], None]) -> None:
        """Call `listener` with the new table after every reload that replaced it."""
        self._listeners.append(listener)

    def _file_signature(self) -> tuple[int, int, int] | None:
        if not self.path:
            return None
        try:
            stat = os.stat(self.path)  # follows symlinks: Kubernetes ConfigMap updates
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_ino, stat.st_size)

    def changed(self) -> bool:
        """Whether the routing file changed (mtime, inode or size) since it was last read."""
        return self.path is not None and self._file_signature() != self._signature

    def reload(self) -> bool:
        """Load the file now; True if the table was replaced. Errors are logged, not raised."""
        if not self.path:
            return False
        signature = self._file_signature()
        try:
            table = load_routing(self.path, self.simulator_url)
            if self._validate is not None:
                self._validate(table)
        except RoutingError as exc:
            self._signature = signature  # report a bad file once, not at every poll
            log.error("routing file not reloaded; keeping the previous table", error=str(exc))
            return False
        self._signature = signature
        if table == self.table:
            return False
        self.table = table
        self.version += 1
        log.info("routing table reloaded", path=self.path, models=table.model_names())
        for listener in self._listeners:
            listener(table)
        return True

    def reload_if_changed(self) -> bool:
        """Reload when the file changed; True if the table was replaced (see `reload`)."""
        return self.changed() and self.reload()

    async def watch(self, interval_s: float) -> None:
        """Poll the file every `interval_s` seconds until cancelled."""
        if not self.path or interval_s <= 0:
            return
        while True:
            await asyncio.sleep(interval_s)
            try:
                self.reload_if_changed()
            except Exception:  # noqa: BLE001 - a listener bug must not stop the watcher
                log.exception("routing reload failed")
