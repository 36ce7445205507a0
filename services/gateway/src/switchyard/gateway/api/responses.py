"""`/v1/responses`: OpenAI's Responses API, for clients using the `openai` SDK's
`client.responses` (the OpenAI Agents SDK, the Vercel AI SDK's `openai(model)`...).

`POST /v1/responses` is published like every model request and relayed as inference
answers it (a `response`, or its typed event stream), whatever protocol the model's
deployment speaks. Switchyard serves the conversation state itself, so chaining works on
every model:

- `previous_response_id` is expanded here, before publishing: the gateway reads that
  response's conversation from history (its input items, then its output items) and
  publishes it with the request (`ChatRequestData.previous_items`), the body unchanged.
  Here, not in inference, because (1) a client must get 404 for an unknown id (or one
  purged, deleted, never stored, or another tenant's) before anything runs, which only
  a synchronous answer gives; (2) the event then holds everything it ran with, so a
  replay of it runs the same conversation even after the previous response was deleted
  or purged; (3) inference stays free of calls to history. A response answered moments
  ago may not be recorded yet (its events are on the bus): the gateway waits for it up to
  `SWITCHYARD_GATEWAY_RESPONSES_STATE_WAIT_S`;
- `store` (default true) and `metadata`: history keeps the response's input and output
  items under the tenant's own rules (metadata-only tenants keep none; retention purges
  them); `store: false` keeps none;
- `item_reference` input items are replaced by the stored items they name, and a
  `reasoning` item Switchyard made (an Anthropic model's thinking) sent back by its id
  alone, without `encrypted_content` (as clients of a stored conversation do, such as
  LangChain), gets it from the stored item (`resolve_item_references`): the model's
  thinking must go back to it within a tool loop;
- `POST /v1/responses/input_tokens` counts the input tokens a response would use, for
  the same body and on the same path (previous items and item references resolved here);
- `background: true`: answered at once with the `queued` response; the request runs in
  the batch lane (like a job, it is listed under `/v1/jobs` too); `GET
  /v1/responses/{id}` shows its progress and result, `POST /v1/responses/{id}/cancel`
  cancels it. Refused (400 naming `background`) in a tenant keeping metadata only,
  whose result history would never keep, as with `store: false`.

`GET /v1/responses/{id}`, `GET /v1/responses/{id}/input_items` (cursor pages: `limit`,
`order`, `after`, `before`), `DELETE /v1/responses/{id}` and the cancellation are served
by history (`switchyard.history.responses`), for the caller's own responses (an admin:
the tenant's). Reading a response, or its input items, right after it was answered
waits like `previous_response_id` does until history has recorded it. A response is
found by its whole id (request id and creation time), never by the request id alone.
Errors are OpenAI's error object, naming the field at fault.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import httpx
import orjson
import structlog
from fastapi import APIRouter, Request, Response
from starlette.convertors import StringConvertor, register_url_convertor

from switchyard.common import exactjson
from switchyard.common.errors import APIError, unsupported_value
from switchyard.common.events import (
    ClientAPI,
)
from switchyard.common.headers import RECORDED_HEADER, REQUEST_ID_HEADER
from switchyard.common.queryparams import list_parameter
from switchyard.common.responses import (
    RESPONSE_INCLUDABLE,
    includes_encrypted_reasoning,
    item_without_encrypted_reasoning,
    parse_response_id,
    response_id,
    response_object,
    unknown_includable,
    upstream_item,
    without_encrypted_reasoning,
)
from switchyard.gateway.api.body import ClientRequest, openapi_body, read_request_off_loop
from switchyard.gateway.api.deps import (
    CurrentPrincipal,
    GatewayDep,
    check_reads_stored,
    reads_stored,
)
from switchyard.gateway.api.history import (
    call,
    error_of,
    forward,
    identity_headers,
    looks_like_id,
    read_when_recorded,
    relay,
)
from switchyard.gateway.api.jobs import request_cancellation
from switchyard.gateway.auth import Principal
from switchyard.gateway.bootstrap import Gateway
from switchyard.gateway.dispatch import Dispatch
from switchyard.gateway.intake import check_model, check_tool_models, submit_batch
from switchyard.gateway.recent_jobs import AcceptedJob
from switchyard.gateway.schemas import ResponsesInputTokensRequest, ResponsesRequest

log = structlog.get_logger("switchyard.gateway.responses")


class ResponseIdConvertor(StringConvertor):
    """A `{response_id}` path segment: any segment but `input_tokens` alone, which names
    the count route, so `GET /v1/responses/input_tokens` is 405 (only POST is served
    there), not a 404 for a response of that id."""

    regex = r"(?!input_tokens$)[^/]+"


register_url_convertor("response_id", ResponseIdConvertor())
router = APIRouter(prefix="/v1/responses", tags=["responses"])

# Statuses history answers while a response it should have is not recorded yet.
_NOT_YET = {(404, "response_not_found"), (409, "response_in_progress")}
# How far ahead of this replica's clock another replica's may run, in seconds: a response
# id stamped later than that was made by no replica, and is not waited for.
CLOCK_SKEW_S = 5.0


def _not_found(value: str, param: str = "response_id") -> APIError:
    return APIError(
        404, f"Response with id '{value[:64]}' not found.", param=param, code="response_not_found"
    )


def _may_still_arrive(gateway: Gateway, value: str) -> bool:
    """Whether a response with this id may have been answered so recently that history
    has not recorded it yet: its request id is one a gateway made (`RequestIds`: an id
    made up is answered at once, never waited for), and its creation time is within a
    request's lifetime, and not in the future (beyond `CLOCK_SKEW_S`)."""
    ref = parse_response_id(value)
    if ref is None or not gateway.request_ids.made_here(ref.request_id):
        return False
    window = gateway.settings.longest_request_s + gateway.settings.responses_state_wait_s
    now = datetime.now(UTC)
    return (
        now - timedelta(seconds=window + 60)
        < ref.created_at
        <= now + timedelta(seconds=CLOCK_SKEW_S)
    )


