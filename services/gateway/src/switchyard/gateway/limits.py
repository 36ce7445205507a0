"""ASGI middleware refusing request bodies over their route's limit with 413, in the
called API's error format, before any of the body is parsed, whether or not the client
sent Content-Length.

Each model API has the limit of the provider's own API (`Settings.max_body_bytes_for`);
`/v1/jobs`, which carries any of them, has the largest (the job's own API's limit is
checked once the body says which it is); every other route has `max_body_bytes`.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from switchyard.common.events import ClientAPI
from switchyard.gateway.config import Settings
from switchyard.gateway.errors import error_body, error_type, vendor_of_path

API_PATHS: dict[str, ClientAPI] = {
    "/v1/chat/completions": ClientAPI.OPENAI_CHAT_COMPLETIONS,
    "/v1/messages": ClientAPI.ANTHROPIC_MESSAGES,
    "/v1/embeddings": ClientAPI.OPENAI_EMBEDDINGS,
}
JOBS_PATH = "/v1/jobs"


def path_limits(settings: Settings) -> dict[str, int]:
    """The body limit of each path that has its own, in bytes."""
    limits = {path: settings.max_body_bytes_for(api) for path, api in API_PATHS.items()}
    limits[JOBS_PATH] = max(limits.values())
    return limits


def too_large_message(limit: int) -> str:
    return f"Request body exceeds the limit of {limit} bytes."


class _BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    def __init__(self, app: ASGIApp, limits: Mapping[str, int], default_max_bytes: int) -> None:
        self.app = app
        self.limits = dict(limits)
        self.default_max_bytes = default_max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.limits.get(scope["path"], self.default_max_bytes)
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
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not response_started:
                await self._refuse(scope, send, max_bytes)

    async def _refuse(self, scope: Scope, send: Send, max_bytes: int) -> None:
        vendor = vendor_of_path(scope["path"])
        body = error_body(
            vendor,
            type=error_type(vendor, 413),
            message=too_large_message(max_bytes),
            code="request_too_large",
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
