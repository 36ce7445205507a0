"""Embedded mode's shutdown (`switchyard dev`, `run_embedded`): Ctrl+C or SIGTERM with
requests in flight. The gateway stops first and waits for what it holds while the
services answering it still run; a second signal ends those requests at once, and every
service still runs its own shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable

import httpx
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from switchyard.common.dev import run_embedded, stop_order
from switchyard.common.plugins import ServicePlugin
from switchyard.common.settings import ServiceSettings
from switchyard.common.testing.processes import free_port

Work = asyncio.Queue[tuple[asyncio.Future[str], float]]


def plugin(name: str, port: int, start_order: int, app: Callable[[], FastAPI]) -> ServicePlugin:
    made = ServicePlugin(
        name, port, name, ServiceSettings, factory="unused:x", start_order=start_order
    )
    object.__setattr__(made, "create_app", lambda **_: app())
    return made


def worker_app(work: Work, stopped: list[str]) -> FastAPI:
    """A consumer, as inference is: it answers the work handed to it after the work's
    delay, until its shutdown stops it (what it had not answered then stays unanswered)."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async def answer() -> None:
            while True:
                future, delay_s = await work.get()
                await asyncio.sleep(delay_s)
                if not future.done():
                    future.set_result("answered")

        answering = asyncio.create_task(answer())
        yield
        answering.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await answering
        stopped.append("worker")

    return FastAPI(lifespan=lifespan)


def front_app(work: Work, delay_s: float, in_flight: asyncio.Event, stopped: list[str]) -> FastAPI:
    """A gateway: `POST /ask` hands work to the worker and answers with what it got, or
    504 after 30 s without an answer."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        stopped.append("front")

    app = FastAPI(lifespan=lifespan)

    @app.post("/ask")
    async def ask() -> JSONResponse:
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        await work.put((future, delay_s))
        in_flight.set()
        try:
            async with asyncio.timeout(30):
                return JSONResponse({"answer": await future})
        except TimeoutError:
            return JSONResponse({"answer": None}, status_code=504)

    return app


async def start(delay_s: float) -> tuple[asyncio.Task[bool], str, asyncio.Event, list[str]]:
    """Run a worker (started first) and a front (last) embedded; returns the runner, the
    front's URL, the event set once a request is in flight, and the services' shutdowns
    in the order they ran."""
    work: Work = asyncio.Queue()
    in_flight = asyncio.Event()
    stopped: list[str] = []
    front_port = free_port()
    plugins = [
        plugin("worker", free_port(), 10, lambda: worker_app(work, stopped)),
        plugin("front", front_port, 90, lambda: front_app(work, delay_s, in_flight, stopped)),
    ]
    runner = asyncio.create_task(run_embedded("127.0.0.1", plugins, False))
    url = f"http://127.0.0.1:{front_port}"
    async with httpx.AsyncClient() as client:
        for _ in range(500):
            assert not runner.done(), runner.result()
            with contextlib.suppress(httpx.TransportError):
                await client.get(f"{url}/docs")
                return runner, url, in_flight, stopped
            await asyncio.sleep(0.02)
    raise AssertionError("the front never listened")


async def test_a_signal_lets_the_gateway_answer_what_it_holds_before_the_rest_stops() -> None:
    """Every server used to be told to stop at once: the consumers stopped while the
    gateway still waited for their answers, and its clients got 504 at their deadline
    (2 minutes later) instead of answers due within seconds."""
    runner, url, in_flight, stopped = await start(delay_s=1.0)
    async with httpx.AsyncClient(timeout=20) as client:
        asking = asyncio.create_task(client.post(f"{url}/ask"))
        await asyncio.wait_for(in_flight.wait(), timeout=10)
        os.kill(os.getpid(), signal.SIGTERM)
        # `uv run` forwards the Ctrl+C the process got already: one press, two signals.
        os.kill(os.getpid(), signal.SIGTERM)
        response = await asyncio.wait_for(asking, timeout=20)

    assert response.status_code == 200
    assert response.json() == {"answer": "answered"}
    assert await asyncio.wait_for(runner, timeout=20) is True
    assert stopped == ["front", "worker"]


async def test_a_second_signal_ends_the_requests_in_flight_and_every_service_still_stops() -> None:
    runner, url, in_flight, stopped = await start(delay_s=120.0)
    async with httpx.AsyncClient(timeout=60) as client:
        asking = asyncio.create_task(client.post(f"{url}/ask"))
        await asyncio.wait_for(in_flight.wait(), timeout=10)
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(0.7)
        assert not asking.done()  # still waited for
        os.kill(os.getpid(), signal.SIGTERM)
        outcome = (await asyncio.wait_for(asyncio.gather(asking, return_exceptions=True), 10))[0]

    assert isinstance(outcome, httpx.TransportError), outcome  # the connection was closed
    assert await asyncio.wait_for(runner, timeout=10) is True
    assert stopped == ["front", "worker"]  # the front's own shutdown still ran


def test_the_gateway_stops_first_then_the_services_in_start_order_then_the_extra_servers() -> None:
    # One extra server (the provider simulator), then inference, history, auth, gateway.
    assert stop_order(5, extras=1) == [4, 1, 2, 3, 0]
    assert stop_order(0, extras=1) == []
    # Start-up interrupted: only what started is stopped.
    assert stop_order(2, extras=1) == [1, 0]
    assert stop_order(1, extras=1) == [0]
    assert stop_order(2, extras=3) == [1, 0]