def _accepted_as(job: AcceptedJob, value: str) -> bool:
    """Whether `value` is the very id the background response `job` was answered with (its
    request id and its creation time), not merely one naming the same request."""
    try:
        created = datetime.fromisoformat(job.created_at)
    except ValueError:
        return False
    return response_id(job.job_id, created) == value


async def _unfinished(answer: httpx.Response) -> bool:
    """Whether history's 200 answer shows a response still `queued` or `in_progress` (a
    large answer read in a worker thread: `exactjson.loads_off_loop`)."""
    try:
        body = await exactjson.loads_off_loop(answer.content)
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("status") in ("queued", "in_progress")


async def _wait_for(
    gateway: Gateway,
    principal: Principal,
    value: str,
    path: str,
    request: Request | None = None,
) -> httpx.Response:
    """History's answer for the response `value` at `path`, waiting (with backoff, at most
    `responses_state_wait_s`) while a response answered moments ago is not recorded or
    still in progress there (also a 200 showing `in_progress` for a response this replica
    relayed to its end: the client has its outcome, history is about to)."""

    async def not_yet(answer: httpx.Response) -> bool:
        if answer.status_code == 200:
            # Recorded, but maybe not yet its outcome, which this replica's client has.
            return value in gateway.answered_responses and await _unfinished(answer)
        if answer.headers.get(RECORDED_HEADER) == "true":
            return False  # another caller's, or not under this id: nothing more will come
        return (answer.status_code, error_of(answer).get("code")) in _NOT_YET and _may_still_arrive(
            gateway, value
        )

    return await read_when_recorded(gateway, principal, path, request, not_yet=not_yet)


def _previous_not_found(previous: str, why: str | None = None) -> APIError:
    """OpenAI's refusal of a `previous_response_id` it holds no state for: 400
    `previous_response_not_found` (clients such as Codex recover from it by sending the
    whole conversation), `why` appended when the id is known but cannot be continued."""
    message = f"Previous response with id '{previous[:64]}' not found."
    return APIError(
        400,
        f"{message} {why}" if why else message,
        param="previous_response_id",
        code="previous_response_not_found",
    )


