"""A user holds at most `SWITCHYARD_AUTH_MAX_API_KEYS_PER_USER` live API keys, and creates
at most that many a day: one more, made by the user or by an admin for them, is a 409
`too_many_api_keys` in OpenAI's error format and makes nothing. Revoked and expired keys
leave room among the live ones; other users are not affected; the operator's own
commands are not capped."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from switchyard.auth.models import ApiKey

from ..conftest import running_auth
from .test_admin_api import PASSWORD, token_for

CAP = 3


@pytest.fixture
async def capped(settings):
    """The auth app with a cap of CAP keys, an admin and a member of tenant acme."""
    async with running_auth(settings.model_copy(update={"max_api_keys_per_user": CAP})) as app:
        await app.service.create_user(
            email="admin@acme.test", tenant="acme", role="admin", password=PASSWORD
        )
        member = await app.service.create_user(
            email="member@acme.test", tenant="acme", password=PASSWORD
        )
        app.member = member  # type: ignore[attr-defined]
        app.member_headers = await token_for(app, "member@acme.test")  # type: ignore[attr-defined]
        app.admin_headers = await token_for(app, "admin@acme.test")  # type: ignore[attr-defined]
        yield app


async def create_own(app, name: str = "k"):
    return await app.client.post("/v1/api-keys", json={"name": name}, headers=app.member_headers)


async def live_keys(app) -> list[dict]:
    listed = await app.client.get("/v1/api-keys", headers=app.member_headers)
    assert listed.status_code == 200, listed.text
    return [key for key in listed.json()["data"] if key["revoked_at"] is None]


def assert_too_many(response) -> None:
    assert response.status_code == 409, response.text
    error = response.json()["error"]
    assert error["code"] == "too_many_api_keys"
    assert error["type"] == "conflict_error"
    assert f"{CAP} live API keys" in error["message"]


async def test_the_key_beyond_the_cap_is_refused_and_nothing_is_made(capped) -> None:
    for number in range(CAP):
        created = await create_own(capped, f"k{number}")
        assert created.status_code == 201, created.text
    refused = await create_own(capped, "one-too-many")
    assert_too_many(refused)
    assert len(await live_keys(capped)) == CAP


async def test_an_admin_cannot_create_beyond_a_users_cap_either(capped) -> None:
    for _ in range(CAP):
        assert (await create_own(capped)).status_code == 201
    refused = await capped.client.post(
        "/v1/admin/api-keys",
        json={"user_id": capped.member.id, "name": "by-admin"},
        headers=capped.admin_headers,
    )
    assert_too_many(refused)
    # The admin's own keys are their own count.
    mine = await capped.client.post(
        "/v1/api-keys", json={"name": "admin-key"}, headers=capped.admin_headers
    )
    assert mine.status_code == 201, mine.text


async def test_revoked_and_expired_keys_leave_room(capped) -> None:
    ids = []
    for _ in range(CAP):
        created = await create_own(capped)
        assert created.status_code == 201
        ids.append(created.json()["key_id"])
    assert_too_many(await create_own(capped))

    revoked = await capped.client.delete(f"/v1/api-keys/{ids[0]}", headers=capped.member_headers)
    assert revoked.status_code == 204
    await made_yesterday(capped)  # out of the day's creations: only the live count binds
    assert (await create_own(capped)).status_code == 201
    assert_too_many(await create_own(capped))

    # A key past its expiry no longer counts (expired in place: no API sets a past expiry).
    async with capped.service.sessions() as session:
        await session.execute(
            update(ApiKey)
            .where(ApiKey.id == ids[1])
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        await session.commit()
    await made_yesterday(capped)
    assert (await create_own(capped)).status_code == 201
    assert_too_many(await create_own(capped))


async def made_yesterday(app) -> None:
    """Every key as if created more than a day ago."""
    async with app.service.sessions() as session:
        await session.execute(
            update(ApiKey).values(created_at=datetime.now(UTC) - timedelta(days=1, seconds=1))
        )
        await session.commit()


async def test_creating_and_revoking_in_a_loop_is_bounded_by_the_day(capped) -> None:
    """Revoked keys stay on record and in every gateway's revocation list: at most the cap
    of keys a day, however many are revoked."""
    for _ in range(CAP):
        created = await create_own(capped)
        assert created.status_code == 201, created.text
        key_id = created.json()["key_id"]
        revoked = await capped.client.delete(
            f"/v1/api-keys/{key_id}", headers=capped.member_headers
        )
        assert revoked.status_code == 204
    assert await live_keys(capped) == []

    refused = await create_own(capped)
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "too_many_api_keys"
    assert "in the last 24 hours" in refused.json()["error"]["message"]

    # A day later there is room again.
    async with capped.service.sessions() as session:
        await session.execute(
            update(ApiKey).values(created_at=datetime.now(UTC) - timedelta(days=1, seconds=1))
        )
        await session.commit()
    assert (await create_own(capped)).status_code == 201


async def test_concurrent_creations_stop_at_the_cap(capped) -> None:
    answers = await asyncio.gather(*(create_own(capped, f"c{n}") for n in range(3 * CAP)))
    made = [answer for answer in answers if answer.status_code == 201]
    assert len(made) == CAP, [answer.status_code for answer in answers]
    for answer in answers:
        if answer.status_code != 201:
            assert_too_many(answer)
    assert len(await live_keys(capped)) == CAP


async def test_the_service_without_a_cap_makes_as_many_as_asked(service) -> None:
    """The operator's commands build the service without a cap (`build_database_service`)."""
    user = await service.create_user(email="ops@acme.test", tenant="acme", password=PASSWORD)
    for number in range(CAP + 2):
        await service.create_api_key(user_id=user.id, name=f"k{number}")
    keys = await service.list_api_keys(user_id=user.id)
    assert len(keys) == CAP + 2


def test_the_cap_is_read_from_its_variable_and_must_be_positive(settings, monkeypatch) -> None:
    assert settings.max_api_keys_per_user == 1000
    monkeypatch.setenv("SWITCHYARD_AUTH_MAX_API_KEYS_PER_USER", "25")
    assert type(settings)(**_without_cap(settings)).max_api_keys_per_user == 25
    monkeypatch.setenv("SWITCHYARD_AUTH_MAX_API_KEYS_PER_USER", "0")
    with pytest.raises(ValueError, match="SWITCHYARD_AUTH_MAX_API_KEYS_PER_USER"):
        type(settings)(**_without_cap(settings))


def _without_cap(settings) -> dict:
    return settings.model_dump(exclude={"max_api_keys_per_user"})
