"""Settings of the auth service, read from `SWITCHYARD_*` environment variables and `.env`.

Two classes: `DatabaseSettings` holds only what migrations and the user/key commands need
(so a migration job never needs the signing key), and `Settings` is the full service
configuration. Outside development the service refuses to start without a signing key
file; in development a key is generated once and kept on disk so tokens survive restarts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from switchyard.auth.keys import API_KEY_PREFIX
from switchyard.common.db import check_database_url
from switchyard.common.events import MAX_JWT_LEEWAY_S
from switchyard.common.settings import (
    DAY_S,
    HOUR_S,
    MAX_BYTES,
    YEAR_S,
    CheckedSettings,
    Environment,
    ServiceSettings,
    env,
)

# Sign-in attempts and failures counted before a lock-out.
MAX_COUNT = 1_000_000

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///.switchyard/auth.db"


def _database_url_field() -> Any:
    return Field(
        default=DEFAULT_DATABASE_URL,
        validation_alias=AliasChoices(
            "SWITCHYARD_AUTH_DATABASE_URL", "DATABASE_URL", "database_url"
        ),
        description="Database holding users and API keys (PostgreSQL with psycopg, or SQLite).",
    )


class DatabaseSettings(CheckedSettings):
    """Just the database location: what `switchyard db upgrade` and the CLI need."""

    model_config = SettingsConfigDict(
        env_prefix="SWITCHYARD_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    database_url: str = _database_url_field()

    @model_validator(mode="after")
    def _usable_database_url(self) -> DatabaseSettings:
        # One line for every command (users, keys, teams...), not a driver's traceback.
        check_database_url("auth", self.database_url)
        return self


class Settings(ServiceSettings):
    """Everything the auth service reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="SWITCHYARD_AUTH_")

    port: int = Field(default=8001, ge=1, le=65535)
    max_body_bytes: int = Field(
        default=64 * 1024,
        gt=0,
        le=MAX_BYTES,
        description="Request bodies larger than this get 413 before they are read (sign-in, "
        "keys and admin bodies are small).",
    )
    database_url: str = _database_url_field()
    jwt_issuer: str = Field(
        default="switchyard-auth",
        validation_alias=env("SWITCHYARD_JWT_ISSUER", "jwt_issuer"),
        description="`iss` claim of every access token.",
    )
    jwt_audience: str = Field(
        default="switchyard",
        validation_alias=env("SWITCHYARD_JWT_AUDIENCE", "jwt_audience"),
        description="`aud` claim of every access token.",
    )
    access_token_ttl_s: int = Field(
        default=900, gt=0, le=YEAR_S, description="Lifetime of an access token."
    )
    jwt_leeway_s: float = Field(
        default=10.0,
        ge=0,
        le=MAX_JWT_LEEWAY_S,
        description="Clock skew tolerated on exp, nbf and iat of the access tokens auth "
        "itself checks (`/v1/admin/*`, `/v1/api-keys`, sign-out). Keep it equal to the "
        "gateway's `SWITCHYARD_GATEWAY_JWT_LEEWAY_S`, so a token the gateway still accepts "
        "is not refused by auth behind it.",
    )
    refresh_token_ttl_s: int = Field(
        default=30 * 24 * 3600,
        gt=0,
        le=YEAR_S,
        description="Lifetime of a refresh token (each rotation).",
    )
    signing_key_file: Path | None = Field(
        default=None,
        description="PEM file of the RSA private key signing tokens; required outside development.",
    )
    verification_key_files: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description=(
            "Comma-separated PEM files (public or private RSA keys) published in the JWKS and "
            "accepted, but never used to sign: the previous key after a rotation until its "
            "tokens have expired, or the next key before it starts signing."
        ),
    )
    login_max_failures_per_account: int = Field(
        default=5,
        gt=0,
        le=MAX_COUNT,
        description="Failed sign-ins of one account from one client address before that "
        "address is locked out of it (the account's owner, from another address, is not).",
    )
    login_max_failures_per_account_all_addresses: int = Field(
        default=100,
        gt=0,
        le=MAX_COUNT,
        description="Failed sign-ins of one account from all addresses together before it "
        "is locked out for everyone (a guessing campaign spread over many addresses).",
    )
    login_account_window_s: float = Field(
        default=300.0,
        gt=0,
        le=DAY_S,
        description="Window (and lock-out) of the per-account limits.",
    )
    login_max_attempts_per_address: int = Field(
        default=30,
        gt=0,
        le=MAX_COUNT,
        description="Sign-in attempts from one client address per window.",
    )
    login_address_window_s: float = Field(default=60.0, gt=0, le=DAY_S)
    trust_forwarded_for: bool = Field(
        default=False,
        description=(
            "Take the client address for login limits from the last X-Forwarded-For entry "
            "(only behind a proxy that sets it)."
        ),
    )
    max_api_keys_per_user: int = Field(
        default=1000,
        gt=0,
        le=MAX_COUNT,
        description="Live API keys (neither revoked nor expired) one user may hold, and "
        "keys they may create in 24 hours; one more through the API answers 409 "
        "`too_many_api_keys`. Bounds what one member can make, and how fast revoked keys "
        "(kept on record) can pile up.",
    )
    outbox_poll_interval_s: float = Field(
        default=0.5,
        gt=0,
        le=HOUR_S,
        description="How often events written by other processes (the CLI) are looked for.",
    )
    dev_key_file: Path = Field(
        default=Path(".switchyard/auth-signing-key.pem"),
        description="Development only: where the generated signing key is kept between restarts.",
    )
    dev_api_key: str | None = Field(
        default=None,
        validation_alias=AliasChoices("SWITCHYARD_DEV_API_KEY", "dev_api_key"),
        description="Development only: the exact API key `switchyard dev` gives its dev user.",
    )
    dev_api_key_file: Path = Field(
        default=Path(".switchyard/dev-api-key"),
        description="Development only: where the generated dev API key is kept between restarts.",
    )
    dev_password: str | None = Field(
        default=None,
        validation_alias=AliasChoices("SWITCHYARD_DEV_PASSWORD", "dev_password"),
        description="Development only: the password `switchyard dev` gives its dev user "
        "(the console's sign-in); generated and kept in `dev_password_file` when unset.",
    )
    dev_password_file: Path = Field(
        default=Path(".switchyard/dev-password"),
        description="Development only: where the generated dev password is kept between restarts.",
    )

    @field_validator("dev_api_key")
    @classmethod
    def _dev_api_key_is_an_api_key(cls, value: str | None) -> str | None:
        # The gateway reads a credential as an API key by its prefix, any other as an
        # access token: a chosen key without it would be stored, printed and refused.
        if value and not value.startswith(API_KEY_PREFIX):
            raise ValueError(
                f"an API key starts with {API_KEY_PREFIX!r} (the gateway reads any other "
                "credential as an access token)"
            )
        return value

    @field_validator("verification_key_files", mode="before")
    @classmethod
    def _split_paths(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [Path(part.strip()) for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _usable_database_url(self) -> Settings:
        # Refused here, before the server starts, not by the lifespan's first connection.
        check_database_url("auth", self.database_url)
        return self

    @model_validator(mode="after")
    def _require_signing_key_outside_development(self) -> Settings:
        if self.environment == Environment.DEVELOPMENT:
            return self
        if self.signing_key_file is None:
            raise ValueError(
                "no signing key: set SWITCHYARD_AUTH_SIGNING_KEY_FILE to the PEM file of an RSA "
                "private "
                f"key (environment is {self.environment.value}; only development generates one)"
            )
        if not self.signing_key_file.is_file():
            raise ValueError(
                f"signing key file {self.signing_key_file} does not exist or is not a file "
                "(SWITCHYARD_AUTH_SIGNING_KEY_FILE)"
            )
        for path in self.verification_key_files:
            if not path.is_file():
                raise ValueError(
                    f"verification key file {path} does not exist or is not a file "
                    "(SWITCHYARD_AUTH_VERIFICATION_KEY_FILES)"
                )
        return self