async def previous_items(
    gateway: Gateway, principal: Principal, previous: str
) -> list[dict[str, Any]]:
    """The conversation `previous_response_id` continues (its input items, then its output
    items), from history. APIError naming `previous_response_id` when it cannot be
    continued: 400 `previous_response_not_found` as OpenAI answers for one unknown,
    another tenant's, not stored, purged or deleted (the message says which); 409 still
    in progress; 400 not completed; 503 history unreachable."""
    if not looks_like_id(previous):
        raise _previous_not_found(previous)
    answer = await _wait_for(gateway, principal, previous, f"/v1/responses/{previous}/conversation")
    if answer.status_code == 200:
        return cast(list[dict[str, Any]], (await exactjson.loads_off_loop(answer.content))["data"])
    error = error_of(answer)
    code = error.get("code")
    if answer.status_code == 404:
        why = None if code == "response_not_found" else error.get("message")
        raise _previous_not_found(previous, why)
    raise APIError(
        answer.status_code if answer.status_code < 500 else 503,
        error.get("message") or "The previous response could not be read.",
        param="previous_response_id",
        code=code,
    )


# When history is asked again for references it did not find (an item answered moments
# ago whose events another history replica holds; the read barrier covers the replica
# asked), in seconds after the first answer; and at most how many references, and how
# long an id may be.
ITEM_REFERENCE_RETRIES_S = (0.05, 0.25)
MAX_ITEM_REFERENCES = 1000
MAX_ITEM_ID_LENGTH = 256


def _references_items(body: dict[str, Any]) -> list[Any]:
    """The ids of `body`'s `item_reference` input items, in order (empty for none)."""
    items = body.get("input")
    if not isinstance(items, list):
        return []
    return [
        item["id"]
        for item in items
        if isinstance(item, dict) and item.get("type") == "item_reference"
    ]


# The id prefix of the reasoning items Switchyard makes from another API's reply
# (`switchyard.inference.translate_responses.TRANSLATED_REASONING_PREFIX`), and of those
# made from an Anthropic thinking block, which always had a signature as their
# `encrypted_content` (`rs_syt`; `rs_sy` + hexadecimal digits: redacted thinking, with its
# data, or a Chat Completions server's reasoning text, with none).
_SWITCHYARD_REASONING_PREFIX = "rs_sy"
_SWITCHYARD_THINKING_PREFIX = "rs_syt"


def _reasoning_by_id(item: Any) -> str | None:
    """The id of a `reasoning` input item Switchyard made that came back by its id alone,
    without `encrypted_content` (the thinking's signature, which an Anthropic model needs
    again within a tool loop): the stored item has it. None for any other item (an OpenAI
    upstream's reasoning is its own to look up)."""
    if not isinstance(item, dict) or item.get("type") != "reasoning":
        return None
    item_id = item.get("id")
    if item.get("encrypted_content") not in (None, ""):  # given (or invalid: refused later)
        return None
    if not isinstance(item_id, str) or not item_id.startswith(_SWITCHYARD_REASONING_PREFIX):
        return None
    return item_id if len(item_id) <= MAX_ITEM_ID_LENGTH else None


def _reasoning_items(body: dict[str, Any]) -> list[str]:
    """The ids of `body`'s reasoning input items to complete from the store
    (`_reasoning_by_id`), in order."""
    items = body.get("input")
    if not isinstance(items, list):
        return []
    return [item_id for item_id in map(_reasoning_by_id, items) if item_id is not None]


def _thinking(item_id: str) -> bool:
    """Whether a reasoning item of Switchyard's was made from a thinking block, so had a
    signature: the model's thinking is lost unless the stored item gives it back."""
    return item_id.startswith(_SWITCHYARD_THINKING_PREFIX)


def _item_not_found(item_id: Any, position: int, body: dict[str, Any]) -> APIError:
    """OpenAI's 404 for an input item naming a stored item by id that is not found (its
    words for a request with `store: false`, whose items are never kept)."""
    message = f"Item with id '{str(item_id)[:MAX_ITEM_ID_LENGTH]}' not found."
    if body.get("store") is False:
        message += (
            " Items are not persisted when `store` is set to false. Try again with `store` "
            "set to true, or remove this item from your input."
        )
    return APIError(404, message, param=f"input[{position}]", code="item_not_found")


