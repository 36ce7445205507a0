"""`/v1/jobs`: asynchronous model requests in the batch lane.

`POST /v1/jobs` takes one request of any model API, as OpenAI's Batch API writes its
request lines: `{"url": "/v1/messages", "body": {...}}` (`url` is `/v1/chat/completions`,
`/v1/messages` or `/v1/embeddings`), plus an optional `webhook_url`. A plain Chat
Completions body (with an optional top-level `webhook_url`) is accepted as well. The body
is checked as its own route checks it and published as it came, with its API and the
forwarded headers (`anthropic-version`...), as a `chat.requested` with priority `batch`
on the batch topic — no gateway waits for it, so it has no reply address — and the
answer is 202 at once with the job id. Inference serves the batch lane only with
capacity interactive traffic leaves free. History records the job like any request;
`GET /v1/jobs/{id}` shows its status (queued, in_progress once inference began to run
it, completed, failed, cancelled, expired, refused) and, once done, its result in the
job's API; `GET /v1/jobs` lists them; `POST /v1/jobs/{id}/cancel` cancels one that has
not finished: history records the cancellation (the job's terminal state) and the gateway
tells inference to skip or stop it.

A job that asked for a webhook is POSTed to it when it finishes, signed with the
tenant's secret (see the history service's `webhooks` module for the format). The URL is
checked here (400 `invalid_webhook_url`): a well-formed http(s) URL whose host is not,
and does not resolve to, a loopback, private, link-local, multicast or reserved address
(`switchyard.common.egress`); history checks the address again when it connects.

A job is cancellable as soon as it is accepted: the replica that accepted it remembers it
for a few minutes, so a cancellation that reaches history before the job itself is
recorded there as the job's terminal state (see `RecentJobs`).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, cast

import httpx
import orjson
import structlog
from fastapi import APIRouter, Request, Response

from switchyard.common import exactjson
from switchyard.common.bus import BusUnavailableError
from switchyard.common.egress import (
    InvalidTargetURL,
    RefusedDestination,
    TargetPolicy,
    UnresolvableDestination,
)
from switchyard.common.errors import APIError
from switchyard.common.events import (
    CancelRequestData,
    ChatCancelRequested,
    ClientAPI,
)
from switchyard.common.headers import ANTHROPIC_VERSION_HEADER, REQUEST_ID_HEADER
from switchyard.common.offloop import off_loop
from switchyard.gateway.api.body import (
    READERS,
    ClientRequest,
    openapi_body,
    parse_json_object_off_loop,
)
from switchyard.gateway.api.deps import CurrentPrincipal, GatewayDep
from switchyard.gateway.api.history import forward, looks_like_id, read_when_recorded, relay
from switchyard.gateway.api.messages import anthropic_version_refusal
from switchyard.gateway.bootstrap import Gateway
from switchyard.gateway.intake import check_model, check_tool_models, submit_batch
from switchyard.gateway.limits import API_PATHS, too_large_message
from switchyard.gateway.recent_jobs import AcceptedJob
from switchyard.gateway.schemas import JobRequest

log = structlog.get_logger("switchyard.gateway.jobs")
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


async def _webhook_url(value: Any, policy: TargetPolicy) -> str | None:
    """`value` if it is an acceptable webhook URL (None if absent); APIError 400 if not. A
    host that does not resolve now is accepted: history checks it again when delivering."""
    if value is None:
        return None
    try:
        await policy.check_url(value)
    except InvalidTargetURL as exc:
        problem = str(exc)
    except RefusedDestination:
        problem = (
            "must point to a public address (loopback, private, link-local, multicast and "
            "reserved addresses are refused)"
        )
    except UnresolvableDestination:
        return cast(str, value)
    else:
        return cast(str, value)
    raise APIError(
        400,
        f"Invalid value for 'webhook_url': {problem}.",
        param="webhook_url",
        code="invalid_webhook_url",
    )


# The fields of a request line of OpenAI's Batch API (`custom_id` and `method` are taken
# and not used: a job's id is its own, and every model API is a POST).
BATCH_LINE_FIELDS = frozenset({"url", "body", "custom_id", "method"})


def _not_found(job_id: str) -> APIError:
    return APIError(404, f"No job found with id '{job_id[:64]}'.", code="job_not_found")


def read_job(data: dict[str, Any]) -> ClientRequest:
    """The job's request, from either form of the jobs body (`webhook_url` already taken
    out). Raises APIError 400 naming the field at fault."""
    if "url" not in data:
        if "body" in data or "custom_id" in data:
            # A request line without its `url`: not a Chat Completions body.
            raise APIError(
                400,
                "Missing required parameter: 'url'.",
                param="url",
                code="missing_required_parameter",
            )
        return READERS[ClientAPI.OPENAI_CHAT_COMPLETIONS](data)
    for name in data:
        # A Batch API request line's own fields are taken; anything else is a mistake the
        # caller should hear of (a misnamed `webhook_url` would be dropped silently).
        if name not in BATCH_LINE_FIELDS:
            raise APIError(
                400, f"Unknown parameter: '{name[:64]}'.", param=name[:64], code="unknown_parameter"
            )
    custom_id = data.get("custom_id")
    if custom_id is not None and not isinstance(custom_id, str):
        raise APIError(
            400,
            "Invalid type for 'custom_id': expected a string.",
            param="custom_id",
            code="invalid_type",
        )
    if data.get("method", "POST") != "POST":
        raise APIError(
            400, "Invalid value for 'method': must be 'POST'.", param="method", code="invalid_value"
        )
    api = API_PATHS.get(data["url"]) if isinstance(data["url"], str) else None
    if api is None:
        raise APIError(
            400,
            f"Invalid value for 'url': must be one of {', '.join(API_PATHS)}.",
            param="url",
            code="invalid_value",
        )
    body = data.get("body")
    if not isinstance(body, dict):
        raise APIError(
            400,
            "Invalid 'body': expected the request body of the API in 'url', as an object.",
            param="body",
            code="invalid_type" if body is not None else "missing_required_parameter",
        )
    try:
        return READERS[api](body)
    except APIError as exc:
        exc.param = f"body.{exc.param}" if exc.param else "body"
        raise


def _model_request(data: dict[str, Any]) -> Any:
    """The model request a job carries: a request line's `body`, else the job itself (a
    plain Chat Completions body, its `webhook_url` already taken out)."""
    return data.get("body") if "url" in data else data


@router.post(
    "",
    status_code=202,
    summary="Create an asynchronous job (any model API)",
    openapi_extra=openapi_body(JobRequest),
    response_model=None,
)
async def create_job(
    request: Request, principal: CurrentPrincipal, gateway: GatewayDep
) -> Response:
    """One request of any model API (`url` and `body`), plus an optional `webhook_url`
    POSTed when the job ends. Answers 202 with the job (`status: queued`); poll
    `GET /v1/jobs/{id}` for the result."""
    gateway.cache.check_headers(request)  # jobs are not cached; a bad header is still a 400
    raw = await request.body()
    data = await parse_json_object_off_loop(raw)
    webhook_url = await _webhook_url(data.pop("webhook_url", None), gateway.webhook_policy)
    # The request's checks walk its body: a large one's off the event loop, as its parsing.
    client = await off_loop(lambda _: read_job(data), raw)
    if client.api is ClientAPI.ANTHROPIC_MESSAGES:
        # Sent with the job when given (docs/protocols.md): checked as /v1/messages checks it.
        refusal = anthropic_version_refusal(request.headers.getlist(ANTHROPIC_VERSION_HEADER))
        if refusal is not None:
            refusal.param = ANTHROPIC_VERSION_HEADER
            raise refusal
    limit = gateway.settings.max_body_bytes_for(client.api)
    # The model request is measured, not the job around it (`url`, `custom_id`,
    # `webhook_url`): a body its own route takes is taken as a job.
    if len(raw) > limit and len(await off_loop(orjson.dumps, _model_request(data))) > limit:
        raise APIError(413, too_large_message(limit), code="request_too_large")
    if client.stream:
        raise APIError(
            400,
            "Jobs cannot stream: their result is fetched with GET /v1/jobs/{id} or sent to the "
            "webhook. Remove 'stream' or set it to false.",
            param="body.stream" if "url" in data else "stream",
            code="invalid_request",
        )
    # Named where the caller wrote it (a request line's model is in its `body`).
    check_model(gateway, principal, client.model, "body.model" if "url" in data else "model")
    check_tool_models(principal, client, "body." if "url" in data else "")
    # Jobs count against the same budgets and rate limits as interactive requests.
    submitted = await submit_batch(
        gateway, request, principal, client, webhook_url=webhook_url, what="job"
    )
    job_id, created_at = submitted.request_id, submitted.created_at
    job = {
        "id": job_id,
        "object": "job",
        "status": "queued",
        "api": client.api.value,
        "model": client.model,
        "created_at": created_at,
        "started_at": None,
        "completed_at": None,
        "result": None,
        "error": None,
        # The shape GET /v1/jobs/{id} shows, with what a job holds before it runs.
        "usage": {
            "input_tokens": 0,
            "output_tokens": 0,
            "total_tokens": 0,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
            "cache_creation_1h_input_tokens": 0,
            "reasoning_tokens": 0,
        },
        "cost_usd": None,
        "deployment": None,
        "webhook": {
            "url": webhook_url,
            "status": "pending",
            "attempts": 0,
            "delivered_at": None,
            "last_error": None,
        }
        if webhook_url
        else None,
    }
    return Response(
        orjson.dumps(job),
        status_code=202,
        media_type="application/json",
        headers={
            REQUEST_ID_HEADER: job_id,
            "Location": f"/v1/jobs/{job_id}",
            **submitted.ticket.openai_headers(),
        },
    )


@router.get("", summary="List your jobs, newest first")
async def list_jobs(request: Request, principal: CurrentPrincipal, gateway: GatewayDep) -> Response:
    """Query parameters: `limit` (1-100; a page ends sooner, one job at least, before its
    requests and replies pass about 16 MB), `cursor`, `status` (comma-separated: queued,
    in_progress, completed, failed, cancelled, expired, refused). Admins see their whole
    tenant's jobs."""
    return await forward(gateway, principal, "/v1/jobs", request)


