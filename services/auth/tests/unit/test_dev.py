"""Embedded mode's dev user and API key."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from switchyard.auth.dev import DEV_EMAIL, prepare_dev
from switchyard.auth.keys import hash_api_key
from switchyard.auth.service import AuthService


@pytest.fixture
def dev_env(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SWITCHYARD_ENVIRONMENT", "development")
    monkeypatch.setenv("SWITCHYARD_AUTH_DATABASE_URL", database_url)
    monkeypatch.delenv("SWITCHYARD_DEV_API_KEY", raising=False)
    monkeypatch.delenv("SWITCHYARD_DEV_PASSWORD", raising=False)
    return tmp_path


def printed_key(messages: list[str]) -> str:
    (line,) = [message for message in messages if message.startswith("API key: ")]
    return line.removeprefix("API key: ")


def test_generated_dev_key_is_stable_across_restarts(dev_env: Path, run_with_service) -> None:
    first = printed_key(prepare_dev().messages)
    second = printed_key(prepare_dev().messages)
    assert first == second and first.startswith("sk-sy-")
    key_file = dev_env / ".switchyard" / "dev-api-key"
    assert key_file.read_text().strip() == first
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600

    async def lookup(service: AuthService):
        return await service.lookup_api_key(hash_api_key(first)), await service.user_by_email(
            DEV_EMAIL
        )

    identity, user = run_with_service(lookup)
    assert identity is not None and identity.user_id == user.id
    assert (user.role, user.tenant) == ("admin", "default")


def test_dev_api_key_from_the_environment_is_the_dev_key(
    dev_env: Path, monkeypatch: pytest.MonkeyPatch, run_with_service
) -> None:
    chosen = "sk-sy-my-fixed-local-key-for-the-demo-config-000000"
    monkeypatch.setenv("SWITCHYARD_DEV_API_KEY", chosen)
    assert printed_key(prepare_dev().messages) == chosen
    assert printed_key(prepare_dev().messages) == chosen

    async def lookup(service: AuthService):
        return await service.lookup_api_key(hash_api_key(chosen))

    assert run_with_service(lookup) is not None
    assert not (dev_env / ".switchyard" / "dev-api-key").exists()


async def test_prepare_dev_also_works_when_called_inside_an_event_loop(dev_env: Path) -> None:
    # Embedded mode may call it from async start-up code.
    assert printed_key(prepare_dev().messages).startswith("sk-sy-")


def printed_password(messages: list[str]) -> str:
    (line,) = [message for message in messages if message.startswith("Console sign-in: ")]
    email, _, password = line.removeprefix("Console sign-in: ").partition(" / ")
    assert email == DEV_EMAIL
    return password


def test_the_dev_user_signs_in_with_a_generated_password_kept_across_restarts(
    dev_env: Path, run_with_service
) -> None:
    first = printed_password(prepare_dev().messages)
    assert len(first) >= 12
    assert printed_password(prepare_dev().messages) == first
    password_file = dev_env / ".switchyard" / "dev-password"
    assert password_file.read_text().strip() == first
    assert stat.S_IMODE(os.stat(password_file).st_mode) == 0o600

    async def sign_in(service: AuthService):
        return await service.authenticate(DEV_EMAIL, first)

    assert run_with_service(sign_in).email == DEV_EMAIL


def test_the_dev_password_follows_the_environment(
    dev_env: Path, monkeypatch: pytest.MonkeyPatch, run_with_service
) -> None:
    from switchyard.auth.service import InvalidCredentials

    prepare_dev()
    monkeypatch.setenv("SWITCHYARD_DEV_PASSWORD", "chosen-dev-password")
    assert printed_password(prepare_dev().messages) == "chosen-dev-password"

    async def sign_in(service: AuthService, password: str):
        return await service.authenticate(DEV_EMAIL, password)

    assert run_with_service(lambda s: sign_in(s, "chosen-dev-password")).email == DEV_EMAIL
    generated = (dev_env / ".switchyard" / "dev-password").read_text().strip()
    with pytest.raises(InvalidCredentials):
        run_with_service(lambda s: sign_in(s, generated))