async def _stored_items(
    gateway: Gateway, principal: Principal, ids: list[str], required: set[str]
) -> dict[str, dict[str, Any]]:
    """The stored items of the caller that `ids` name, by id, from history (the output and
    input items of the caller's stored responses). History is asked again, after
    `ITEM_REFERENCE_RETRIES_S`, while an id of `required` is not found (an item answered
    moments ago); one merely completed if found is not waited for. APIError 503 (or
    history's status) when history cannot be read."""
    found: dict[str, dict[str, Any]] = {}
    for wait in (0.0, *ITEM_REFERENCE_RETRIES_S):
        missing = [i for i in ids if i not in found]
        if not missing or (wait and not required.intersection(missing)):
            break
        await asyncio.sleep(wait)
        answer = await call(
            gateway, principal, "/v1/responses/items", method="POST", json={"ids": missing}
        )
        if answer.status_code != 200:
            error = error_of(answer)
            raise APIError(
                answer.status_code if answer.status_code < 500 else 503,
                error.get("message") or "The referenced items could not be read.",
                param="input",
                code=error.get("code"),
            )
        found.update(
            (item["id"], item) for item in (await exactjson.loads_off_loop(answer.content))["data"]
        )
    return found


async def resolve_item_references(
    gateway: Gateway, principal: Principal, body: dict[str, Any], *, reasoning: bool = True
) -> dict[str, Any]:
    """`body` with each `item_reference` input item (`{"type": "item_reference", "id"}`)
    replaced by the stored item it names, from history (the output and input items of the
    caller's stored responses), so that every deployment gets the items themselves, without
    the ids Switchyard gave them (`upstream_item`); the body unchanged when it has none.

    With `reasoning`, so is each reasoning item Switchyard made that came back by its id
    without `encrypted_content` (`_reasoning_by_id`), as the Responses API resolves a
    stored reasoning item sent so: replaced by the stored item, with its
    `encrypted_content` (the thinking's signature), when found with one. One made from a
    thinking block (`rs_syt`) that is not found (never stored, `store: false`, deleted,
    purged, another caller's) is a 404, as OpenAI answers, never dropped unsaid; one of
    another kind (a Chat Completions server's reasoning has no encrypted content) goes as
    it came.

    APIError 404 `item_not_found` naming the first item not found, 400 for more than
    `MAX_ITEM_REFERENCES` ids, 503 when history cannot be read."""
    references = _references_items(body)
    by_id = _reasoning_items(body) if reasoning else []
    if not references and not by_id:
        return body
    items = body["input"]
    if len(references) + len(by_id) > MAX_ITEM_REFERENCES:
        raise APIError(
            400,
            f"Invalid 'input': at most {MAX_ITEM_REFERENCES} item references per request.",
            param="input",
            code="invalid_value",
        )
    # No id Switchyard stores is empty or longer: those are simply not found.
    ids = [i for i in dict.fromkeys([*references, *by_id]) if 0 < len(i) <= MAX_ITEM_ID_LENGTH]
    required = {*references, *filter(_thinking, by_id)}
    found = await _stored_items(gateway, principal, ids, required)
    resolved = []
    for position, item in enumerate(items):
        if isinstance(item, dict) and item.get("type") == "item_reference":
            stored = found.get(item["id"])
            if stored is None:
                raise _item_not_found(item["id"], position, body)
            item = upstream_item(stored)
        elif reasoning and (item_id := _reasoning_by_id(item)) is not None:
            stored = found.get(item_id)
            encrypted = stored.get("encrypted_content") if stored is not None else None
            if stored is not None and stored.get("type") == "reasoning" and encrypted:
                item = upstream_item(stored)  # whole, with its id
            elif _thinking(item_id):
                raise _item_not_found(item_id, position, body)
        resolved.append(item)
    return {**body, "input": resolved}


@router.post(
    "",
    summary="Create a model response (OpenAI Responses API)",
    openapi_extra=openapi_body(ResponsesRequest),
    response_model=None,
)
async def create_response(
    request: Request, principal: CurrentPrincipal, gateway: GatewayDep
) -> Response:
    """Create a response; streams its typed Server-Sent Events when `stream` is true, or
    answers at once with the `queued` response when `background` is true. Continues a
    stored response with `previous_response_id` on any model."""
    client = await _conversation(
        gateway,
        principal,
        await read_request_off_loop(ClientAPI.OPENAI_RESPONSES, await request.body()),
    )
    if client.body.get("background") is True:
        return await _start_background(gateway, request, principal, client)
    dispatch = await Dispatch.start(gateway, request, principal, client)
    return await dispatch.answer()


