"""`/v1/usage/performance`: requests, errors, tokens, cost and p50/p95 latency over time,
by model or deployment, for the caller (the whole tenant for admins). See performance.py."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from switchyard.common import exactjson
from switchyard.common.db import read_only
from switchyard.common.errors import APIError
from switchyard.common.http import internal_token_dependency
from switchyard.history.api.dependencies import CallerDep, user_filter
from switchyard.history.api.params import parse_time
from switchyard.history.performance import (
    BUCKETS,
    DEFAULT_RANGE,
    MAX_MINUTE_RANGE,
    MAX_RANGE,
    PERFORMANCE_DIMENSIONS,
    PerformanceQueries,
    PerformanceQuery,
    report_json,
)
from switchyard.history.usage import SINCE_IN_THE_FUTURE


def _group_by(value: str | None) -> tuple[str | None, tuple[str, ...]]:
    names = [part.strip() for part in value.split(",")] if value else []
    allowed = [*BUCKETS, *PERFORMANCE_DIMENSIONS]
    problem = None
    unknown = [name for name in names if name not in allowed]
    buckets = [name for name in names if name in BUCKETS]
    if "" in names:
        # As the usage report does: a stray comma is a mistake, not a way of saying none.
        problem = "an empty name (a stray comma); list names separated by single commas"
    elif unknown:
        problem = f"'{unknown[0][:64]}' is not one of {', '.join(allowed)}"
    elif len(set(names)) != len(names):
        problem = "a name is repeated"
    elif len(buckets) > 1:
        problem = "choose one of day, hour and minute"
    if problem:
        raise APIError(
            400,
            f"Invalid value for 'group_by': {problem}.",
            param="group_by",
            code="invalid_request",
        )
    return (buckets[0] if buckets else None), tuple(n for n in names if n not in BUCKETS)


def performance_router(internal_token: str) -> APIRouter:
    """The performance report (`GET /v1/usage/performance`): requests, errors and latency
    percentiles per time bucket and group. Reached through the gateway (internal token)."""
    router = APIRouter(
        prefix="/v1/usage",
        tags=["usage"],
        dependencies=[Depends(internal_token_dependency(internal_token))],
    )

    @router.get("/performance", summary="Requests, errors and p50/p95 latency over time")
    async def performance(
        request: Request,
        caller: CallerDep,
        since: Annotated[
            str | None, Query(description="ISO 8601 start (inclusive) or e.g. 1d; default 1d.")
        ] = None,
        until: Annotated[str | None, Query(description="ISO 8601 end (exclusive); now.")] = None,
        group_by: Annotated[
            str | None,
            Query(
                description="Comma-separated: day, hour or minute, and any of model, deployment."
            ),
        ] = None,
        model: Annotated[str | None, Query(max_length=256)] = None,
        api_key_id: Annotated[str | None, Query(max_length=128)] = None,
        user_id: Annotated[
            str | None, Query(max_length=128, description="Admins: one user's requests.")
        ] = None,
    ) -> Response:
        """Latency of completed requests (median and 95th percentile, ms), the share of
        failed or expired ones, tokens and cost, over at most 93 days (2 by minute)."""
        bucket, dimensions = _group_by(group_by)
        until_at = parse_time(until, "until") or datetime.now(UTC)
        since_at = parse_time(since, "since") or until_at - DEFAULT_RANGE
        if since_at >= until_at:
            if until is None:  # no `until` sent: the `since` sent is in the future
                raise APIError(400, SINCE_IN_THE_FUTURE, param="since", code="invalid_request")
            raise APIError(
                400,
                "Invalid value for 'until': it must be after 'since'.",
                param="until",
                code="invalid_request",
            )
        longest = MAX_MINUTE_RANGE if bucket == "minute" else MAX_RANGE
        if until_at - since_at > longest:
            raise APIError(
                400,
                f"Invalid value for 'since': at most {longest.days} days"
                + (" by minute." if bucket == "minute" else "."),
                param="since",
                code="invalid_request",
            )
        query = PerformanceQuery(
            tenant=caller.tenant,
            since=since_at,
            until=until_at,
            bucket=bucket,  # type: ignore[arg-type]
            dimensions=dimensions,
            user_id=user_filter(caller, user_id),
            model=model,
            api_key_id=api_key_id,
        )
        engine = request.app.state.history.engine
        # A scan of every request in the range, in Python on SQLite: read without the
        # write lock, which would stall the recorder for as long.
        rows = await PerformanceQueries(read_only(engine)).performance(query)
        # Sums may pass 64 bits (each count may say up to 2**63 - 1), which orjson
        # refuses to write: written exactly, as a reply's big integers are.
        return Response(exactjson.dumps(report_json(rows, query)), media_type="application/json")

    return router
