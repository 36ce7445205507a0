"""`/v1/replays`: replay the caller's recorded requests against another model, and compare.

`POST /v1/replays` takes the selection and the target:
`{"to_model": "B", "since": "1h", "until": ..., "model": "A", "api_key_id": ..., "user_id":
..., "team_id": ..., "limit": N | "sample": N, "rate": "5/s", "bill_to": "caller"}`. The
gateway checks the target model exists and the caller's credential may use it (404
`model_not_found` otherwise), then history selects the requests (400 `empty_selection`
when none match, cache hits left out; 400 `invalid_rate` for a rate outside 1/h to
1000/s; 403 `admin_only` when a member names another user, or a key or team they have
made no requests with) and its replay runner sends them on
the batch lane. `GET /v1/replays/{id}` reports the pairs (original and replay: request id,
model, status, latency, tokens, cost; exact match and similarity of the outputs) and the
totals; `POST /v1/replays/{id}/stop` and `/resume` pause and continue it (nothing is ever
sent twice). Creating one needs the `chat` and `history:read` scopes; reading one
`history:read`. Served by history (see its `replays` module)."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request, Response

from switchyard.common import scopes
from switchyard.common.errors import APIError
from switchyard.gateway.api.body import invalid_type, parse_json_object_off_loop
from switchyard.gateway.api.deps import CurrentPrincipal, GatewayDep, insufficient_scope
from switchyard.gateway.api.history import forward, looks_like_id
from switchyard.gateway.intake import check_model

router = APIRouter(prefix="/v1/replays", tags=["replays"])


def _not_found(replay_id: str) -> APIError:
    return APIError(404, f"No replay found with id '{replay_id[:64]}'.", code="replay_not_found")


@router.post("", status_code=201, summary="Replay recorded requests against another model")
async def create_replay(
    request: Request, principal: CurrentPrincipal, gateway: GatewayDep
) -> Response:
    """Select recorded requests (`since`, `until`, `model`, `api_key_id`, `user_id`,
    `team_id`, `limit` or `sample`) and re-send each to `to_model` at `rate`."""
    if scopes.HISTORY_READ not in principal.scopes:
        raise insufficient_scope(scopes.HISTORY_READ)
    body = await parse_json_object_off_loop(await request.body())
    target = body.get("to_model")
    if target is not None and target != "" and not isinstance(target, str):
        raise invalid_type("to_model", "a string", target)
    if not isinstance(target, str) or not target:
        raise APIError(
            400,
            "Missing required parameter: 'to_model' (the model to replay on).",
            param="to_model",
            code="missing_required_parameter",
        )
    check_model(gateway, principal, target, param="to_model")
    body["created_by_api_key_id"] = principal.api_key_id
    return await forward(
        gateway, principal, "/v1/replays", None, method="POST", content=orjson.dumps(body)
    )


@router.get("", summary="Your replays, newest first")
async def list_replays(
    request: Request, principal: CurrentPrincipal, gateway: GatewayDep
) -> Response:
    """The caller's replays (the whole tenant's for admins), a page at a time. Query
    parameters: `limit` (1-100), `cursor`, `status` (comma-separated: running, stopped,
    completed)."""
    return await forward(gateway, principal, "/v1/replays", request)


@router.get("/{replay_id}", summary="A replay's report: pairs and totals")
async def get_replay(
    replay_id: str, request: Request, principal: CurrentPrincipal, gateway: GatewayDep
) -> Response:
    """Status, counts, totals and the pairs (`limit` up to 1000, `after`: the previous
    page's `next_after`)."""
    if not looks_like_id(replay_id):
        raise _not_found(replay_id)
    return await forward(gateway, principal, f"/v1/replays/{replay_id}", request)


@router.post("/{replay_id}/stop", summary="Stop a running replay")
async def stop_replay(replay_id: str, principal: CurrentPrincipal, gateway: GatewayDep) -> Response:
    """Nothing more is sent until it is resumed; what was sent still completes."""
    if not looks_like_id(replay_id):
        raise _not_found(replay_id)
    return await forward(gateway, principal, f"/v1/replays/{replay_id}/stop", None, method="POST")


@router.post("/{replay_id}/resume", summary="Resume a stopped or interrupted replay")
async def resume_replay(
    replay_id: str, principal: CurrentPrincipal, gateway: GatewayDep
) -> Response:
    """Sending goes on where it stopped; no request is sent twice."""
    if not looks_like_id(replay_id):
        raise _not_found(replay_id)
    return await forward(gateway, principal, f"/v1/replays/{replay_id}/resume", None, method="POST")
