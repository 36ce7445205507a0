"""No log format ever shows a credential or a frame's local variables, and logging never
makes the caller wait for the output stream."""

from __future__ import annotations

import io
import logging
import threading

import pytest
import structlog

from switchyard.common import logging as switchyard_logging
from switchyard.common.logging import configure_logging, flush_logs, redact_text

API_KEY = "sk-sy-Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0"
PROVIDER_KEY = "sk-proj-abcdefghijklmnopqrstuvwx"
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyLTEiLCJzY29wZXMiOlsiY2hhdCJdfQ.c2lnbmF0dXJlLXZhbHVl"
INTERNAL_TOKEN = "internal-token-value-3f9a1c"


def failing_call_holding_credentials() -> None:
    headers = {"authorization": f"Bearer {JWT}", "x-api-key": API_KEY}  # noqa: F841
    internal_token = INTERNAL_TOKEN  # noqa: F841
    provider_key = PROVIDER_KEY  # noqa: F841
    raise RuntimeError(f"upstream refused key {PROVIDER_KEY} with Authorization: Bearer {JWT}")


@pytest.fixture
def log_output():
    stream = io.StringIO()

    def configure(fmt: str) -> io.StringIO:
        configure_logging("test", "INFO", fmt, secrets=[INTERNAL_TOKEN], stream=stream)
        return stream

    yield configure
    configure_logging("test", "INFO", "json")  # back to stdout
    structlog.contextvars.clear_contextvars()


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_no_log_format_prints_credentials_or_local_variables(log_output, fmt):
    stream = log_output(fmt)
    try:
        failing_call_holding_credentials()
    except RuntimeError:
        # As uvicorn logs an unhandled error, and as our own code logs one.
        logging.getLogger("uvicorn.error").error("Exception in ASGI application", exc_info=True)
        structlog.get_logger("switchyard.test").exception(
            "request failed",
            api_key=API_KEY,
            header=f"x-switchyard-internal-token: {INTERNAL_TOKEN}",
        )
    structlog.get_logger("switchyard.test").info(
        "calling upstream", url=f"https://example.test/v1?api_key={API_KEY}", auth=f"Bearer {JWT}"
    )
    flush_logs()
    text = stream.getvalue()
    assert "Traceback" in text and "RuntimeError" in text  # the error itself is still there
    for secret in (API_KEY, PROVIDER_KEY, JWT, INTERNAL_TOKEN, "eyJhbGciOiJSUzI1NiJ9"):
        assert secret not in text
    # Plain tracebacks: no rendering of a frame's variables.
    assert "headers = " not in text and "provider_key = " not in text
    assert "╭" not in text and "locals" not in text.lower()


def test_redaction_keeps_what_is_not_a_credential():
    text = "tokens=12 max_tokens: 5 api_key_id=key_123 model=gpt-4o-mini token_type=bearer"
    assert redact_text(text) == text
    assert redact_text("password=hunter2&user=me") == "password=[redacted]&user=me"
    assert API_KEY not in redact_text(f"'x-api-key': '{API_KEY}'")


def test_refresh_tokens_and_webhook_secrets_are_redacted():
    refresh = "sy-rt-" + "Q" * 43
    webhook = "whsec_3-jxCJiwAbCdEfGhIjKlMnOpQrStUvWxYz0123456"
    text = redact_text(f"('{webhook}', 'tenant-a') refresh {refresh}")
    assert refresh not in text and webhook not in text
    assert "whsec_[redacted]" in text and "sy-rt-[redacted]" in text


def test_at_debug_no_database_driver_logs_statement_parameters(log_output):
    stream = io.StringIO()
    configure_logging("test", "DEBUG", "json", stream=stream)
    # What aiosqlite and SQLAlchemy's engine log at DEBUG: each statement with its values.
    for name in ("aiosqlite", "sqlalchemy.engine.Engine", "psycopg", "asyncpg"):
        logging.getLogger(name).debug("executing %r with %r", "UPDATE t SET h=?", ("argon2-hash",))
    structlog.get_logger("switchyard.test").debug("our own debug line")
    flush_logs()
    text = stream.getvalue()
    assert "argon2-hash" not in text
    assert "our own debug line" in text


class BlockedStream(io.StringIO):
    """An output stream whose writes hang until released (a full pipe nobody reads)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def write(self, text: str) -> int:
        self.release.wait()
        return super().write(text)


def test_logging_never_waits_for_a_blocked_output_stream(monkeypatch):
    # A small queue, so the burst that overflows it is a few hundred lines: rendering the
    # 10,000 of the real bound takes seconds on a loaded machine, and proves nothing more.
    monkeypatch.setattr(switchyard_logging, "MAX_PENDING_LINES", 100)
    stream = BlockedStream()
    configure_logging("test", "INFO", "console", stream=stream)
    log = structlog.get_logger("switchyard.test")
    done = threading.Event()

    def log_a_burst() -> None:
        for index in range(switchyard_logging.MAX_PENDING_LINES + 500):
            log.info("client disconnected", index=index)
        done.set()

    threading.Thread(target=log_a_burst, daemon=True).start()
    try:
        # The burst completes although nothing could be written: the caller never waited.
        assert done.wait(timeout=30), "logging blocked on the output stream"
        writer = logging.getLogger().handlers[0]
        # Beyond the bounded queue (and the one line the blocked writer holds), lines are
        # dropped, not waited on.
        assert writer.dropped >= 500 - 1, writer.dropped
    finally:
        stream.release.set()
        flush_logs()
        configure_logging("test", "INFO", "json")
    assert "client disconnected" in stream.getvalue()


def test_counts_named_after_credentials_are_logged_as_numbers(log_output):
    stream = log_output("json")
    structlog.get_logger("switchyard.test").info(
        "revocation state loaded", revoked_tokens=3, revoked_api_keys=0, password_reset=False
    )
    flush_logs()
    line = stream.getvalue()
    assert '"revoked_tokens": 3' in line and '"revoked_api_keys": 0' in line
