"""The gateway's request body limits: the shared `BodySizeLimit`, with the limit of each
model API's route following the provider's own API (`Settings.max_body_bytes_for`), and
answering in the format of the API that was called (Anthropic's error shape on
`/v1/messages`, and on `/v1/models` to a request with `anthropic-version`).

`/v1/jobs`, which carries any of the model APIs, has the largest of their limits plus room
for the job's own fields (the model request's own API's limit is checked once the body
says which it is, on the model request alone); every other route has `max_body_bytes`.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Scope

from switchyard.common.errorformat import current_request_id
from switchyard.common.events import ClientAPI
from switchyard.common.limits import BodySizeLimit as _SharedBodySizeLimit
from switchyard.common.limits import too_large_message
from switchyard.gateway.config import Settings
from switchyard.gateway.errors import error_body, error_type, vendor_of

API_PATHS: dict[str, ClientAPI] = {
    "/v1/chat/completions": ClientAPI.OPENAI_CHAT_COMPLETIONS,
    "/v1/messages": ClientAPI.ANTHROPIC_MESSAGES,
    "/v1/embeddings": ClientAPI.OPENAI_EMBEDDINGS,
}
JOBS_PATH = "/v1/jobs"
# Room for what a job adds around its model request (`url`, `method`, `custom_id`,
# `webhook_url`): the request itself is held to its own API's limit once it is read.
JOB_ENVELOPE_BYTES = 16 * 1024
# Model API routes that jobs do not carry.
OTHER_API_PATHS: dict[str, ClientAPI] = {
    "/v1/messages/count_tokens": ClientAPI.ANTHROPIC_COUNT_TOKENS,
    "/v1/responses/input_tokens": ClientAPI.OPENAI_RESPONSES_INPUT_TOKENS,
}
# The Responses API takes OpenAI's limit, like Chat Completions (not a job API here).
RESPONSES_PATH = "/v1/responses"
# The internal admission of replayed requests (`api/admissions.py`).
ADMISSIONS_PATH = "/internal/v1/admissions"

__all__ = ["API_PATHS", "JOBS_PATH", "BodySizeLimit", "path_limits", "too_large_message"]


def path_limits(settings: Settings) -> dict[str, int]:
    """The body limit of each path that has its own, in bytes."""
    limits = {path: settings.max_body_bytes_for(api) for path, api in API_PATHS.items()}
    limits[JOBS_PATH] = max(limits.values()) + JOB_ENVELOPE_BYTES
    limits.update({path: settings.max_body_bytes_for(api) for path, api in OTHER_API_PATHS.items()})
    limits[RESPONSES_PATH] = settings.max_body_bytes_for(ClientAPI.OPENAI_RESPONSES)
    # History's replays ask admission for recorded requests of any API, in an envelope.
    limits[ADMISSIONS_PATH] = limits[JOBS_PATH]
    return limits


def _render(scope: Scope, status: int, message: str, code: str) -> bytes:
    # The headers too: `/v1/models` answers in Anthropic's format to `anthropic-version`.
    vendor = vendor_of(scope["path"], Headers(scope=scope))
    return error_body(
        vendor,
        type=error_type(vendor, status),
        message=message,
        code=code,
        request_id=current_request_id.get(),
    )


class BodySizeLimit(_SharedBodySizeLimit):
    """The shared request body size limit with the gateway's per-path limits (bytes), answering
    413 in the called API's error format."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        super().__init__(app, settings.max_body_bytes, _render, path_limits=path_limits(settings))
