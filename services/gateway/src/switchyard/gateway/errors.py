"""Errors in the format of the API that was called, whoever raised them.

OpenAI's APIs answer `{"error": {"message", "type", "param", "code"}}`; Anthropic's
`/v1/messages` answers `{"type": "error", "error": {"type", "message"}}` (the format the
`anthropic` SDK reads; `code` and `param` are added when there is one). The format is
chosen in one place, `vendor_of`: by path, and on `/v1/models` (which both SDKs call) and
paths no route serves, by the `anthropic-version` header. Every error the gateway answers
goes through it and through one writer, `error_body` (`error_response` for whole
answers), so authentication, validation, size-limit and idempotency failures are shaped
right too, and the same writer produces the error events that end a stream. Both live in
`switchyard.common.errorformat` (re-exported here), which the HTTP server's
connection-level refusals (431, 408) use too, so every service's errors follow one rule.

Two sources of errors:
- the gateway's own (`APIError`: bad input, credentials, unknown model, a full gateway,
  the bus down): the error `type` is derived from the status in the called API's
  vocabulary;
- a request that ended in `chat.failed` (`ReplyFailed`): its `ErrorInfo` is already in the
  client API's vocabulary (an upstream 529 `overloaded_error` stays exactly that), and
  status, type, code, param and Retry-After are relayed as they are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import Scope
from typing_extensions import override

from switchyard.common.errorformat import (
    ANTHROPIC_PATHS,
    SHARED_PATHS,
    Vendor,
    current_request_id,
    error_body,
    error_type,
    vendor_of,
)
from switchyard.common.errors import APIError, http_error, validation_error
from switchyard.common.events import ChatFailed, ClientAPI, ErrorInfo
from switchyard.common.headers import REQUEST_ID_HEADER
from switchyard.common.http import UnexpectedFaults as CommonUnexpectedFaults

__all__ = [
    "ANTHROPIC_PATHS",
    "FINAL_STATUSES",
    "RETRYABLE_STATUSES",
    "UnexpectedFaults",
    "SHARED_PATHS",
    "ClientDisconnected",
    "ReplyFailed",
    "Vendor",
    "api_error_response",
    "error_body",
    "error_response",
    "error_type",
    "install_api_error_handlers",
    "respond",
    "respond_to",
    "retry_after",
    "sse_error_event",
    "unknown_route_message",
    "vendor_of",
    "vendor_of_api",
    "vendor_of_request",
]

# Statuses a client may retry after a moment, which always carry Retry-After.
RETRYABLE_STATUSES = frozenset({429, 503, 529})
# The gateway's own refusals that the same request can never get past: answered with
# `x-should-retry: false`, which both official SDKs read before their status rules.
# Not a 401: Claude Code answers one by asking its `apiKeyHelper` for a fresh credential
# and retrying, which a rotated key or an expired access token needs.
FINAL_STATUSES = frozenset({400, 403, 404, 405, 413, 415, 422})


def vendor_of_request(request: Request, *, unrouted: bool = False) -> Vendor:
    """Whose format the answer to `request` is in (`vendor_of` its path and headers)."""
    return vendor_of(request.url.path, request.headers, unrouted=unrouted)


def vendor_of_api(api: ClientAPI) -> Vendor:
    """Whose format a request of the client API `api` is answered in."""
    return "anthropic" if api.vendor == "anthropic" else "openai"


def retry_after(status: int, retry_after_s: float | None) -> str | None:
    """The Retry-After header value (whole seconds, 1 to a day) for an error, if any: a
    given wait rounded up, so a client never retries before it is over."""
    if retry_after_s is not None and math.isfinite(retry_after_s):
        return str(min(max(1, math.ceil(retry_after_s)), 86_400))
    if status in RETRYABLE_STATUSES:
        return "1"
    return None


def sse_error_event(vendor: Vendor, error: ErrorInfo) -> bytes:
    """The Server-Sent Event ending a stream with `error`: OpenAI streams a data-only
    `{"error": ...}`; Anthropic an `error` event with its error object."""
    body = error_body(
        vendor,
        type=error.type,
        message=error.message,
        code=error.code,
        param=error.param,
        details=error.details,
    )
    if vendor == "anthropic":
        return b"event: error\ndata: " + body + b"\n\n"
    return b"data: " + body + b"\n\n"


class ClientDisconnected(Exception):
    """The client went away while waiting; nobody will read the response."""


class ReplyFailed(Exception):
    """The request reached a terminal state other than completed: answered with its
    `ErrorInfo` as it is, in the client API's format."""

    def __init__(self, failed: ChatFailed) -> None:
        super().__init__(failed.data.error.message)
        self.failed = failed
        # Set by the request path (e.g. the rate-limit headers of the caller's limits).
        self.headers: dict[str, str] = {}

    def response(self, vendor: Vendor) -> Response:
        """The error response in `vendor`'s format (OpenAI's error object or Anthropic's
        `{"type":"error","error":{...}}`), with the request id and any headers set on it."""
        error = self.failed.data.error
        # The request id lets a retry with the same Idempotency-Key find this outcome.
        return error_response(
            vendor,
            error.status,
            type=error.type,
            message=error.message,
            code=error.code,
            param=error.param,
            headers={**self.headers, REQUEST_ID_HEADER: self.failed.request_id},
            retry_after_s=error.retry_after_s,
            # The upstream's own word when it gave one; else, as for the gateway's own
            # refusals, a request refused for what it is will be refused again.
            should_retry=(
                error.should_retry
                if error.should_retry is not None
                else (False if error.status in FINAL_STATUSES else None)
            ),
            details=error.details,
        )


