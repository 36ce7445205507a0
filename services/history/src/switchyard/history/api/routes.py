"""`/v1/history`: the caller's request history, newest first, with filters; one request
by id; and the tenant's history settings (admins)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import ConfigDict, Field

from switchyard.common.errors import APIError
from switchyard.common.http import internal_token_dependency
from switchyard.common.jsonbody import BoundedJsonRoute
from switchyard.common.nulfree import NulFreeBody
from switchyard.history.api.dependencies import CallerDep, QueriesDep, TenantsDep, user_filter
from switchyard.history.api.params import (
    cursor_refusal,
    page_limit,
    parse_statuses,
    parse_time_range,
)
from switchyard.history.api.schemas import HistoryItem, HistoryList, history_item
from switchyard.history.queries import (
    DEFAULT_PAGE_SIZE,
    STATUSES,
    Caller,
    HistoryFilters,
    InvalidCursorError,
)


class TenantSettingsBody(NulFreeBody):
    """Changes to a tenant's settings; fields left out stay as they are. A field this
    body does not have (a typo such as `store_bodies`) or of another JSON type (`"7"` for
    a number) is a 400 naming it, never ignored or converted."""

    model_config = ConfigDict(extra="forbid", strict=True)

    store_content: bool | None = Field(
        default=None, description="false: keep metadata only (no prompt or completion text)."
    )
    retention_days: int | None = Field(
        default=None, ge=1, le=36_500, description="Purge requests older than this many days."
    )
    clear_retention: bool = Field(default=False, description="Back to the service-wide retention.")
    rotate_webhook_secret: bool = Field(
        default=False, description="Replace the secret job webhooks are signed with."
    )
    cache_enabled: bool | None = Field(
        default=None,
        description="Answer repeated deterministic requests of the tenant from the response "
        "cache (requests may still opt out with `X-Switchyard-Cache: off`).",
    )
    cache_ttl_s: int | None = Field(
        default=None, ge=1, le=7 * 86_400, description="How long cached answers are reused."
    )


def _require_admin(caller: Caller) -> None:
    if not caller.sees_whole_tenant:
        raise APIError(
            403, "Only an admin of the tenant can read or change its settings.", code="admin_only"
        )


def history_router(internal_token: str) -> APIRouter:
    """The history API (`/v1/history`): the caller's recorded requests and the tenant's settings.
    Reached through the gateway (internal token and the caller's identity headers)."""
    router = APIRouter(
        prefix="/v1/history",
        tags=["history"],
        route_class=BoundedJsonRoute,
        dependencies=[Depends(internal_token_dependency(internal_token))],
    )

    @router.get("", response_model=HistoryList)
    async def list_history(
        caller: CallerDep,
        queries: QueriesDep,
        limit: Annotated[int, Depends(page_limit)] = DEFAULT_PAGE_SIZE,
        cursor: Annotated[
            str | None, Query(description="`next_cursor` of the previous page.")
        ] = None,
        since: Annotated[
            str | None,
            Query(description="Only requests created at or after this ISO 8601 time (or 7d)."),
        ] = None,
        until: Annotated[
            str | None, Query(description="Only requests created before this ISO 8601 time.")
        ] = None,
        model: Annotated[str | None, Query(max_length=256)] = None,
        status: Annotated[
            str | None,
            Query(description=f"Comma-separated statuses: {', '.join(STATUSES)}."),
        ] = None,
        api_key_id: Annotated[str | None, Query(max_length=128)] = None,
        user_id: Annotated[
            str | None,
            Query(
                max_length=128,
                description="Admins: one user's requests (anyone else: only their own id).",
            ),
        ] = None,
        team_id: Annotated[
            str | None,
            Query(max_length=128, description="Only requests made as a member of this team."),
        ] = None,
    ) -> HistoryList:
        """The caller's requests (the whole tenant's for admins), newest first, at most
        `limit` a page and fewer when their stored documents would pass `PAGE_BYTES`."""
        time_from, time_to = parse_time_range(since, until)
        filters = HistoryFilters(
            since=time_from,
            until=time_to,
            model=model,
            statuses=tuple(parse_statuses(status, STATUSES)),
            api_key_id=api_key_id,
            user_id=user_filter(caller, user_id),
            team_id=team_id,
        )
        try:
            page = await queries.list_requests(caller, limit=limit, cursor=cursor, filters=filters)
        except InvalidCursorError as exc:
            raise cursor_refusal(exc) from exc
        return HistoryList(
            data=[history_item(row) for row in page.items], next_cursor=page.next_cursor
        )

    @router.get("/settings", summary="The tenant's history settings (admins)")
    async def get_settings(caller: CallerDep, tenants: TenantsDep) -> dict[str, Any]:
        """Privacy (metadata only), retention and the job webhook signing secret."""
        _require_admin(caller)
        settings = await tenants.get(caller.tenant)
        if settings.webhook_secret is None:
            await tenants.webhook_secret(caller.tenant)
            settings = await tenants.get(caller.tenant)
        return {"object": "history.settings", **settings.public(include_secret=True)}

    @router.put("/settings", summary="Change the tenant's history settings (admins)")
    async def put_settings(
        body: TenantSettingsBody, caller: CallerDep, tenants: TenantsDep
    ) -> dict[str, Any]:
        """Changes the tenant's history settings: keeping prompt and completion text or metadata
        only, retention, the webhook signing secret and the response cache. Fields left out keep
        their value. Tenant admins only (403 otherwise)."""
        _require_admin(caller)
        if body.clear_retention and body.retention_days is not None:
            # Either would be dropped silently: the caller meant one of them.
            raise APIError(
                400,
                "Invalid request: 'clear_retention' and 'retention_days' contradict each "
                "other; send 'clear_retention: true' to go back to the service-wide "
                "retention, or 'retention_days' to set one, not both.",
                param="clear_retention",
                code="invalid_request",
            )
        changes: dict[str, Any] = {
            "store_content": body.store_content,
            "rotate_webhook_secret": body.rotate_webhook_secret,
            "cache_enabled": body.cache_enabled,
        }
        if body.cache_ttl_s is not None:
            changes["cache_ttl_s"] = body.cache_ttl_s
        if body.clear_retention:
            changes["retention_days"] = None
        elif body.retention_days is not None:
            changes["retention_days"] = body.retention_days
        settings = await tenants.update(caller.tenant, **changes)
        return {"object": "history.settings", **settings.public(include_secret=True)}

    @router.get("/{request_id}", response_model=HistoryItem)
    async def get_history_item(
        request_id: str, caller: CallerDep, queries: QueriesDep
    ) -> HistoryItem:
        """One request with its reply, error, usage, latency and deployment."""
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