@router.post(
    "/input_tokens",
    summary="Count the input tokens of a model response (OpenAI Responses API)",
    openapi_extra=openapi_body(ResponsesInputTokensRequest),
    response_model=None,
)
async def count_input_tokens(
    request: Request, principal: CurrentPrincipal, gateway: GatewayDep
) -> Response:
    """The input tokens `POST /v1/responses` would use for this body,
    `{"object": "response.input_tokens", "input_tokens": N}`: the deployment's own count
    (a deployment offering the Responses API; an Anthropic one counts the translated
    request), or a tokenizer's estimate for one offering Chat Completions only, which
    `x-switchyard-token-count` says (`exact` or `estimate`). `previous_response_id` and
    item references are resolved as for a response, so their items are counted too."""
    client = await _conversation(
        gateway,
        principal,
        await read_request_off_loop(ClientAPI.OPENAI_RESPONSES_INPUT_TOKENS, await request.body()),
    )
    dispatch = await Dispatch.start(gateway, request, principal, client)
    return await dispatch.answer()


async def _conversation(
    gateway: Gateway, principal: Principal, client: ClientRequest
) -> ClientRequest:
    """`client` with its item references replaced by the items, and its reasoning items
    sent back by id completed from the store (`resolve_item_references`), and the
    conversation `previous_response_id` continues (`previous_items`), after the
    caller's access to the model is checked (before reading any history). Raises
    APIError as those do."""
    check_model(gateway, principal, client.model)
    check_tool_models(principal, client)
    sent = client.body
    _refuse_duplicate_items(sent, [])  # before reading anything
    # Continuing a stored response, or naming its items, reads them: only a credential
    # that may read them back may (`check_reads_stored`).
    if client.body.get("previous_response_id") is not None:
        check_reads_stored(principal, router.prefix, "previous_response_id")
    # So does a reasoning item sent back by id alone, when it must be found (a thinking
    # block's); any other is completed only for a credential that may read it.
    if _references_items(client.body) or any(map(_thinking, _reasoning_items(client.body))):
        check_reads_stored(principal, router.prefix, "input")
    body = await resolve_item_references(
        gateway, principal, client.body, reasoning=reads_stored(principal, router.prefix)
    )
    if body is not client.body:
        client = ClientRequest(client.api, body, client.model, client.stream)
    previous = client.body.get("previous_response_id")
    items: list[dict[str, Any]] = []
    if previous is not None:
        items = await previous_items(gateway, principal, previous)
        client = ClientRequest(client.api, client.body, client.model, client.stream, items)
    if items:
        _refuse_duplicate_items(sent, items)
    return client


def _refuse_duplicate_items(body: dict[str, Any], previous: list[dict[str, Any]]) -> None:
    """Refuse an input item of `body` (as the client sent it: an `item_reference` is the
    item it names) whose id an earlier input item, or an item of the conversation
    `previous_response_id` continues (`previous`, stored items with their ids), already
    has, as OpenAI refuses it: the model would read it twice. Raises APIError 400 naming
    the item's position in `input`."""
    items = body.get("input")
    if not isinstance(items, list):
        return
    seen = {item.get("id") for item in previous if isinstance(item, dict)}
    for position, item in enumerate(items):
        item_id = item.get("id") if isinstance(item, dict) else None
        if not isinstance(item_id, str):
            continue
        if item_id in seen:
            raise APIError(
                400,
                f"Duplicate item found with id {item_id[:MAX_ITEM_ID_LENGTH]}. Remove "
                "duplicate items from your input and try again.",
                param=f"input[{position}]",
            )
        seen.add(item_id)


