"""`/v1/replays`: replays of the caller's recorded requests against another model (the
whole tenant's for admins), served to the gateway, which checks the target model and the
caller's rights first (see replays.py for what a replay does)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import ConfigDict, Field, SkipValidation

from switchyard.common.errors import APIError
from switchyard.common.http import internal_token_dependency
from switchyard.common.jsonbody import BoundedJsonRoute
from switchyard.common.nulfree import NulFreeBody
from switchyard.history.api.dependencies import CallerDep, replay_store
from switchyard.history.api.params import (
    cursor_refusal,
    page_limit,
    parse_limit,
    parse_statuses,
    parse_time,
)
from switchyard.history.models import ReplayStatus
from switchyard.history.queries import DEFAULT_PAGE_SIZE, InvalidCursorError
from switchyard.history.replays import ReplayError, ReplaySpec, ReplayStore, Selection, parse_rate

ReplaysDep = Annotated[ReplayStore, Depends(replay_store)]
MAX_ITEMS_PAGE = 1000
DEFAULT_ITEMS_PAGE = 100
DEFAULT_RATE = "5/s"
# What `GET /v1/replays?status=` accepts.
REPLAY_STATUSES = tuple(status.value for status in ReplayStatus)


class ReplayBody(NulFreeBody):
    """Which recorded requests to replay, and on which model. `since` and `until` take ISO 8601 or a
    relative time (`1h`); `limit` takes the first N, `sample` N at random (not both). Each
    field takes only its own JSON type (no `"10"` for 10, no `true` for 1): a 400 names it."""

    # Unknown fields are refused: a misspelt `limt` must not replay everything.
    model_config = ConfigDict(strict=True, extra="forbid")

    to_model: str = Field(min_length=1, max_length=256, description="The model to replay on.")
    since: str = Field(
        min_length=1,
        max_length=64,
        description="Requests created at or after this (ISO 8601 or 1h).",
    )
    until: str | None = Field(default=None, max_length=64, description="...and before this.")
    model: str | None = Field(default=None, max_length=256, description="Only this model's.")
    api_key_id: str | None = Field(default=None, max_length=128, description="Only this key's.")
    user_id: str | None = Field(
        default=None,
        max_length=128,
        description="Only this user's (a member may name only themselves; 403 otherwise).",
    )
    team_id: str | None = Field(default=None, max_length=128, description="Only this team's.")
    limit: int | None = Field(default=None, ge=1, le=100_000, description="The first N only.")
    sample: int | None = Field(default=None, ge=1, le=100_000, description="N chosen at random.")
    # Checked by `parse_rate`, not pydantic: its 400 names `rate` and the forms it takes
    # (pydantic's union error would name each member instead).
    rate: SkipValidation[str | float | None] = Field(
        default=DEFAULT_RATE,
        description="Requests per second, minute or hour, from 1/h to 1000/s: a string "
        "(`5/s`, `30/m`, `100/h`) or a number per second. Absent or null: 5/s.",
    )
    bill_to: Literal["caller", "original"] = Field(
        default="caller",
        description="Whose user, key and team the replayed requests count against: whoever "
        "created the replay (default), or each original's.",
    )
    created_by_api_key_id: str | None = Field(
        default=None, max_length=128, description="Set by the gateway: the key that asked."
    )


def _api_error(exc: ReplayError) -> APIError:
    return APIError(exc.status, str(exc), param=exc.param, code=exc.code)


def replays_router(internal_token: str) -> APIRouter:
    """The replays API (`/v1/replays`): replay recorded requests on another model in the batch lane
    and compare the results. Reached through the gateway (internal token)."""
    router = APIRouter(
        prefix="/v1/replays",
        tags=["replays"],
        route_class=BoundedJsonRoute,
        dependencies=[Depends(internal_token_dependency(internal_token))],
    )

    @router.post("", status_code=201)
    async def create_replay(
        body: ReplayBody, caller: CallerDep, store: ReplaysDep
    ) -> dict[str, Any]:
        """Select recorded requests and replay them on `to_model` in the batch lane (403 when
        a member's selection names another user's requests)."""
        if body.limit is not None and body.sample is not None:
            raise APIError(
                400,
                "Use either 'limit' or 'sample', not both.",
                param="sample",
                code="invalid_request",
            )
        since = parse_time(body.since, "since")
        until = parse_time(body.until, "until")
        assert since is not None
        if until is not None and until <= since:
            raise APIError(
                400,
                "Invalid value for 'until': it must be after 'since'.",
                param="until",
                code="invalid_request",
            )
        try:
            spec = ReplaySpec(
                to_model=body.to_model,
                selection=Selection(
                    since=since,
                    until=until,
                    model=body.model,
                    api_key_id=body.api_key_id,
                    user_id=body.user_id,
                    team_id=body.team_id,
                    limit=body.limit,
                    sample=body.sample,
                ),
                rate=parse_rate(DEFAULT_RATE if body.rate is None else body.rate),
                bill_to=body.bill_to,
            )
            return await store.create(caller, body.created_by_api_key_id, spec)
        except ReplayError as exc:
            raise _api_error(exc) from None

    @router.get("")
    async def list_replays(
        caller: CallerDep,
        store: ReplaysDep,
        limit: Annotated[int, Depends(page_limit)] = DEFAULT_PAGE_SIZE,
        cursor: Annotated[str | None, Query(description="`next_cursor` of the last page.")] = None,
        status: Annotated[
            str | None, Query(description=f"Comma-separated: {', '.join(REPLAY_STATUSES)}.")
        ] = None,
    ) -> dict[str, Any]:
        """The caller's replays (the tenant's for admins), newest first, a page at a time:
        pass `next_cursor` as `cursor` for the next page. 400 for an invalid `limit`,
        `cursor` or `status`."""
        statuses = parse_statuses(status, REPLAY_STATUSES)
        try:
            page = await store.list(caller, limit=limit, cursor=cursor, statuses=statuses)
        except InvalidCursorError as exc:
            raise cursor_refusal(exc) from exc
        return {"object": "list", "data": page.items, "next_cursor": page.next_cursor}

    @router.get("/{replay_id}")
    async def get_replay(
        replay_id: str,
        caller: CallerDep,
        store: ReplaysDep,
        limit: Annotated[
            str | None,
            Query(description=f"Pairs per page, 0 (totals only) to {MAX_ITEMS_PAGE}; 100."),
        ] = None,
        after: Annotated[int, Query(ge=-1, description="`next_after` of the previous page.")] = -1,
    ) -> dict[str, Any]:
        """The replay: status, counts, totals and the paired requests."""
        pairs = parse_limit(limit, MAX_ITEMS_PAGE, DEFAULT_ITEMS_PAGE, minimum=0)
        replay = await store.get(caller, replay_id, limit=pairs, after=after)
        if replay is None:
            raise APIError(
                404,
                f"No replay found with id '{replay_id[:64]}'.",
                param="replay_id",
                code="replay_not_found",
            )
        return replay

    @router.post("/{replay_id}/stop")
    async def stop_replay(replay_id: str, caller: CallerDep, store: ReplaysDep) -> dict[str, Any]:
        """Stop sending; what was sent still completes. Resume with `/resume`."""
        try:
            return await store.set_status(caller, replay_id, ReplayStatus.STOPPED)
        except ReplayError as exc:
            raise _api_error(exc) from None

    @router.post("/{replay_id}/resume")
    async def resume_replay(replay_id: str, caller: CallerDep, store: ReplaysDep) -> dict[str, Any]:
        """Go on sending where the replay stopped; nothing is sent twice."""
        try:
            return await store.set_status(caller, replay_id, ReplayStatus.RUNNING)
        except ReplayError as exc:
            raise _api_error(exc) from None

    return router
