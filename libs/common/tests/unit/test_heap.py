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
    monkeypatch.setattr(heap, "_thresholds", None)
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


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


async def test_a_server_collects_its_youngest_generation_less_often_while_it_serves():
    """A request of a million values set off several full collections (each holding the
    event loop) at CPython's 700; while a server serves, the youngest generation is
    collected every `GEN0_THRESHOLD` allocations, and the thresholds come back after."""
    before = gc.get_threshold()
    first = freezing_after_startup(app_recording_startup([]))
    second = freezing_after_startup(app_recording_startup([]))
    async with first.router.lifespan_context(first):
        async with second.router.lifespan_context(second):
            assert gc.get_threshold() == (heap.GEN0_THRESHOLD, before[1], before[2])
        assert gc.get_threshold() == (heap.GEN0_THRESHOLD, before[1], before[2])
    assert gc.get_threshold() == before


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


def app_with_included_and_mounted_routes() -> FastAPI:
    from fastapi import APIRouter, Depends

    def caller(x_user: str | None = None) -> str | None:
        return x_user

    router = APIRouter(prefix="/v1")

    @router.post("/items/{item_id}")
    async def create(item_id: int, body: dict[str, int], user: str | None = Depends(caller)):
        return {"item_id": item_id, "body": body, "user": user}

    mounted = FastAPI()
    mounted_router = APIRouter()

    @mounted_router.get("/page")
    async def page(q: str = "") -> dict[str, str]:
        return {"q": q}

    mounted.include_router(mounted_router)
    app = FastAPI()
    app.include_router(router)
    app.mount("/ui", mounted)
    return app


async def served_analysing(app: FastAPI, monkeypatch) -> list[str]:
    """Serve one request to each route of `app`; returns the endpoints FastAPI analysed
    (`get_dependant`) while serving them."""
    import fastapi.routing
    import httpx

    analysed: list[str] = []
    get_dependant = fastapi.routing.get_dependant

    def spying(*args, **kwargs):
        analysed.append(getattr(kwargs.get("call"), "__name__", "?"))
        return get_dependant(*args, **kwargs)

    monkeypatch.setattr(fastapi.routing, "get_dependant", spying)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        created = await client.post("/v1/items/7", json={"n": 1}, params={"x_user": "ada"})
        assert created.json() == {"item_id": 7, "body": {"n": 1}, "user": "ada"}
        assert (await client.get("/ui/page", params={"q": "hi"})).json() == {"q": "hi"}
    return analysed


async def test_a_started_service_serves_its_first_requests_with_its_routes_prepared(
    monkeypatch,
):
    app = freezing_after_startup(app_with_included_and_mounted_routes())
    async with app.router.lifespan_context(app):
        assert await served_analysing(app, monkeypatch) == []


async def test_warming_prepares_included_and_mounted_routes_and_answers_nothing(monkeypatch):
    app = app_with_included_and_mounted_routes()
    await http.warm_routes(app)
    assert await served_analysing(app, monkeypatch) == []
    # Unwarmed, the first requests are where the analysis happens.
    assert await served_analysing(app_with_included_and_mounted_routes(), monkeypatch) != []


async def test_warming_leaves_alone_what_would_answer_and_never_fails_start_up(
    tmp_path, monkeypatch
):
    from starlette.staticfiles import StaticFiles

    app = app_with_included_and_mounted_routes()
    app.mount("/static", StaticFiles(directory=tmp_path))  # answers 404 by raising
    await http.warm_routes(app)
    assert await served_analysing(app, monkeypatch) == []

    class Broken:
        async def __call__(self, scope, receive, send):
            raise RuntimeError("matching failed")

    await http.warm_routes(Broken())  # logged, not raised
