"""History's recorder on a thread of its own (`recorder_thread`, set by `switchyard dev`):
batches are written off the calling loop, exactly once, and what the service does with
them (the read API, shutdown's last batch) is what it does without the thread."""

from __future__ import annotations

import asyncio
import threading

import pytest

from switchyard.history import handlers
from switchyard.history.recorder_thread import RecorderThread, in_memory


async def test_batches_are_written_on_another_thread_and_loop(
    database_url, events, tables, monkeypatch
) -> None:
    seen: list[tuple[int, asyncio.AbstractEventLoop]] = []
    record = handlers.EventRecorder.record

    async def watched(self, batch):
        seen.append((threading.get_ident(), asyncio.get_running_loop()))
        await record(self, batch)

    monkeypatch.setattr(handlers.EventRecorder, "record", watched)
    recorder = RecorderThread(database_url)
    await recorder.start()
    try:
        request = events.requested()
        await recorder.record([request, events.completed(request)])
        await recorder.record([request, events.usage(request)])  # a redelivery among them
    finally:
        await recorder.close()

    assert len(seen) == 2
    assert {ident for ident, _ in seen} != {threading.get_ident()}
    assert all(loop is not asyncio.get_running_loop() for _, loop in seen)
    assert (await tables.request(request.request_id))["status"] == "completed"
    assert await tables.event_count() == 3  # the request event once


async def test_a_failing_batch_raises_in_the_caller(database_url, events, monkeypatch) -> None:
    async def broken(self, batch):
        raise RuntimeError("disk full")

    monkeypatch.setattr(handlers.EventRecorder, "record", broken)
    recorder = RecorderThread(database_url)
    await recorder.start()
    try:
        with pytest.raises(RuntimeError, match="disk full"):
            await recorder.record([events.requested()])
    finally:
        await recorder.close()


async def test_close_waits_for_the_batch_being_written(database_url, events, tables) -> None:
    recorder = RecorderThread(database_url)
    await recorder.start()
    request = events.requested()
    writing = asyncio.ensure_future(recorder.record([request]))
    await asyncio.sleep(0)
    await recorder.close()
    await writing
    assert (await tables.request(request.request_id))["status"] == "pending"
    with pytest.raises(RuntimeError, match="not running"):
        await recorder.record([events.requested()])


@pytest.mark.parametrize(
    "url",
    [
        "sqlite+aiosqlite://",
        "sqlite+aiosqlite:///:memory:",
        "sqlite+aiosqlite:///file:history?mode=memory&cache=shared&uri=true",
    ],
)
def test_an_in_memory_database_is_refused(url: str) -> None:
    assert in_memory(url)
    with pytest.raises(ValueError, match="in-memory"):
        RecorderThread(url)


def test_a_file_or_a_server_is_not_in_memory() -> None:
    assert not in_memory("sqlite+aiosqlite:////tmp/history.db")
    assert not in_memory("postgresql+psycopg://u:p@127.0.0.1/history")


async def test_the_service_records_through_the_thread(
    start_service, service_settings, events, monkeypatch
):
    threads: set[int] = set()
    record = handlers.EventRecorder.record

    async def watched(self, batch):
        threads.add(threading.get_ident())
        await record(self, batch)

    monkeypatch.setattr(handlers.EventRecorder, "record", watched)
    settings = service_settings.model_copy(update={"recorder_thread": True})
    async with start_service(settings) as service:
        request = events.requested(tenant="acme", user_id="alice")
        await service.publish(request, events.completed(request), events.usage(request))
        await service.wait_for(request.request_id, "completed")
        late = events.requested(tenant="acme", user_id="alice")
        await service.publish(late)
    assert threads and threading.get_ident() not in threads
    # Stopping the service wrote the batch it held, through the thread, before closing it.
    async with start_service(service_settings) as service:
        await service.wait_for(late.request_id, "pending")
