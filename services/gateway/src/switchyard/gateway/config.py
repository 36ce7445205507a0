"""Gateway settings (`SWITCHYARD_GATEWAY_*`, plus the shared `SWITCHYARD_*` ones)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from switchyard.common.settings import ServiceSettings, env


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="SWITCHYARD_GATEWAY_")

    port: int = 8000
    auth_url: str = Field(
        default="http://127.0.0.1:8001", validation_alias=env("SWITCHYARD_AUTH_URL")
    )
    history_url: str = Field(
        default="http://127.0.0.1:8002", validation_alias=env("SWITCHYARD_HISTORY_URL")
    )
    routing_file: str | None = Field(default=None, validation_alias=env("SWITCHYARD_ROUTING_FILE"))
    simulator_url: str = Field(
        default="http://127.0.0.1:8099/v1", validation_alias=env("SWITCHYARD_SIMULATOR_URL")
    )
    jwt_issuer: str = Field(
        default="switchyard-auth", validation_alias=env("SWITCHYARD_JWT_ISSUER")
    )
    jwt_audience: str = Field(default="switchyard", validation_alias=env("SWITCHYARD_JWT_AUDIENCE"))
    request_timeout_s: float = Field(
        default=120.0, gt=0, description="Deadline of a request; the client gets 504 after it."
    )
    max_body_bytes: int = Field(
        default=1024 * 1024, gt=0, description="Larger request bodies get 413."
    )
    max_in_flight: int = Field(
        default=2048, gt=0, description="Requests in progress beyond this get 429, never a queue."
    )
    api_key_cache_ttl_s: float = Field(default=30.0, ge=0)
    api_key_negative_cache_ttl_s: float = Field(default=5.0, ge=0)
    jwks_refresh_min_interval_s: float = Field(default=30.0, ge=0)