def error_response(
    vendor: Vendor,
    status: int,
    *,
    type: str,
    message: str,
    code: str | None = None,
    param: str | None = None,
    headers: Mapping[str, str] | None = None,
    retry_after_s: float | None = None,
    should_retry: bool | None = None,
    details: dict[str, Any] | None = None,
) -> Response:
    """The one HTTP error answer of the gateway: `error_body` in `vendor`'s format with
    `status`, and `Retry-After` (whole seconds, rounded up) when the error is retryable and
    `headers` do not already carry it (`retry_after_s` given, or a 429/503/529), with
    `retry-after-ms` (the exact wait in milliseconds) when `retry_after_s` is given; an empty
    `Retry-After` in `headers` means none is sent. A quota used up (`insufficient_quota`)
    without a given wait gets none, and `x-should-retry: false` (the official SDKs then do
    not retry it). `should_retry` (an upstream's `x-should-retry`, relayed) is sent as
    that header, `true` or `false`; with `false`, a 429/503/529 gets no default
    `Retry-After` (only `retry_after_s`, when given)."""
    sent = dict(headers or {})
    if should_retry is not None:
        sent.setdefault("x-should-retry", "true" if should_retry else "false")
    if code == "insufficient_quota" and "Retry-After" not in sent and retry_after_s is None:
        # A quota used up (an upstream's, relayed) does not come back in a second: no
        # Retry-After, and the SDKs are told not to retry on their own.
        sent.setdefault("x-should-retry", "false")
    elif "Retry-After" not in sent:
        # Told not to retry (an upstream's `x-should-retry: false`, relayed), the client
        # gets no default wait to retry after: only one the error itself gave.
        told_not_to = any(
            name.lower() == "x-should-retry" and value == "false" for name, value in sent.items()
        )
        wait = None if told_not_to and retry_after_s is None else retry_after(status, retry_after_s)
        if wait is not None:
            sent["Retry-After"] = wait
        if retry_after_s is not None and math.isfinite(retry_after_s) and retry_after_s >= 0:
            # The exact wait, which both official SDKs read before Retry-After.
            # (Capped before it is scaled: a wait near a float's range overflows when
            # multiplied.)
            sent.setdefault("retry-after-ms", str(round(min(retry_after_s, 86_400) * 1000)))
    elif not sent["Retry-After"]:
        del sent["Retry-After"]  # the error said retrying would not help (an empty value)
    return Response(
        error_body(
            vendor,
            type=type,
            message=message,
            code=code,
            param=param,
            # The id the answer's headers name (an Idempotency-Key refusal names the
            # original request), else this request's.
            request_id=_named_request_id(sent) or current_request_id.get(),
            details=details,
        ),
        status_code=status,
        media_type="application/json",
        headers=sent,
    )


