"""Property-based HTTP tests (schemathesis on Hypothesis): every operation of a service's
OpenAPI document is called with generated requests, valid and invalid, and any 5xx is a
failure. Used by the unit suites of the gateway, auth and history.

`serve_in_thread` runs an app under uvicorn on a free 127.0.0.1 port in a thread with its
own event loop (so the app's lifespan, bus and fakes live where its requests run), and
`server_errors` drives the generated requests at it, bounded in examples per operation.
The run is deterministic (`derandomize`), so CI is repeatable; set
`SWITCHYARD_FUZZ_EXAMPLES` to explore more.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

from switchyard.common.testing.processes import free_port

DEFAULT_EXAMPLES = 5


@dataclass
class RunningServer:
    """A service app served on a free 127.0.0.1 port in a background thread: its base URL,
    its event loop and a dict the test may keep state in."""

    base_url: str
    loop: asyncio.AbstractEventLoop
    state: dict[str, Any]

    def run(self, coroutine: Coroutine[Any, Any, Any], timeout: float = 30) -> Any:
        """Run a coroutine on the server's loop (e.g. to set something up in the app)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)


@contextlib.contextmanager
def serve_in_thread(
    build: Callable[[dict[str, Any]], Awaitable[Any]], timeout: float = 60
) -> Iterator[RunningServer]:
    """Serve the ASGI app `await build(state)` returns; `state` is a dict the builder may
    fill for the test (fakes, tokens). Stops the server at exit."""
    import uvicorn

    port = free_port()
    state: dict[str, Any] = {}
    ready = threading.Event()
    box: dict[str, Any] = {}

    def main() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        box["loop"] = loop

        async def serve() -> None:
            try:
                app = await build(state)
                config = uvicorn.Config(
                    app, host="127.0.0.1", port=port, log_config=None, access_log=False
                )
                server = uvicorn.Server(config)
                box["server"] = server
                task = asyncio.create_task(server.serve())
                for _ in range(int(timeout / 0.02)):  # uvicorn flags start-up, no event
                    if server.started or task.done():
                        break
                    await asyncio.sleep(0.02)
                ready.set()
                await task
            except BaseException as exc:  # noqa: BLE001 - reported to the waiting test
                box["error"] = exc
                ready.set()
            finally:
                cleanup = state.get("cleanup")
                if cleanup is not None:
                    await cleanup()

        loop.run_until_complete(serve())
        loop.close()

    thread = threading.Thread(target=main, name=f"fuzz-server-{port}", daemon=True)
    thread.start()
    if not ready.wait(timeout):
        raise TimeoutError("the server under test did not start")
    if "error" in box:
        raise RuntimeError("the server under test failed to start") from box["error"]
    try:
        yield RunningServer(f"http://127.0.0.1:{port}", box["loop"], state)
    finally:
        server = box.get("server")
        if server is not None:
            server.should_exit = True
        thread.join(timeout)


def server_errors(
    base_url: str,
    *,
    headers: dict[str, str] | Callable[[Any], dict[str, str]],
    max_examples: int | None = None,
    skip: Callable[[Any], bool] | None = None,
) -> list[str]:
    """Call every operation of `base_url`'s `/openapi.json` with generated requests
    (positive and negative) carrying `headers` (or `headers(operation)`); return one line
    per request answered 5xx or not answered at all. `skip(case)` leaves a case out."""
    import requests
    import schemathesis
    from hypothesis import HealthCheck, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.core.result import Err
    from schemathesis.generation.modes import GenerationMode

    examples = int(os.environ.get("SWITCHYARD_FUZZ_EXAMPLES", max_examples or DEFAULT_EXAMPLES))
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    failures: list[str] = []
    session = requests.Session()
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise result.err()
        operation = result.ok()
        extra = headers(operation) if callable(headers) else headers
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            call = _caller(
                operation.as_strategy(generation_mode=mode),
                label=f"{operation.label} [{mode.value}]",
                base_url=base_url,
                session=session,
                headers=extra,
                skip=skip,
                failures=failures,
            )
            started = time.monotonic()
            try:
                settings(
                    max_examples=examples,
                    deadline=None,
                    derandomize=True,
                    database=None,
                    suppress_health_check=list(HealthCheck),
                )(call)()
            except Unsatisfiable:
                pass  # nothing to generate in this mode (e.g. no invalid form exists)
            if os.environ.get("SWITCHYARD_FUZZ_TIMING"):
                print(f"{operation.label} [{mode.value}]: {time.monotonic() - started:.2f}s")
    session.close()
    return failures


def _caller(
    strategy: Any,
    *,
    label: str,
    base_url: str,
    session: Any,
    headers: dict[str, str],
    skip: Callable[[Any], bool] | None,
    failures: list[str],
) -> Callable[[], None]:
    """A Hypothesis test calling one operation with cases drawn from `strategy`."""
    import requests
    from hypothesis import given

    @given(case=strategy)
    def call(case: Any) -> None:
        if skip is not None and skip(case):
            return
        try:
            response = case.call(base_url=base_url, session=session, headers=headers, timeout=15)
        except requests.RequestException as exc:
            failures.append(f"{label}: no answer ({type(exc).__name__})")
            return
        if response.status_code >= 500:
            failures.append(
                f"{label} -> {response.status_code}: {case.as_curl_command()[:600]} :: "
                f"{response.text[:300]}"
            )

    return call
