"""History's event recorder on a thread of its own, for a process it shares with the
answering path (embedded mode, `switchyard dev`).

In one process, history's batches get turns of the one event loop between everything else
it runs: under load, 64 requests in flight share it, every statement of a batch is a
hand-over to the database driver's thread and back through that loop, and history
records a fraction of what the gateway answers. The events it has not taken wait in the
in-memory bus, and the memory they and their catch-up take stays with the process.

`RecorderThread` runs an `EventRecorder` on an event loop in a thread of its own, with its
own database engine: a batch handed to `record` costs the answering loop one hand-over,
and history keeps pace with the load under the interpreter's own scheduling of threads
(`sys.getswitchinterval`) instead of waiting for the busy loop's turns. What `record`
promises is unchanged: it returns once the batch is committed, and raises what the
recorder raised (the bus then retries the batch, and commits nothing).

The recorder's engine is opened from the same database URL, so the database must be one
a second engine reaches: a file or a server, not an in-memory SQLite database.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from concurrent.futures import Future

import structlog
from sqlalchemy import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.common.db import dispose_engine
from switchyard.common.events import Event
from switchyard.history.bootstrap import history_engine
from switchyard.history.handlers import EventRecorder

log = structlog.get_logger("switchyard.history")

# How long `close` waits for the thread's last batch and its engine to close (seconds).
CLOSE_TIMEOUT_S = 20.0


def in_memory(database_url: str) -> bool:
    """Whether `database_url` names an SQLite database that lives in its connection's
    memory (`:memory:`, an empty path, or `mode=memory`), which a second engine cannot
    reach."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return False
    database = url.database or ""
    return database in ("", ":memory:") or "mode=memory" in str(url)


class RecorderThread:
    """An `EventRecorder` on its own event loop, thread and engine (module docstring).

    `start()` opens them; `record(events)` writes a batch there and returns once it is
    committed; `close()` lets a batch being written finish, disposes of the engine and
    ends the thread. Raises ValueError at construction for an in-memory SQLite URL."""

    def __init__(self, database_url: str, *, name: str = "history-recorder") -> None:
        if in_memory(database_url):
            raise ValueError(
                "history's recorder thread needs a database a second connection reaches "
                "(a file or a server), not an in-memory SQLite database"
            )
        self._database_url = database_url
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._recorder: EventRecorder | None = None
        self._engine: AsyncEngine | None = None

    async def start(self) -> None:
        """Start the thread and its loop, and make the recorder and its engine (nothing is
        connected before the first batch)."""
        loop = asyncio.new_event_loop()
        running: Future[None] = Future()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(running.set_result, None)
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name=self._name, daemon=True)
        self._thread.start()
        await asyncio.wrap_future(running)
        self._loop = loop
        self._engine = history_engine(self._database_url)
        self._recorder = EventRecorder(self._engine)

    async def record(self, events: list[Event]) -> None:
        """Persist a batch exactly once, on the recorder's thread (`EventRecorder.record`);
        raises what it raises. Cancelling the caller cancels the batch, which then rolls
        back."""
        if self._loop is None or self._recorder is None:
            raise RuntimeError("the recorder thread is not running")
        await asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(self._recorder.record(events), self._loop)
        )

    async def close(self) -> None:
        """Let the batch being written end (it is cancelled after `CLOSE_TIMEOUT_S`),
        dispose of the engine on its own loop, then stop the loop and end the thread."""
        loop, thread, engine = self._loop, self._thread, self._engine
        self._loop, self._recorder, self._engine = None, None, None
        if loop is None or thread is None:
            return

        async def shut_down() -> None:
            current = asyncio.current_task()
            pending = [task for task in asyncio.all_tasks() if task is not current]
            if pending:
                _, late = await asyncio.wait(pending, timeout=CLOSE_TIMEOUT_S)
                for task in late:
                    task.cancel()
                await asyncio.gather(*late, return_exceptions=True)
            if engine is not None:
                await dispose_engine(engine)

        try:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(shut_down(), loop))
        except Exception as exc:  # noqa: BLE001 - closing must end the thread whatever happened
            log.warning("history's recorder thread did not close cleanly", error=repr(exc))
        finally:
            with contextlib.suppress(RuntimeError):  # the loop already stopped
                loop.call_soon_threadsafe(loop.stop)
            await asyncio.to_thread(thread.join, CLOSE_TIMEOUT_S)