def _named_request_id(headers: Mapping[str, str]) -> str | None:
    return next(
        (value for name, value in headers.items() if name.lower() == REQUEST_ID_HEADER), None
    )


def api_error_response(vendor: Vendor, exc: APIError) -> Response:
    """The answer to an error the gateway raised itself, in `vendor`'s format (its `type`
    in that API's vocabulary for the status); a refusal no retry can get past
    (`FINAL_STATUSES`) says `x-should-retry: false` unless its headers say otherwise."""
    return error_response(
        vendor,
        exc.status,
        type=exc.type if vendor == "openai" else error_type(vendor, exc.status),
        message=exc.message,
        code=exc.code,
        param=exc.param,
        headers=exc.headers,
        should_retry=False if exc.status in FINAL_STATUSES else None,
        details=exc.details,
    )


def respond(path: str, exc: APIError, headers: Mapping[str, str] | None = None) -> Response:
    """`exc` answered in the format of a request for `path` with `headers` (`vendor_of`),
    for ASGI middleware that has the path and headers but no `Request`."""
    return api_error_response(vendor_of(path, headers), exc)


def respond_to(request: Request, exc: APIError, *, unrouted: bool = False) -> Response:
    """`exc` answered in the format of the API `request` called (`vendor_of`)."""
    return api_error_response(vendor_of_request(request, unrouted=unrouted), exc)


def install_api_error_handlers(app: FastAPI) -> None:
    """Replace the common handlers with ones that pick the format by path."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> Response:
        return respond_to(request, exc)

    @app.exception_handler(ReplyFailed)
    async def _reply_failed(request: Request, exc: ReplyFailed) -> Response:
        return exc.response(vendor_of_request(request))

    @app.exception_handler(ClientDisconnected)
    async def _client_gone(_: Request, __: ClientDisconnected) -> Response:
        # Nobody reads this; 499 is the conventional "client closed request" in access logs.
        return Response(status_code=499)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        content_type = request.headers.get("content-type")
        return respond_to(request, validation_error(list(exc.errors()), content_type))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        detail = exc.detail if isinstance(exc.detail, str) else "Request failed."
        if exc.status_code == 404 and detail == "Not Found":
            error = APIError(404, unknown_route_message(request.url.path), code="unknown_url")
            # An SDK pointed at the wrong base URL: answer in its own format.
            return respond_to(request, error, unrouted=True)
        return respond_to(request, http_error(request, exc))


_MODEL_API_PATHS = ("/chat/", "/messages", "/responses", "/embeddings", "/models", "/completions")


def unknown_route_message(path: str) -> str:
    """The 404 message for a path no route serves, with a hint when it looks like an SDK
    configured with the wrong base URL (the OpenAI SDK's ends in `/v1`, the Anthropic SDK's
    is the server's root)."""
    if path.startswith("/v1/v1/"):
        return (
            f"No route at {path}: the base URL has /v1 twice. The Anthropic SDK's base URL "
            "is the gateway's root (http://host:port); the OpenAI SDK's ends in /v1."
        )
    if path.startswith(_MODEL_API_PATHS):
        return (
            f"No route at {path}: model APIs are under /v1. The OpenAI SDK's base URL ends "
            "in /v1 (http://host:port/v1)."
        )
    if path.startswith("/v1/"):
        return f"No route at {path}; every route is listed at /docs."
    if path == "/ui" or path.startswith("/ui/"):
        # The console's pages answer their own 404s: here it is turned off.
        return (
            f"No route at {path}: the web console is turned off on this gateway "
            "(SWITCHYARD_GATEWAY_CONSOLE_ENABLED)."
        )
    return f"No route at {path}. The model APIs are under /v1; every route is listed at /docs."


class UnexpectedFaults(CommonUnexpectedFaults):
    """`http.UnexpectedFaults` answering in the called API's format (`respond`), added
    inside the CORS and request id middleware so that the 500 carries their headers (a
    browser can read it, and `x-request-id` names it)."""

    @override
    def answer(self, scope: Scope, error: APIError) -> Response:
        headers = {
            name.decode("latin-1").lower(): value.decode("latin-1")
            for name, value in scope["headers"]
        }
        if error.status == 500:
            error = APIError(500, "The gateway failed to answer this request.")
        return respond(scope["path"], error, headers)
