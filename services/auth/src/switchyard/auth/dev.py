"""Embedded-mode set-up (`switchyard dev`): a dev user and an API key that stays the same
across restarts, so local clients can keep one key in their configuration, and a password
for signing in to the web console.

The key is `SWITCHYARD_DEV_API_KEY` if set; otherwise one generated on first run and kept
in `dev_api_key_file` (mode 600). The password likewise: `SWITCHYARD_DEV_PASSWORD`, or one
generated and kept in `dev_password_file` (mode 600).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import secrets
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from switchyard.auth.bootstrap import build_database_service
from switchyard.auth.config import Settings
from switchyard.auth.keys import generate_api_key
from switchyard.auth.service import AuthService
from switchyard.common.plugins import DevContribution

DEV_EMAIL = "dev@switchyard.local"
DEV_TENANT = "default"
DEV_ROLE = "admin"

T = TypeVar("T")


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion whether or not the caller is inside an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def _read_or_create_secret_file(path: Path, generate: Callable[[], str]) -> str:
    if path.exists():
        value = path.read_text().strip()
        if value:
            return value
    value = generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(value + "\n")
    return value


def _read_or_create_key_file(path: Path) -> str:
    return _read_or_create_secret_file(path, generate_api_key)


async def ensure_dev_identity(service: AuthService, settings: Settings) -> str:
    """Make sure the dev user and its key exist; return the key."""
    user = await service.ensure_user(email=DEV_EMAIL, tenant=DEV_TENANT, role=DEV_ROLE)
    key = settings.dev_api_key or _read_or_create_key_file(settings.dev_api_key_file)
    # The database may have been wiped while the key file survived: store the hash again.
    if not await service.api_key_exists(key):
        await service.create_api_key(user_id=user.id, name="dev", key=key)
    return key


async def ensure_dev_password(service: AuthService, settings: Settings) -> str:
    """Give the dev user its console password (set or generated); return it."""
    password = settings.dev_password or _read_or_create_secret_file(
        settings.dev_password_file, lambda: secrets.token_urlsafe(12)
    )
    await service.ensure_password(DEV_EMAIL, password)
    return password


def prepare_dev() -> DevContribution:
    settings = Settings()

    async def prepare() -> tuple[str, str]:
        engine, service = build_database_service(settings.database_url)
        try:
            key = await ensure_dev_identity(service, settings)
            return key, await ensure_dev_password(service, settings)
        finally:
            await engine.dispose()

    key, password = _run(prepare())
    return DevContribution(
        messages=[
            f"API key: {key}",
            f"Dev user: {DEV_EMAIL} (tenant {DEV_TENANT}, role {DEV_ROLE}); "
            f"access token: switchyard tokens create --email {DEV_EMAIL}",
            f"Console sign-in: {DEV_EMAIL} / {password}",
        ]
    )
