"""Which API's error format an answer is in, and the error object of each, written once for
every writer of errors: the gateway's exception handlers and size limit
(`switchyard.gateway.errors`) and the HTTP server's connection-level refusals (431, 408:
`switchyard.common.httpserver`), which answer before any app sees the request.

OpenAI's APIs answer `{"error": {"message", "type", "param", "code"}}` (the OpenAI API
reference, "Error codes"); Anthropic's `/v1/messages` answers
`{"type": "error", "error": {"type", "message"}, "request_id"}` (the Anthropic API
reference, "Errors"; the format the `anthropic` SDK reads), with `code` and `param` added
when there is one, and the id of the request answered (its `request-id` header) when
there is one.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any, Literal

import orjson

from switchyard.common.errors import OPENAI_TYPES
from switchyard.common.headers import ANTHROPIC_VERSION_HEADER

Vendor = Literal["openai", "anthropic"]

# The id of the request being answered, set for the time of the request by the HTTP
# app that gives requests their ids (the gateway's `RequestIdMiddleware`), for the
# writers of whole error answers deep inside it (Anthropic's carry it).
current_request_id: ContextVar[str | None] = ContextVar("current_request_id", default=None)

# Paths whose answers are always in Anthropic's format.
ANTHROPIC_PATHS = ("/v1/messages",)
# Routes both SDKs call: the answer, errors included, is in Anthropic's format when the
# request carries `anthropic-version` (the `anthropic` SDK always sends it).
SHARED_PATHS = ("/v1/models",)

# Anthropic's error types by HTTP status (its API reference, "Errors": 400
# `invalid_request_error` also stands for "other 4XX status codes not listed", hence 409
# and 422; 402, 408 and 504 are the `billing_error` and `timeout_error` of the SDKs'
# `ErrorType`; 431 is a request too large in its head).
ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    409: "invalid_request_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    431: "request_too_large",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def vendor_of(
    path: str, headers: Mapping[str, str] | None = None, *, unrouted: bool = False
) -> Vendor:
    """Whose format the answer to a request for `path` (the URL path, no query) is in,
    errors included: Anthropic's on `/v1/messages...`; on the routes both SDKs call
    (`SHARED_PATHS`), and on any path when no route serves it (`unrouted`: an SDK pointed
    at the wrong base URL), Anthropic's when `headers` (lower-case names, as ASGI and
    Starlette give them) carry `anthropic-version`; OpenAI's otherwise, and whenever
    `headers` is None (not at hand, as before the request head is parsed)."""
    if path.startswith(ANTHROPIC_PATHS):
        return "anthropic"
    if (
        headers is not None
        and ANTHROPIC_VERSION_HEADER in headers
        and (unrouted or path.startswith(SHARED_PATHS))
    ):
        return "anthropic"
    return "openai"


def error_type(vendor: Vendor | str, status: int) -> str:
    """The error `type` the API of `vendor` (`anthropic`; any other name means OpenAI's)
    uses for HTTP `status`: its documented word for the status, else
    `invalid_request_error` for a 4xx and the API's word for a server failure
    (`api_error`, OpenAI's `server_error`) for anything else."""
    types = ANTHROPIC_TYPES if vendor == "anthropic" else OPENAI_TYPES
    kind = types.get(status)
    if kind is not None:
        return kind
    if 400 <= status < 500:
        return "invalid_request_error"
    return "api_error" if vendor == "anthropic" else "server_error"


# The status Anthropic's API reference ("Errors") gives a type that `ANTHROPIC_TYPES`
# names for more than one status: a `timeout_error` is its 504 (408 is the SDKs' word
# for their own timeout), an `overloaded_error` its 529.
_ANTHROPIC_TYPE_STATUS = {"timeout_error": 504, "overloaded_error": 529}


def status_of(vendor: Vendor | str, type: str) -> int | None:
    """The HTTP status the error `type` of `vendor`'s API (as `error_type`) stands for:
    the one Anthropic's reference lists for it (`_ANTHROPIC_TYPE_STATUS`), else the lowest
    status with that word (400 for `invalid_request_error`); None for a word the API does
    not use for any status."""
    if vendor == "anthropic" and type in _ANTHROPIC_TYPE_STATUS:
        return _ANTHROPIC_TYPE_STATUS[type]
    types = ANTHROPIC_TYPES if vendor == "anthropic" else OPENAI_TYPES
    return min((status for status, kind in types.items() if kind == type), default=None)


def error_body(
    vendor: Vendor,
    *,
    type: str,
    message: str,
    code: str | None = None,
    param: str | None = None,
    request_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> bytes:
    """The JSON error object (UTF-8 bytes) of `vendor`'s API. Anthropic's carries
    `request_id` when given (a whole error answer: the API's do; its streams' `error`
    events do not), and `details` when given (Anthropic's machine-readable part,
    `{"error_code": ...}`, which its SDKs read to recover, e.g. from
    `thread_unsupported_request`); OpenAI's error object has neither (its id travels in
    the `x-request-id` header only)."""
    if vendor == "anthropic":
        error: dict[str, Any] = {"type": type, "message": message}
        if code is not None:
            error["code"] = code
        if param is not None:
            error["param"] = param
        if details is not None:
            error["details"] = details
        if request_id is None:
            return orjson.dumps({"type": "error", "error": error})
        return orjson.dumps({"type": "error", "error": error, "request_id": request_id})
    return orjson.dumps({"error": {"message": message, "type": type, "param": param, "code": code}})
