"""The HTTP/1.1 server protocol every Switchyard service runs: uvicorn's httptools protocol
with the limits uvicorn leaves out.

- Request heads (request line and headers) larger than `max_header_bytes`, or with more
  than `max_headers` fields, are refused with 431 before the parser buffers them.
- A client gets `header_timeout_s` from connecting (or from the first byte of a following
  request on a kept-alive connection) to finish sending the head, and `body_timeout_s`
  from the end of the head to finish sending the body. Past either, it gets 408 (when no
  response has started) and the connection is closed, so slow or stalled clients cannot
  hold connections, memory and handlers forever.

Refusals (these, and a request that is not valid HTTP/1.1: 400 `invalid_http_request`)
are written by the protocol itself, without calling the app, in the error format of the
API at the request's path (OpenAI's; Anthropic's on `/v1/messages`), chosen and written
by `switchyard.common.errorformat` as the gateway's own errors are, each with an
`x-request-id` of its own as every other answer has. Limits come
from `SWITCHYARD_HTTP_*` (see `HttpLimits`); uvicorn loads the protocol by its import
path, so every worker process of `--workers N` reads them too.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import socket
from collections.abc import Mapping
from typing import Any

import httptools
from pydantic import Field
from pydantic_settings import SettingsConfigDict
from starlette.datastructures import Headers
from typing_extensions import override
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from switchyard.common.errorformat import error_body, error_type, vendor_of
from switchyard.common.events import new_id
from switchyard.common.settings import DAY_S, MIB, CheckedSettings

PROTOCOL_PATH = "switchyard.common.httpserver:GuardedHttpToolsProtocol"
_HEAD_END = b"\r\n\r\n"


class HttpLimits(CheckedSettings):
    """Request head limits and read timeouts of every HTTP server (`SWITCHYARD_HTTP_*`)."""

    model_config = SettingsConfigDict(
        env_prefix="SWITCHYARD_HTTP_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    max_header_bytes: int = Field(
        default=32 * 1024,
        gt=0,
        le=MIB,
        description="Request line plus headers, in bytes; more: 431. At most 1 MiB.",
    )
    max_headers: int = Field(
        default=100, gt=0, le=10_000, description="Header fields; more: 431. At most 10000."
    )
    header_timeout_s: float = Field(
        default=15.0,
        gt=0,
        le=DAY_S,
        description="Seconds to send the request head; then 408. At most a day.",
    )
    body_timeout_s: float = Field(
        default=60.0,
        gt=0,
        le=DAY_S,
        description="Seconds to send the body once the head is in; then 408. At most a day.",
    )


@functools.cache
def configured_limits() -> HttpLimits:
    """The HTTP limits from the environment (`SWITCHYARD_HTTP_*`), read once per process.
    Raises SettingsError naming each variable at fault (one line, as every refused
    setting): every command that serves HTTP calls this before it listens, so a bad
    value stops start-up instead of failing every connection later."""
    return HttpLimits()


def refusal_body(
    status: int,
    message: str,
    code: str,
    path: str,
    request_id: str,
    headers: Mapping[str, str] | None = None,
) -> bytes:
    """The JSON error body of a refusal the server writes itself, in the format of the API
    at `path` (the request target's path, no query) that `errorformat.vendor_of` chooses
    from the path and, once the head is parsed, its `headers` (lower-case names:
    `anthropic-version` on `/v1/models`); `request_id`: the id its `x-request-id` header
    gives it."""
    vendor = vendor_of(path, headers)
    return error_body(
        vendor, type=error_type(vendor, status), message=message, code=code, request_id=request_id
    )


def refusal(status: int, message: str, code: str, path: bytes) -> bytes:
    """A complete HTTP/1.1 response (closing the connection) with `refusal_body` and an
    `x-request-id` of its own."""
    request_id = new_id()
    body = refusal_body(status, message, code, path.decode("latin-1"), request_id)
    return b"".join(
        [
            STATUS_LINE[status],
            b"content-type: application/json\r\n",
            b"x-request-id: " + request_id.encode() + b"\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
            body,
        ]
    )


async def refuse_upgrade_with_body(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """ASGI app answering a request that asks for a protocol upgrade and declares a body:
    400 with an error body in the format of the API at its path, closing the connection."""
    request_id = new_id()
    body = refusal_body(
        400,
        "A request asking for a protocol upgrade may not carry a body.",
        "upgrade_with_body",
        scope["path"],
        request_id,
        Headers(scope=scope),
    )
    headers = [
        (b"content-type", b"application/json"),
        (b"x-request-id", request_id.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": 400, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus head size/count limits and read timeouts."""

    limits: HttpLimits | None = None  # None: `configured_limits()`; tests set their own

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = self.limits or configured_limits()
        self._head_done = False
        self._head_bytes = 0
        self._header_count = 0
        self._too_many_headers = False
        self._head_start = b""
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._upgrade_declined = False

    # ---- connection

    @override
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    @override
    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    @override
    def data_received(self, data: bytes) -> None:
        if self._upgrade_declined:
            return  # past an Upgrade the parser stopped at: not HTTP any more, never read
        if not self._head_done:
            if self._head_timer is None:
                self._arm_head_timer()  # the first byte of a following request
            if self._head_bytes == 0:
                self._head_start = data[:512]  # the request line names the API's format
            end = data.find(_HEAD_END)
            # Only the head's bytes count; a body arriving in the same read does not.
            self._head_bytes += len(data) if end < 0 else end + len(_HEAD_END)
            if self._head_bytes > self._limits.max_header_bytes:
                self._refuse(
                    431,
                    f"Request headers exceed {self._limits.max_header_bytes} bytes.",
                    "request_header_fields_too_large",
                )
                return
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                # Answered (or refused) as decided in on_headers_complete.
                self._upgrade_declined = True
        except httptools.HttpParserError:
            if self._too_many_headers:
                self._refuse(
                    431,
                    f"Requests may carry at most {self._limits.max_headers} header fields.",
                    "request_header_fields_too_large",
                )
                return
            self.logger.info("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")

    # ---- parser callbacks

    @override
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_count = 0

    @override
    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self._limits.max_headers:
            self._too_many_headers = True
            raise ValueError("too many header fields")  # stops the parser (see data_received)
        super().on_header(name, value)

    @override
    def on_headers_complete(self) -> None:
        self._head_done = True
        self._cancel_head_timer()
        self._body_timer = self.loop.call_later(self._limits.body_timeout_s, self._body_timeout)
        if not (self.parser.should_upgrade() and not self._should_upgrade()):
            super().on_headers_complete()
            return
        # A request asking to switch to a protocol no service speaks (`Upgrade: h2c`, a
        # WebSocket): the parser stops after its head, so whatever follows on the
        # connection must never be read as HTTP (read on, the request's body would be
        # taken for a new request, smuggled past the proxy that sent it). Without a body
        # it is answered as plain HTTP; one that declares a body, which the parser never
        # passes on, is refused with 400 by `refuse_upgrade_with_body` instead of the
        # app (decided here, before any app runs, so that the answers of requests
        # pipelined before it keep their order). Either way the connection closes after
        # the answer.
        if self._declares_body():
            app, self.app = self.app, refuse_upgrade_with_body
            try:
                super().on_headers_complete()
            finally:
                self.app = app
            self._cancel_body_timer()  # no body will be read
        else:
            super().on_headers_complete()
        self.cycle.keep_alive = False

    def _declares_body(self) -> bool:
        return any(
            (name == b"content-length" and value.strip().lstrip(b"0") != b"")
            or name == b"transfer-encoding"
            for name, value in self.headers
        )

    @override
    def on_message_complete(self) -> None:
        self._cancel_body_timer()
        self._head_done = False
        self._head_bytes = 0
        self._head_start = b""
        super().on_message_complete()
        cycle = self.cycle
        if (
            cycle is not None
            and cycle.response_complete
            and not self.pipeline
            and self.timeout_keep_alive_task is None
            and not self.transport.is_closing()
        ):
            # A body that arrived after its request was answered (an app that answered
            # without reading it) cancelled the keep-alive timer on its way in, and
            # nothing else would close the idle connection: it is idle again now.
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    # ---- timeouts and refusals

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(self._limits.header_timeout_s, self._head_timeout)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _cancel_timers(self) -> None:
        self._cancel_head_timer()
        self._cancel_body_timer()

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._head_bytes == 0:
            # An idle connection (nothing sent, or kept alive between requests): just close.
            self.transport.close()
            return
        self._refuse(
            408,
            f"The request headers did not arrive within {self._limits.header_timeout_s:g} s.",
            "request_timeout",
        )

    def _body_timeout(self) -> None:
        self._body_timer = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and cycle.response_started:
            self.transport.close()  # the app sees a disconnect
            return
        self._refuse(
            408,
            f"The request body did not arrive within {self._limits.body_timeout_s:g} s.",
            "request_timeout",
        )

    @override
    def send_400_response(self, msg: str) -> None:
        """A request the parser refuses (a malformed request line, a control character in
        a header): 400 in the API's error format instead of uvicorn's plain text."""
        self._refuse(400, "The request is not valid HTTP/1.1.", "invalid_http_request")

    def _refuse(self, status: int, message: str, code: str) -> None:
        self._cancel_timers()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # The app (if it runs) now sees a disconnect and sends nothing more.
            cycle.disconnected = True
            cycle.message_event.set()
        target = b"".join(self._head_start.split(b" ", 2)[1:2]) or getattr(self, "url", b"")
        path = target.split(b"?", 1)[0]
        self.transport.write(refusal(status, message, code, path))
        self.transport.close()


class PortInUseError(Exception):
    """A server's port (or address) cannot be bound; the message names the setting that
    changes it."""


def bind(
    host: str, port: int, name: str, setting: str, host_setting: str = "--host"
) -> socket.socket:
    """A socket bound to host:port as uvicorn binds it (SO_REUSEADDR), not yet listening.
    Raises PortInUseError with one readable line when the port is taken or refused
    (naming `setting`, which moves the port), or when `host` is not an address of this
    machine or cannot be resolved (naming `host_setting`, which sets the address)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OverflowError:
        sock.close()
        raise PortInUseError(
            f"port {port} ({name}) is not a TCP port: set {setting} to one from 1 to 65535"
        ) from None
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUseError(
                f"port {port} ({name}) is already in use on {host}: stop what uses it, "
                f"or set {setting} to a free port"
            ) from None
        if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
            # The address is at fault, not the port: another port would fail alike.
            raise PortInUseError(
                f"cannot listen on {host}:{port} ({name}): {exc.strerror or exc}; {host} is "
                f"not an address of this machine: give {host_setting} one that is "
                "(e.g. 127.0.0.1, or 0.0.0.0 for every interface)"
            ) from None
        raise PortInUseError(
            f"cannot listen on {host}:{port} ({name}): {exc.strerror or exc}; "
            f"set {setting} to another port"
        ) from None
    sock.set_inheritable(True)
    return sock
