"""`/v1/jobs`: the caller's jobs (the batch lane's requests), one job, and cancelling one
that has not finished."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response

from switchyard.common import exactjson
from switchyard.common.errors import APIError
from switchyard.common.http import internal_token_dependency
from switchyard.common.statuses import JOB_STATUSES
from switchyard.history.api.dependencies import CallerDep, ComponentsDep, QueriesDep
from switchyard.history.api.params import cursor_refusal, page_limit, parse_statuses
from switchyard.history.jobs import cancellation_event, job_object
from switchyard.history.models import RequestStatus
from switchyard.history.queries import DEFAULT_PAGE_SIZE, InvalidCursorError
from switchyard.history.timeparse import isoformat_z


def _json(data: Any, status_code: int = 200) -> Response:
    return Response(exactjson.dumps(data), status_code=status_code, media_type="application/json")


def _not_found(job_id: str) -> APIError:
    return APIError(404, f"No job found with id '{job_id}'.", param="job_id", code="job_not_found")


def _cancelled_before_recorded(job_id: str, event: Any) -> dict[str, Any]:
    """The job view of a job cancelled before its request was recorded."""
    now = isoformat_z(event.time)
    return {
        "id": job_id,
        "object": "job",
        "status": "cancelled",
        "model": None,
        "created_at": now,
        "started_at": None,
        "completed_at": now,
        "result": None,
        "error": event.data.error.model_dump(mode="json"),
        "usage": {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0},
        "cost_usd": None,
        "deployment": None,
        "webhook": None,
    }


def jobs_router(internal_token: str) -> APIRouter:
    """The jobs API (`/v1/jobs`): list, read and cancel the caller's asynchronous jobs. Reached
    through the gateway, which sends the internal token and the caller's identity."""
    router = APIRouter(
        prefix="/v1/jobs",
        tags=["jobs"],
        dependencies=[Depends(internal_token_dependency(internal_token))],
    )

    @router.get("", summary="List jobs, newest first")
    async def list_jobs(
        caller: CallerDep,
        queries: QueriesDep,
        limit: Annotated[int, Depends(page_limit)] = DEFAULT_PAGE_SIZE,
        cursor: Annotated[str | None, Query()] = None,
        status: Annotated[
            str | None, Query(description=f"Comma-separated: {', '.join(JOB_STATUSES)}.")
        ] = None,
    ) -> Response:
        """Lists the caller's asynchronous jobs, newest first (a tenant admin sees every user's),
        a page at a time: pass `next_cursor` as `cursor` for the next page. 400 for an invalid
        `limit`, `cursor` or `status`."""
        statuses = parse_statuses(status, JOB_STATUSES)
        try:
            page = await queries.list_jobs(caller, limit=limit, cursor=cursor, statuses=statuses)
        except InvalidCursorError as exc:
            raise cursor_refusal(exc) from exc
        return _json(
            {
                "object": "list",
                "data": [job_object(row) for row in page.items],
                "next_cursor": page.next_cursor,
            }
        )

    @router.get("/{job_id}", summary="One job, with its result once done")
    async def get_job(job_id: str, caller: CallerDep, queries: QueriesDep) -> Response:
        """Returns one of the caller's jobs with its status and, once finished, its result or
        error. 404 when there is no such job for the caller."""
        row = await queries.get_job(caller, job_id)
        if row is None:
            raise _not_found(job_id)
        return _json(job_object(row))

    @router.post("/{job_id}/cancel", summary="Cancel a job that has not finished")
    async def cancel_job(
        job_id: str,
        caller: CallerDep,
        components: ComponentsDep,
        accepted: Annotated[
            bool,
            Query(
                description="The gateway vouches that it accepted this job for the caller "
                "moments ago: if it is not recorded yet, its cancellation is recorded first."
            ),
        ] = False,
    ) -> Response:
        """Records the cancellation (the job's terminal state becomes `cancelled`); the
        gateway then tells inference to skip it (`queued`) or stop it (`in_progress`). A finished
        job gets 409."""
        queries = components.queries
        row = await queries.get_job(caller, job_id)
        if row is None and accepted:
            # Its request is still on its way: the projection keeps the first terminal
            # status, so the request, when it arrives, finds the job cancelled.
            # Not recorded yet, so its owner is unknown here: only an administrator may
            # cancel another's job, so an administrator's cancel is said to be one.
            event = cancellation_event(caller.tenant, job_id, by_owner=not caller.sees_whole_tenant)
            await components.recorder.record([event])
            row = await queries.get_job(caller, job_id)
            if row is None:
                return _json(_cancelled_before_recorded(job_id, event))
        if row is None:
            raise _not_found(job_id)
        if row["status"] == RequestStatus.PENDING.value:
            await components.recorder.record(
                [
                    cancellation_event(
                        row["tenant"], job_id, by_owner=row["user_id"] == caller.user_id
                    )
                ]
            )
            row = await queries.get_job(caller, job_id)
            assert row is not None
        if row["status"] != RequestStatus.CANCELLED.value:
            raise APIError(
                409,
                f"Job '{job_id}' already finished with status '{row['status']}'; "
                "only a job that is queued or in progress can be cancelled.",
                param="job_id",
                code="job_not_cancellable",
            )
        return _json(job_object(row))

    return router
