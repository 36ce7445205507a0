"""Embedded mode's batch lane across a restart (`resume.py`): the jobs an earlier run
accepted and never finished are published again at start-up, and nothing else is."""

from __future__ import annotations

from datetime import timedelta

from switchyard.common.bus import InMemoryBus
from switchyard.common.events import ChatRequested, Event, Priority
from switchyard.common.testing.infra import async_wait_until
from switchyard.common.topics import Topics
from switchyard.history.app import create_app
from switchyard.history.resume import resume_unfinished
from switchyard.history.tenants import TenantSettingsStore


async def test_only_the_unfinished_jobs_made_before_the_start_are_published_again_oldest_first(
    engine, recorder, events
) -> None:
    """Before, a job waiting or running when embedded mode stopped stayed `queued` for a
    day, then expired: the in-memory bus had forgotten it, and nothing read it back."""
    first = events.requested(priority=Priority.BATCH, timeout_s=3600, prompt="first")
    second = events.requested(priority=Priority.BATCH, timeout_s=3600, prompt="second")
    finished = events.requested(priority=Priority.BATCH, timeout_s=3600)
    failed = events.requested(priority=Priority.BATCH, timeout_s=3600)
    overdue = events.requested(priority=Priority.BATCH, timeout_s=5)
    interactive = events.requested(timeout_s=3600)  # its client is gone with the process
    started = events.tick(10)
    this_runs_own = events.requested(priority=Priority.BATCH, timeout_s=3600)
    await recorder.record(
        [
            second,  # recorded out of order: published by age, not by arrival
            first,
            finished,
            events.completed(finished),
            failed,
            events.failed(failed),
            overdue,
            interactive,
            this_runs_own,
        ]
    )
    published: list[ChatRequested] = []

    async def publish(event: ChatRequested) -> None:
        published.append(event)

    count = await resume_unfinished(engine, publish, made_before=started, now=started, page=1)

    assert count == 2
    assert published == [first, second]  # the very events: same ids, body and deadline


async def test_a_job_whose_body_was_not_stored_is_not_run_again(engine, recorder, events) -> None:
    """A metadata-only tenant's stored request has no messages left to send."""
    await TenantSettingsStore(engine).update("acme", store_content=False)
    job = events.requested(priority=Priority.BATCH, timeout_s=3600)
    kept = events.requested(priority=Priority.BATCH, timeout_s=3600, tenant="globex")
    await recorder.record([job, kept])
    published: list[ChatRequested] = []

    async def publish(event: ChatRequested) -> None:
        published.append(event)

    started = events.tick()
    assert await resume_unfinished(engine, publish, made_before=started, now=started) == 1
    assert published == [kept]


async def test_nothing_to_resume_publishes_nothing(engine, events) -> None:
    async def publish(event: ChatRequested) -> None:
        raise AssertionError("nothing should be published")

    now = events.tick()
    assert await resume_unfinished(engine, publish, made_before=now, now=now + timedelta(1)) == 0


async def test_the_service_set_to_resume_publishes_the_unfinished_jobs_on_the_batch_lane(
    service_settings, start_service, events
) -> None:
    """What `switchyard dev` turns on: the jobs a run left are on the batch lane again once
    the next run's history has started, for inference's batch group to take."""
    job = events.requested(priority=Priority.BATCH, timeout_s=10 * 365 * 86_400)
    async with start_service(service_settings) as first_run:
        await first_run.publish(job)
        await async_wait_until(
            lambda: _queued(first_run, job.request_id), timeout=10, message="the job recorded"
        )

    settings = service_settings.model_copy(update={"resume_batch_lane": True})
    bus = InMemoryBus()
    taken: list[Event] = []

    async def inference(event: Event) -> None:
        taken.append(event)

    await bus.subscribe([Topics(settings.topic_prefix).requests_batch], "inference", inference)
    app = create_app(settings, bus=bus)
    async with app.router.lifespan_context(app):
        await async_wait_until(_has(taken), timeout=10, message="the job published")
    await bus.stop()

    assert taken == [job]


async def _queued(service, request_id: str) -> bool:
    response = await service.client.get(f"/v1/jobs/{request_id}", headers=service.headers())
    return response.status_code == 200 and response.json()["status"] == "queued"


def _has(taken: list[Event]):
    async def check() -> bool:
        return bool(taken)

    return check