async def _start_background(
    gateway: Gateway, request: Request, principal: Principal, client: ClientRequest
) -> Response:
    """Publish a background response to the batch lane (no gateway waits for it) and
    answer with the `queued` response. Admitted against the same budgets and rate limits
    as any request first (Refused: 429 in OpenAI's error shape, recorded as refused).
    Never answered from the response cache nor stored there: an opted-in request gets
    `X-Switchyard-Cache: bypass`.
    Refused with 400 naming `background` in a tenant keeping metadata only, before
    admission (a 400 is a request not made)."""
    if not await _tenant_keeps_content(gateway, principal):
        # Its result could never be retrieved: history keeps no content for the tenant,
        # so GET /v1/responses/{id} would answer `response_content_not_stored` forever.
        raise APIError(
            400,
            "Invalid value for 'background': this tenant's history keeps metadata only "
            "(store_content is false), so a background response's result could never be "
            "retrieved; create the response without 'background'.",
            param="background",
            code="invalid_value",
        )
    submitted = await submit_batch(gateway, request, principal, client)
    # Never cached (its result is read later), but an opted-in answer says what the cache
    # did: `bypass`, as for any request it cannot answer.
    cache = await gateway.cache.bypass(request, principal)
    queued = response_object(
        client.body,
        id=response_id(submitted.request_id, submitted.created),
        created_at=submitted.created,
        model=client.model,
        status="queued",
    )
    return Response(
        orjson.dumps(queued),
        media_type="application/json",
        headers={
            REQUEST_ID_HEADER: submitted.request_id,
            **submitted.ticket.openai_headers(),
            **(cache.response_headers() if cache is not None else {}),
        },
    )


_TRUE, _FALSE = ("true", "1"), ("false", "0")


def _query_boolean(value: str, param: str) -> bool:
    """A boolean query parameter (`true`/`false`, `1`/`0`, any case). APIError 400
    `invalid_value` naming `param` for anything else: a typo is not read as false."""
    lowered = value.strip().lower()
    if lowered in _TRUE or lowered in _FALSE:
        return lowered in _TRUE
    raise APIError(
        400,
        f"Invalid value for '{param}': expected a boolean (true or false), got '{value[:64]}'.",
        param=param,
        code="invalid_value",
    )


# How long the tenant's `store_content` is waited for before a background response is
# accepted without it (seconds).
SETTINGS_TIMEOUT_S = 2.0


async def _tenant_keeps_content(gateway: Gateway, principal: Principal) -> bool:
    """Whether the caller's tenant keeps request content (history's `store_content`),
    read from history now (the tenant's response cache settings, which carry it), not
    from a cache: a tenant switching to metadata only is refused at once. True when
    history cannot say: the request is then accepted as it would have been, not
    refused for a reason that may not hold."""
    try:
        answer = await gateway.http.get(
            gateway.settings.history_url.rstrip("/") + "/internal/v1/cache/settings",
            headers=identity_headers(gateway, principal),
            timeout=SETTINGS_TIMEOUT_S,
        )
        settings = answer.json() if answer.status_code == 200 else None
    except (httpx.HTTPError, ValueError) as exc:
        log.warning("tenant settings unavailable; background response accepted", error=repr(exc))
        return True
    return not (isinstance(settings, dict) and settings.get("store_content") is False)


@router.get("/{response_id:response_id}", summary="Retrieve a model response")
async def get_response(
    response_id: str, request: Request, principal: CurrentPrincipal, gateway: GatewayDep
) -> Response:
    """The response as stored (a background one with its current status: `queued`,
    `completed`, `failed`, `cancelled`). 404 says why a response is not there: unknown,
    created with `store: false` or while the tenant stored metadata only, purged by
    retention, or deleted. Streaming a stored response again (`stream=true`) is not
    offered. Reasoning items are shown without `encrypted_content` unless `include` asks
    for `reasoning.encrypted_content`."""
    if not looks_like_id(response_id):
        raise _not_found(response_id)
    if any(_query_boolean(value, "stream") for value in request.query_params.getlist("stream")):
        raise APIError(
            400,
            "Streaming a stored response again is not supported; retrieve it without 'stream'.",
            param="stream",
            code="unsupported_parameter",
        )
    _check_include(request)
    path = f"/v1/responses/{response_id}"
    return await _shown_without_encrypted_reasoning(
        await _wait_for(gateway, principal, response_id, path), request
    )


def _check_include(request: Request) -> None:
    """Refuse a read whose `include` query parameter names a value the Responses API does
    not take, as a create request's `include` is refused: a typo never passes as a no-op.
    Raises APIError 400 `invalid_value` naming `include` and listing the values taken."""
    include = list_parameter(request, "include")
    unknown = None if include is None else unknown_includable(include)
    if unknown is not None:
        raise APIError(
            400,
            unsupported_value(unknown, sorted(RESPONSE_INCLUDABLE)),
            param="include",
            code="invalid_value",
        )


