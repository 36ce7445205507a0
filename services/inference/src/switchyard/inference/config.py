"""Settings of the inference service (`SWITCHYARD_INFERENCE_*`, the shared `SWITCHYARD_*`,
and `.env`)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from switchyard.common.settings import ServiceSettings, env


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SWITCHYARD_INFERENCE_")

    port: int = 8003
    routing_file: str | None = Field(
        default=None,
        validation_alias=env("SWITCHYARD_ROUTING_FILE", "routing_file"),
        description="YAML routing table; without one, the built-in default (simulator, and "
        "OpenAI's models when OPENAI_API_KEY is set).",
    )
    simulator_url: str = Field(
        default="http://127.0.0.1:8099/v1",
        validation_alias=env("SWITCHYARD_SIMULATOR_URL", "simulator_url"),
        description="Base URL of the provider simulator used by the default routing table.",
    )
    consumer_concurrency: int = Field(
        default=64, ge=1, description="Requests handled at once by one replica (each waits on I/O)."
    )
    group: str = Field(
        default="inference", description="Kafka consumer group of the request topics."
    )
