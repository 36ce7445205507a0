"""Rate limiting of repeated log lines.

During an outage the same warning or error repeats many times a second (aiokafka logs every
failed connection attempt of every client; consumers log every retry). `RepeatFilter`, a
`logging.Filter` on the output handler, lets the first of a run of identical warnings or
errors through and drops the identical ones that follow within `window_s`. The next copy
written (the first after the window, or, if none comes, the last one dropped, written
once the window is over) carries `suppressed=<identical lines dropped before it>` (a
structured field on structlog lines; a note appended to plain ones), so the count is never
lost. Lines below WARNING are never dropped.

Two lines are identical when they come from the same logger at the same level with the
same message and, for structlog lines, the same `error` field: the varying details of a
retry (attempt number, offset, request id) do not make a line new.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from typing_extensions import override

SUPPRESSED_FIELD = "suppressed"


@dataclass
class _Run:
    window_start: float
    suppressed: int = 0
    last: logging.LogRecord | None = None


def _key(record: logging.LogRecord) -> tuple[Any, ...]:
    message = record.msg
    if isinstance(message, dict):  # a structlog event (ProcessorFormatter.wrap_for_formatter)
        return (record.name, record.levelno, message.get("event"), str(message.get("error")))
    return (record.name, record.levelno, record.getMessage())


# Lines that each record something that happened once to one event (its coordinates are
# in the line): always written, never counted as a repeat of another event's line.
AUDIT_EVENTS = frozenset({"event dead-lettered"})


def _audit(record: logging.LogRecord) -> bool:
    message = record.msg
    return isinstance(message, dict) and message.get("event") in AUDIT_EVENTS


def _count_on(record: logging.LogRecord, count: int) -> None:
    """Write `count` (identical lines dropped before this one) onto `record`."""
    if isinstance(record.msg, dict):
        record.msg = {**record.msg, SUPPRESSED_FIELD: count}
    else:
        record.msg = f"{record.getMessage()} ({count} identical lines suppressed before this one)"
        record.args = ()


class RepeatFilter(logging.Filter):
    """Drops repeats of a warning or error within `window_s` of its last written copy.

    `handler` writes the summary of a run that ended while lines were being dropped (the
    last dropped line, carrying the count); give the handler this filter is attached to.
    At most `max_keys` distinct lines are tracked (the least recently seen forgotten first).
    """

    def __init__(
        self,
        handler: logging.Handler | None = None,
        *,
        window_s: float = 10.0,
        max_keys: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.handler = handler
        self.window_s = window_s
        self.max_keys = max_keys
        self._clock = clock
        self._runs: OrderedDict[tuple[Any, ...], _Run] = OrderedDict()
        self._lock = threading.Lock()
        self._swept_at = clock()

    @override
    def filter(self, record: logging.LogRecord) -> bool:
        now = self._clock()
        write = True
        summaries: list[logging.LogRecord] = []
        with self._lock:
            if record.levelno >= logging.WARNING and not _audit(record):
                write = self._admit(_key(record), record, now, summaries)
            summaries += self._sweep(now)
        self._write(summaries)
        return write

    def _admit(
        self,
        key: tuple[Any, ...],
        record: logging.LogRecord,
        now: float,
        summaries: list[logging.LogRecord],
    ) -> bool:
        run = self._runs.get(key)
        if run is not None and now - run.window_start < self.window_s:
            run.suppressed += 1
            run.last = record
            self._runs.move_to_end(key)
            return False
        if run is not None and run.suppressed:
            _count_on(record, run.suppressed)
        self._runs[key] = _Run(window_start=now)
        self._runs.move_to_end(key)
        while len(self._runs) > self.max_keys:
            _, forgotten = self._runs.popitem(last=False)
            summaries += self._summary(forgotten)
        return True

    @staticmethod
    def _summary(run: _Run) -> list[logging.LogRecord]:
        if run.suppressed <= 0 or run.last is None:
            return []
        _count_on(run.last, run.suppressed - 1)  # the last dropped line is written after all
        return [run.last]

    def _sweep(self, now: float) -> list[logging.LogRecord]:
        """Summaries of the runs whose window ended with lines dropped (checked once a second)."""
        if now - self._swept_at < 1.0:
            return []
        self._swept_at = now
        due: list[logging.LogRecord] = []
        for run in self._runs.values():
            if run.suppressed > 0 and now - run.window_start >= self.window_s:
                due += self._summary(run)
                run.suppressed, run.last, run.window_start = 0, None, now
        return due

    def _write(self, records: list[logging.LogRecord]) -> None:
        if self.handler is None:
            return
        for summary in records:
            self.handler.acquire()
            try:
                self.handler.emit(summary)
            finally:
                self.handler.release()
