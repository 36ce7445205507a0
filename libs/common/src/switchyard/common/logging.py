"""structlog logging: JSON lines with Logstash-compatible fields, or readable console lines.

Every JSON line is one object with `@timestamp`, `@version`, `level`, `message`, `logger`,
`service` and, inside a request, `request_id` (bound with `bind_request_id`). Standard
library loggers (uvicorn, aiokafka, SQLAlchemy) go through the same formatter, so a
service writes nothing but its own format to stdout.

Three promises hold in every format:

- No credential reaches a line: fields named like a secret are replaced, and every text
  (message, values, tracebacks) has bearer credentials, API keys (`sk-...`), JWTs,
  `authorization`/`x-api-key`/token/password assignments and the configured secrets
  (e.g. the internal token) masked.
- Tracebacks are plain text without local variables (a frame's locals hold request
  headers and keys), and cheap to render.
- Logging never blocks the event loop on I/O: lines are rendered where they are logged
  (so they carry that context) and written to stdout by one background thread, each with
  a single write call, so lines of several workers sharing stdout do not interleave. If
  stdout cannot keep up, lines beyond a bounded queue are dropped and counted rather than
  stalling requests.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import queue
import re
import sys
import threading
from collections.abc import Iterable
from typing import IO, Any

import structlog
from opentelemetry import trace
from typing_extensions import override

from switchyard.common.log_throttle import RepeatFilter
from switchyard.common.tracing import tracing_enabled

_SECRET_KEYS = ("authorization", "api_key", "password", "token", "secret")
REDACTED = "[redacted]"
# Lines waiting for the writer thread; beyond this, new lines are dropped (and counted).
MAX_PENDING_LINES = 10_000

# Credentials by their shape, wherever they appear in a text.
_CREDENTIAL_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # JSON Web Tokens: header.payload.signature, base64url, the header starts with {"
    (re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), REDACTED),
    # API keys of Switchyard (sk-sy-), OpenAI (sk-, sk-proj-) and Anthropic (sk-ant-)
    (re.compile(r"\bsk-[A-Za-z0-9_-]{12,}"), "sk-" + REDACTED),
    # Switchyard's refresh tokens (sy-rt-) and webhook signing secrets (whsec_, also
    # Standard Webhooks' and Stripe's prefix)
    (re.compile(r"\b(sy-rt-|whsec_)[A-Za-z0-9_-]{8,}"), r"\1" + REDACTED),
    # Authorization header values: "Bearer <credential>", "Basic <credential>"
    (re.compile(r"\b(Bearer|Basic)\s+[^\s\"',;}\]]+", re.IGNORECASE), r"\1 " + REDACTED),
    # name=value / "name": "value" assignments of credential-like names (dict reprs in
    # tracebacks, headers, query strings); `api_key_id` and token counts stay.
    (
        re.compile(
            r"(?i)((?:authorization|x-api-key|api[_-]?key|internal[_-]token|password|passwd"
            r"|secret|access_token|refresh_token|token)(?!s|_id|_type)[\"']?\s*[:=]\s*"
            r"(?:b?[\"'])?)([^\s\"',;}\]&]+)"
        ),
        r"\1" + REDACTED,
    ),
)

_known_secrets: tuple[str, ...] = ()


def redact_text(text: str) -> str:
    """`text` with every credential-looking part and every configured secret masked."""
    for secret in _known_secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    for pattern, replacement in _CREDENTIAL_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


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
    # Numbers and booleans (e.g. a count of revoked tokens) cannot be credentials.
    for key, value in list(event_dict.items()):
        if isinstance(value, bool | int | float) or value is None:
            continue
        if any(secret in key.lower() for secret in _SECRET_KEYS) and key != "api_key_id":
            event_dict[key] = REDACTED
    return event_dict


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, dict):
        return {key: _redacted(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redacted(item) for item in value]
    # Anything else would be rendered with repr(): mask what that repr shows.
    return redact_text(repr(value))


def _redact_values(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Mask credentials inside every text of the line (message, values, traceback)."""
    for key, value in event_dict.items():
        event_dict[key] = _redacted(value)
    return event_dict


