"""Embedded-mode set-up (`switchyard dev`): a dev user and an API key that stays the same
across restarts, so local clients can keep one key in their configuration, and a password
for signing in to the web console.

The key is `SWITCHYARD_DEV_API_KEY` if set; otherwise one generated on first run and kept
in `dev_api_key_file` (mode 600), and replaced by a new one if it was revoked. The
password likewise: `SWITCHYARD_DEV_PASSWORD`, or one generated and kept in
`dev_password_file` (mode 600). Only in the development environment: otherwise no dev
user, key or password is ever created or printed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import secrets
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from switchyard.auth.bootstrap import build_database_service
from switchyard.auth.config import Settings
from switchyard.auth.keys import generate_api_key, hash_api_key
from switchyard.auth.service import AuthService
from switchyard.common.db import dispose_engine
from switchyard.common.plugins import DevContribution
from switchyard.common.scopes import API_KEY_SCOPES
from switchyard.common.settings import CheckedSettings, Environment

DEV_EMAIL = "dev@switchyard.local"
DEV_TENANT = "default"
DEV_ROLE = "admin"
# The dev key does all an API key may for the dev user, an admin: chat, history (the whole
# tenant's), the tenant's settings and secrets.
DEV_KEY_SCOPES = list(API_KEY_SCOPES)

T = TypeVar("T")


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion whether or not the caller is inside an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _write_key_file(path: Path, key: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(key + "\n")


def _read_or_create_key_file(path: Path) -> str:
    if path.exists():
        key = path.read_text().strip()
        if key:
            return key
    key = generate_api_key()
    _write_key_file(path, key)
    return key


def _read_or_create_password_file(path: Path) -> str:
    if path.exists():
        password = path.read_text().strip()
        if password:
            return password
    password = secrets.token_urlsafe(12)
    _write_key_file(path, password)
    return password


async def ensure_dev_password(service: AuthService, settings: Settings) -> str:
    """Give the dev user its console password (chosen or generated); return it."""
    password = settings.dev_password or _read_or_create_password_file(settings.dev_password_file)
    await service.ensure_password(DEV_EMAIL, password)
    return password


@dataclass(frozen=True)
class DevKey:
    """The dev API key to print, or why there is none that works."""

    key: str | None
    problem: str | None = None


async def ensure_dev_identity(service: AuthService, settings: Settings) -> DevKey:
    """Make sure the dev user and a working key of theirs exist; return the key. A kept
    key that no longer works (revoked, expired) is replaced by a new one, unless it was
    chosen with SWITCHYARD_DEV_API_KEY: then there is none, and `problem` says why."""
    user = await service.ensure_user(email=DEV_EMAIL, tenant=DEV_TENANT, role=DEV_ROLE)
    if user.disabled:
        return DevKey(None, f"the dev user {DEV_EMAIL} is disabled (switchyard users enable)")
    key = settings.dev_api_key or _read_or_create_key_file(settings.dev_api_key_file)
    identity = await service.lookup_api_key(hash_api_key(key))
    if identity is not None and identity.user_id == user.id:
        return DevKey(key)
    if not await service.api_key_exists(key):
        # The database may have been wiped while the key file survived: store it again.
        await service.create_api_key(user_id=user.id, name="dev", key=key, scopes=DEV_KEY_SCOPES)
        return DevKey(key)
    if settings.dev_api_key:
        return DevKey(
            None,
            "SWITCHYARD_DEV_API_KEY names a key that was revoked or has expired; unset it "
            "or choose another",
        )
    key = generate_api_key()
    await service.create_api_key(user_id=user.id, name="dev", key=key, scopes=DEV_KEY_SCOPES)
    _write_key_file(settings.dev_api_key_file, key)
    return DevKey(key)


class _EnvironmentOnly(CheckedSettings):
    """Just the environment (from the environment or `.env`), readable in any mode."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    environment: Environment = Field(
        default=Environment.DEVELOPMENT, validation_alias="SWITCHYARD_ENVIRONMENT"
    )


def signing_key_variable(settings: Settings) -> str:
    """`SWITCHYARD_AUTH_..._KEY_FILE=<absolute path> `: what makes `switchyard tokens
    create`, run from any directory, sign with the key this instance's auth service signs
    with (its `signing_key_file`, else the development key it generates at `dev_key_file`)."""
    import shlex

    if settings.signing_key_file is not None:
        variable, path = "SWITCHYARD_AUTH_SIGNING_KEY_FILE", settings.signing_key_file
    else:
        variable, path = "SWITCHYARD_AUTH_DEV_KEY_FILE", settings.dev_key_file
    return f"{variable}={shlex.quote(str(path.absolute()))} "


def prepare_dev() -> DevContribution:
    """Auth's part of `switchyard dev`: in the development environment, the built-in admin
    key and password (created once, then reused) and the banner lines naming them; in any
    other environment, only a message saying how to create users and keys."""
    environment = _EnvironmentOnly().environment.value
    if environment != Environment.DEVELOPMENT.value:
        # A built-in admin key is a development convenience only.
        return DevContribution(
            messages=[
                f"No development API key ({environment} mode): create users and keys with "
                "`switchyard users create` and `switchyard keys create`."
            ]
        )
    settings = Settings()

    async def prepare() -> tuple[DevKey, str]:
        engine, service = build_database_service(settings.database_url)
        try:
            dev_key = await ensure_dev_identity(service, settings)
            return dev_key, await ensure_dev_password(service, settings)
        finally:
            await dispose_engine(engine)

    dev_key, password = _run(prepare())
    first = (
        f"API key: {dev_key.key}"
        if dev_key.key is not None
        else f"No working development API key: {dev_key.problem}."
    )
    return DevContribution(
        messages=[
            first,
            f"Dev user: {DEV_EMAIL} (tenant {DEV_TENANT}, role {DEV_ROLE}); "
            f"access token: {signing_key_variable(settings)}"
            f"uv run switchyard tokens create --email {DEV_EMAIL}",
            f"Console sign-in: {DEV_EMAIL} / {password}",
        ]
    )
