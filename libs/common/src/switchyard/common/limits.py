"""ASGI middleware every Switchyard HTTP service mounts: request bodies over the
configured size are refused with 413 before they are read, whether or not the client
sent Content-Length, and compressed request bodies (a `Content-Encoding` other than
`identity`) with 415 and `Accept-Encoding: identity` (RFC 9110, section 15.5.16): a
body is never read as something it is not, nor inflated past the limit. A URL whose path
or query holds a NUL character (`%00`) is refused with 400 `invalid_request`: no
Switchyard resource is named with one, and PostgreSQL cannot take one in a text value.

A declared `Content-Length` over the limit is refused at once, without reading a byte.
Otherwise the body is counted as it arrives and the request fails with 413 the moment
the count passes the limit, so at most `max_bytes` (plus one network read) is ever held.
The refusal replaces whatever answer the route was about to give (FastAPI turns a failed
body read into its own 400), as long as no response has started.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from switchyard.common.errors import OPENAI_TYPES, error_body

# (the request's ASGI scope, status, message, code) -> the error body in the format of
# the API called (its path, and on some routes its headers, say which).
ErrorRenderer = Callable[[Scope, int, str, str], bytes]


def _openai_error(_: Scope, status: int, message: str, code: str) -> bytes:
    return error_body(message, OPENAI_TYPES.get(status, "invalid_request_error"), code)


def _has_nul(query: bytes) -> bool:
    """Whether a raw query string holds a NUL, as itself or percent-encoded."""
    return b"\x00" in query or b"%00" in query


class _BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """Refuse request bodies over `max_bytes` with 413 (`path_limits` gives some paths a
    limit of their own, in bytes), and compressed ones with 415; `render` shapes the error
    body (default: the common OpenAI-style error object; codes `request_too_large` and
    `unsupported_content_encoding`)."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        render: ErrorRenderer | None = None,
        *,
        path_limits: Mapping[str, int] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.path_limits = dict(path_limits or {})
        self.render = render or _openai_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point: refuse an HTTP request with 413 when its Content-Length,
        or the bytes it actually sends, exceed the path's limit, and with 415 when its body
        is compressed; pass everything else through."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if "\x00" in scope["path"] or _has_nul(scope.get("query_string", b"")):
            await self._answer(
                scope,
                send,
                400,
                "The URL must not contain a NUL character (%00).",
                "invalid_request",
            )
            return
        max_bytes = self.path_limits.get(scope["path"], self.max_bytes)
        for name, value in scope["headers"]:
            if name == b"content-encoding" and value.strip().lower() not in (b"", b"identity"):
                encoding = value.decode("latin-1").strip()[:40]
                await self._answer(
                    scope,
                    send,
                    415,
                    f"Content-Encoding {encoding!r} is not supported: send the request body "
                    "uncompressed.",
                    "unsupported_content_encoding",
                    [(b"accept-encoding", b"identity")],
                )
                return
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > max_bytes:
                    await self._refuse(scope, send, max_bytes)
                    return
        received = 0
        exceeded = False
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:
                raise _BodyTooLarge
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    exceeded = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if exceeded and not response_started:
                # Whatever the app made of the failed read (often a 400), the answer is 413.
                raise _BodyTooLarge
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _BodyTooLarge:
            if not response_started:
                await self._refuse(scope, send, max_bytes)

    async def _refuse(self, scope: Scope, send: Send, max_bytes: int) -> None:
        await self._answer(scope, send, 413, too_large_message(max_bytes), "request_too_large")

    async def _answer(
        self,
        scope: Scope,
        send: Send,
        status: int,
        message: str,
        code: str,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        # The body is left unread: the connection is closed after the answer.
        body = self.render(scope, status, message, code)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                    *(headers or []),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def too_large_message(limit: int) -> str:
    """The message of a 413 for a body over `limit` bytes."""
    return f"Request body exceeds the limit of {limit} bytes."
