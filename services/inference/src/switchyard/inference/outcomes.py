"""How a request ended (`Outcome`), and what that becomes: the terminal event for the
client (`chat.completed` or `chat.failed`), the `usage.recorded` event with its cost, and
the metrics. Event ids derive from the request event's id, so a redelivered request
produces events with the same ids and consumers deduplicate them."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from switchyard.common.events import (
    MAX_COST_USD,
    ChatCompleted,
    ChatCompletedData,
    ChatFailed,
    ChatFailedData,
    ChatRequested,
    ClientAPI,
    EnvelopeFields,
    ErrorInfo,
    TerminalStatus,
    TokenUsage,
    UsageData,
    UsageRecorded,
    derived_event_id,
)
from switchyard.common.governance import choices, output_cap
from switchyard.common.routing import Deployment
from switchyard.inference import genai, metrics
from switchyard.inference.errors import ProviderError, response_too_large
from switchyard.inference.pricing import PriceTable, request_cost

log = structlog.get_logger("switchyard.inference.outcomes")

SOURCE = "inference"
NO_USAGE = TokenUsage()


@dataclass
class Outcome:
    """How one request ended, before it is turned into events."""

    status: TerminalStatus
    # The reply; for a failure, what a stream had given before it failed (or None).
    response: dict[str, Any] | None = None
    error: ProviderError | None = None
    deployment: Deployment | None = None
    upstream_api: ClientAPI | None = None
    # Tokens of every upstream call the request made (what usage.recorded bills)...
    usage: TokenUsage = NO_USAGE
    # ...and of the call whose reply the client gets (what chat.completed reports).
    reply_usage: TokenUsage | None = None
    upstream_calls: int = 0
    latency_ms: float = 0.0

    @property
    def provider(self) -> str | None:
        """The provider kind of the deployment that served last, if any."""
        return self.deployment.provider if self.deployment else None

    @property
    def deployment_name(self) -> str | None:
        """The name of the deployment that served last, if any."""
        return self.deployment.name if self.deployment else None

    @property
    def retryable(self) -> bool:
        """A failure another deployment could fix (rate limit, outage, timeout)."""
        return self.error is not None and self.error.retryable


def failed(error: ProviderError, deployment: Deployment | None = None) -> Outcome:
    """A failed outcome with the error the client gets, on `deployment` if one was called."""
    return Outcome(TerminalStatus.FAILED, error=error, deployment=deployment)


def expired(message: str, usage: TokenUsage = NO_USAGE) -> Outcome:
    """An expired outcome: 504 `deadline_exceeded` with `message` saying where the
    deadline passed, billed with `usage` (the tokens of the calls made)."""
    return Outcome(
        TerminalStatus.EXPIRED,
        error=ProviderError(504, None, message, code="deadline_exceeded"),
        usage=usage,
    )


# Why a request was cancelled other than its client going away, as the gateway's
# `chat.cancel_requested` says: its caller was refused while it ran (the codes and status
# history cancels such a caller's jobs with).
REFUSED_CALLER_REASONS = {
    "credentials_revoked": "The credential of this request was revoked while it ran.",
    "user_disabled": "The user of this request was disabled while it ran.",
}


def cancelled(
    usage: TokenUsage, deployment: Deployment | None, reason: str = "client_disconnected"
) -> Outcome:
    """A cancelled outcome, billed with `usage` (the tokens spent until the cancellation):
    403 `permission_error` coded `reason` for one of `REFUSED_CALLER_REASONS`, else (its
    client went away) 408 `client_disconnected`."""
    refused = REFUSED_CALLER_REASONS.get(reason)
    if refused is not None:
        error = ProviderError(403, "permission_error", refused + " It was cancelled.", code=reason)
    else:
        error = ProviderError(
            408,
            "request_cancelled",
            "The client went away; the request was cancelled.",
            code="client_disconnected",
        )
    return Outcome(TerminalStatus.CANCELLED, error=error, deployment=deployment, usage=usage)


def stream_interrupted() -> Outcome:
    """A stream delivered again after part of it may have reached its client: another run
    cannot continue it, so it ends with the error the client's stream ends with. The
    tokens of the run that was lost are not known."""
    return Outcome(
        TerminalStatus.FAILED,
        error=ProviderError(
            502,
            None,
            "The stream was interrupted (the replica serving it stopped); retry the request.",
            code="stream_interrupted",
        ),
    )


def undeliverable(outcome: Outcome, reason: BaseException) -> Outcome:
    """What the client gets instead of a reply the bus refuses (e.g. larger than it
    carries): a 502 `response_too_large`, billed with the tokens of every upstream call."""
    return Outcome(
        TerminalStatus.FAILED,
        error=response_too_large(reason),
        deployment=outcome.deployment,
        upstream_api=outcome.upstream_api,
        usage=outcome.usage,
        upstream_calls=outcome.upstream_calls,
        latency_ms=outcome.latency_ms,
    )


class CurrentPrices(Protocol):
    """Where the price table of each request's cost is read: a
    `switchyard.common.pricing.PriceSource` (reloaded from its file) or a `FixedPrices`."""

    @property
    def table(self) -> PriceTable:
        """The price table in force now."""
        ...


@dataclass
class FixedPrices:
    """A price table that never changes (tests, embedded set-ups)."""

    table: PriceTable


class OutcomeEvents:
    """Builds a request's terminal and usage events, prices them, and counts them."""

    def __init__(self, prices: CurrentPrices) -> None:
        self._prices = prices

    def envelope(
        self, request: ChatRequested, suffix: str, run_id: str | None = None
    ) -> dict[str, Any]:
        """The envelope fields of the event `suffix` (`reply`, `usage`) of `request`: its id is
        the request event's id, the suffix and a digest of the request's tenant and request
        id (and `run_id`, the run that made it, when given), so a redelivery produces the
        same ids, and an event that copies the request's event id under another request (a
        producer with access to the topics) makes ids of its own, never those of the real
        request's reply and usage, which history would then take for copies already
        stored."""
        owned_by = f"{request.tenant}\0{request.request_id}"
        if run_id is not None:
            owned_by += f"\0{run_id}"
        owner = hashlib.blake2b(owned_by.encode(), digest_size=8).hexdigest()
        return {
            "id": derived_event_id(request.id, f"{suffix}.{owner}"),
            "source": SOURCE,
            "tenant": request.tenant,
            "request_id": request.request_id,
        }

    def terminal(self, request: ChatRequested, outcome: Outcome) -> EnvelopeFields:
        """`chat.completed` or `chat.failed`, in the client's API."""
        api = request.data.api
        envelope = self.envelope(request, "reply")
        if outcome.status is TerminalStatus.COMPLETED:
            assert outcome.response is not None and outcome.deployment is not None
            return ChatCompleted(
                **envelope,
                data=ChatCompletedData(
                    api=api,
                    response=outcome.response,
                    provider=outcome.deployment.provider,
                    deployment=outcome.deployment.name,
                    upstream_api=outcome.upstream_api,
                    usage=outcome.reply_usage or outcome.usage,
                    latency_ms=outcome.latency_ms,
                ),
            )
        assert outcome.error is not None
        return ChatFailed(
            **envelope,
            data=ChatFailedData(
                status=outcome.status,
                error=self.error_info(request, outcome),
                provider=outcome.provider,
                deployment=outcome.deployment_name,
                latency_ms=outcome.latency_ms,
                response=outcome.response,
            ),
        )

    def error_info(self, request: ChatRequested, outcome: Outcome) -> ErrorInfo:
        """The outcome's error in the error shape of the client's API (OpenAI's or Anthropic's)."""
        assert outcome.error is not None
        return outcome.error.to_error_info(request.data.api)

    def cost(self, request: ChatRequested, outcome: Outcome) -> float:
        """USD of the tokens of every upstream call the request made."""
        if not outcome.usage.total_tokens:
            return 0.0
        cost = request_cost(
            self._prices.table, request.data.model, outcome.deployment, outcome.usage
        )
        # An absurd count (up to MAX_TOKEN_COUNT) at a custom price may cost more than an
        # event says: the most it may say, never a usage record refused for it.
        return min(cost, MAX_COST_USD) if math.isfinite(cost) else MAX_COST_USD

    def usage(
        self,
        request: ChatRequested,
        outcome: Outcome,
        cost: float,
        ttft_ms: float | None,
        run_id: str | None = None,
    ) -> UsageRecorded:
        """The `usage.recorded` event of `request` as its run `run_id` ended: the tokens of
        every upstream call of that run (`outcome.usage`), `cost` in USD, latency and
        `ttft_ms` (time to first content, in milliseconds, None if not streamed). Each run
        has an id of its own (the same for a copy of it): a request ended by one replica
        while another's run went on (frozen, then resumed) has a record of each, and
        history adds them up, where one id would keep the first and drop the other's
        tokens."""
        data = request.data
        return UsageRecorded(
            **self.envelope(request, "usage", run_id),
            data=UsageData(
                api=data.api,
                model=data.model,
                provider=outcome.provider,
                deployment=outcome.deployment_name,
                user_id=data.user_id,
                api_key_id=data.api_key_id,
                team_id=data.team_id,
                status=outcome.status,
                usage=outcome.usage,
                cost_usd=cost,
                latency_ms=outcome.latency_ms,
                time_to_first_token_ms=ttft_ms,
                upstream_calls=outcome.upstream_calls,
                replay_of=data.replay_of,
            ),
        )

    def record_metrics(self, request: ChatRequested, outcome: Outcome, cost: float) -> None:
        """Count the request in the Prometheus metrics: requests and errors by public model,
        tokens and `cost` (USD) by deployment, and the GenAI token usage (`genai`)."""
        model = request.data.model
        metrics.REQUESTS.labels(model, outcome.status.value).inc()
        if outcome.error is not None:
            metrics.ERRORS.labels(model, str(outcome.error.status), outcome.error.code_label).inc()
        deployment = outcome.deployment
        usage = outcome.usage
        if deployment is not None and usage.total_tokens:
            name = deployment.name
            for direction, count in (
                ("input", usage.input_tokens),
                ("output", usage.output_tokens),
                ("cache_read", usage.cache_read_input_tokens),
                ("cache_creation", usage.cache_creation_input_tokens),
                ("reasoning", usage.reasoning_tokens),
            ):
                if count:
                    metrics.TOKENS.labels(model, name, direction).inc(count)
            genai.observe_tokens(request.data.api, model, deployment, usage)
            _check_output_cap(request, deployment.name, usage.output_tokens)
        if deployment is not None and cost:
            metrics.COST_USD.labels(model, deployment.name).inc(cost)


def _check_output_cap(request: ChatRequested, deployment: str, output_tokens: int) -> None:
    """Count and log a request whose upstreams reported more output tokens than its own
    cap allows (`output_cap` times `choices`, read as the gateway reserves them): billed as
    reported, beyond its reservation, so its budget may be overspent by the difference.
    A request without a cap is not judged (its reservation is the price table's)."""
    body = request.data.body
    cap = output_cap(body, 0) * choices(body)
    if cap and output_tokens > cap:
        metrics.OUTPUT_OVER_CAP.labels(request.data.model, deployment).inc()
        log.warning(
            "upstream reported more output tokens than the request's cap",
            request_id=request.request_id,
            model=request.data.model,
            deployment=deployment,
            cap=cap,
            output_tokens=output_tokens,
        )
