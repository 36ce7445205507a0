"""structlog JSON logging with Logstash-compatible fields.

Every line is one JSON object with `@timestamp`, `@version`, `level`, `message`, `logger`,
`service` and, inside a request, `request_id` (bound with `bind_request_id`). Standard
library loggers (uvicorn, aiokafka, SQLAlchemy) go through the same formatter, so a
service writes nothing but JSON lines to stdout. Each line is written with a single
write call, so lines from several workers sharing stdout do not interleave.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog
from opentelemetry import trace

from switchyard.common.log_throttle import RepeatFilter
from switchyard.common.tracing import tracing_enabled

_SECRET_KEYS = ("authorization", "api_key", "password", "token", "secret")


def _logstash_fields(_: Any, method_name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    event_dict["@version"] = "1"
    event_dict["message"] = event_dict.pop("event", "")
    event_dict.setdefault("level", method_name)
    if "logger" not in event_dict:
        record = event_dict.get("_record")
        event_dict["logger"] = record.name if record is not None else "switchyard"
    return event_dict


def _redact_secrets(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    # Defence in depth: a credential passed as a log field by mistake never reaches the log.
    for key in list(event_dict):
        if any(secret in key.lower() for secret in _SECRET_KEYS) and key != "api_key_id":
            event_dict[key] = "[redacted]"
    return event_dict


def _trace_ids(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """`trace_id` and `span_id` of the current span, so logs and traces join up."""
    if tracing_enabled():
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            event_dict["trace_id"] = format(context.trace_id, "032x")
            event_dict["span_id"] = format(context.span_id, "016x")
    return event_dict


def configure_logging(service: str, level: str = "INFO", fmt: str = "json") -> None:
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="@timestamp"),
        _trace_ids,
        _redact_secrets,
    ]
    if fmt == "json":
        renderer: Any = structlog.processors.JSONRenderer()
        final: list[Any] = [_logstash_fields, structlog.processors.format_exc_info, renderer]
    else:
        final = [structlog.dev.ConsoleRenderer()]

    structlog.configure(
        # Drop disabled levels first, before any processor spends time on the event.
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    handler.addFilter(RepeatFilter(handler))  # repeated warnings and errors: once, with a count
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiokafka", "kafka"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # uvicorn's access log duplicates the gateway's own request metrics; keep it quiet.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(service=service)


def bind_request_id(request_id: str) -> None:
    structlog.contextvars.bind_contextvars(request_id=request_id)
