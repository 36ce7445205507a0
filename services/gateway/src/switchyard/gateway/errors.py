"""Errors in the shape of the API that was called: OpenAI's error object everywhere,
except on Anthropic's `/v1/messages`, where clients (the `anthropic` SDK) expect
`{"type": "error", "error": {"type", "message"}}`. Chosen by path, so authentication,
validation and size-limit failures are shaped right too."""

from __future__ import annotations

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from switchyard.common.errors import APIError, error_response, validation_message
from switchyard.gateway.dispatch import ClientDisconnected

ANTHROPIC_PATHS = ("/v1/messages",)

_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    409: "invalid_request_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
}


def is_anthropic_path(path: str) -> bool:
    return path.startswith(ANTHROPIC_PATHS)


def anthropic_error_body(status: int, message: str) -> bytes:
    error_type = _ANTHROPIC_TYPES.get(status, "api_error")
    return orjson.dumps({"type": "error", "error": {"type": error_type, "message": message}})


def anthropic_error_response(exc: APIError) -> Response:
    return Response(
        anthropic_error_body(exc.status, exc.message),
        status_code=exc.status,
        media_type="application/json",
        headers=exc.headers,
    )


def respond(request: Request, exc: APIError) -> Response:
    if is_anthropic_path(request.url.path):
        return anthropic_error_response(exc)
    return error_response(exc)


def install_api_error_handlers(app: FastAPI) -> None:
    """Replace the common handlers with ones that pick the format by path."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> Response:
        return respond(request, exc)

    @app.exception_handler(ClientDisconnected)
    async def _client_gone(_: Request, __: ClientDisconnected) -> Response:
        # Nobody reads this; 499 is the conventional "client closed request" in access logs.
        return Response(status_code=499)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        message, param = validation_message(list(exc.errors()))
        return respond(request, APIError(400, message, param=param, code="invalid_request"))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        detail = exc.detail if isinstance(exc.detail, str) else "Request failed."
        return respond(
            request, APIError(exc.status_code, detail, headers=getattr(exc, "headers", None))
        )
