"""Start-up objects are frozen out of the cyclic collector once a service has started
(`heap`), for every service run by `switchyard <service>` (`http.service_app`), and
unfrozen at shutdown."""

from __future__ import annotations

import gc
from contextlib import asynccontextmanager
from types import SimpleNamespace

import pytest
from fastapi import FastAPI

from switchyard.common import heap, http
from switchyard.common.heap import freezing_after_startup


@pytest.fixture(autouse=True)
def nothing_frozen(monkeypatch):
    gc.unfreeze()
    monkeypatch.setattr(heap, "_holders", 0)
    yield
    gc.unfreeze()


def app_recording_startup(seen: list[str]) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI):
        seen.append(f"started with {gc.get_freeze_count()} frozen")
        yield
        seen.append("stopped")

    return FastAPI(lifespan=lifespan)


async def test_the_heap_is_frozen_after_the_apps_own_startup_and_unfrozen_at_shutdown():
    seen: list[str] = []
    app = freezing_after_startup(app_recording_startup(seen))
    async with app.router.lifespan_context(app):
        # The app's start-up ran first, with nothing frozen; then everything alive was.
        assert seen == ["started with 0 frozen"]
        frozen = gc.get_freeze_count()
        assert frozen > 1000
        made_while_serving = [{"n": n} for n in range(1000)]
        # What is made while serving stays collectable (frozen objects can still die of
        # their last reference, so the count may fall, never rise).
        assert gc.get_freeze_count() <= frozen
        assert gc.is_tracked(made_while_serving)
    assert seen[-1] == "stopped"
    assert gc.get_freeze_count() == 0


async def test_the_heap_stays_frozen_until_the_last_app_in_the_process_stops():
    first = freezing_after_startup(app_recording_startup([]))
    second = freezing_after_startup(app_recording_startup([]))
    async with first.router.lifespan_context(first):
        async with second.router.lifespan_context(second):
            assert gc.get_freeze_count() > 1000
        # The second stopped; the first still serves with its start-up objects frozen.
        assert gc.get_freeze_count() > 1000
    assert gc.get_freeze_count() == 0


async def test_every_service_run_on_its_own_freezes_after_startup(monkeypatch):
    seen: list[str] = []
    plugin = SimpleNamespace(
        name="fake",
        settings=lambda: SimpleNamespace(
            log_level="WARNING", log_format="console", internal_token="t" * 32
        ),
        create_app=lambda: app_recording_startup(seen),
    )
    monkeypatch.setenv(http.SERVICE_ENV, "fake")
    monkeypatch.setattr("switchyard.common.plugins.by_name", lambda name: plugin)
    # This process's logging and tracing stay as the test run set them.
    monkeypatch.setattr("switchyard.common.logging.configure_logging", lambda *a, **k: None)
    monkeypatch.setattr("switchyard.common.tracing.configure_tracing", lambda *a, **k: None)
    app = http.service_app()
    async with app.router.lifespan_context(app):
        assert seen == ["started with 0 frozen"]
        assert gc.get_freeze_count() > 1000
    assert gc.get_freeze_count() == 0
