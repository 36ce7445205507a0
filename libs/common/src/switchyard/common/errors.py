"""One error format for every Switchyard HTTP API: OpenAI's error object,
`{"error": {"message", "type", "param", "code"}}`, so the official SDKs raise the
right exception with a readable message. Validation failures are 400 (not FastAPI's 422),
naming the offending field."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match, Mount
from starlette.types import Scope

# OpenAI's error `type` by HTTP status (the OpenAI API reference, "Error codes", and the
# types its servers answer with: an unknown API key is a 401 `invalid_request_error`, code
# `invalid_api_key`; a model, a route or an object not found is a 404
# `invalid_request_error`, code `model_not_found` for a model; a failure of the server
# itself is a 500 `server_error`).
OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    408: "timeout_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    431: "invalid_request_error",
    500: "server_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


# The methods a 405's `Allow` can name (RFC 9110, 9.3).
HTTP_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allowed_methods(scope: Scope) -> str:
    """The `Allow` header of a 405 (RFC 9110, 15.5.6: every method the target resource
    supports) for the request `scope`: each method some route of the app answering it
    (`scope["app"]`) fully matches at this path, with HEAD wherever GET is
    (`http.HeadAsGet`), sorted and comma-separated. Starlette's own 405 names only the
    first matching route's methods: `PUT /v1/responses/{id}` was told `GET` although
    DELETE is served there too. Mounted apps answer their own 405s (their `app` is in the
    scope then), so a mount is not asked here: it would match any method."""
    router = getattr(scope.get("app"), "router", None)
    routes = [r for r in getattr(router, "routes", ()) if not isinstance(r, Mount)]
    methods = {
        method
        for method in HTTP_METHODS
        if any(route.matches({**scope, "method": method})[0] == Match.FULL for route in routes)
    }
    if "GET" in methods:
        methods.add("HEAD")
    return ", ".join(sorted(methods))


def http_error_headers(request: Request, exc: StarletteHTTPException) -> dict[str, str] | None:
    """The headers of Starlette's HTTP error `exc` answering `request`; a 405's `Allow`
    names every method served at the path (`http.allowed_methods`), not only the first
    route's."""
    headers = getattr(exc, "headers", None)
    if exc.status_code != 405:
        return headers
    allowed = allowed_methods(request.scope)
    # Nothing found: a 405 of a mounted app that is not a router (static files); its
    # own headers stand, never an empty Allow, which would say no method is served.
    return {**(headers or {}), "Allow": allowed} if allowed else headers


def http_error(request: Request, exc: StarletteHTTPException) -> APIError:
    """Starlette's HTTP error `exc` answering `request`, as the APIError to send. A 405 says
    which method was sent where and which ones the path serves (`Allow`, from
    `http_error_headers`), with the code `method_not_allowed`: Starlette's own detail is
    only "Method Not Allowed". Any other keeps its detail (and `code`, when it has one)."""
    headers = http_error_headers(request, exc)
    if exc.status_code == 405:
        allowed = (headers or {}).get("Allow")
        # Quoted as JSON in the body, and cut: the path is the client's.
        where = f"{request.method} {request.url.path[:256]}"
        served = f"; this address takes {allowed}." if allowed else "."
        return APIError(
            405,
            f"Method not allowed: {where}{served}",
            code="method_not_allowed",
            headers=headers,
        )
    detail = exc.detail if isinstance(exc.detail, str) else "Request failed."
    return APIError(exc.status_code, detail, code=getattr(exc, "code", None), headers=headers)


def json_type(value: Any) -> str:
    """How OpenAI's error messages name the JSON type of a parsed JSON `value` ("a
    string", "an array", "null"...), as in "expected an array, but got a string"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def json_value(value: Any, limit: int = 64) -> str:
    """A parsed JSON `value` as an error message quotes it: a string as OpenAI's messages
    do (`'auto'`), anything else as compact JSON (`true`, `null`, `3`, `{"a":1}`), never
    Python's spelling (`True`, `None`); cut to `limit` characters, then `...`."""
    if isinstance(value, str):
        return repr(value if len(value) <= limit else value[:limit] + "...")
    try:
        text = orjson.dumps(value).decode()
    except TypeError:  # not JSON (a caller's own object): its JSON type
        text = json_type(value)
    return text if len(text) <= limit else text[:limit] + "..."


def unsupported_value(value: str, supported: Sequence[str]) -> str:
    """OpenAI's words for an enumerated value it does not take, `value` cut at 64
    characters: "Invalid value: 'x'. Supported values are: 'a', 'b', and 'c'." ("'a'
    and 'b'" for two)."""
    names = [f"'{name}'" for name in supported]
    if len(names) <= 2:
        listed = " and ".join(names)
    else:
        listed = ", ".join(names[:-1]) + f", and {names[-1]}"
    return f"Invalid value: '{value[:64]}'. Supported values are: {listed}."


