"""`/v1/responses`: the state of OpenAI Responses API requests, for the gateway (internal
token and the caller's identity required): one response, its input items, deleting it,
cancelling a background one, and the conversation a `previous_response_id` continues.
The rules are in `switchyard.history.responses`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Response
from pydantic import ConfigDict, Field, StringConstraints

from switchyard.common import exactjson
from switchyard.common.errors import APIError
from switchyard.common.http import internal_token_dependency
from switchyard.common.nulfree import NulFreeBody
from switchyard.history.api.dependencies import CallerDep, ComponentsDep, QueriesDep
from switchyard.history.api.params import parse_limit
from switchyard.history.responses import (
    DEFAULT_ITEMS_PAGE,
    MAX_ITEM_REFERENCES,
    MAX_ITEMS_PAGE,
    ResponseStore,
)


def _json(data: Any) -> Response:
    return Response(exactjson.dumps(data), media_type="application/json")


def items_limit(
    limit: Annotated[
        str | None, Query(description=f"Page size, 1 to {MAX_ITEMS_PAGE} (default 20).")
    ] = None,
) -> int:
    """The `limit` query parameter of input item lists (`parse_limit`: 1 to
    `MAX_ITEMS_PAGE`, default 20)."""
    return parse_limit(limit, MAX_ITEMS_PAGE, DEFAULT_ITEMS_PAGE)


def items_order(
    order: Annotated[
        str | None, Query(description="`asc` or `desc` (default: newest first).")
    ] = None,
) -> Literal["asc", "desc"]:
    """The `order` query parameter: `asc` or `desc` (the default, newest first).

    Raises:
        APIError: 400 `invalid_value` for anything else.
    """
    if order in (None, "desc"):
        return "desc"
    if order == "asc":
        return "asc"
    raise APIError(
        400,
        "Invalid value for 'order': must be 'asc' or 'desc'.",
        param="order",
        code="invalid_value",
    )


def response_store(components: ComponentsDep, queries: QueriesDep) -> ResponseStore:
    """The stored Responses API objects, seen through the caller's tenant settings."""
    return ResponseStore(
        components.engine,
        queries,
        components.tenants,
        components.recorder,
        # The service-wide retention, for tenants without their own.
        components.sweeper.retention_days,
    )


StoreDep = Annotated[ResponseStore, Depends(response_store)]


class ItemIds(NulFreeBody):
    """The ids of the items an `item_reference` names."""

    model_config = ConfigDict(strict=True, extra="forbid")

    ids: list[Annotated[str, StringConstraints(min_length=1, max_length=256)]] = Field(
        min_length=1, max_length=MAX_ITEM_REFERENCES
    )


def responses_router(internal_token: str) -> APIRouter:
    """The stored responses API (`/v1/responses`): read, delete and cancel responses created with
    `store` and list their input items, in the shape of OpenAI's Responses API reference
    (https://platform.openai.com/docs/api-reference/responses). Reached through the gateway."""
    router = APIRouter(
        prefix="/v1/responses",
        tags=["responses"],
        dependencies=[Depends(internal_token_dependency(internal_token))],
    )

    @router.post("/items", summary="Stored items by id, for item references (gateway only)")
    async def find_items(body: ItemIds, caller: CallerDep, responses: StoreDep) -> Response:
        """Returns the stored items the `ids` name (`{"object": "list", "data": [...]}`, in
        the order asked, ids not found left out), for the `item_reference` input items of
        a new response. 400 for more than `MAX_ITEM_REFERENCES` ids."""
        found = await responses.items(caller, body.ids)
        data = [found[item_id] for item_id in dict.fromkeys(body.ids) if item_id in found]
        return _json({"object": "list", "data": data})

    @router.get("/{response_id}", summary="One response, as the Responses API shows it")
    async def get_response(response_id: str, caller: CallerDep, responses: StoreDep) -> Response:
        """Returns a stored response in the shape OpenAI's Responses API gives it. 404 when the
        caller has no such response, or it was deleted."""
        found = await responses.find(caller, response_id)
        return _json(found.view())

    @router.get("/{response_id}/input_items", summary="The items a response was generated from")
    async def list_input_items(
        response_id: str,
        caller: CallerDep,
        responses: StoreDep,
        limit: Annotated[int, Depends(items_limit)] = DEFAULT_ITEMS_PAGE,
        order: Annotated[Literal["asc", "desc"], Depends(items_order)] = "desc",
        after: Annotated[str | None, Query(max_length=256)] = None,
        before: Annotated[str | None, Query(max_length=256)] = None,
        include: Annotated[
            str | None,
            Query(
                description="Taken as the Responses API takes it; the items are stored whole, "
                "so every field it can ask for is already there."
            ),
        ] = None,
    ) -> Response:
        """Lists the input items a stored response was generated from, a page at a time, in the
        Responses API's list shape. 400 for an invalid `limit` or `order`, 404 when the caller
        has no such response."""
        del include  # every includable field is in the stored items already
        page = await responses.input_items(
            caller, response_id, limit=limit, order=order, after=after, before=before
        )
        return _json(page)

    @router.get(
        "/{response_id}/conversation",
        summary="The items a response continuing this one starts from (gateway only)",
    )
    async def get_conversation(
        response_id: str, caller: CallerDep, responses: StoreDep
    ) -> Response:
        """Returns the items a response continuing this one starts from: its input items, then
        its output items. Used by the gateway for `previous_response_id`. 404 when not stored,
        409 while it is in progress, 400 when it did not complete."""
        return _json({"object": "list", "data": await responses.conversation(caller, response_id)})

    @router.delete("/{response_id}", summary="Delete a response's stored content")
    async def delete_response(response_id: str, caller: CallerDep, responses: StoreDep) -> Response:
        """Deletes a stored response's content (its request and reply are reduced to metadata and
        its input items dropped); the request's record and usage stay. 404 when the caller has no
        such response, 409 while it is in progress."""
        return _json(await responses.delete(caller, response_id))

    @router.post("/{response_id}/cancel", summary="Cancel a background response")
    async def cancel_response(
        response_id: str,
        caller: CallerDep,
        responses: StoreDep,
        accepted: Annotated[
            bool,
            Query(
                description="The gateway vouches that it accepted this response for the "
                "caller moments ago: if it is not recorded yet, its cancellation is "
                "recorded first."
            ),
        ] = False,
    ) -> Response:
        return _json(await responses.cancel(caller, response_id, accepted=accepted))

    return router
