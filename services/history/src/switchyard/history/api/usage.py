"""`/v1/usage`: the caller's usage (the whole tenant's for admins) as JSON or CSV."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Response

from switchyard.common import exactjson
from switchyard.common.errors import APIError
from switchyard.common.http import internal_token_dependency
from switchyard.history.api.dependencies import CallerDep, QueriesDep, user_filter
from switchyard.history.api.params import parse_time
from switchyard.history.queries import UsageQuery
from switchyard.history.usage import (
    UsageParameterError,
    parse_group_by,
    report_csv,
    report_json,
    time_range,
)


def usage_router(internal_token: str) -> APIRouter:
    """The usage report (`GET /v1/usage`): requests, errors, tokens and cost (USD) per time bucket
    and group, as JSON or CSV. Reached through the gateway (internal token)."""
    router = APIRouter(
        prefix="/v1/usage",
        tags=["usage"],
        dependencies=[Depends(internal_token_dependency(internal_token))],
    )

    @router.get("", summary="Requests, errors, tokens and cost over time")
    async def usage(
        caller: CallerDep,
        queries: QueriesDep,
        since: Annotated[
            str | None, Query(description="ISO 8601 start (inclusive) or e.g. 7d; default 30d.")
        ] = None,
        until: Annotated[str | None, Query(description="ISO 8601 end (exclusive); now.")] = None,
        group_by: Annotated[
            str | None,
            Query(
                description="Comma-separated: day or hour (time buckets), and any of model, "
                "user, api_key, team. Default: day."
            ),
        ] = None,
        model: Annotated[str | None, Query(max_length=256)] = None,
        api_key_id: Annotated[str | None, Query(max_length=128)] = None,
        user_id: Annotated[
            str | None, Query(max_length=128, description="Admins: one user's usage.")
        ] = None,
        team_id: Annotated[
            str | None,
            Query(max_length=128, description="Only requests made as a member of this team."),
        ] = None,
        format: Annotated[str | None, Query(description="json (default) or csv.")] = None,
        accept: Annotated[str | None, Header()] = None,
    ) -> Response:
        """Usage of the caller (of the whole tenant for admins) in [since, until)."""
        if format not in (None, "", "json", "csv"):
            raise APIError(
                400,
                "Invalid value for 'format': must be json or csv.",
                param="format",
                code="invalid_format",
            )
        as_csv = format == "csv" or (not format and "text/csv" in (accept or ""))
        try:
            bucket, dimensions = parse_group_by(group_by)
            since_at, until_at = time_range(
                parse_time(since, "since"), parse_time(until, "until"), bucket
            )
        except UsageParameterError as exc:
            raise APIError(400, str(exc), param=exc.param, code="invalid_request") from None
        query = UsageQuery(
            since=since_at,
            until=until_at,
            bucket=bucket,  # type: ignore[arg-type]
            dimensions=dimensions,
            tenant=caller.tenant,
            user_id=user_filter(caller, user_id),
            model=model,
            api_key_id=api_key_id,
            team_id=team_id,
        )
        rows = await queries.usage(query)
        if as_csv:
            return Response(
                report_csv(rows, query),
                media_type="text/csv; charset=utf-8",
                headers={"Content-Disposition": 'attachment; filename="usage.csv"'},
            )
        # Sums may pass 64 bits (each count may say up to 2**63 - 1), which orjson
        # refuses to write: written exactly, as a reply's big integers are.
        return Response(exactjson.dumps(report_json(rows, query)), media_type="application/json")

    return router