async def _shown_without_encrypted_reasoning(answer: httpx.Response, request: Request) -> Response:
    """History's answer with a response's (or a page of items') reasoning items shown
    without `encrypted_content`, as OpenAI shows them to a read whose `include` does not
    ask for `reasoning.encrypted_content`; stored whole, and relayed as it is otherwise."""
    if (
        answer.status_code != 200
        or b'"encrypted_content"' not in answer.content
        or includes_encrypted_reasoning(list_parameter(request, "include"))
    ):
        return relay(answer)
    stored = await exactjson.loads_off_loop(answer.content)
    if not isinstance(stored, dict):
        return relay(answer)
    data = stored.get("data")
    if isinstance(data, list):  # a page of items: each is an item
        shown = {**stored, "data": [item_without_encrypted_reasoning(item) for item in data]}
    else:
        shown = without_encrypted_reasoning(stored)
    return Response(exactjson.dumps(shown), media_type="application/json")


@router.get("/{response_id:response_id}/input_items", summary="List a response's input items")
async def list_input_items(
    response_id: str, request: Request, principal: CurrentPrincipal, gateway: GatewayDep
) -> Response:
    """The items the response was generated from (those of the conversation it continued
    included), newest first by default. Query parameters: `limit` (1-100, default 20),
    `order` (`asc` or `desc`), `after` / `before` (an item id of the previous page)."""
    if not looks_like_id(response_id):
        raise _not_found(response_id)
    _check_include(request)
    # A response answered moments ago may not be recorded yet: waited for, like GET.
    path = f"/v1/responses/{response_id}/input_items"
    answer = await _wait_for(gateway, principal, response_id, path, request)
    return await _shown_without_encrypted_reasoning(answer, request)


@router.delete("/{response_id:response_id}", summary="Delete a model response")
async def delete_response(
    response_id: str, principal: CurrentPrincipal, gateway: GatewayDep
) -> Response:
    """Delete the stored response: its input and output items are removed (the request
    stays in your history and usage, without content), and so is every copy kept of its
    answer: an `Idempotency-Key` retry is told it is not kept, and the response cache
    answers with it no more. A response still in progress gets 409: cancel it first."""
    ref = parse_response_id(response_id) if looks_like_id(response_id) else None
    if ref is None:
        raise _not_found(response_id)
    answer = await forward(gateway, principal, f"/v1/responses/{response_id}", method="DELETE")
    if answer.status_code == 200:
        # History deleted the cache's entries made from it; replicas keep some in memory.
        await gateway.cache.forget(principal.tenant, ref.request_id)
    return answer


@router.post("/{response_id:response_id}/cancel", summary="Cancel a background response")
async def cancel_response(
    response_id: str, principal: CurrentPrincipal, gateway: GatewayDep
) -> Response:
    """Cancel a response created with `background: true` that has not finished (answered
    with the cancelled response); 400 for a response not created in the background, 409
    for one that already finished."""
    ref = parse_response_id(response_id) if looks_like_id(response_id) else None
    if ref is None:
        raise _not_found(response_id)
    path = f"/v1/responses/{response_id}/cancel"
    answer = await forward(gateway, principal, path, method="POST")
    accepted = gateway.recent_jobs.get(ref.request_id, principal.tenant)
    if accepted is not None and not _accepted_as(accepted, response_id):
        # The request id matches, the creation time in the id does not: never issued.
        accepted = None
    if answer.status_code == 404 and accepted is not None and accepted.visible_to(principal):
        # Accepted here moments ago, not recorded by history yet: history records the
        # cancellation now, and the request, when it arrives, finds it cancelled.
        answer = await forward(gateway, principal, path + "?accepted=true", method="POST")
        if answer.status_code == 200:
            cancelled = exactjson.loads(answer.body)
            if not cancelled.get("model"):
                cancelled["model"] = accepted.model
            answer = Response(exactjson.dumps(cancelled), media_type="application/json")
    if answer.status_code == 200:
        request_cancellation(gateway, principal.tenant, ref.request_id)
    return answer
