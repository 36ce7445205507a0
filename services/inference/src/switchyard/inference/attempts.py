"""Serving one request: the order in which its model's deployments are tried, retries with
backoff on one deployment, fallback to the next, circuit breakers, per-deployment
concurrency; each attempt calls the upstream through the adapter of (client API,
deployment protocol), the call itself being `calls.UpstreamCalls`'s (a stream's events go
to the run's `ChunkPublisher` as they arrive). The result is an `Outcome`; nothing here
publishes a terminal event.

Rules a client can rely on:
- retries and fallbacks happen only while no stream event has been sent: events that
  only open a stream (`message_start`, `ping`, the role chunk, an empty block start) are
  held back until the first content, so a stream that fails before any content is retried
  or falls back as if it had failed before its first byte;
- a 429 is not an outage: it is retried after its Retry-After (when that fits in the
  deadline) or falls back, and never counts against the circuit breaker;
- the tokens of every upstream call count, also of the calls whose reply was not used.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from switchyard.common.events import TerminalStatus, TokenUsage
from switchyard.common.routing import Deployment, RoutingError, RoutingTable
from switchyard.inference import metrics
from switchyard.inference.adapters import Adapter, Adapters, UpstreamCall, check_forwarded_headers
from switchyard.inference.calls import UpstreamCalls
from switchyard.inference.client_names import in_client_terms
from switchyard.inference.errors import ProviderError
from switchyard.inference.genai import observe_call
from switchyard.inference.outcomes import Outcome, expired, failed
from switchyard.inference.platforms import missing_credential
from switchyard.inference.providers import ProviderPool
from switchyard.inference.publishing import ChunkPublisher
from switchyard.inference.reliability import Backoff, DeploymentState, DeploymentStates
from switchyard.inference.runs import RequestRun, seconds_until

log = structlog.get_logger("switchyard.inference.attempts")


class CurrentRouting(Protocol):
    """Where the routing table of each request is read, once per request: a
    `switchyard.common.routing.RoutingSource` (reloaded from its file) or a
    `FixedRouting`."""

    @property
    def table(self) -> RoutingTable:
        """The routing table in force now."""
        ...


@dataclass
class FixedRouting:
    """A routing table that never changes (tests, embedded set-ups given a table)."""

    table: RoutingTable


# Items (messages, input items, tools, content parts) past which building a request's
# upstream call, a translation walking every one of them, runs in a worker thread: a body
# of 300,000 short messages took over a second to translate, on the event loop every
# other request of the process waits on.
LARGE_REQUEST_ITEMS = 2_000


def is_large_request(body: dict[str, Any], previous_items: list[Any] | None = None) -> bool:
    """Whether `body` (and the conversation it continues) holds more than
    LARGE_REQUEST_ITEMS messages, input items, tools and content parts in all. Looks at
    no more than that many of them, so the answer itself is cheap."""
    total = len(previous_items or ())
    for name in ("messages", "input", "tools", "system"):
        value = body.get(name)
        if not isinstance(value, list):
            continue
        total += len(value)
        if total > LARGE_REQUEST_ITEMS:
            return True
        for item in value:
            content = item.get("content") if isinstance(item, dict) else None
            if isinstance(content, list):
                total += len(content)
                if total > LARGE_REQUEST_ITEMS:
                    return True
    return total > LARGE_REQUEST_ITEMS


def _final(outcome: Outcome) -> bool:
    """Whether a failed `outcome` tells the client not to retry (`x-should-retry: false`)."""
    return outcome.error is not None and outcome.error.should_retry is False


class Attempts:
    """Tries a request's deployments until one answers; returns the Outcome."""

    def __init__(
        self,
        *,
        routing: CurrentRouting,
        providers: ProviderPool,
        adapters: Adapters,
        deployments: DeploymentStates,
        backoff: Backoff,
        rng: random.Random,
        publisher_of: Callable[[RequestRun], ChunkPublisher],
    ) -> None:
        self._routing = routing
        self._providers = providers
        self._adapters = adapters
        self._deployments = deployments
        self._backoff = backoff
        self._rng = rng
        self._calls = UpstreamCalls(publisher_of)

    async def serve(self, run: RequestRun) -> Outcome:
        """Serve `run` on its model's deployments in attempt order (priority, weight, open
        circuits last) and return how it ended: completed, or failed with the error the
        client gets (404 `model_not_found`; the last deployment failure, but one telling
        the client not to retry only when no earlier one did not; 503
        `upstream_unavailable` while every circuit that could take it is open; the last 400
        of a deployment that cannot take the request as sent only when no deployment failed
        nor was skipped, or when its `details` tell the client's SDK how to go on).
        Provider errors become outcomes; only cancellation (the client,
        the deadline) and bugs raise."""
        model = run.request.data.model
        route = self._routing.table.route(model)
        if route is None:
            return failed(
                ProviderError(
                    404, None, f"The model '{model}' does not exist.", code="model_not_found"
                )
            )
        order = self._deployments.order(model, route.attempt_order(self._rng))
        # The last failure of a deployment, and the last refusal of one that cannot take
        # the request as sent: a fallback's refusal must not hide the primary's 429 or
        # 5xx (or its open circuit) behind a 400 that tells the client not to retry.
        failure: Outcome | None = None
        refusal: Outcome | None = None
        open_circuits: list[DeploymentState] = []
        for deployment in order:
            state = self._deployments.get(model, deployment)
            if not state.breaker.allow():
                open_circuits.append(state)
                metrics.FALLBACKS.labels(model, deployment.name, "circuit_open").inc()
                continue
            outcome = await self._try_deployment(run, deployment, state)
            if outcome.status is not TerminalStatus.FAILED or not outcome.retryable:
                return outcome
            if run.events_sent:
                return outcome  # part of the stream is out: no other deployment can resume it
            assert outcome.error is not None
            metrics.FALLBACKS.labels(model, deployment.name, outcome.error.metric_code).inc()
            # A request this deployment cannot take as sent (a parameter its protocol
            # lacks, an API its provider does not offer: a 400 that says nothing of the
            # deployment's health) is the client's doing, not a failing deployment: no
            # warning.
            client_side = outcome.error.status == 400 and not outcome.error.unhealthy
            if client_side:
                # One whose details the client's SDK acts on is kept over a later one.
                if refusal is None or not (refusal.error and refusal.error.details):
                    refusal = outcome
            elif failure is None or not _final(outcome) or _final(failure):
                # The last failure, unless it tells the client not to retry (a fallback's
                # key refused, its quota used up) where an earlier one did not: the
                # primary's 503 or 429 would pass, and the client must not give up on it.
                failure = outcome
            (log.info if client_side else log.warning)(
                "deployment cannot take the request" if client_side else "deployment failed",
                model=model,
                deployment=deployment.name,
                status=outcome.error.status,
                code=outcome.error.metric_code,
            )
        if refusal is not None and refusal.error is not None and refusal.error.details:
            # A refusal whose details the client's SDK acts on (a thread this deployment
            # cannot hold: it resends the whole conversation, which one may take) leads to
            # an answer sooner than the failure before it.
            return refusal
        if failure is not None:
            return failure
        if refusal is not None and not open_circuits:
            return refusal
        # Open circuits (or a half-open one already probing): answer now, not after a wait.
        retry_in = max(1, math.ceil(min(state.breaker.retry_in() for state in open_circuits)))
        return failed(
            ProviderError(
                503,
                None,
                f"Every deployment of model '{model}' is failing; retry in {retry_in} s.",
                code="upstream_unavailable",
                retry_after=retry_in,
            )
        )

    def _prepare(
        self, run: RequestRun, deployment: Deployment
    ) -> tuple[Adapter, UpstreamCall] | ProviderError:
        data = run.request.data
        try:
            check_forwarded_headers(data.headers)
            adapter = self._adapters.adapter_for(data.api, deployment, run.request)
            call = adapter.request(data.body, data.headers, deployment, data.stream)
        except ProviderError as error:
            if error.status == 400 and error.code == "unsupported_parameter":
                # Another deployment of the model may speak the client's API.
                error.retryable, error.retry_same, error.unhealthy = True, False, False
            return error
        return adapter, call

    async def _try_deployment(
        self, run: RequestRun, deployment: Deployment, state: DeploymentState
    ) -> Outcome:
        """Call one deployment, retrying it with backoff while that may help."""
        data = run.request.data
        model = data.model
        if is_large_request(data.body, data.previous_items):
            # Translating it walks every item: off the event loop, like a large body's
            # parsing at the gateway.
            try:
                prepared = await asyncio.to_thread(self._prepare, run, deployment)
            except BaseException:  # cancelled meanwhile: the breaker's slot is given back
                state.breaker.release()
                raise
        else:
            prepared = self._prepare(run, deployment)
        if isinstance(prepared, ProviderError):
            state.breaker.release()
            return self._failed(run, prepared, deployment)
        adapter, call = prepared
        if call.local is not None:
            # Answered here (a token count estimate): the deployment is not called.
            state.breaker.release()
            response = await asyncio.to_thread(call.local)
            outcome = Outcome(TerminalStatus.COMPLETED, response=response, reply_usage=TokenUsage())
            return self._with_usage(run, outcome, deployment)
        try:
            upstream = self._providers.get(model, deployment)
        except RoutingError as exc:  # a credential it names cannot be read
            state.breaker.release()
            return self._failed(run, missing_credential(deployment, exc), deployment)
        attempt = 0
        while True:
            attempt += 1
            started = time.perf_counter()
            try:
                async with state.slot(data.priority):
                    response, usage = await self._calls.call(
                        run, deployment, upstream, adapter, call
                    )
            except ProviderError as error:
                given = run.given()
                run.end_call(run.failed_call_usage())
                if error.vendor is not None and call.api is not data.api:
                    # The upstream named a field of the request it got, translated from
                    # the client's: in the client's terms where the translation renamed
                    # it (`max_completion_tokens` of a Messages request is its
                    # `max_tokens`), else a field the client never sent: no `param`.
                    in_client_terms(error, data.api, call.api, data.body)
                if error.unhealthy:
                    state.breaker.failure()
                else:
                    state.breaker.success()  # it answered; the request or its rate was the problem
                observe_call(data.api, model, deployment, error.metric_code, started)
                if error.is_timeout and seconds_until(data.deadline) <= 0:
                    outcome = expired(
                        "The request's deadline passed while the upstream was answering."
                    )
                    outcome.response = given
                    return self._with_usage(run, outcome, deployment)
                outcome = self._failed(run, error, deployment)
                outcome.response = given
                if run.events_sent or not error.retry_same or attempt > deployment.max_retries:
                    return outcome
                delay = error.retry_after
                if delay is None:
                    delay = self._backoff.delay(attempt, self._rng)
                if delay >= seconds_until(data.deadline):
                    return outcome  # waiting would outlive the request
                metrics.RETRIES.labels(model, deployment.name, error.metric_code).inc()
                log.info(
                    "retrying deployment",
                    model=model,
                    deployment=deployment.name,
                    attempt=attempt,
                    code=error.metric_code,
                    delay_s=round(delay, 3),
                )
                await asyncio.sleep(delay)
                if not state.breaker.allow():
                    return outcome  # failures opened its circuit meanwhile
                continue
            except BaseException:
                # Cancelled, the deadline, or a bug: says nothing about the deployment.
                state.breaker.release()
                observe_call(data.api, model, deployment, "interrupted", started)
                raise
            run.end_call(usage)
            state.breaker.success()
            observe_call(data.api, model, deployment, "ok", started)
            outcome = Outcome(
                TerminalStatus.COMPLETED,
                response=response,
                upstream_api=call.api,
                reply_usage=usage,
            )
            return self._with_usage(run, outcome, deployment)

    def _failed(self, run: RequestRun, error: ProviderError, deployment: Deployment) -> Outcome:
        return self._with_usage(run, failed(error), deployment)

    @staticmethod
    def _with_usage(run: RequestRun, outcome: Outcome, deployment: Deployment) -> Outcome:
        outcome.deployment = deployment
        outcome.usage = run.usage_so_far()
        outcome.upstream_calls = run.upstream_calls
        return outcome
