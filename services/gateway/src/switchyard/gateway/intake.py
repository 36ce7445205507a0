"""The one way a model request enters Switchyard, whichever route it came by: the model
check, admission against budgets and rate limits, the `chat.requested` event, and its
publication (or the refusal the client gets when the bus does not take it).

Interactive requests (`Dispatch.start`: `/v1/chat/completions`, `/v1/messages`,
`/v1/messages/count_tokens`, `/v1/embeddings`, `/v1/responses`,
`/v1/responses/input_tokens`) and batch-lane requests
(`submit_batch`: `/v1/jobs` and background responses) take the same steps in the same
order, with the same answers:

- a model that is not routed, or that the credential may not use, is 404
  `model_not_found` (alike, so names are not disclosed to keys restricted to others);
- a request over a budget or rate limit is 429 (recorded as refused, see
  `governance.refusals`);
- an event larger than the bus carries is 413 `request_too_large`; the bus not taking the
  event is 503 `bus_unavailable` with `Retry-After`; either way the admission's
  reservations go back, since nothing will settle them. 503 means the event was not
  taken: the bus gives it only when it knows (within its publish timeout, with the
  producer that held the event dropped so it cannot go out later).
- an interactive request whose publish outcome is unknown (the broker received the event
  but did not answer in time, `PublishOutcomeUnknownError`) is not refused: it may run,
  so the client waits for its reply like any accepted request, and gets it, or at its
  deadline 504 `publish_outcome_unknown` (with a cancellation sent so that it does not
  run later). A batch-lane
  submission in that state is still refused with 503, its id never having been given out.

Each refusal here is counted in `switchyard_gateway_requests_rejected_total{reason}`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import NoReturn

import structlog
from prometheus_client import Counter
from starlette.requests import Request

from switchyard.common.bus import (
    BusUnavailableError,
    EventTooLargeError,
    PublishOutcomeUnknownError,
)
from switchyard.common.errors import APIError
from switchyard.common.events import (
    FORWARDED_HEADERS,
    ChatRequestData,
    ChatRequested,
    ClientAPI,
    Priority,
    ReplyAddress,
    new_id,
    utcnow,
)
from switchyard.gateway.api.body import ClientRequest
from switchyard.gateway.auth import Principal
from switchyard.gateway.bootstrap import Gateway
from switchyard.gateway.governance.admission import INPUT_ONLY_APIS, Refused, Ticket
from switchyard.gateway.governance.refusals import admit_or_refuse
from switchyard.gateway.recent_jobs import AcceptedJob
from switchyard.gateway.request_id import request_id_of

log = structlog.get_logger("switchyard.gateway.intake")

REJECTED = Counter(
    "switchyard_gateway_requests_rejected_total", "Requests refused before publishing.", ["reason"]
)
PUBLISH_OUTCOME_UNKNOWN = Counter(
    "switchyard_gateway_publish_outcome_unknown_total",
    "Interactive requests the broker received but did not acknowledge in time: not refused "
    "(they may run), their replies awaited until the deadline.",
)


def forwarded_headers(request: Request) -> dict[str, str]:
    """The client's headers a provider needs to read the body (`FORWARDED_HEADERS`, lower
    case; a header sent several times is joined with commas). Never credentials."""
    headers = request.headers
    forwarded: dict[str, str] = {}
    for name in FORWARDED_HEADERS:
        if name in headers:
            forwarded[name] = ",".join(headers.getlist(name))
    return forwarded


def model_not_found(model: str, param: str = "model") -> APIError:
    """404 `model_not_found` naming `param`: the same answer for a model that does not
    exist and one the caller may not use."""
    return APIError(
        404,
        f"The model '{model[:256]}' does not exist or you do not have access to it.",
        code="model_not_found",
        param=param,
    )


def serves(gateway: Gateway, principal: Principal, model: str) -> bool:
    """Whether `model` is in the current routing table and `principal` may use it."""
    return gateway.routing.route(model) is not None and principal.may_use(model)


def check_model(gateway: Gateway, principal: Principal, model: str, param: str = "model") -> None:
    """Raise `model_not_found` (APIError 404) unless `serves(gateway, principal, model)`."""
    if not serves(gateway, principal, model):
        raise model_not_found(model, param)


def check_tool_models(principal: Principal, client: ClientRequest, prefix: str = "") -> None:
    """Raise APIError 404 `model_not_found` (naming `<prefix>tools[i].model`, or
    `tools.i.model` for Anthropic's APIs) when a credential bound to a list of models
    names another in a tool the upstream runs itself (a Responses `image_generation`
    tool's `model`, an Anthropic server tool's such as the advisor's): the upstream would
    run that model, billed to the deployment's account, past the list that bounds the
    credential."""
    tools = client.body.get("tools")
    if principal.allowed_models is None or not isinstance(tools, list):
        return
    anthropic = client.api in (ClientAPI.ANTHROPIC_MESSAGES, ClientAPI.ANTHROPIC_COUNT_TOKENS)
    for index, tool in enumerate(tools):
        model = tool.get("model") if isinstance(tool, dict) else None
        if isinstance(model, str) and not principal.may_use(model):
            where = f"tools.{index}.model" if anthropic else f"tools[{index}].model"
            raise model_not_found(model, prefix + where)


def too_large_for_bus() -> APIError:
    """413 for a request whose event is larger than the bus carries."""
    return APIError(
        413,
        "The request is larger than this deployment's event bus carries; shorten it, or "
        "raise SWITCHYARD_KAFKA_MAX_MESSAGE_BYTES and the topics' max.message.bytes.",
        code="request_too_large",
    )


def bus_unavailable(message: str) -> APIError:
    """503 `bus_unavailable` with `Retry-After: 2`."""
    return APIError(503, message, code="bus_unavailable", headers={"Retry-After": "2"})


async def admit(
    gateway: Gateway, principal: Principal, request_id: str, client: ClientRequest
) -> Ticket:
    """The request's admission ticket (budgets and rate limits reserved for its body, the
    items of a continued conversation included). Raises `Refused` (429, recorded)."""
    try:
        return await admit_or_refuse(
            gateway,
            principal,
            request_id,
            client.model,
            client.admission_body,
            api=client.api,
            embeddings=client.api in INPUT_ONLY_APIS,
        )
    except Refused as refused:
        REJECTED.labels(refused.reason).inc()
        raise


def request_event(
    gateway: Gateway,
    principal: Principal,
    client: ClientRequest,
    *,
    request_id: str,
    ticket: Ticket,
    headers: dict[str, str],
    timeout_s: float,
    priority: Priority = Priority.INTERACTIVE,
    reply_to: ReplyAddress | None = None,
    webhook_url: str | None = None,
    created: datetime | None = None,
) -> ChatRequested:
    """The `chat.requested` event of an admitted request: the body as the client sent it,
    its API, the forwarded `headers`, the caller, and a deadline `timeout_s` seconds after
    `created` (default: now)."""
    created = created or utcnow()
    return ChatRequested(
        source="gateway",
        tenant=principal.tenant,
        request_id=request_id,
        time=created,
        data=ChatRequestData(
            api=client.api,
            model=client.model,
            body=client.body,
            previous_items=client.previous_items,
            headers=headers,
            stream=client.stream,
            user_id=principal.user_id,
            api_key_id=principal.api_key_id,
            team_id=ticket.team_id,
            priority=priority,
            deadline=created + timedelta(seconds=timeout_s),
            reply_to=reply_to,
            webhook_url=webhook_url,
        ),
    )


async def publish(
    gateway: Gateway,
    topic: str,
    event: ChatRequested,
    ticket: Ticket,
    *,
    what: str = "request",
    await_if_unknown: bool = False,
) -> bool:
    """Publish an admitted request's event, keyed by its request id. When the bus does not
    take it, the ticket's reservations go back and APIError is raised: 413 (too large for
    the bus) or 503 `bus_unavailable` ("The <what> could not be accepted right now").

    Returns True when the bus confirmed taking the event. With `await_if_unknown`, a
    publish whose outcome is unknown (the broker may have the event and did not answer in
    time) returns False instead of raising: the event may be written and run, so refusing
    it would be a 503 for a request that then runs. The caller waits for the reply until
    the request's deadline, and the ticket is settled by its usage or released at that
    deadline, as for any accepted request."""
    try:
        await gateway.bus.publish(topic, event, key=event.request_id)
    except PublishOutcomeUnknownError as exc:
        if not await_if_unknown:
            _refuse_unavailable(ticket, what, exc)
        PUBLISH_OUTCOME_UNKNOWN.inc()
        log.warning(
            f"{what} publish outcome unknown: waiting for its reply until the deadline",
            request_id=event.request_id,
            error=str(exc),
        )
        return False
    except EventTooLargeError as exc:
        ticket.cancel()  # never published: nothing will settle it
        REJECTED.labels("too_large_for_bus").inc()
        log.error(f"{what} too large for the event bus", error=str(exc))
        raise too_large_for_bus() from None
    except BusUnavailableError as exc:
        _refuse_unavailable(ticket, what, exc)
    return True


async def wait_for_room(gateway: Gateway, topic: str, ticket: Ticket, what: str) -> None:
    """Wait until the bus may take new work whose events go to `topic` (embedded mode
    bounds what its stores have not written yet; Kafka returns at once). Raises APIError
    503 `bus_unavailable`, the ticket's reservations given back, when no room came in time:
    accepted work is never dropped, so it is refused instead."""
    try:
        await gateway.bus.wait_for_room(topic)
    except BusUnavailableError as exc:
        _refuse_unavailable(ticket, what, exc)


def _refuse_unavailable(ticket: Ticket, what: str, exc: BusUnavailableError) -> NoReturn:
    """Give the ticket's reservations back and raise 503 `bus_unavailable`."""
    ticket.cancel()
    REJECTED.labels("bus_unavailable").inc()
    log.error(f"could not publish {what}", error=str(exc))
    raise bus_unavailable(f"The {what} could not be accepted right now; retry shortly.") from None


