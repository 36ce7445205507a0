"""Which outcome the client gets when every deployment of a model fails or refuses
(`Attempts.serve`), each deployment's outcome scripted: the last failure of a deployment
wins over a refusal (a 400 of a deployment that cannot take the request as sent), except
a refusal whose `details` tell the client's SDK how to go on, which is kept over a later
refusal without them and over any failure."""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

import pytest

from switchyard.common.routing import Deployment, ModelRoute, RoutingTable
from switchyard.inference.adapters import Adapters
from switchyard.inference.attempts import Attempts, FixedRouting
from switchyard.inference.errors import ProviderError
from switchyard.inference.outcomes import Outcome, failed
from switchyard.inference.providers import ProviderPool
from switchyard.inference.reliability import Backoff, BreakerPolicy, DeploymentStates
from switchyard.inference.testing import chat_request

THREAD_DETAILS = {"error_code": "thread_unsupported_request"}


def refusal(details: dict[str, Any] | None = None) -> ProviderError:
    """A deployment that cannot take the request as sent: a 400, retryable elsewhere."""
    return ProviderError(
        400,
        "invalid_request_error",
        "cannot take it",
        code="unsupported_parameter",
        retryable=True,
        retry_same=False,
        unhealthy=False,
        details=details,
    )


def outage() -> ProviderError:
    return ProviderError(503, "api_error", "down", code="upstream_error", retryable=True)


class ScriptedAttempts(Attempts):
    """`Attempts` whose deployments end as scripted, by name, without calling anything."""

    def __init__(self, script: dict[str, ProviderError]) -> None:
        # Tried in the script's order: each a priority below the one before.
        deployments = [
            Deployment(
                name=name,
                provider="openai",
                model="up",
                base_url="http://127.0.0.1:9/v1",
                priority=rank,
            )
            for rank, name in enumerate(script)
        ]
        routing = RoutingTable(models={"m": ModelRoute(name="m", deployments=deployments)})
        super().__init__(
            routing=FixedRouting(routing),
            providers=ProviderPool(),
            adapters=Adapters(),
            deployments=DeploymentStates(BreakerPolicy(failure_threshold=5, cooldown_s=60)),
            backoff=Backoff(0.01, 0.02),
            rng=random.Random(0),
            publisher_of=lambda run: None,  # type: ignore[arg-type,return-value]
        )
        self.script = script
        self.tried: list[str] = []

    async def _try_deployment(self, run: Any, deployment: Deployment, state: Any) -> Outcome:
        self.tried.append(deployment.name)
        return failed(self.script[deployment.name], deployment)


async def serve(script: dict[str, ProviderError]) -> tuple[ProviderError, list[str]]:
    attempts = ScriptedAttempts(script)
    run = SimpleNamespace(request=chat_request(model="m"), events_sent=False)
    outcome = await attempts.serve(run)  # type: ignore[arg-type]
    assert outcome.error is not None
    return outcome.error, attempts.tried


@pytest.mark.parametrize(
    "script",
    [
        # The refusal with details first, one without after it.
        {"a": refusal(THREAD_DETAILS), "b": refusal()},
        # ... and a failure of a deployment between or after them.
        {"a": refusal(THREAD_DETAILS), "b": outage(), "c": refusal()},
        {"a": outage(), "b": refusal(THREAD_DETAILS), "c": refusal()},
        {"a": refusal(THREAD_DETAILS), "b": refusal(), "c": outage()},
    ],
    ids=["then-plain", "failure-between", "failure-before", "failure-after"],
)
async def test_a_refusal_with_details_is_kept_over_a_later_one_without(
    script: dict[str, ProviderError],
) -> None:
    error, tried = await serve(script)

    assert tried == list(script)
    assert (error.status, error.details) == (400, THREAD_DETAILS)


async def test_the_last_plain_refusal_is_kept_when_none_has_details() -> None:
    first, last = refusal(), refusal()
    error, _ = await serve({"a": first, "b": last})

    assert error is last


async def test_a_failure_wins_over_refusals_without_details() -> None:
    down = outage()
    error, _ = await serve({"a": refusal(), "b": down, "c": refusal()})

    assert error is down


def key_refused() -> ProviderError:
    from switchyard.inference.upstream import credentials_refused

    return credentials_refused("b", 401, "Incorrect API key", None)


def rate_limited() -> ProviderError:
    return ProviderError(
        429,
        "rate_limit_error",
        "slow down",
        code="rate_limit_exceeded",
        retryable=True,
        retry_after=2.0,
    )


@pytest.mark.parametrize("first", [outage, rate_limited], ids=["503", "429"])
async def test_a_fallback_refusing_its_key_does_not_hide_the_primarys_passing_failure(
    first: Any,
) -> None:
    """A fallback whose key is refused (502, `x-should-retry: false`) after a primary
    that failed for a while: the client gets the primary's failure, which it may retry
    (after its wait), not a failure it is told never to retry."""
    primary = first()
    error, tried = await serve({"a": primary, "b": key_refused()})

    assert tried == ["a", "b"]
    assert error is primary


async def test_the_last_failure_wins_when_every_one_says_not_to_retry() -> None:
    later = key_refused()
    error, _ = await serve({"a": key_refused(), "b": later})

    assert error is later
