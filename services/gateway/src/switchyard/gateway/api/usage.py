"""`GET /v1/usage`: the caller's usage (the whole tenant's for admins) from the history
service, as JSON or CSV (`Accept: text/csv` or `format=csv`)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from switchyard.common import exactjson
from switchyard.gateway.api.admin import budget_spend
from switchyard.gateway.api.deps import CurrentPrincipal, GatewayDep
from switchyard.gateway.api.history import forward

router = APIRouter(prefix="/v1/usage", tags=["usage"])


@router.get(
    "",
    summary="Requests, errors, tokens and cost over time",
    responses={200: {"content": {"application/json": {}, "text/csv": {}}}},
)
async def get_usage(request: Request, principal: CurrentPrincipal, gateway: GatewayDep) -> Response:
    """Query parameters: `since` (default 30 days ago) and `until` (default now), ISO 8601
    or relative (`7d`); `group_by`, comma-separated: `day` or `hour`, and any of `model`,
    `user`, `api_key`, `team` (default `day`; without day or hour, totals over the range);
    filters `model`, `api_key_id`, `team_id`, and for admins `user_id`; `format=csv` for CSV. Rows
    count requests, completed, errors (failed, expired, refused), cancelled, input and
    output tokens, cost, and the cache-read, cache-creation and reasoning tokens.
    JSON answers also carry `budgets`: spend against every budget above the caller in its
    current period (as `GET /v1/spend`)."""
    response = await forward(gateway, principal, "/v1/usage", request)
    if response.status_code != 200 or not (response.media_type or "").startswith(
        "application/json"
    ):
        return response
    try:
        budgets = await budget_spend(gateway, principal)
    except LookupError:
        return response  # the report stands on its own; budgets come back with the ledger
    report = exactjson.loads(response.body)  # sums beyond 64 bits kept exact
    report["budgets"] = [budget.model_dump() for budget in budgets.data]
    return Response(exactjson.dumps(report), media_type="application/json")