class APIError(Exception):
    """Raise anywhere in a request to answer with this status and error object."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        # Anthropic's machine-readable part of the error (`{"error_code": ...}`), sent in
        # its format only (`errorformat.error_body`).
        self.details = details
        self.message = message
        self.type = type or OPENAI_TYPES.get(
            status, "invalid_request_error" if 400 <= status < 500 else "server_error"
        )
        self.code = code
        self.param = param
        self.headers = headers


def error_body(message: str, type: str, code: str | None = None, param: str | None = None) -> bytes:
    """The JSON bytes of OpenAI's error object, `{"error": {"message", "type", "param",
    "code"}}` (OpenAI API reference, "Error codes")."""
    return orjson.dumps({"error": {"message": message, "type": type, "param": param, "code": code}})


def error_response(exc: APIError) -> Response:
    """The HTTP response for `exc`: its status and headers, OpenAI's error object as body."""
    return Response(
        error_body(exc.message, exc.type, exc.code, exc.param),
        status_code=exc.status,
        media_type="application/json",
        headers=exc.headers,
    )


def _location(loc: tuple[Any, ...]) -> str:
    parts = [str(part) for part in loc if part not in ("body", "query", "path", "header")]
    return ".".join(parts)


def not_json_message(reason: str | None = None, position: int | None = None) -> str:
    """The message for a body that is not valid JSON, with what the parser refused
    (`reason`, such as orjson's `JSONDecodeError.msg`: "trailing comma is not allowed",
    "no low surrogate in string") and where (`position`, its 0-based character offset),
    when known: a client told only "not valid JSON" cannot find a lone `\\ud800` escape or
    a stray comma in a long body."""
    if not reason:
        return "The request body is not valid JSON."
    if "not valid UTF-8" in reason:
        # orjson's "str is not valid UTF-8: surrogates not allowed" names no place in the
        # body (its position is 0) and speaks of Python's str.
        return "The request body is not valid JSON: it is not UTF-8 text, as JSON must be."
    where = f" at character {position}" if isinstance(position, int) else ""
    return f"The request body is not valid JSON: {reason}{where}."


def invalid_json(exc: ValueError) -> APIError:
    """The 400 `invalid_json` for a body a JSON parser refused with `exc` (a
    `json.JSONDecodeError`, which orjson's error is, gives its reason and position)."""
    if isinstance(exc, json.JSONDecodeError):
        message = not_json_message(exc.msg, exc.pos)
    else:
        message = not_json_message()
    return APIError(400, message, code="invalid_json")


def _not_json(error: dict[str, Any]) -> str:
    """`not_json_message` for one of FastAPI's `json_invalid` validation errors (its
    `ctx.error` is the parser's reason, its `loc` ends with the position)."""
    ctx = error.get("ctx")
    reason = ctx.get("error") if isinstance(ctx, dict) else None
    loc = tuple(error.get("loc", ()))
    position = loc[-1] if len(loc) > 1 else None
    return not_json_message(str(reason) if reason else None, position)


def validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """A readable one-line message and the first offending parameter."""
    if not errors:
        return "Invalid request.", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        return _not_json(first), None
    param = _location(tuple(first.get("loc", ()))) or None
    message = first.get("msg", "Invalid value")
    text = f"Invalid value for '{param}': {message}" if param else f"Invalid request: {message}"
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    return text, param


# Pydantic's error types for a value of the wrong kind where an object was expected
# (https://docs.pydantic.dev/latest/errors/validation_errors/).
_NOT_AN_OBJECT = frozenset({"model_type", "model_attributes_type", "dict_type"})


def validation_error(errors: list[dict[str, Any]], content_type: str | None = None) -> APIError:
    """The 400 for FastAPI's request validation `errors` (`RequestValidationError.errors()`):
    code `invalid_json` when the body is empty, not JSON, or JSON but not an object (as the
    gateway's model routes answer, never naming the model class the body was checked
    against), else `invalid_request` naming the first offending parameter
    (`validation_message`). A body sent with a `content_type` other than JSON (which FastAPI
    does not read as JSON) is 415 `unsupported_media_type` saying to send JSON, rather
    than told it is no JSON object."""
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return APIError(400, _not_json(first), code="invalid_json")
    if tuple(first.get("loc", ())) == ("body",):
        if content_type and not _is_json(content_type) and first.get("type") != "missing":
            return APIError(
                415,
                f"The request body was sent as {content_type.split(';')[0].strip()!r}; send "
                "it as JSON, with 'Content-Type: application/json'.",
                code="unsupported_media_type",
            )
        if first.get("type") in _NOT_AN_OBJECT:
            return APIError(400, "The request body must be a JSON object.", code="invalid_json")
        if first.get("type") == "missing":
            return APIError(
                400, "The request body is empty; send a JSON object.", code="invalid_json"
            )
    message, param = validation_message(errors)
    return APIError(400, message, param=param, code="invalid_request")


def _is_json(content_type: str) -> bool:
    """Whether `content_type` is JSON's (`application/json`, or a `+json` type)."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def install_error_handlers(app: FastAPI) -> None:
    """Make `app` answer every error in OpenAI's error format: `APIError` as raised,
    request validation failures as 400 naming the field, and Starlette HTTP errors with their
    status and headers."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> Response:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        content_type = request.headers.get("content-type")
        return error_response(validation_error(list(exc.errors()), content_type))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return error_response(http_error(request, exc))
