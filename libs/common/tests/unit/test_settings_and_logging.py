"""Settings refuse development secrets in production; logs are Logstash-shaped JSON."""

from __future__ import annotations

import json
import logging

import pytest
import structlog

from switchyard.common.errors import validation_message
from switchyard.common.logging import bind_request_id, configure_logging, flush_logs
from switchyard.common.settings import ServiceSettings, SettingsError


def test_development_accepts_default_secrets():
    assert ServiceSettings(environment="development").internal_token


def test_production_refuses_default_internal_token():
    with pytest.raises(SettingsError, match="SWITCHYARD_INTERNAL_TOKEN"):
        ServiceSettings(environment="production")


def test_production_accepts_a_real_secret():
    settings = ServiceSettings(environment="production", internal_token="s3cr3t-from-a-vault")
    assert settings.describe()["internal_token"] == "***"


def test_settings_read_the_environment(monkeypatch):
    monkeypatch.setenv("SWITCHYARD_BUS", "kafka")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker:9092")
    settings = ServiceSettings()
    assert settings.bus == "kafka"
    assert settings.kafka_bootstrap_servers == "broker:9092"


def test_log_lines_have_logstash_fields_and_no_secrets(capsys):
    configure_logging("gateway", "INFO", "json")
    bind_request_id("req-123")
    structlog.get_logger("switchyard.test").info("hello", authorization="Bearer sk-sy-secret")
    logging.getLogger("uvicorn.error").warning("from the standard library")
    flush_logs()
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    first, second = lines
    assert {"@timestamp", "@version", "level", "message", "logger", "service", "request_id"} <= set(
        first
    )
    assert first["message"] == "hello" and first["service"] == "gateway"
    assert first["request_id"] == "req-123"
    assert first["level"] == "info"
    assert "sk-sy-secret" not in json.dumps(first)
    assert second["logger"] == "uvicorn.error" and second["level"] == "warning"
    structlog.contextvars.clear_contextvars()


def test_a_request_cancelled_by_a_stopping_server_logs_no_traceback(capsys, monkeypatch):
    """uvicorn logs a cancelled request task as "Exception in ASGI application". Once the
    servers end their requests (a stop), nothing is written for it; before, a
    CancelledError escaping a handler is a fault and is logged; any other exception of an
    app always is."""
    import asyncio

    from switchyard.common import logging as common_logging

    monkeypatch.setattr(common_logging._CANCELLED_REQUESTS, "ending", False)
    configure_logging("dev", "INFO", "console")
    uvicorn_errors = logging.getLogger("uvicorn.error")

    def log_as_uvicorn(error: BaseException) -> None:
        try:
            raise error
        except BaseException as exc:  # noqa: BLE001 - logged as uvicorn logs it
            uvicorn_errors.error("Exception in ASGI application\n", exc_info=exc)

    log_as_uvicorn(asyncio.CancelledError("while serving"))
    flush_logs()
    assert "CancelledError: while serving" in capsys.readouterr().out
    # Configured again: a new writer, whose repeat filter has seen nothing yet.
    configure_logging("dev", "INFO", "console")
    common_logging.requests_being_ended()
    log_as_uvicorn(asyncio.CancelledError("ended by the stop"))
    log_as_uvicorn(RuntimeError("a real fault"))
    flush_logs()
    out = capsys.readouterr().out
    assert "ended by the stop" not in out and "RuntimeError: a real fault" in out
    structlog.contextvars.clear_contextvars()


def test_validation_message_names_the_field():
    message, param = validation_message(
        [{"loc": ("body", "messages", 0, "role"), "msg": "bad role", "type": "literal_error"}]
    )
    assert param == "messages.0.role"
    assert "messages.0.role" in message
