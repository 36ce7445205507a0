"""Settings shared by every service, read from the environment and `.env` (pydantic-settings).

Each service subclasses `ServiceSettings` in its own `config.py`. Secrets have development
defaults so that `switchyard dev` works out of the box; outside development those defaults
are refused at start-up, so a deployment can never run with a secret that is in the repo.
"""

from __future__ import annotations

import ipaddress
import secrets
import socket
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from switchyard.common.egress import networks_setting

DEV_INTERNAL_TOKEN = "dev-internal-token-change-me"
# Largest event on Kafka: above the largest request body a model API takes (32 MiB for
# Anthropic's Messages, 50 MiB for OpenAI's), plus the envelope.
DEFAULT_KAFKA_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

# Upper bounds of numeric settings (docs/configuration.md lists each): far above what a
# deployment sets, low enough that no value overflows a timer, a date or an allocation
# (a 20-digit TTL fails every token's expiry date; a huge concurrency preallocates).
HOUR_S = 3600
DAY_S = 24 * HOUR_S
YEAR_S = 365 * DAY_S
MIB = 1024 * 1024
GIB = 1024 * MIB
# A request body, an event on Kafka, a stored response.
MAX_BYTES = GIB
# Work one process runs at once (handlers, lookups).
MAX_CONCURRENCY = 4096
# Attempts, thresholds, failures counted before acting.
MAX_ATTEMPTS = 1000


