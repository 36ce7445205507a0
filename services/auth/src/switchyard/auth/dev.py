"""Embedded-mode set-up (`switchyard dev`): a dev user and an API key that stays the same
across restarts, so local clients can keep one key in their configuration.

The key is `SWITCHYARD_DEV_API_KEY` if set; otherwise one generated on first run and kept
in `dev_api_key_file` (mode 600).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from collections.abc import Coroutine
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


def _read_or_create_key_file(path: Path) -> str:
    if path.exists():
        key = path.read_text().strip()
        if key:
            return key
    key = generate_api_key()
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(key + "\n")
    return key


async def ensure_dev_identity(service: AuthService, settings: Settings) -> str:
    """Make sure the dev user and its key exist; return the key."""
    user = await service.ensure_user(email=DEV_EMAIL, tenant=DEV_TENANT, role=DEV_ROLE)
    key = settings.dev_api_key or _read_or_create_key_file(settings.dev_api_key_file)
    # The database may have been wiped while the key file survived: store the hash again.
    if not await service.api_key_exists(key):
        await service.create_api_key(user_id=user.id, name="dev", key=key)
    return key


def prepare_dev() -> DevContribution:
    settings = Settings()

    async def prepare() -> str:
        engine, service = build_database_service(settings.database_url)
        try:
            return await ensure_dev_identity(service, settings)
        finally:
            await engine.dispose()

    key = _run(prepare())
    return DevContribution(
        messages=[
            f"API key: {key}",
            f"Dev user: {DEV_EMAIL} (tenant {DEV_TENANT}, role {DEV_ROLE}); "
            f"access token: switchyard tokens create --email {DEV_EMAIL}",
        ]
    )
