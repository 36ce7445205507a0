"""Every response carries `x-request-id`, whoever answers it: a model reply, an error
the gateway answers itself (400, 401, 404, 413, 429, 503...), a CORS preflight. The answer
to a request on Anthropic's paths, or carrying `anthropic-version` (Anthropic's SDKs),
carries it as `request-id` too, the header Anthropic's API sends and its SDKs read
(`message._request_id`, `APIStatusError.request_id`), and Anthropic's error objects
carry it as `request_id` (`errorformat.current_request_id`, set here for the request).

The id is made here, once per request, before anything else runs: a model request is
published under it (its events, its history row and its Idempotency-Key claim all carry
it), and it is bound to the request's log lines. A response that already names its
request id (an Idempotency-Key replay of an earlier request) keeps it. Clients cannot
choose the id: it keys events and history rows, so it must be unique.

Ids are 32 lowercase hex digits, as every event id: 22 random (88 bits) and 10 of an
HMAC-SHA256 of those under a key every replica derives from the internal token
(`RequestIds`). So any replica can tell an id the gateways made from one a client made
up, without asking anyone: a read of a response answered moments ago, which history may
not have recorded yet, waits for it only when its id is one of theirs
(`api/responses.py`), and a made-up id is answered at once.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from switchyard.common.errorformat import ANTHROPIC_PATHS, current_request_id
from switchyard.common.headers import ANTHROPIC_VERSION_HEADER, REQUEST_ID_HEADER
from switchyard.common.logging import bind_request_id

HEADER = REQUEST_ID_HEADER.encode()
ANTHROPIC_HEADER = b"request-id"
ANTHROPIC_VERSION = ANTHROPIC_VERSION_HEADER.encode()


# Hex digits of an id: random ones, then the HMAC's (the rest of the 32).
_RANDOM_DIGITS = 22
_MAC_DIGITS = 32 - _RANDOM_DIGITS


class RequestIds:
    """Makes request ids and recognises them (module docstring). `key`: the HMAC key,
    the same on every replica (`Settings.request_id_key`)."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, random_part: str) -> str:
        return hmac.digest(self._key, random_part.encode(), hashlib.sha256).hex()[:_MAC_DIGITS]

    def new(self) -> str:
        """A new request id: 32 lowercase hex digits."""
        random_part = os.urandom(_RANDOM_DIGITS // 2).hex()
        return random_part + self._mac(random_part)

    def made_here(self, request_id: str) -> bool:
        """Whether `request_id` is one `new` made, here or on a replica sharing the key."""
        if len(request_id) != _RANDOM_DIGITS + _MAC_DIGITS or not request_id.isascii():
            return False  # (compare_digest takes ASCII strings only)
        random_part, mac = request_id[:_RANDOM_DIGITS], request_id[_RANDOM_DIGITS:]
        return hmac.compare_digest(self._mac(random_part), mac)


def request_id_of(scope: Scope) -> str | None:
    """The id this middleware gave the request in `scope`, if it went through it."""
    state = scope.get("state")
    return state.get("request_id") if state is not None else None


class RequestIdMiddleware:
    """ASGI middleware giving every HTTP request its id and every response its `x-request-id`
    (module docstring)."""

    def __init__(self, app: ASGIApp, ids: RequestIds) -> None:
        self.app = app
        self.ids = ids

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point: bind a new id to the request and add it to the response."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = self.ids.new()
        scope.setdefault("state", {})["request_id"] = request_id
        bind_request_id(request_id)
        encoded = request_id.encode()
        # Anthropic's paths, and any request of Anthropic's SDKs (they always send
        # `anthropic-version`: also to a wrong base URL, answered in their format).
        anthropic = scope["path"].startswith(ANTHROPIC_PATHS) or any(
            name == ANTHROPIC_VERSION for name, _ in scope["headers"]
        )

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.setdefault("headers", [])
                named = next((value for name, value in headers if name.lower() == HEADER), None)
                if named is None:
                    named = encoded
                    headers = message["headers"] = [*headers, (HEADER, encoded)]
                if anthropic and not any(name.lower() == ANTHROPIC_HEADER for name, _ in headers):
                    message["headers"] = [*headers, (ANTHROPIC_HEADER, named)]
            await send(message)

        token = current_request_id.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            current_request_id.reset(token)