@router.get("/{job_id}", summary="One job, with its result once it is done")
async def get_job(
    job_id: str, request: Request, principal: CurrentPrincipal, gateway: GatewayDep
) -> Response:
    """A job accepted moments ago is waited for (at most `responses_state_wait_s`) until
    history has recorded it from the bus, so reading it right after creating it finds it."""
    if not looks_like_id(job_id):
        raise _not_found(job_id)
    path = f"/v1/jobs/{job_id}"
    accepted = gateway.recent_jobs.get(job_id, principal.tenant)
    if accepted is None or not accepted.visible_to(principal):
        return await forward(gateway, principal, path, request)

    async def not_yet(answer: httpx.Response) -> bool:
        return answer.status_code == 404

    answer = await read_when_recorded(gateway, principal, path, request, not_yet=not_yet)
    return relay(answer)


@router.post("/{job_id}/cancel", summary="Cancel a job that has not finished")
async def cancel_job(
    job_id: str, request: Request, principal: CurrentPrincipal, gateway: GatewayDep
) -> Response:
    """The job ends as `cancelled` (answered with the job); a finished job gets 409."""
    if not looks_like_id(job_id):
        raise _not_found(job_id)
    path = f"/v1/jobs/{job_id}/cancel"
    response = await forward(gateway, principal, path, None, method="POST")
    accepted = gateway.recent_jobs.get(job_id, principal.tenant)
    if response.status_code == 404 and accepted is not None and accepted.visible_to(principal):
        # Accepted here moments ago, not yet recorded by history: history records the
        # cancellation now, and the job's request, when it arrives, finds it cancelled.
        response = await forward(gateway, principal, path + "?accepted=true", None, method="POST")
        if response.status_code == 200:
            response = _with_accepted_job(response, accepted)
    if response.status_code == 200:
        # History recorded the cancellation; inference skips the job or stops it.
        _publish_in_background(gateway, _cancel_event(principal.tenant, job_id))
    return response


