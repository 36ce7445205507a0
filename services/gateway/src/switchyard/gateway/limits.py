"""The gateway's request body limit: the shared `BodySizeLimit`, answering in the format
of the API that was called (Anthropic's error shape on `/v1/messages`)."""

from __future__ import annotations

from starlette.types import ASGIApp

from switchyard.common.errors import error_body
from switchyard.common.limits import BodySizeLimit as _SharedBodySizeLimit
from switchyard.gateway.errors import anthropic_error_body, is_anthropic_path


def _render(path: str, status: int, message: str) -> bytes:
    if is_anthropic_path(path):
        return anthropic_error_body(status, message)
    return error_body(message, "invalid_request_error", "request_too_large")


class BodySizeLimit(_SharedBodySizeLimit):
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        super().__init__(app, max_bytes, _render)
