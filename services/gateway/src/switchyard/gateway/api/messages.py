"""`POST /v1/messages`: Anthropic's Messages API, for clients using the `anthropic` SDK
(Claude Code, the Vercel AI SDK...). The body and the `anthropic-version` and
`anthropic-beta` headers are published as they came; the reply (a `message`, or the
event stream `message_start` ... `message_stop`) is relayed as inference sent it,
already in this API's shape, whatever protocol the model's deployment speaks.

`POST /v1/messages/count_tokens` takes the same path through the bus (the same
credentials, scope, model access check, deadline and history as any model request; only
inference holds provider credentials): an Anthropic-protocol deployment counts the tokens
itself, any other gets an estimate from a tokenizer, which the answer says in
`x-switchyard-token-count` (`exact` or `estimate`)."""

from __future__ import annotations

import datetime
import re

from fastapi import APIRouter, Request, Response

from switchyard.common.errors import APIError
from switchyard.common.events import ClientAPI
from switchyard.common.headers import ANTHROPIC_VERSION_HEADER
from switchyard.gateway.api.body import openapi_body, read_request_off_loop
from switchyard.gateway.api.deps import CurrentPrincipal, GatewayDep
from switchyard.gateway.dispatch import Dispatch
from switchyard.gateway.schemas import AnthropicCountTokensRequest, AnthropicMessagesRequest

router = APIRouter(prefix="/v1", tags=["messages"])


# An Anthropic API version is a date (https://docs.anthropic.com/en/api/versioning:
# `2023-06-01`; the SDKs move to newer ones as they are published). Anything else is
# refused as the API refuses it, whatever deployment serves the model (a translated
# request would otherwise ignore it): a value that is not a date, a day no calendar has,
# and a day still to come, which no version can be yet. Which past dates are versions is
# the API's to say.
ANTHROPIC_VERSION_FORMAT = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _is_version(version: str) -> bool:
    if ANTHROPIC_VERSION_FORMAT.fullmatch(version) is None:
        return False
    try:
        day = datetime.date.fromisoformat(version)
    except ValueError:
        return False
    # A day of slack: the API's calendar may be ahead of this host's time zone.
    return day <= datetime.datetime.now(datetime.UTC).date() + datetime.timedelta(days=1)


def anthropic_version_refusal(values: list[str]) -> APIError | None:
    """The refusal of the `anthropic-version` header `values` (each time it was sent), as
    Anthropic's API words it, or None for one version: `"X" is not a valid version` for a
    value that is not a date, a day still to come or a header sent twice; None also when
    it was not sent."""
    version = ", ".join(value.strip() for value in values)
    if not version or _is_version(version):
        return None
    shown = version[:64].replace("\\", "\\\\").replace('"', '\\"')
    return APIError(
        400,
        f'{ANTHROPIC_VERSION_HEADER}: "{shown}" is not a valid version',
        type="invalid_request_error",
    )


def require_anthropic_version(request: Request) -> None:
    """Refuse, as Anthropic's API does (https://docs.anthropic.com/en/api/versioning), a
    request without `anthropic-version` (400 `invalid_request_error`, "anthropic-version:
    header is required") or with a value that is not a version (`"X" is not a valid
    version`: not a date, or the header sent twice). Passed on without one, it would reach the
    deployment with whatever version its SDK defaults to, which the client never chose.
    Raises APIError."""
    values = request.headers.getlist(ANTHROPIC_VERSION_HEADER)
    if not "".join(values).strip():
        raise APIError(
            400, f"{ANTHROPIC_VERSION_HEADER}: header is required", type="invalid_request_error"
        )
    refusal = anthropic_version_refusal(values)
    if refusal is not None:
        raise refusal


@router.post(
    "/messages",
    summary="Create a message (Anthropic-compatible)",
    openapi_extra=openapi_body(AnthropicMessagesRequest),
    response_model=None,
)
async def create_message(
    request: Request, principal: CurrentPrincipal, gateway: GatewayDep
) -> Response:
    """Create a message; streams Anthropic's Server-Sent Events when `stream` is true."""
    require_anthropic_version(request)
    client = await read_request_off_loop(ClientAPI.ANTHROPIC_MESSAGES, await request.body())
    dispatch = await Dispatch.start(gateway, request, principal, client)
    return await dispatch.answer()


@router.post(
    "/messages/count_tokens",
    summary="Count the tokens of a message (Anthropic-compatible)",
    openapi_extra=openapi_body(AnthropicCountTokensRequest),
    response_model=None,
)
async def count_message_tokens(
    request: Request, principal: CurrentPrincipal, gateway: GatewayDep
) -> Response:
    """Count the input tokens of a Messages request, `{"input_tokens": N}`: the model's own
    count, or an estimate (`x-switchyard-token-count: estimate`)."""
    require_anthropic_version(request)
    client = await read_request_off_loop(ClientAPI.ANTHROPIC_COUNT_TOKENS, await request.body())
    dispatch = await Dispatch.start(gateway, request, principal, client)
    return await dispatch.answer()