def loopback(host: str) -> bool:
    """Whether `host` (an interface to bind: an address or a name) is this machine's
    loopback interface only (`127.0.0.0/8`, `::1`, `localhost`)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_internal_token_for(host: str, internal_token: str) -> None:
    """Refuse to listen beyond the loopback interface (`host`) with the development
    internal token, in every environment: it is public, and a service's internal routes
    (the gateway's admissions among them) would take it from anyone who can connect.

    Raises:
        ConfigurationError: naming SWITCHYARD_INTERNAL_TOKEN and the interface.
    """
    if internal_token == DEV_INTERNAL_TOKEN and not loopback(host):
        raise ConfigurationError(
            f"SWITCHYARD_INTERNAL_TOKEN still has its development default, which is public, "
            f"and the service would listen on {host} (beyond this machine): set "
            "SWITCHYARD_INTERNAL_TOKEN to a random value shared by every service (e.g. "
            "`openssl rand -hex 32`), or listen on 127.0.0.1"
        )


if TYPE_CHECKING:
    from switchyard.common.kafka_security import KafkaSecurity


class Environment(StrEnum):
    """Where a service runs (`SWITCHYARD_ENVIRONMENT`): only `development` accepts the
    development default secrets; `test` and `production` refuse to start with them."""

    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


def _default_instance_id() -> str:
    # Unique per process: gateway replicas use it to receive only their own replies.
    return f"{socket.gethostname()}-{secrets.token_hex(4)}"


def env(*names: str) -> AliasChoices:
    """Environment variable names a shared field is read from (first found wins)."""
    return AliasChoices(*names)


class ConfigurationError(ValueError):
    """Configuration a service cannot start with (its settings, routing or price file);
    the message says what and where on one line, and the `switchyard` command prints it
    alone and exits with status 1."""


class SettingsError(ConfigurationError):
    """Settings from the environment (or `.env`) a service cannot start with; the message
    names each variable at fault and says why."""


def variable_of(settings: type[BaseSettings], field_name: str) -> str:
    """The environment variable `field_name` of `settings` (or one of its aliases, as a
    validation error names it) is read from: of the names of its validation alias, the
    first one set in the environment, else the first; else the class's `env_prefix` and
    the field's name, upper case (`SWITCHYARD_GATEWAY_PORT`)."""
    import os

    field = settings.model_fields.get(field_name)
    if field is None:  # pydantic names a field read through an alias by that alias
        field = next(
            (
                candidate
                for candidate in settings.model_fields.values()
                if isinstance(candidate.validation_alias, AliasChoices)
                and field_name.upper()
                in (str(choice).upper() for choice in candidate.validation_alias.choices)
            ),
            None,
        )
        if field is None:
            return field_name.upper()
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        names = [choice.upper() for choice in alias.choices if isinstance(choice, str)]
        if names:
            # Variable names are matched regardless of case, as pydantic-settings reads them.
            present = {name.upper() for name in os.environ}
            return next((name for name in names if name in present), names[0])
    elif isinstance(alias, str):
        return alias.upper()
    return f"{settings.model_config.get('env_prefix', '')}{field_name}".upper()


def describe_settings_error(settings: type[BaseSettings], exc: ValidationError) -> str:
    """`exc` (refusing `settings`) as one line: `VARIABLE: why` for each problem (a
    problem of no one field, such as a secret left at its default, as its message)."""
    problems = []
    for error in exc.errors():
        if error["type"] == "default_factory_not_called":
            continue  # a default built from a field refused: that field's error says why
        location = error["loc"]
        message = str(error["msg"]).removeprefix("Value error, ")
        if location:
            where = variable_of(settings, str(location[0]))
            rest = "".join(f"[{part}]" for part in location[1:])
            problems.append(f"{where}{rest}: {message}")
        else:
            problems.append(message)
    return "; ".join(problems)


def http_url(value: Any) -> Any:
    """Check a setting holding an HTTP(S) base URL (as a field validator, mode "after"):
    `http` or `https`, a host, and a port from 1 to 65535 when one is given. Raises
    ValueError saying which."""
    from urllib.parse import urlsplit

    if not isinstance(value, str):
        return value
    try:
        parts = urlsplit(value)
        port = parts.port  # ValueError for a port above 65535 or not a number
    except ValueError as exc:
        raise ValueError(f"not a URL with a port from 1 to 65535 ({exc})") from None
    if port == 0:
        raise ValueError("not a URL with a port from 1 to 65535 (port 0)")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http:// or https:// URL with a host")
    return value


class CheckedSettings(BaseSettings):
    """Settings read from the environment (and `.env`) that refuse a float that is not
    finite (`1e309`, `nan`) and whose refusal is a SettingsError of one line naming each
    variable at fault, never pydantic's multi-line ValidationError: every Settings class a
    command reads derives from it."""

    model_config = SettingsConfigDict(allow_inf_nan=False)

    def __init__(self, **values: Any) -> None:
        """Read the settings (keyword `values` first, then the environment and `.env`).
        Raises SettingsError naming each variable at fault."""
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise SettingsError(describe_settings_error(type(self), exc)) from None


class ServiceSettings(CheckedSettings):
    """Settings every service has.

    Shared fields read `SWITCHYARD_<FIELD>` (e.g. `SWITCHYARD_BUS`); each service's own
    fields read `SWITCHYARD_<SERVICE>_<FIELD>` (e.g. `SWITCHYARD_GATEWAY_PORT`) because
    each service's Settings sets its own `env_prefix`.
    """

    model_config = SettingsConfigDict(
        env_prefix="SWITCHYARD_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        # A refused start-up prints the validation error; never with the secrets in it.
        hide_input_in_errors=True,
        allow_inf_nan=False,
    )

    # Secret fields listed here must not keep their development default outside development.
    secret_defaults: ClassVar[dict[str, str]] = {"internal_token": DEV_INTERNAL_TOKEN}

    environment: Environment = Field(
        validation_alias=env("SWITCHYARD_ENVIRONMENT"),
        default=Environment.DEVELOPMENT,
        description="development allows built-in default secrets; production refuses them.",
    )
    bus: Literal["memory", "kafka"] = Field(
        validation_alias=env("SWITCHYARD_BUS"),
        default="memory",
        description="Event bus: in-process memory (embedded mode) or Kafka.",
    )
    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        validation_alias=env("SWITCHYARD_KAFKA_BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP_SERVERS"),
    )
    kafka_max_message_bytes: int = Field(
        default=DEFAULT_KAFKA_MAX_MESSAGE_BYTES,
        gt=0,
        le=MAX_BYTES,
        validation_alias=env("SWITCHYARD_KAFKA_MAX_MESSAGE_BYTES"),
        description="Largest event published or fetched, and the `max.message.bytes` of the "
        "topics `switchyard topics create` makes. The broker must accept it too. At most "
        "1 GiB.",
    )
    kafka_commit_interval_ms: int = Field(
        default=1000,
        ge=0,
        le=HOUR_S * 1000,
        validation_alias=env("SWITCHYARD_KAFKA_COMMIT_INTERVAL_MS"),
        description="While events keep arriving, a consumer group member commits the offsets "
        "it has handled at most this often (0: after every poll); it commits at once when a "
        "poll comes back empty and on every rebalance and shutdown. A crash redelivers up to "
        "this much more of what was already handled (answered again from its reply partition).",
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT",
        validation_alias=env("SWITCHYARD_KAFKA_SECURITY_PROTOCOL"),
        description="How every Kafka client connects (Kafka's `security.protocol`): "
        "SASL_SSL for managed Kafka (Confluent Cloud, Amazon MSK, Aiven).",
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        default="PLAIN",
        validation_alias=env("SWITCHYARD_KAFKA_SASL_MECHANISM"),
        description="The SASL mechanism of SASL_PLAINTEXT and SASL_SSL.",
    )
    kafka_sasl_username: str = Field(
        default="",
        validation_alias=env("SWITCHYARD_KAFKA_SASL_USERNAME"),
        description="The SASL username (required by the SASL protocols).",
    )
    kafka_sasl_password: str = Field(
        default="",
        validation_alias=env("SWITCHYARD_KAFKA_SASL_PASSWORD"),
        description="The SASL password (required by the SASL protocols).",
        repr=False,
    )
    kafka_ssl_cafile: str = Field(
        default="",
        validation_alias=env("SWITCHYARD_KAFKA_SSL_CAFILE"),
        description="PEM file of the CA the broker's certificate is verified by (SSL, "
        "SASL_SSL); empty: the system's CAs.",
    )
    kafka_ssl_certfile: str = Field(
        default="",
        validation_alias=env("SWITCHYARD_KAFKA_SSL_CERTFILE"),
        description="PEM client certificate for brokers that require one (with the key).",
    )
    kafka_ssl_keyfile: str = Field(
        default="",
        validation_alias=env("SWITCHYARD_KAFKA_SSL_KEYFILE"),
        description="PEM private key of the client certificate.",
    )
    topic_prefix: str = Field(
        validation_alias=env("SWITCHYARD_TOPIC_PREFIX"),
        default="switchyard",
        description="Prefix of every topic name, so several deployments can share a cluster.",
    )
    log_level: str = Field(default="INFO", validation_alias=env("SWITCHYARD_LOG_LEVEL"))
    log_format: Literal["json", "console"] = Field(
        default="json", validation_alias=env("SWITCHYARD_LOG_FORMAT")
    )
    internal_token: str = Field(
        validation_alias=env("SWITCHYARD_INTERNAL_TOKEN"),
        default=DEV_INTERNAL_TOKEN,
        # An empty token would match a call sending an empty header.
        min_length=1,
        description="Secret carried by service-to-service calls (x-switchyard-internal-token); "
        "`switchyard dev` makes a random one for each run unless it is set.",
    )
    instance_id: str = Field(
        validation_alias=env("SWITCHYARD_INSTANCE_ID"), default_factory=_default_instance_id
    )
    max_body_bytes: int = Field(
        default=1024 * 1024,
        gt=0,
        le=MAX_BYTES,
        description="Request bodies larger than this get 413 before they are read "
        "(SWITCHYARD_<SERVICE>_MAX_BODY_BYTES); at most 1 GiB.",
    )
    webhook_allowed_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        validation_alias=env("SWITCHYARD_WEBHOOK_ALLOWED_NETWORKS"),
        description="Comma-separated networks (CIDR) job webhooks may reach although they "
        "are not public, e.g. 127.0.0.0/8 for local tests. Empty: public addresses only, in "
        "every environment.",
    )
    metrics_token: str | None = Field(
        default=None,
        validation_alias=env("SWITCHYARD_METRICS_TOKEN"),
        description="If set, /metrics answers only requests with 'Authorization: Bearer "
        "<token>'; unset, /metrics is open (keep it off the public network).",
    )
    host: str = Field(
        default="127.0.0.1",
        validation_alias=env("SWITCHYARD_HOST"),
        description="Interface the HTTP server binds to.",
    )

    @field_validator("webhook_allowed_networks", mode="before")
    @classmethod
    def _parse_networks(cls, value: Any) -> Any:
        return networks_setting(value)

    @model_validator(mode="after")
    def _enforce_non_default_secrets(self) -> ServiceSettings:
        if self.environment == Environment.DEVELOPMENT:
            return self
        for field_name, default in self.secret_defaults.items():
            if getattr(self, field_name, None) == default:
                raise ValueError(
                    f"{field_name} still has its development default; set SWITCHYARD_"
                    f"{field_name.upper()} (environment is {self.environment.value})"
                )
        return self

    def describe(self) -> dict[str, Any]:
        """Settings safe to log: every field whose name suggests a secret is masked."""
        masked = {}
        for name, value in self.model_dump().items():
            if any(word in name for word in ("token", "secret", "password", "key")) and value:
                value = "***"
            masked[name] = value
        return masked


def kafka_security(settings: ServiceSettings) -> KafkaSecurity:
    """The Kafka connection security `settings` name. Raises ConfigurationError for a SASL
    protocol without credentials, or a client certificate without its key."""
    from switchyard.common.kafka_security import KafkaSecurity

    try:
        return KafkaSecurity(
            protocol=settings.kafka_security_protocol,
            mechanism=settings.kafka_sasl_mechanism,
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password,
            cafile=settings.kafka_ssl_cafile,
            certfile=settings.kafka_ssl_certfile,
            keyfile=settings.kafka_ssl_keyfile,
        )
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