def _trace_ids(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """`trace_id` and `span_id` of the current span, so logs and traces join up."""
    if tracing_enabled():
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            event_dict["trace_id"] = format(context.trace_id, "032x")
            event_dict["span_id"] = format(context.span_id, "016x")
    return event_dict


class BackgroundWriter(logging.Handler):
    """Renders a record in the calling thread, writes it from a background thread.

    `emit` never waits for the stream: a full queue drops the line (counted in `dropped`).
    `max_pending`: the queue's bound in lines (`MAX_PENDING_LINES` as it is when the
    writer is made, when None).
    """

    def __init__(self, stream: IO[str], max_pending: int | None = None) -> None:
        super().__init__()
        self.stream = stream
        self.dropped = 0
        self._lines: queue.Queue[str | None] = queue.Queue(
            MAX_PENDING_LINES if max_pending is None else max_pending
        )
        self._thread = threading.Thread(target=self._write_lines, name="log-writer", daemon=True)
        self._thread.start()

    @override
    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001 - a broken record must not break the caller
            self.handleError(record)
            return
        try:
            self._lines.put_nowait(line + "\n")
        except queue.Full:
            self.dropped += 1

    def _write_lines(self) -> None:
        while True:
            line = self._lines.get()
            try:
                if line is None:
                    return
                try:
                    self.stream.write(line)
                    if self._lines.empty():
                        self.stream.flush()
                except (OSError, ValueError):  # stdout closed: nothing left to write to
                    pass
            finally:
                self._lines.task_done()

    def flush(self) -> None:
        """Wait until every line logged so far is written."""
        if self._thread.is_alive():
            self._lines.join()

    def close(self, timeout: float = 2.0) -> None:
        """Write what is pending (waiting at most `timeout` s for the stream) and stop."""
        if self._thread.is_alive():
            try:
                self._lines.put(None, timeout=timeout)
            except queue.Full:
                pass
            self._thread.join(timeout)
        super().close()


_writer: BackgroundWriter | None = None


def flush_logs() -> None:
    """Block until every line logged so far is on stdout (tests, before exiting)."""
    if _writer is not None:
        _writer.flush()


def close_logs() -> None:
    """Write what is pending (waiting at most 2 s for stdout) and stop the writer thread:
    for a process about to end (at exit, or killed by a signal it re-raised)."""
    _close_writer()


def _close_writer() -> None:
    global _writer
    if _writer is not None:
        _writer.close()
        _writer = None


atexit.register(_close_writer)


# The levels `SWITCHYARD_LOG_LEVEL` takes (any case), as the standard library names them.
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def log_level(value: str, setting: str = "SWITCHYARD_LOG_LEVEL") -> str:
    """`value` as a level name the standard library knows (upper case). Raises
    SettingsError (a `ConfigurationError`: one line from the `switchyard` command) naming
    `setting` and the levels it takes (`LOG_LEVELS`) when the standard library knows no
    such level."""
    from switchyard.common.settings import SettingsError

    level = value.strip().upper()
    # Every name the standard library knows is taken (WARN, NOTSET too), as before.
    if level not in logging.getLevelNamesMapping():
        raise SettingsError(
            f"{setting}: unknown log level {value!r}; use one of {', '.join(LOG_LEVELS)}"
        )
    return level


class CancelledRequests(logging.Filter):
    """Once this process's servers end the requests they hold (`requests_being_ended`:
    embedded mode's stop cancels the simulator's at once, and the others' on a second
    Ctrl+C), drops uvicorn's "Exception in ASGI application" record of a request whose
    task was cancelled: no fault of the app, so no traceback for an operator to read as a
    crash. Before that, a CancelledError escaping a handler is a fault, and logged."""

    def __init__(self) -> None:
        super().__init__()
        self.ending = False

    @override
    def filter(self, record: logging.LogRecord) -> bool:
        """False (dropped) for a record carrying a CancelledError once requests are being
        ended, else True."""
        error = record.exc_info[1] if record.exc_info else None
        return not (self.ending and isinstance(error, asyncio.CancelledError))


_CANCELLED_REQUESTS = CancelledRequests()


def requests_being_ended() -> None:
    """Say that this process's servers are ending (cancelling) the requests they hold: from
    now on uvicorn's records of those cancelled requests are not logged."""
    _CANCELLED_REQUESTS.ending = True


def configure_logging(
    service: str,
    level: str = "INFO",
    fmt: str = "json",
    *,
    secrets: Iterable[str | None] = (),
    stream: IO[str] | None = None,
) -> None:
    """Send every log line of this process (structlog and the standard library) to
    `stream` (stdout) as JSON (`fmt="json"`) or readable console lines, at `level` and
    above. `secrets` (e.g. the internal token) are masked wherever they appear. Raises
    SettingsError naming SWITCHYARD_LOG_LEVEL for a level that is not one (`log_level`),
    before anything is changed."""
    global _known_secrets, _writer
    level = log_level(level)
    # Longest first, so a secret containing another is masked whole.
    _known_secrets = tuple(sorted({s for s in secrets if s and len(s) >= 8}, key=len, reverse=True))
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="@timestamp"),
        _trace_ids,
        _redact_secrets,
    ]
    # Tracebacks become plain text (no locals) before the redaction sees them.
    redacted: list[Any] = [structlog.processors.format_exc_info, _redact_values]
    output = stream or sys.stdout
    if fmt == "json":
        final: list[Any] = [_logstash_fields, *redacted, structlog.processors.JSONRenderer()]
    else:
        colors = bool(getattr(output, "isatty", lambda: False)())
        final = [
            *redacted,
            structlog.dev.ConsoleRenderer(
                colors=colors,
                exception_formatter=structlog.dev.plain_traceback,
                timestamp_key="@timestamp",
            ),
        ]

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
    _close_writer()  # configured again (e.g. a uvicorn worker in the same process)
    _writer = BackgroundWriter(output)
    _writer.setFormatter(formatter)
    _writer.addFilter(RepeatFilter(_writer))  # repeated warnings and errors: once, with a count
    root = logging.getLogger()
    root.handlers[:] = [_writer]
    root.setLevel(level)
    # Chatty libraries: their INFO lines (each outgoing HTTP call, each Alembic plugin)
    # say nothing an operator needs; warnings and errors still come through. The database
    # drivers' and SQLAlchemy's DEBUG lines carry every statement's parameters (password
    # and key hashes, webhook secrets, prompts): never logged, whatever the level.
    for noisy in (
        "aiokafka",
        "kafka",
        "httpx",
        "httpcore",
        "httpx_retries",
        "alembic.runtime.plugins",
        "aiosqlite",
        "sqlalchemy",
        "psycopg",
        "asyncpg",
    ):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    uvicorn_errors = logging.getLogger("uvicorn.error")
    if _CANCELLED_REQUESTS not in uvicorn_errors.filters:
        uvicorn_errors.addFilter(_CANCELLED_REQUESTS)
    # uvicorn's access log duplicates the gateway's own request metrics; keep it quiet.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(service=service)


def bind_request_id(request_id: str) -> None:
    """Add `request_id` to every log line of the current context (task) from now on."""
    structlog.contextvars.bind_contextvars(request_id=request_id)