def _with_accepted_job(response: Response, accepted: AcceptedJob) -> Response:
    """History's answer for a job it has not seen yet, completed with what this replica
    knows of the job (model, creation time, webhook)."""
    job = exactjson.loads(response.body)
    job.update(model=accepted.model, created_at=accepted.created_at)
    if accepted.webhook_url:
        job["webhook"] = {"url": accepted.webhook_url, "status": "pending"}
    return Response(exactjson.dumps(job), status_code=200, media_type="application/json")


def _cancel_event(tenant: str, job_id: str) -> ChatCancelRequested:
    return ChatCancelRequested(
        source="gateway",
        tenant=tenant,
        request_id=job_id,
        data=CancelRequestData(reason="job_cancelled"),
    )


def _publish_in_background(gateway: Gateway, event: ChatCancelRequested) -> None:
    async def publish() -> None:
        with contextlib.suppress(BusUnavailableError):
            await gateway.bus.publish(gateway.topics.control, event, key=event.request_id)

    task = asyncio.ensure_future(publish())
    gateway.background.add(task)
    task.add_done_callback(gateway.background.discard)


def request_cancellation(gateway: Gateway, tenant: str, job_id: str) -> None:
    """Tell inference to skip or stop a job whose cancellation history has recorded."""
    _publish_in_background(gateway, _cancel_event(tenant, job_id))
