"""Settings of the inference service (`SWITCHYARD_INFERENCE_*`, the shared `SWITCHYARD_*`,
and `.env`)."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from switchyard.common.settings import (
    DAY_S,
    HOUR_S,
    MAX_ATTEMPTS,
    MAX_CONCURRENCY,
    ServiceSettings,
    env,
    http_url,
)
from switchyard.common.topics import Topics


class Settings(ServiceSettings):
    """The inference service's settings, read from `SWITCHYARD_INFERENCE_*` environment
    variables (and the shared `SWITCHYARD_*` ones named per field); see docs/configuration.md."""

    model_config = SettingsConfigDict(env_prefix="SWITCHYARD_INFERENCE_")

    port: int = Field(default=8003, ge=1, le=65535)
    routing_file: str | None = Field(
        default=None,
        validation_alias=env("SWITCHYARD_ROUTING_FILE", "routing_file"),
        description="YAML routing table; without one, the built-in default (simulator, and "
        "OpenAI's models when OPENAI_API_KEY is set).",
    )
    routing_reload_interval_s: float = Field(
        default=5.0,
        ge=0,
        le=DAY_S,
        description="How often the routing file is checked for changes (0: only on SIGHUP).",
    )
    prices_file: str | None = Field(
        default=None,
        validation_alias=env("SWITCHYARD_PRICES_FILE", "prices_file"),
        description="YAML price table (USD per 1M input/output tokens) for the cost in usage "
        "events; without one every cost is 0. Reloaded with the routing file.",
    )
    simulator_url: str = Field(
        default="http://127.0.0.1:8099/v1",
        validation_alias=env("SWITCHYARD_SIMULATOR_URL", "simulator_url"),
        description="Base URL of the provider simulator used by the default routing table.",
    )

    _simulator_url = field_validator("simulator_url")(http_url)
    interactive_concurrency: int = Field(
        default=64,
        ge=1,
        le=MAX_CONCURRENCY,
        validation_alias=env(
            "SWITCHYARD_INFERENCE_INTERACTIVE_CONCURRENCY",
            "SWITCHYARD_INFERENCE_CONSUMER_CONCURRENCY",
            "interactive_concurrency",
            "consumer_concurrency",
        ),
        description="Interactive requests handled at once by one replica (each waits on I/O).",
    )
    batch_concurrency: int = Field(
        default=8,
        ge=1,
        le=MAX_CONCURRENCY,
        description="Batch-lane requests handled at once by one replica.",
    )
    batch_yield_ratio: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="A batch request starts only while fewer than this fraction of "
        "interactive_concurrency interactive requests are in progress.",
    )
    group: str = Field(
        default="",
        description="Kafka consumer group of the interactive lane; unset: "
        "`<topic prefix>.inference`.",
    )
    batch_group: str = Field(
        default="",
        description="Kafka consumer group of the batch lane; unset: "
        "`<topic prefix>.inference-batch`.",
    )
    retry_initial_backoff_s: float = Field(
        default=0.25,
        gt=0,
        le=HOUR_S,
        description="First retry waits up to this long (full jitter).",
    )
    retry_max_backoff_s: float = Field(
        default=8.0,
        gt=0,
        le=HOUR_S,
        description="Ceiling of the exponential backoff between retries.",
    )
    breaker_failure_threshold: int = Field(
        default=5,
        ge=1,
        le=MAX_ATTEMPTS,
        description="Consecutive failures that open a deployment's circuit.",
    )
    breaker_cooldown_s: float = Field(
        default=30.0,
        gt=0,
        le=DAY_S,
        description="Time an open circuit waits before a half-open probe.",
    )
    redelivery_lookback_s: float = Field(
        default=900.0,
        gt=0,
        le=DAY_S,
        description="How far back a redelivered request's reply partition is read for what "
        "its client was already sent, and how long what was read is kept in memory for the "
        "next redelivery; a redelivery older than this runs again. At least the longest "
        "time a request can hold back its partition's offset (the gateway's request timeout).",
    )
    redelivery_clock_skew_s: float = Field(
        default=10.0,
        ge=0,
        le=3600,
        description="How far the clocks of gateway and inference hosts may disagree: a "
        "redelivered request's reply partition is read from this long before the request's "
        "time (reply records carry the writing replica's clock).",
    )
    redelivery_index_max_mb: int = Field(
        default=64,
        ge=1,
        le=4096,
        description="Most MiB of reply records read back (encoded, as on the topic) a replica "
        "keeps in memory; the oldest go first, so under heavy traffic the window kept can "
        "be shorter than the lookback, and a redelivery older than it runs again.",
    )
    anthropic_default_max_tokens: int = Field(
        default=4096,
        ge=1,
        le=1_000_000,
        description="max_tokens sent to Anthropic deployments when the request has none.",
    )

    @model_validator(mode="after")
    def _default_groups(self) -> Settings:
        topics = Topics(self.topic_prefix)
        self.group = self.group or topics.group("inference")
        self.batch_group = self.batch_group or topics.group("inference-batch")
        return self