@dataclass(frozen=True)
class Submitted:
    """A request accepted into the batch lane: its id, when it was accepted, its ticket."""

    request_id: str
    created: datetime
    ticket: Ticket

    @property
    def created_at(self) -> str:
        """`created` in RFC 3339 with a `Z` suffix."""
        return self.created.isoformat().replace("+00:00", "Z")


async def submit_batch(
    gateway: Gateway,
    request: Request,
    principal: Principal,
    client: ClientRequest,
    *,
    webhook_url: str | None = None,
    what: str = "request",
) -> Submitted:
    """Check the model, admit and publish a request to the batch lane, where no gateway
    waits for it (no reply address; deadline `job_timeout_s`), and remember it as
    accepted here so it can be cancelled at once (`RecentJobs`). Raises APIError (404
    model, 400 for a bad cache header, 413, 503) or `Refused` (429) as the module
    docstring says."""
    check_model(gateway, principal, client.model)
    # Not cached, but a bad cache header is the same 400 everywhere, and before admission.
    gateway.cache.check_headers(request)
    client = replace(client, stream=False)  # its result is read later, never streamed
    request_id = request_id_of(request.scope) or new_id()
    ticket = await admit(gateway, principal, request_id, client)
    timeout_s = gateway.settings.job_timeout_s
    ticket.attach(request_id, timeout_s)
    event = request_event(
        gateway,
        principal,
        client,
        request_id=request_id,
        ticket=ticket,
        headers=forwarded_headers(request),
        timeout_s=timeout_s,
        priority=Priority.BATCH,
        webhook_url=webhook_url,
    )
    await publish(gateway, gateway.topics.requests_batch, event, ticket, what=what)
    if gateway.settings.batch_accept_when_recorded:
        await _until_recorded(gateway, principal, request_id)
    submitted = Submitted(request_id, event.time, ticket)
    gateway.recent_jobs.add(
        AcceptedJob(
            job_id=request_id,
            tenant=principal.tenant,
            user_id=principal.user_id,
            model=client.model,
            created_at=submitted.created_at,
            webhook_url=webhook_url,
            accepted_at=time.monotonic(),
            api_key_id=principal.api_key_id,
        )
    )
    return submitted


async def _until_recorded(gateway: Gateway, principal: Principal, request_id: str) -> None:
    """Return once history shows the batch-lane request `request_id` (`GET /v1/jobs/{id}`
    as its submitter), asking again with backoff (5 ms doubling to 200 ms) for at most
    `responses_state_wait_s` seconds; past that, log a warning and return. Where the bus
    keeps nothing across a crash (embedded mode's in-memory bus), history's database is the
    only copy of an accepted job: a 202 given before it is recorded could name a job a
    crash moments later loses, while history republishes recorded ones at start-up."""
    from switchyard.gateway.api.history import call

    deadline = time.monotonic() + gateway.settings.responses_state_wait_s
    delay = 0.005
    while True:
        try:
            answer = await call(gateway, principal, f"/v1/jobs/{request_id}")
            if answer.status_code != 404:
                return
        except APIError:
            pass  # history unreachable for now: asked again until the deadline
        left = deadline - time.monotonic()
        if left <= 0:
            log.warning("accepted before history recorded it", request_id=request_id)
            return
        await asyncio.sleep(min(delay, left))
        delay = min(delay * 2, 0.2)
