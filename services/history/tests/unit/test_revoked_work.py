"""A revoked key's (or a disabled user's) queued jobs are cancelled by the sweep: 16 of 24
jobs of a revoked key started after its revocation and delivered their results, since the
gateway checks credentials only when it accepts a job. Interactive requests, finished
jobs, other keys and a user enabled again are left alone; a job recorded after its key's
revocation (they come on different topics) is cancelled too."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from switchyard.common.events import (
    ApiKeyRevoked,
    ApiKeyRevokedData,
    Priority,
    UserDisabled,
    UserEnabled,
    UserStatusData,
    new_id,
)
from switchyard.history.models import requests_table
from switchyard.history.revoked_work import WINDOW, cancel_revoked_work

BATCH = Priority.BATCH


def _auth(cls, data, tenant: str = "acme", at: datetime | None = None):
    event = cls(source="auth", tenant=tenant, request_id=new_id(), data=data)
    return event.model_copy(update={"time": at}) if at is not None else event


def _revoked(key_id: str, user_id: str = "alice", **kw):
    return _auth(ApiKeyRevoked, ApiKeyRevokedData(key_id=key_id, user_id=user_id), **kw)


async def _statuses(engine) -> dict[str, tuple[str, dict | None]]:
    r = requests_table.c
    async with engine.connect() as connection:
        rows = await connection.execute(select(r.request_id, r.status, r.error))
        return {row.request_id: (row.status, row.error) for row in rows}


async def test_the_queued_jobs_of_a_revoked_key_are_cancelled_and_inference_told(
    recorder, engine, events
):
    leaked = [events.requested(priority=BATCH, api_key_id="leaked") for _ in range(3)]
    other_key = events.requested(priority=BATCH, api_key_id="kept")
    interactive = events.requested(api_key_id="leaked")  # answered or expired as it is
    finished = events.requested(priority=BATCH, api_key_id="leaked")
    other_tenant = events.requested(priority=BATCH, api_key_id="leaked", tenant="beta")
    await recorder.record(
        [*leaked, other_key, interactive, finished, events.completed(finished), other_tenant]
    )
    await recorder.record([_revoked("leaked")])
    told: list[tuple[str, str]] = []

    async def cancel(tenant: str, request_id: str) -> None:
        told.append((tenant, request_id))

    assert await cancel_revoked_work(engine, recorder, cancel) == 3

    statuses = await _statuses(engine)
    for job in leaked:
        status, error = statuses[job.request_id]
        assert status == "cancelled"
        assert error["code"] == "credentials_revoked"
        assert "revoked" in error["message"]
    assert sorted(told) == sorted(("acme", job.request_id) for job in leaked)
    for kept in (other_key, interactive, other_tenant):
        assert statuses[kept.request_id][0] == "pending"
    assert statuses[finished.request_id][0] == "completed"
    # Done once: the next sweep finds nothing left to cancel.
    assert await cancel_revoked_work(engine, recorder, cancel) == 0


async def test_a_job_recorded_after_its_keys_revocation_is_cancelled(recorder, engine, events):
    await recorder.record([_revoked("leaked")])
    late = events.requested(priority=BATCH, api_key_id="leaked")
    await recorder.record([late])

    assert await cancel_revoked_work(engine, recorder, None) == 1
    assert (await _statuses(engine))[late.request_id][0] == "cancelled"


async def test_a_disabled_users_jobs_are_cancelled_unless_enabled_again(recorder, engine, events):
    now = datetime.now(UTC)
    bob = events.requested(priority=BATCH, user_id="bob", api_key_id=None)
    carol = events.requested(priority=BATCH, user_id="carol", api_key_id=None)
    await recorder.record([bob, carol])
    await recorder.record(
        [
            _auth(UserDisabled, UserStatusData(user_id="bob"), at=now - timedelta(seconds=3)),
            _auth(UserDisabled, UserStatusData(user_id="carol"), at=now - timedelta(seconds=3)),
            _auth(UserEnabled, UserStatusData(user_id="carol"), at=now - timedelta(seconds=1)),
        ]
    )

    assert await cancel_revoked_work(engine, recorder, None, now=now) == 1

    statuses = await _statuses(engine)
    assert statuses[bob.request_id][0] == "cancelled"
    assert statuses[bob.request_id][1]["code"] == "user_disabled"
    assert statuses[carol.request_id][0] == "pending"


async def test_a_revocation_older_than_any_job_may_wait_is_not_read(recorder, engine, events):
    job = events.requested(priority=BATCH, api_key_id="old")
    long_ago = datetime.now(UTC) - WINDOW - timedelta(hours=1)
    await recorder.record([job, _revoked("old", at=long_ago)])

    assert await cancel_revoked_work(engine, recorder, None) == 0
    assert (await _statuses(engine))[job.request_id][0] == "pending"
