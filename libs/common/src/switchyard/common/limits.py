"""ASGI middleware every Switchyard HTTP service mounts: request bodies over the
configured size are refused with 413 before they are read, whether or not the client
sent Content-Length.

A declared `Content-Length` over the limit is refused at once, without reading a byte.
Otherwise the body is counted as it arrives and the request fails with 413 the moment
the count passes the limit, so at most `max_bytes` (plus one network read) is ever held.
The refusal replaces whatever answer the route was about to give (FastAPI turns a failed
body read into its own 400), as long as no response has started.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from switchyard.common.errors import error_body

# (request path, status, message) -> the error body in the API's format.
ErrorRenderer = Callable[[str, int, str], bytes]


def _openai_error(_: str, __: int, message: str) -> bytes:
    return error_body(message, "invalid_request_error", "request_too_large")


class _BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """Refuse request bodies over `max_bytes` with 413 (`path_limits` gives some paths a
    limit of their own, in bytes); `render` shapes the error body (default: the common
    OpenAI-style error object, code `request_too_large`)."""

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
        or the bytes it actually sends, exceed the path's limit; pass everything else through."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.path_limits.get(scope["path"], self.max_bytes)
        for name, value in scope["headers"]:
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
        message = too_large_message(max_bytes)
        body = self.render(scope["path"], 413, message)
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def too_large_message(limit: int) -> str:
    """The message of a 413 for a body over `limit` bytes."""
    return f"Request body exceeds the limit of {limit} bytes."
