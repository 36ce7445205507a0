"""Repeated warnings and errors are written once per window, with a count of the others."""

from __future__ import annotations

import io
import json
import logging

import structlog

from switchyard.common.log_throttle import RepeatFilter
from switchyard.common.logging import configure_logging, flush_logs


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _handler(clock: Clock) -> tuple[logging.Handler, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.addFilter(RepeatFilter(handler, window_s=10, clock=clock))
    return handler, out


def test_a_flood_of_identical_errors_is_written_once_per_window_with_a_count():
    clock = Clock()
    handler, out = _handler(clock)
    logger = logging.getLogger("test.throttle.flood")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)

    for _ in range(3500):  # a second of a broker outage
        logger.error("Unable connect to node with id %s: Connect call failed", 1)
        clock.now += 1 / 3500
    clock.now += 10
    logger.error("Unable connect to node with id %s: Connect call failed", 1)

    lines = out.getvalue().splitlines()
    assert lines == [
        "ERROR Unable connect to node with id 1: Connect call failed",
        "ERROR Unable connect to node with id 1: Connect call failed"
        " (3499 identical lines suppressed before this one)",
    ]


def test_the_count_is_written_when_the_flood_stops_and_other_lines_pass():
    clock = Clock()
    handler, out = _handler(clock)
    logger = logging.getLogger("test.throttle.stop")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)

    for _ in range(5):
        logger.warning("kafka producer not connected, retrying")
    logger.warning("a different warning")
    logger.info("not throttled")
    logger.info("not throttled")
    clock.now += 11
    logger.info("the outage is over")  # any line lets the pending count out

    assert out.getvalue().splitlines() == [
        "WARNING kafka producer not connected, retrying",
        "WARNING a different warning",
        "INFO not throttled",
        "INFO not throttled",
        "WARNING kafka producer not connected, retrying"
        " (3 identical lines suppressed before this one)",
        "INFO the outage is over",
    ]


def test_structured_retry_warnings_differing_only_in_details_are_counted():
    out = io.StringIO()
    configure_logging("inference", "INFO", "json", stream=out)
    log = structlog.get_logger("switchyard.bus.kafka")
    for offset in range(50):
        log.warning(
            "handler failed, retrying",
            offset=offset,
            attempt=offset,
            error="BusUnavailableError('Kafka is not reachable')",
        )
    log.warning("handler failed, retrying", offset=1, error="ValueError('another cause')")

    flush_logs()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(line["message"], line["error"]) for line in lines] == [
        ("handler failed, retrying", "BusUnavailableError('Kafka is not reachable')"),
        ("handler failed, retrying", "ValueError('another cause')"),
    ]
    assert "suppressed" not in lines[0]
    structlog.contextvars.clear_contextvars()


def test_every_dead_letter_is_logged_with_its_coordinates():
    out = io.StringIO()
    configure_logging("history", "INFO", "json", stream=out)
    log = structlog.get_logger("switchyard.bus.kafka")
    for offset in range(20):
        log.error("event dead-lettered", topic="t", partition=0, offset=offset, reason="bad")
    flush_logs()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["offset"] for line in lines] == list(range(20))
    assert all("suppressed" not in line for line in lines)
    structlog.contextvars.clear_contextvars()
