"""`/v1/history`: the caller's request history, newest first, and one request by id."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from switchyard.common.errors import APIError
from switchyard.common.http import internal_token_dependency
from switchyard.history.api.dependencies import CallerDep, QueriesDep
from switchyard.history.api.schemas import HistoryItem, HistoryList, history_item
from switchyard.history.queries import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, InvalidCursorError


def history_router(internal_token: str) -> APIRouter:
    router = APIRouter(
        prefix="/v1/history",
        tags=["history"],
        dependencies=[Depends(internal_token_dependency(internal_token))],
    )

    @router.get("", response_model=HistoryList)
    async def list_history(
        caller: CallerDep,
        queries: QueriesDep,
        limit: Annotated[
            int, Query(ge=1, le=MAX_PAGE_SIZE, description="Page size.")
        ] = DEFAULT_PAGE_SIZE,
        cursor: Annotated[
            str | None, Query(description="`next_cursor` of the previous page.")
        ] = None,
    ) -> HistoryList:
        """The caller's requests (the whole tenant's for admins), newest first."""
        try:
            page = await queries.list_requests(caller, limit=limit, cursor=cursor)
        except InvalidCursorError as exc:
            raise APIError(
                400, f"Invalid value for 'cursor': {exc}", param="cursor", code="invalid_cursor"
            ) from exc
        return HistoryList(
            data=[history_item(row) for row in page.items], next_cursor=page.next_cursor
        )

    @router.get("/{request_id}", response_model=HistoryItem)
    async def get_history_item(
        request_id: str, caller: CallerDep, queries: QueriesDep
    ) -> HistoryItem:
        """One request with its reply, error and usage."""
        row = await queries.get_request(caller, request_id)
        if row is None:
            raise APIError(
                404,
                f"No request found with id '{request_id}'.",
                param="request_id",
                code="request_not_found",
            )
        return history_item(row)

    return router
