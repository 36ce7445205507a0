"""Budgets and rate limits at admission: exact across several replicas sharing a ledger,
settled from usage events, refused in each API's shape with the rate-limit headers, and
what happens when the ledger is down. The ledger here is the in-memory one; the
PostgreSQL one runs the same checks in the integration suite."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from switchyard.common import tokenizer
from switchyard.common.bus import USAGE_HEADER, InMemoryBus
from switchyard.common.events import (
    LimitsChanged,
    LimitsChangedData,
    UsageRecorded,
)
from switchyard.common.governance import BudgetClock, FailureMode, Limits
from switchyard.common.headers import INTERNAL_TOKEN_HEADER
from switchyard.common.pricing import Price, PriceTable
from switchyard.common.testing.events import usage_recorded
from switchyard.common.testing.infra import async_wait_until
from switchyard.common.topics import Topics
from switchyard.gateway.app import USAGE_FALLBACK_DELAY_MS, create_app
from switchyard.gateway.governance.admission import Admission, Refused
from switchyard.gateway.governance.ledger import MemoryLedger
from switchyard.gateway.governance.policy import LevelLimits, Policy, PolicySource

from .conftest import API_KEY, failed_reply
from .history_fakes import install as install_history

PRICES = PriceTable(models={"m": Price(input_per_1m=1_000.0, output_per_1m=1_000.0)})
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
# A JSON schema of some 2,000 tokens or more, property names and types alone (as most
# schemas are), and a number no 64-bit integer holds.
SCHEMA = {
    "name": "report",
    "schema": {
        "type": "object",
        "properties": {f"field_{n}": {"type": "string"} for n in range(400)},
        "maximum": 10**30,
    },
}


@dataclass(frozen=True)
class Caller:
    user_id: str = "u1"
    api_key_id: str | None = "k1"
    tenant: str = "acme"


class FixedPolicies(PolicySource):
    """Auth's answer, fixed by the test (and changeable, like an admin would)."""

    def __init__(self, policy: Policy) -> None:
        super().__init__(lambda: None, auth_url="http://auth", internal_token="t")  # type: ignore[arg-type]
        self.policy = policy

    async def get(self, user_id: str, api_key_id: str | None) -> Policy:
        return self.policy


def policy(
    level: str = "api_key",
    scope_id: str = "k1",
    anchor: float | None = None,
    budget_mode: FailureMode = FailureMode.CLOSED,
    rate_mode: FailureMode = FailureMode.OPEN,
    **limits,
) -> Policy:
    return Policy(
        tenant="acme",
        team_id="team-1" if level == "team" else None,
        levels=(LevelLimits(level, scope_id, Limits(**limits), anchor),),
        rate_limit_failure_mode=rate_mode,
        budget_failure_mode=budget_mode,
        scope_ids=frozenset({(level, scope_id)}),
    )


def replicas(ledger: MemoryLedger, the_policy: Policy, count: int = 3, **options) -> list:
    policies = FixedPolicies(the_policy)
    return [
        Admission(ledger=ledger, policies=policies, prices=PRICES, replica=f"gw-{n}", **options)
        for n in range(count)
    ]


async def admit_all(admissions: list[Admission], total: int, body=BODY) -> tuple[list, list]:
    async def one(n: int):
        try:
            return await admissions[n % len(admissions)].admit(Caller(), "m", body)
        except Refused as refused:
            return refused

    outcomes = await asyncio.gather(*(one(n) for n in range(total)))
    admitted = [o for o in outcomes if not isinstance(o, Refused)]
    refused = [o for o in outcomes if isinstance(o, Refused)]
    return admitted, refused


def usage_event(request_id: str, cost: float, tokens: int = 5) -> UsageRecorded:
    return usage_recorded(request_id, cost, input_tokens=tokens)


async def test_three_replicas_admit_exactly_the_rpm_limit_of_simultaneous_requests() -> None:
    ledger = MemoryLedger()
    admitted, refused = await admit_all(replicas(ledger, policy(rpm_limit=60)), 200)
    assert len(admitted) == 60
    assert len(refused) == 140
    error = refused[0]
    assert (error.status, error.code, error.type) == (429, "rate_limit_exceeded", "requests")
    assert "key k1" in error.message and "60 requests per minute" in error.message
    assert 1 <= int(error.headers["Retry-After"]) <= 60
    assert error.rate_headers("openai")["x-ratelimit-remaining-requests"] == "0"
    assert "anthropic-ratelimit-requests-reset" in error.rate_headers("anthropic")


@pytest.mark.parametrize(
    ("limits", "body", "said"),
    [
        ({"max_parallel_requests": 1}, BODY, "1 request in progress at once"),
        ({"rpm_limit": 1}, BODY, "1 request per minute"),
        (
            {"tpm_limit": 1_000_000_000},
            {**BODY, "max_tokens": 2_000_000_000},
            "whole limit of 1,000,000,000 tokens per minute",
        ),
    ],
    ids=["parallel", "rpm", "tpm"],
)
async def test_a_refusal_states_the_limit_as_people_read_it(limits, body, said) -> None:
    """ "1 request", never "1 requests"; a billion as digits, never "1e+09"."""
    [admission] = replicas(MemoryLedger(), policy(**limits), count=1)
    if "tpm_limit" not in limits:  # the one request the limit allows, in progress
        (await admission.admit(Caller(), "m", body)).attach("first")

    with pytest.raises(Refused) as refused:
        await admission.admit(Caller(), "m", body)

    assert said in refused.value.message, refused.value.message
    assert "e+" not in refused.value.message


async def test_a_budget_used_up_by_settled_requests_is_not_said_to_be_held() -> None:
    """The ledger learns what this replica's requests spent only when it flushes: a
    refusal in between must count it, not tell the client that requests in progress hold
    the budget and that a retry may fit."""
    ledger = MemoryLedger()
    [admission] = replicas(
        ledger, policy(anchor=0.0, max_budget_usd=0.05, budget_period="1d"), count=1
    )
    admitted = []
    with pytest.raises(Refused):
        while True:
            admitted.append(await admission.admit(Caller(), "m", BODY))
    for n, ticket in enumerate(admitted):  # each used what it reserved; none flushed yet
        ticket.attach(f"r{n}")
        admission.on_usage(usage_event(f"r{n}", ticket.reservations[0].amount))

    with pytest.raises(Refused) as refused:
        await admission.admit(Caller(), "m", BODY)

    message = refused.value.message
    assert "held by requests in progress" not in message, message
    assert "more than the" in message and "left of the $0.05 budget" in message
    assert refused.value.headers["x-should-retry"] == "false"


async def test_a_model_priced_through_its_deployments_is_reserved_at_their_dearest() -> None:
    """Inference prices a request by the deployment that served it (its upstream model):
    a public model with no price of its own was reserved at $0, so concurrent requests
    all passed a budget each of them could overrun."""
    from switchyard.common.routing import Deployment

    def deployment(name: str, upstream: str) -> Deployment:
        return Deployment(name=name, provider="openai", model=upstream, base_url="http://x/v1")

    routes = {"alias": [deployment("cheap", "unpriced"), deployment("dear", "m")]}
    [admission] = replicas(
        MemoryLedger(),
        policy(anchor=0.0, max_budget_usd=0.05, budget_period="1d"),
        count=1,
        deployments_of=lambda model: routes.get(model, ()),
    )
    body = {**BODY, "model": "alias"}

    ticket = await admission.admit(Caller(), "alias", body)
    priced = await admission.admit(Caller(), "m", BODY)

    [reservation] = [r for r in ticket.reservations if r.kind == "spend"]
    [reference] = [r for r in priced.reservations if r.kind == "spend"]
    assert reservation.amount == pytest.approx(reference.amount) and reservation.amount > 0


def test_a_refusal_never_shows_the_cost_and_what_is_left_as_the_same_amount() -> None:
    from switchyard.gateway.governance.admission import _usd_apart

    assert _usd_apart(0.0000184, 0.0000181) == ("$0.0000184", "$0.0000181")
    assert _usd_apart(0.25, 0.125) == ("$0.25", "$0.125")


async def test_admitted_requests_carry_the_remaining_requests_and_tokens() -> None:
    ledger = MemoryLedger()
    [admission] = replicas(ledger, policy(rpm_limit=10, tpm_limit=1000), count=1)
    first = await admission.admit(Caller(), "m", BODY)
    second = await admission.admit(Caller(), "m", BODY)
    headers = second.openai_headers()
    assert headers["x-ratelimit-limit-requests"] == "10"
    assert headers["x-ratelimit-remaining-requests"] == "8"
    assert headers["x-ratelimit-limit-tokens"] == "1000"
    # Each request reserves its prompt (a few tokens) plus max_tokens (10).
    assert 1000 - 2 * 30 <= int(headers["x-ratelimit-remaining-tokens"]) <= 1000 - 2 * 10
    assert headers["x-ratelimit-reset-requests"].endswith("s")
    assert int(first.anthropic_headers()["anthropic-ratelimit-requests-remaining"]) == 9


async def test_a_request_refused_for_tokens_still_learns_its_requests_budget() -> None:
    """As OpenAI and Anthropic do, a 429 of a rate limit carries both kinds' headers: the
    tokens limit it hit with nothing left, and the requests limit with what it has left
    (the refused request took none of it)."""
    [admission] = replicas(MemoryLedger(), policy(rpm_limit=10, tpm_limit=30), count=1)
    await admission.admit(Caller(), "m", BODY)  # reserves its prompt plus 10 tokens
    with pytest.raises(Refused) as refused:
        await admission.admit(Caller(), "m", {**BODY, "max_tokens": 25})

    assert (refused.value.kind, refused.value.code) == ("tokens", "rate_limit_exceeded")
    openai = refused.value.rate_headers("openai")
    assert openai["x-ratelimit-limit-tokens"] == "30"
    assert openai["x-ratelimit-remaining-tokens"] == "0"
    assert openai["x-ratelimit-reset-tokens"].endswith("s")
    assert openai["x-ratelimit-limit-requests"] == "10"
    assert openai["x-ratelimit-remaining-requests"] == "9"
    assert openai["x-ratelimit-reset-requests"].endswith("s")
    anthropic = refused.value.rate_headers("anthropic")
    assert anthropic["anthropic-ratelimit-tokens-remaining"] == "0"
    assert anthropic["anthropic-ratelimit-requests-limit"] == "10"
    assert anthropic["anthropic-ratelimit-requests-remaining"] == "9"
    assert anthropic["anthropic-ratelimit-requests-reset"].endswith("Z")


async def test_a_request_refused_for_requests_still_learns_its_tokens_budget() -> None:
    [admission] = replicas(MemoryLedger(), policy(rpm_limit=1, tpm_limit=1000), count=1)
    admitted = await admission.admit(Caller(), "m", BODY)
    with pytest.raises(Refused) as refused:
        await admission.admit(Caller(), "m", BODY)

    assert refused.value.kind == "requests"
    openai = refused.value.rate_headers("openai")
    assert openai["x-ratelimit-remaining-requests"] == "0"
    # What the admitted request left: the refused one reserved nothing.
    left = admitted.openai_headers()["x-ratelimit-remaining-tokens"]
    assert openai["x-ratelimit-limit-tokens"] == "1000"
    assert openai["x-ratelimit-remaining-tokens"] == left
    assert openai["x-ratelimit-reset-tokens"].endswith("s")
    anthropic = refused.value.rate_headers("anthropic")
    assert anthropic["anthropic-ratelimit-requests-remaining"] == "0"
    assert anthropic["anthropic-ratelimit-tokens-remaining"] == left


async def test_a_used_up_budget_carries_the_requests_and_tokens_headers_too() -> None:
    [admission] = replicas(
        MemoryLedger(), policy(anchor=0.0, max_budget_usd=0.0, rpm_limit=5, tpm_limit=1000), count=1
    )
    with pytest.raises(Refused) as refused:
        await admission.admit(Caller(), "m", BODY)

    assert refused.value.kind == "spend"
    headers = refused.value.rate_headers("openai")
    assert headers["x-ratelimit-remaining-requests"] == "5"
    assert headers["x-ratelimit-remaining-tokens"] == "1000"


async def test_a_budget_is_never_overspent_and_settlement_frees_the_unused_reservation() -> None:
    ledger = MemoryLedger()
    admissions = replicas(
        ledger, policy("team", "team-1", anchor=0.0, max_budget_usd=0.5, budget_period="1d")
    )
    # Each request may cost up to (prompt + 10 output tokens) x $1000 per 1M = ~$0.015.
    admitted, refused = await admit_all(admissions, 100)
    most = max(ticket.reservations[0].amount for ticket in admitted)
    assert len(admitted) * most <= 0.5 + 1e-9
    # ...and no replica sat on budget the others needed: each of the three may be left
    # with less than one request's worth, nothing more.
    assert len(admitted) * most > 0.5 - 3 * most
    assert refused and refused[0].code == "insufficient_quota"
    assert refused[0].type == "insufficient_quota"
    assert "team team-1" in refused[0].message and "resets at" in refused[0].message
    # Nothing is spent yet: the requests in progress hold it, and a retry may fit.
    assert "held by requests in progress" in refused[0].message
    assert 1 <= int(refused[0].headers["Retry-After"]) <= 86_400  # at the latest, the reset
    assert "x-should-retry" not in refused[0].headers

    # The requests ran and cost a third of their reservation: room for more opens up.
    for n, ticket in enumerate(admitted):
        ticket.attach(f"r{n}")
        ticket.admission.on_usage(usage_event(f"r{n}", ticket.reservations[0].amount / 3))
    for admission in admissions:
        await admission.flush()
        await admission.release_idle(everything=True)
    more, _ = await admit_all(admissions, 100)
    assert more
    spent = sum(c.spent for c in await ledger.counters() if c.kind == "spend")
    outstanding = sum(t.reservations[0].amount for t in more)
    assert spent + outstanding <= 0.5 + 1e-9


@pytest.mark.parametrize(
    ("body", "reserved_at_least"),
    [
        # Embeddings' input as token ids: each id is a token.
        ({"model": "m", "input": [list(range(1000, 6000))]}, 5000),
        ({"model": "m", "input": [[1, 2, 3]] * 400}, 1200),
        # n completions may each use the whole output cap.
        ({**BODY, "max_tokens": 200, "n": 128}, 200 * 128),
        # A structured output's schema is prompt, in each API's field for it.
        ({**BODY, "response_format": {"type": "json_schema", "json_schema": SCHEMA}}, 2000),
        (
            {"model": "m", "input": "hi", "max_output_tokens": 16, "text": {"format": SCHEMA}},
            2000,
        ),
        ({**BODY, "output_format": {"type": "json_schema", "schema": SCHEMA["schema"]}}, 2000),
        ({**BODY, "output_config": {"format": {"type": "json_schema", **SCHEMA}}}, 2000),
        (
            {
                **BODY,
                "tools": [
                    {"type": "function", "function": {"name": "f", "parameters": SCHEMA["schema"]}}
                ],
            },
            2000,
        ),
    ],
    ids=[
        "token-ids",
        "many-token-id-arrays",
        "n-choices",
        "chat-response-format",
        "responses-text-format",
        "anthropic-output-format",
        "anthropic-output-config",
        "tool-parameters",
    ],
)
async def test_what_a_request_may_use_counts_token_ids_and_every_choice(
    body, reserved_at_least
) -> None:
    """A token limit refuses a request whose token ids or `n` choices exceed it, and a
    budget one whose cost at that size does."""
    ledger = MemoryLedger()
    embeddings = "input" in body
    [limited] = replicas(ledger, policy(tpm_limit=reserved_at_least - 1), count=1)
    with pytest.raises(Refused) as refused:
        await limited.admit(Caller(), "m", body, embeddings=embeddings)
    assert refused.value.code == "rate_limit_exceeded"

    cost = reserved_at_least * 1_000.0 / 1_000_000
    [budgeted] = replicas(ledger, policy(scope_id="k2", max_budget_usd=cost * 0.99), count=1)
    with pytest.raises(Refused) as refused:
        await budgeted.admit(Caller(api_key_id="k2"), "m", body, embeddings=embeddings)
    assert refused.value.code == "insufficient_quota"


@pytest.mark.parametrize(
    ("limits", "body", "words"),
    [
        ({"tpm_limit": 1000}, {**BODY, "max_tokens": 4096}, "lower max_tokens"),
        ({"tpm_limit": 3}, {"model": "m", "input": "many words " * 20}, "send less input"),
        ({"rpm_limit": 0}, BODY, "may make no requests"),
        # No max_tokens could make a request fit a limit of 0 tokens.
        ({"tpm_limit": 0}, {**BODY, "max_tokens": 1}, "may make no requests"),
    ],
    ids=["tokens", "input-tokens", "requests", "no-tokens"],
)
async def test_a_request_larger_than_the_whole_rate_limit_invites_no_retry(
    limits, body, words
) -> None:
    """No window will ever admit it: waiting for the reset (the SDKs retry a 429 on their
    own after Retry-After) would only fail again."""
    [limited] = replicas(MemoryLedger(), policy(**limits), count=1)
    with pytest.raises(Refused) as refused:
        await limited.admit(Caller(), "m", body, embeddings="input" in body)

    assert refused.value.code == "rate_limit_exceeded"
    assert words in refused.value.message
    assert refused.value.headers is not None
    assert refused.value.headers["x-should-retry"] == "false"
    assert refused.value.headers["Retry-After"] == ""  # the error writer sends none


async def test_a_prompt_padded_with_spaces_is_not_taken_for_cheap() -> None:
    """A million spaces (0.008 tokens a character) ahead of a million tokens of words:
    estimated at the ratio of its head, it passed a 100,000 tokens-per-minute limit and
    spent several times its budget."""
    [limited] = replicas(MemoryLedger(), policy(tpm_limit=100_000), count=1)
    padded = " " * 1_000_000 + "x " * 1_000_000
    body = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": padded}]}
    with pytest.raises(Refused) as refused:
        await limited.admit(Caller(), "m", body)

    assert refused.value.code == "rate_limit_exceeded"
    assert "Request too large" in refused.value.message


async def test_a_request_within_the_rate_limit_is_told_when_to_retry() -> None:
    [limited] = replicas(MemoryLedger(), policy(rpm_limit=1), count=1)
    await limited.admit(Caller(), "m", BODY)
    with pytest.raises(Refused) as refused:
        await limited.admit(Caller(), "m", BODY)

    assert refused.value.headers is not None
    assert "x-should-retry" not in refused.value.headers
    assert int(refused.value.headers["Retry-After"]) >= 1


async def test_a_request_that_used_more_than_it_reserved_does_not_exhaust_a_budget_with_room():
    """A request may use more than its estimate (the estimate is a guess; a model without
    a price estimates nothing); the replica's allowance is then below zero. The next
    request, even one estimated at nothing, is admitted while the budget has room, and the
    overrun counts against the budget."""
    ledger = MemoryLedger()
    [admission] = replicas(ledger, policy(max_budget_usd=10.0, budget_period="30d"), count=1)
    first = await admission.admit(Caller(), "m", BODY)
    first.attach("r1")
    admission.on_usage(usage_event("r1", cost=5.0))  # far past its reservation and lease

    free = await admission.admit(Caller(), "unpriced", {"model": "unpriced", "input": "abc"})
    again = await admission.admit(Caller(), "unpriced", {"model": "unpriced", "input": "abc"})

    assert free is not None and again is not None
    # $5 of the $10 are spent: a request that may cost $6 does not fit any more.
    with pytest.raises(Refused):
        await admission.admit(Caller(), "m", {**BODY, "max_tokens": 6000})


async def test_usage_beyond_a_replicas_lease_is_never_granted_to_another_replica():
    """A request that used more than its replica held: the settlement counts the overrun
    as committed, so the fleet never spends past the budget, even when that replica asks
    for nothing again."""
    ledger = MemoryLedger()
    first, second = replicas(ledger, policy(max_budget_usd=10.0, budget_period="30d"), count=2)
    ticket = await first.admit(Caller(), "m", BODY)
    ticket.attach("r1")
    first.on_usage(usage_event("r1", cost=5.0))  # far past its reservation and lease
    await first.flush()

    [spend] = [c for c in await ledger.counters() if c.kind == "spend"]
    assert spend.spent == pytest.approx(5.0)
    assert spend.committed >= spend.spent  # what was used is never handed out again
    assert ledger.held("gw-0", spend.scope, "spend") == pytest.approx(0.0)  # all used
    # $5 of the $10 are spent: a request that may cost $6 fits on no replica.
    with pytest.raises(Refused):
        await second.admit(Caller(), "m", {**BODY, "max_tokens": 6000})
    with pytest.raises(Refused):
        await first.admit(Caller(), "m", {**BODY, "max_tokens": 6000})
    assert await second.admit(Caller(), "m", {**BODY, "max_tokens": 4000})


async def test_an_overrun_survives_a_limit_change_of_its_level():
    # An admin edits a limit of the key: the replica gives back what it holds of it, and
    # what its requests used beyond that is still committed for the fleet.
    ledger = MemoryLedger()
    first, second = replicas(ledger, policy(max_budget_usd=10.0, budget_period="30d"), count=2)
    ticket = await first.admit(Caller(), "m", BODY)
    ticket.attach("r1")
    first.on_usage(usage_event("r1", cost=5.0))  # allowance now below zero
    await first.limits_changed("api_key", "k1")
    await first.flush()

    [spend] = [c for c in await ledger.counters() if c.kind == "spend"]
    assert spend.spent == pytest.approx(5.0) and spend.committed == pytest.approx(5.0)
    assert ledger.held("gw-0", spend.scope, "spend") == pytest.approx(0.0)
    with pytest.raises(Refused):
        await second.admit(Caller(), "m", {**BODY, "max_tokens": 6000})


@pytest.mark.parametrize("cost", [5.0, 0.0001], ids=["beyond", "within"])
async def test_a_request_running_across_a_limit_change_settles_exactly(cost):
    ledger = MemoryLedger()
    first, second = replicas(ledger, policy(max_budget_usd=10.0, budget_period="30d"), count=2)
    ticket = await first.admit(Caller(), "m", BODY)
    ticket.attach("r1")
    await first.limits_changed("api_key", "k1")  # e.g. the admin raised its rpm limit
    first.on_usage(usage_event("r1", cost=cost))
    await first.flush()
    await asyncio.sleep(0)  # the unused rest of its reservation is given back

    [spend] = [c for c in await ledger.counters() if c.kind == "spend"]
    assert spend.spent == pytest.approx(cost)
    assert spend.committed == pytest.approx(cost)  # no more, no less than it used
    assert ledger.held("gw-0", spend.scope, "spend") == pytest.approx(0.0)


async def test_a_settlement_on_its_way_is_not_lost_when_housekeeping_stops():
    class SlowLedger(MemoryLedger):
        def __init__(self) -> None:
            super().__init__()
            self.arrived, self.go_on = asyncio.Event(), asyncio.Event()

        async def settle(self, replica, changes):
            self.arrived.set()
            await self.go_on.wait()
            await super().settle(replica, changes)

    ledger = SlowLedger()
    [admission] = replicas(ledger, policy(max_budget_usd=10.0, budget_period="30d"), count=1)
    ticket = await admission.admit(Caller(), "m", BODY)
    ticket.attach("r1")
    admission.on_usage(usage_event("r1", cost=0.001))
    flushing = asyncio.create_task(admission.flush())
    await ledger.arrived.wait()
    flushing.cancel()  # what stopping the background task does
    with pytest.raises(asyncio.CancelledError):
        await flushing
    ledger.go_on.set()
    await async_wait_until(lambda: asyncio.sleep(0, bool(ledger._counters)))
    await async_wait_until(
        lambda: asyncio.sleep(
            0, [c.spent for c in ledger._counters.values() if c.spent] == [pytest.approx(0.001)]
        )
    )


async def test_a_budget_resets_at_its_period_boundary() -> None:
    now = [1_000.0]
    ledger = MemoryLedger(clock=lambda: now[0])
    [admission] = replicas(
        ledger,
        policy(anchor=0.0, max_budget_usd=0.02, budget_period="1d"),
        count=1,
        budget_clock=BudgetClock(day_s=100.0),
        clock=lambda: now[0],
    )
    await admission.admit(Caller(), "m", BODY)
    with pytest.raises(Refused) as refused:
        await admission.admit(Caller(), "m", BODY)
    assert refused.value.reset_at == 1_100.0
    now[0] = 1_100.5  # the next "day" began
    assert await admission.admit(Caller(), "m", BODY)


async def test_parallel_requests_free_their_slot_when_their_usage_arrives() -> None:
    ledger = MemoryLedger()
    admissions = replicas(ledger, policy(max_parallel_requests=2), count=2)
    one = await admissions[0].admit(Caller(), "m", BODY)
    await admissions[1].admit(Caller(), "m", BODY)
    with pytest.raises(Refused) as refused:
        await admissions[0].admit(Caller(), "m", BODY)
    assert "2 requests in progress" in refused.value.message
    one.attach("first")
    admissions[0].on_usage(usage_event("first", 0.0))
    assert await admissions[0].admit(Caller(), "m", BODY)


class SlowSettlingLedger(MemoryLedger):
    """A ledger whose settlements take 50 ms to be written (a database round trip)."""

    async def settle(self, replica, changes) -> None:
        await asyncio.sleep(0.05)
        await super().settle(replica, changes)


async def test_a_flush_returns_once_a_write_another_flush_began_is_done() -> None:
    """`GET /v1/spend` flushes, then reads the ledger: while the background flush is still
    writing a settlement it took, the reader's flush waits for that write, so the request
    just answered is in what it reads."""
    ledger = SlowSettlingLedger()
    [admission] = replicas(ledger, policy(max_budget_usd=10.0), count=1)
    ticket = await admission.admit(Caller(), "m", BODY)
    ticket.attach("r1")
    admission.on_usage(usage_event("r1", 0.25))

    background = asyncio.ensure_future(admission.flush())
    await asyncio.sleep(0)  # the background flush has taken the settlement
    await admission.flush()

    [spend] = [c for c in await ledger.counters() if c.kind == "spend"]
    assert spend.spent == pytest.approx(0.25)
    await background


async def test_usage_of_another_tenant_naming_a_request_settles_nothing() -> None:
    """A usage event naming an admitted request's id but of another tenant is no run of
    that request: neither its pending ticket nor, once settled, its budgets take it."""
    ledger = MemoryLedger()
    [admission] = replicas(ledger, policy(max_budget_usd=10.0), count=1)
    ticket = await admission.admit(Caller(), "m", BODY)
    ticket.attach("r1")

    admission.on_usage(usage_recorded("r1", 9.0, tenant="globex"))
    assert admission.settles("r1")
    admission.on_usage(usage_recorded("r1", 0.25))
    assert not admission.settles("r1")
    admission.on_usage(usage_recorded("r1", 9.0, tenant="globex"))  # a "later run"
    await admission.flush()

    [spend] = [c for c in await ledger.counters() if c.kind == "spend"]
    assert spend.spent == pytest.approx(0.25)


async def test_the_usage_a_reply_carries_settles_its_request_once() -> None:
    [admission] = replicas(MemoryLedger(), policy(max_parallel_requests=1), count=1)
    first = await admission.admit(Caller(), "m", BODY)
    first.attach("first")

    async def no_change(level: str, scope_id: str) -> None:
        raise AssertionError("a reply's header changed a limit")

    admission.limits_changed = no_change  # type: ignore[method-assign]
    # Only a usage event in the reply's header acts: a limit change there is ignored.
    changed = LimitsChanged(
        source="auth",
        tenant="acme",
        request_id="first",
        data=LimitsChangedData(scope="api_key", scope_id="k1"),
    )
    await admission.on_reply_usage(changed)
    assert admission.settles("first")

    await admission.on_reply_usage(usage_event("first", 0.0))
    assert not admission.settles("first")
    # The same usage read later on the usage topic settles nothing more.
    await admission.on_event(usage_event("first", 0.0))
    assert await admission.admit(Caller(), "m", BODY)  # the slot came back once
    with pytest.raises(Refused):
        await admission.admit(Caller(), "m", BODY)  # and only once


async def test_a_budget_not_all_spent_asks_for_a_smaller_request_not_says_used_up() -> None:
    """Requests in progress hold what is left, but some of the budget is not spent: a
    request that cannot fit even once they settle is told how much is not spent and to
    lower max_tokens, not that the budget is used up."""
    ledger = MemoryLedger()
    [admission] = replicas(
        ledger, policy(anchor=0.0, max_budget_usd=0.05, budget_period="1d"), count=1
    )
    done = await admission.admit(Caller(), "m", BODY)
    running = await admission.admit(Caller(), "m", BODY)
    done.attach("done")
    running.attach("running")
    admission.on_usage(usage_recorded("done", 0.04))
    await admission.flush()

    with pytest.raises(Refused) as refused:
        await admission.admit(Caller(), "m", BODY)

    message = refused.value.message
    assert "used up" not in message, message
    assert "not yet spent" in message and "set a lower max_tokens" in message, message
    assert refused.value.headers["x-should-retry"] == "false"


async def _spent(ledger: MemoryLedger, kind: str) -> float:
    return sum(c.spent for c in await ledger.counters() if c.kind == kind)


async def test_the_usage_of_another_run_of_a_settled_request_counts_against_budgets() -> None:
    """An inference replica that stalled while it ran a request, and finished it after
    another replica had taken the request over, bills both runs (history adds their usage
    events up): the budget counts both, and each usage event once however often it is
    read (from the reply, from the usage topic, republished)."""
    ledger = MemoryLedger()
    [admission] = replicas(
        ledger,
        policy(
            "team", "team-1", anchor=0.0, max_budget_usd=5.0, budget_period="1d", tpm_limit=10_000
        ),
        count=1,
    )
    ticket = await admission.admit(Caller(), "m", BODY)
    ticket.attach("r1")
    taken_over = usage_recorded("r1", 0.01, input_tokens=7)
    await admission.on_reply_usage(taken_over)
    await admission.on_event(taken_over)
    stalled = usage_recorded("r1", 0.02, input_tokens=11, output_tokens=2)
    await admission.on_event(stalled)
    await admission.on_event(stalled)  # republished with the same id: counted once
    await admission.flush()

    assert await _spent(ledger, "spend") == pytest.approx(0.03)
    assert await _spent(ledger, "tokens") == 7 + 13
    # Committed beyond the leases: no replica is granted what the late run used.
    await admission.release_idle(everything=True)
    [spend] = [c for c in await ledger.counters() if c.kind == "spend"]
    assert spend.committed == pytest.approx(0.03)


async def test_the_usage_of_a_request_whose_ticket_expired_still_counts() -> None:
    ledger = MemoryLedger()
    [admission] = replicas(
        ledger, policy(anchor=0.0, max_budget_usd=5.0, budget_period="1d"), count=1
    )
    ticket = await admission.admit(Caller(), "m", BODY)
    ticket.attach("slow", deadline_s=0.0)
    ticket.expires_at = 1.0  # long past (monotonic seconds)
    await admission.release_idle()
    assert not admission.settles("slow")

    admission.on_usage(usage_recorded("slow", 0.04))
    await admission.flush()
    await admission.release_idle(everything=True)

    # Settled as any request: what it spent counts, what it reserved beyond goes back.
    [spend] = [c for c in await ledger.counters() if c.kind == "spend"]
    assert spend.spent == pytest.approx(0.04)
    assert spend.committed == pytest.approx(0.04)
    # A second run's usage after that counts too.
    admission.on_usage(usage_recorded("slow", 0.01))
    await admission.flush()
    assert await _spent(ledger, "spend") == pytest.approx(0.05)


async def test_only_the_most_recent_settled_requests_are_remembered() -> None:
    ledger = MemoryLedger()
    [admission] = replicas(
        ledger,
        policy(anchor=0.0, max_budget_usd=5.0, budget_period="1d"),
        count=1,
        settled_remembered=2,
    )
    for name in ("a", "b", "c"):
        ticket = await admission.admit(Caller(), "m", BODY)
        ticket.attach(name)
        admission.on_usage(usage_recorded(name, 0.01))
    await admission.flush()
    for name in ("a", "b", "c"):  # a second run of each: "a" is forgotten
        admission.on_usage(usage_recorded(name, 0.1))
    admission.on_usage(usage_recorded("never-admitted-here", 0.1))
    await admission.flush()

    assert await _spent(ledger, "spend") == pytest.approx(0.03 + 0.2)


async def test_a_changed_limit_applies_to_the_next_request_on_every_replica() -> None:
    ledger = MemoryLedger()
    admissions = replicas(ledger, policy(rpm_limit=1000), count=3)
    for admission in admissions:
        await admission.admit(Caller(), "m", BODY)
    admissions[0].policies.policy = policy(rpm_limit=3)  # type: ignore[attr-defined]
    for admission in admissions:
        await admission.limits_changed("api_key", "k1")
    # Three were admitted in this window already: the new limit of 3 refuses the fourth.
    for admission in admissions:
        with pytest.raises(Refused):
            await admission.admit(Caller(), "m", BODY)


async def test_when_the_ledger_is_down_budgets_fail_closed_and_rate_limits_open() -> None:
    ledger = MemoryLedger()
    ledger.fail = True
    [budgeted] = replicas(ledger, policy(anchor=0.0, max_budget_usd=1.0), count=1)
    with pytest.raises(Exception) as caught:
        await budgeted.admit(Caller(), "m", BODY)
    assert getattr(caught.value, "status", None) == 503
    assert caught.value.code == "limits_unavailable"  # type: ignore[attr-defined]

    [rate_limited] = replicas(ledger, policy(rpm_limit=1), count=1)
    assert await rate_limited.admit(Caller(), "m", BODY)
    assert await rate_limited.admit(Caller(), "m", BODY)  # uncounted while the store is down

    [strict] = replicas(ledger, policy(rpm_limit=1, rate_mode=FailureMode.CLOSED), count=1)
    with pytest.raises(Exception) as caught:
        await strict.admit(Caller(), "m", BODY)
    assert getattr(caught.value, "status", None) == 503


async def test_a_silent_replica_loses_its_leases_to_the_others() -> None:
    now = [0.0]
    ledger = MemoryLedger(clock=lambda: now[0])
    admissions = replicas(ledger, policy(max_parallel_requests=10), count=2)
    await ledger.heartbeat("gw-0")
    await ledger.heartbeat("gw-1")
    await admissions[0].admit(Caller(), "m", BODY)  # gw-0 leases part of the 10
    held = ledger.held("gw-0", "api_key:k1", "parallel")
    assert held >= 1
    now[0] = 30.0
    await ledger.heartbeat("gw-1")
    assert await ledger.reap(15.0) == 1
    assert ledger.held("gw-0", "api_key:k1", "parallel") == 0
    [counter] = await ledger.counters()
    assert counter.committed == 0


def limited_auth(harness, team: tuple[str, dict] | None = None, **limits) -> None:
    """Make the fake auth answer the policy of the test key with these key limits (and
    `team`: (team id, its limits), the key's user being a member)."""
    original = harness.auth.handle

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/internal/v1/policy":
            return httpx.Response(
                200,
                json={
                    "tenant": "acme",
                    "team_id": team[0] if team else None,
                    "levels": {
                        "api_key": {"id": "key-1", "limits": limits, "budget_anchor_at": None},
                        "user": {"id": "user-1", "limits": {}, "budget_anchor_at": None},
                        **(
                            {"team": {"id": team[0], "limits": team[1], "budget_anchor_at": None}}
                            if team
                            else {}
                        ),
                        "tenant": {"id": "acme", "limits": {}, "budget_anchor_at": None},
                    },
                    "rate_limit_failure_mode": "open",
                    "budget_failure_mode": "closed",
                },
            )
        return original(request)

    # The gateway's calls reach `harness.auth.handle`, as do other fakes' (history's).
    harness.auth.handle = handle


CHAT = {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}]}


async def test_answers_carry_rate_limit_headers_and_refusals_use_each_apis_shape(harness):
    limited_auth(harness, rpm_limit=2, tpm_limit=100_000)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    first = await harness.client.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert first.status_code == 200, first.text
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert first.headers["x-ratelimit-limit-tokens"] == "100000"
    assert "x-ratelimit-reset-tokens" in first.headers

    anthropic_body = {**CHAT, "max_tokens": 16}
    second = await harness.client.post(
        "/v1/messages", json=anthropic_body, headers={"x-api-key": API_KEY}
    )
    assert second.status_code == 200, second.text
    assert second.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert second.headers["anthropic-ratelimit-requests-reset"].endswith("Z")

    refused = await harness.client.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and "key key-1" in error["message"]
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert int(refused.headers["retry-after"]) >= 1

    anthropic_refused = await harness.client.post(
        "/v1/messages", json=anthropic_body, headers={"x-api-key": API_KEY}
    )
    assert anthropic_refused.status_code == 429
    body = anthropic_refused.json()
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert anthropic_refused.headers["anthropic-ratelimit-requests-remaining"] == "0"
    # Refused before any upstream call: inference saw only the two admitted requests.
    assert len(harness.requests) == 2


def ratelimit_names(path: str) -> dict[str, str]:
    """`requests-limit` etc. to the rate-limit header of that name of `path`'s API."""
    return {
        f"{kind}-{field}": (
            f"anthropic-ratelimit-{kind}-{field}"
            if path == "/v1/messages"
            else f"x-ratelimit-{field}-{kind}"
        )
        for kind in ("requests", "tokens")
        for field in ("limit", "remaining", "reset")
    }


def assert_used_up(headers, names: dict[str, str], kind: str, *, limit: str) -> None:
    """The refusing limit of `kind` (`requests` or `tokens`) reads `limit`, nothing left,
    and a reset."""
    assert headers[names[f"{kind}-limit"]] == limit
    assert headers[names[f"{kind}-remaining"]] == "0"
    assert headers[names[f"{kind}-reset"]]


API_CALLS = pytest.mark.parametrize(
    ("path", "body", "headers"),
    [
        ("/v1/chat/completions", CHAT, {"Authorization": f"Bearer {API_KEY}"}),
        ("/v1/messages", {**CHAT, "max_tokens": 16}, {"x-api-key": API_KEY}),
    ],
    ids=["openai", "anthropic"],
)


@API_CALLS
async def test_a_requests_refusal_carries_the_tokens_headers_too(harness, path, body, headers):
    """Refused for requests per minute, the client still learns its tokens budget, in its
    API's own headers, as OpenAI and Anthropic tell it on their 429s."""
    names = ratelimit_names(path)
    limited_auth(harness, rpm_limit=1, tpm_limit=100_000)
    admitted = await harness.client.post(path, json=body, headers=headers)
    assert admitted.status_code == 200, admitted.text
    refused = await harness.client.post(path, json=body, headers=headers)
    assert refused.status_code == 429, refused.text
    assert_used_up(refused.headers, names, "requests", limit="1")
    assert refused.headers[names["tokens-limit"]] == "100000"
    # What the admitted request left, or more once its usage gave back the unused part.
    left = int(admitted.headers[names["tokens-remaining"]])
    assert left <= int(refused.headers[names["tokens-remaining"]]) < 100_000
    assert refused.headers[names["tokens-reset"]]


@API_CALLS
async def test_a_tokens_refusal_carries_the_requests_headers_too(harness, path, body, headers):
    names = ratelimit_names(path)
    limited_auth(harness, rpm_limit=3, tpm_limit=5)
    refused = await harness.client.post(path, json=body, headers=headers)
    assert refused.status_code == 429, refused.text
    assert_used_up(refused.headers, names, "tokens", limit="5")
    assert refused.headers[names["requests-limit"]] == "3"
    # The refused request took none of it.
    assert refused.headers[names["requests-remaining"]] == "3"
    assert refused.headers[names["requests-reset"]]
    assert harness.requests == []


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", CHAT),
        ("/v1/messages", {**CHAT, "max_tokens": 16}),
        ("/v1/responses", {"model": "sim-small", "input": "hi"}),
        ("/v1/responses", {"model": "sim-small", "input": "hi", "background": True}),
    ],
    ids=["chat", "messages", "responses", "background-response"],
)
@pytest.mark.parametrize(
    "bad", [{"X-Switchyard-Cache": "bogus"}, {"X-Switchyard-Cache-TTL": "abc"}], ids=["mode", "ttl"]
)
async def test_a_request_refused_for_its_headers_uses_none_of_the_rate_limit(
    harness, path, body, bad
):
    """A 400 is a request not made: it must not count against requests per minute."""
    limited_auth(harness, rpm_limit=1)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    for _ in range(2):
        refused = await harness.client.post(path, json=body, headers={**headers, **bad})
        assert refused.status_code == 400, refused.text
        assert "invalid_cache_header" in refused.text
    admitted = await harness.client.post(path, json=body, headers=headers)
    assert admitted.status_code in (200, 202), admitted.text


async def test_an_exhausted_budget_is_insufficient_quota_naming_the_level(harness):
    limited_auth(harness, max_budget_usd=0.0)
    response = await harness.client.post(
        "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {API_KEY}"}
    )
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["code"] == "insufficient_quota" and error["type"] == "insufficient_quota"
    assert "key key-1" in error["message"] and "does not reset" in error["message"]
    assert "used up" in error["message"]
    # Retrying cannot help a lifetime budget: no Retry-After to wait for, and the SDKs
    # are told not to retry it on their own.
    assert "retry-after" not in response.headers
    assert response.headers["x-should-retry"] == "false"
    assert harness.requests == []


async def test_the_openai_sdk_does_not_retry_a_used_up_budget(harness):
    import openai

    limited_auth(harness, max_budget_usd=0.0)
    client = openai.AsyncOpenAI(
        api_key=API_KEY, base_url="http://gateway/v1", max_retries=2, http_client=harness.client
    )
    sent: list[str] = []

    async def record(request) -> None:
        sent.append(request.url.path)

    harness.client.event_hooks["request"].append(record)

    with pytest.raises(openai.RateLimitError) as caught:
        await client.chat.completions.create(**CHAT)

    assert caught.value.code == "insufficient_quota"
    assert sent == ["/v1/chat/completions"]  # once: not retried


async def test_a_budget_too_small_for_a_request_says_so_and_what_to_lower(harness):
    # Nothing is spent yet, but the request's worst case (its output as long as the
    # model's default allows) costs more than the whole budget.
    limited_auth(harness, max_budget_usd=1e-7)
    response = await harness.client.post(
        "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {API_KEY}"}
    )
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["code"] == "insufficient_quota"
    assert "may cost up to $" in error["message"] and "max_tokens" in error["message"]
    assert "the $0.0000001 budget" in error["message"]  # a tiny budget never reads "$0"
    assert "used up" not in error["message"]
    assert "retry-after" not in response.headers
    assert harness.requests == []


async def test_a_budget_too_small_for_an_embedding_speaks_of_its_input_not_of_output(harness):
    limited_auth(harness, max_budget_usd=1e-9)
    response = await harness.client.post(
        "/v1/embeddings",
        json={"model": "sim-small", "input": "word " * 200},
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert response.status_code == 429, response.text
    message = response.json()["error"]["message"]
    assert "may cost up to $" in message and "(its input)" in message
    assert "max_tokens" not in message and "output" not in message


async def test_a_request_too_costly_for_a_budget_does_not_refuse_a_smaller_one_after_it(harness):
    limited_auth(harness, max_budget_usd=0.01)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    huge = await harness.client.post(
        "/v1/chat/completions", json={**CHAT, "max_tokens": 10_000_000}, headers=headers
    )
    small = await harness.client.post(
        "/v1/chat/completions", json={**CHAT, "max_tokens": 1}, headers=headers
    )
    assert huge.status_code == 429, huge.text
    message = huge.json()["error"]["message"]
    assert "may cost up to $" in message and "e-0" not in message
    assert "left of the $0.01 budget" in message
    assert small.status_code == 200, small.text
    assert len(harness.requests) == 1


async def test_a_refusal_is_recorded_with_the_callers_team_and_reason(harness):
    gateway = harness.app.state.gateway
    recorded: list = []
    both = asyncio.Event()

    async def record(event) -> None:
        recorded.append(event)
        if len(recorded) == 2:
            both.set()

    await harness.bus.subscribe([gateway.topics.replies, gateway.topics.usage], "history", record)
    limited_auth(harness, team=("team-9", {"max_budget_usd": 0.0}))
    response = await harness.client.post(
        "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {API_KEY}"}
    )
    assert response.status_code == 429, response.text

    await asyncio.wait_for(both.wait(), timeout=5)
    failed = next(event for event in recorded if event.type == "chat.failed")
    usage = next(event for event in recorded if event.type == "usage.recorded")
    assert failed.data.status == usage.data.status == "refused"
    assert failed.data.error.code == "insufficient_quota"
    assert "team team-9" in failed.data.error.message
    assert usage.data.team_id == "team-9"
    assert (usage.data.api_key_id, usage.data.model) == ("key-1", "sim-small")


async def test_the_admin_api_is_reachable_through_the_gateway(harness):
    gateway = harness.app.state.gateway
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/v1/admin/teams/t1" and request.method == "PATCH":
            return httpx.Response(400, json={"error": {"message": "bad", "param": "rpm_limit"}})
        return httpx.Response(201, json={"id": "t1", "name": "ml"})

    gateway.http = httpx.AsyncClient(transport=httpx.MockTransport(handle))
    created = await harness.client.post(
        "/v1/admin/teams",
        json={"name": "ml", "rpm_limit": 5},
        headers={"Authorization": "Bearer admin-token", "x-forwarded-for": "203.0.113.9"},
    )
    assert created.status_code == 201 and created.json()["id"] == "t1"
    forwarded = seen[-1]
    assert forwarded.method == "POST" and forwarded.url.path == "/v1/admin/teams"
    assert forwarded.headers["authorization"] == "Bearer admin-token"
    assert forwarded.headers["x-forwarded-for"].startswith("203.0.113.9, ")
    assert b'"rpm_limit":5' in forwarded.content.replace(b" ", b"")

    refused = await harness.client.patch("/v1/admin/teams/t1", json={"rpm_limit": -1})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "rpm_limit"

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("auth is down")

    gateway.http = httpx.AsyncClient(transport=httpx.MockTransport(down))
    unavailable = await harness.client.post(
        "/v1/auth/token", json={"grant_type": "password", "username": "a", "password": "b"}
    )
    assert unavailable.status_code == 503
    assert unavailable.json()["error"]["code"] == "auth_unavailable"
    # A path id with control or non-ASCII characters reaches auth still percent-encoded.
    gateway.http = httpx.AsyncClient(transport=httpx.MockTransport(handle))
    odd = await harness.client.patch("/v1/admin/teams/%C3%9F%F1%82%BC%9CL%05", json={})
    assert odd.status_code == 201
    assert seen[-1].url.raw_path == b"/v1/admin/teams/%C3%9F%F1%82%BC%9CL%05"
    paths = (await harness.client.get("/openapi.json")).json()["paths"]
    assert {"/v1/admin/teams", "/v1/auth/token", "/v1/api-keys/{key_id}", "/v1/spend"} <= set(paths)


async def test_spend_shows_each_budget_above_the_caller(harness):
    limited_auth(harness, max_budget_usd=5.0, budget_period="30d")
    headers = {"Authorization": f"Bearer {API_KEY}"}
    assert (
        await harness.client.post("/v1/chat/completions", json=CHAT, headers=headers)
    ).is_success
    spend = await harness.client.get("/v1/spend", headers=headers)
    assert spend.status_code == 200, spend.text
    [budget] = spend.json()["data"]
    assert budget["level"] == "api_key" and budget["max_budget_usd"] == 5.0
    assert budget["resets_at"] is not None


@pytest.mark.parametrize("query", ["user_id=u2", "team_id=t1", "tenant=other"])
async def test_spend_refuses_a_query_parameter_rather_than_ignore_it(harness, query):
    # An admin asking for another user's or team's spend would otherwise read their own.
    limited_auth(harness, max_budget_usd=5.0, budget_period="30d")
    answer = await harness.client.get(
        f"/v1/spend?{query}", headers={"Authorization": f"Bearer {API_KEY}"}
    )
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["code"], error["param"]) == ("unknown_parameter", query.split("=")[0])
    # Credentials first: a caller without any learns nothing of the route.
    anonymous = await harness.client.get(f"/v1/spend?{query}")
    assert anonymous.status_code == 401


async def test_spend_read_right_after_a_request_includes_its_cost(harness):
    limited_auth(harness, max_budget_usd=5.0, budget_period="30d")
    headers = {"Authorization": f"Bearer {API_KEY}"}
    answer = await harness.client.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert answer.is_success
    # Its usage arrives (settled here at once); the ledger is written in the background.
    harness.app.state.gateway.admission.on_usage(
        usage_event(answer.headers["x-request-id"], cost=0.25)
    )
    spend = await harness.client.get("/v1/spend", headers=headers)
    [budget] = spend.json()["data"]
    assert budget["spent_usd"] == 0.25


async def test_jobs_count_against_the_same_limits(harness):
    limited_auth(harness, rpm_limit=1)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    queued = await harness.client.post("/v1/jobs", json=CHAT, headers=headers)
    assert queued.status_code == 202, queued.text
    assert queued.headers["x-ratelimit-remaining-requests"] == "0"
    refused = await harness.client.post("/v1/jobs", json=CHAT, headers=headers)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"


async def test_usage_reports_carry_spend_against_each_budget(harness):
    limited_auth(harness, max_budget_usd=5.0, budget_period="30d")
    await install_history(harness)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    report = await harness.client.get("/v1/usage", headers=headers)
    assert report.status_code == 200, report.text
    [budget] = report.json()["budgets"]
    assert budget["level"] == "api_key" and budget["max_budget_usd"] == 5.0
    assert report.json()["object"] == "list"  # history's report itself is untouched


async def test_requests_sent_by_other_services_are_admitted_against_the_same_limits(harness):
    """History's replay runner asks the gateway before it sends a replayed request."""
    limited_auth(harness, rpm_limit=1)
    payload = {
        "request_id": "a" * 32,
        "tenant": "acme",
        "user_id": "user-1",
        "api_key_id": "key-1",
        "api": "openai.chat_completions",
        "model": "sim-small",
        "body": CHAT,
    }
    internal = {INTERNAL_TOKEN_HEADER: harness.settings.internal_token}
    anonymous = await harness.client.post("/internal/v1/admissions", json=payload)
    assert anonymous.status_code == 401
    bad = await harness.client.post(
        "/internal/v1/admissions", json={**payload, "api": "nope"}, headers=internal
    )
    assert bad.status_code == 400
    admitted = await harness.client.post("/internal/v1/admissions", json=payload, headers=internal)
    assert admitted.status_code == 200, admitted.text
    assert admitted.json() == {"team_id": None}
    # The same key's next request, from a client or a replay, is over the limit.
    refused = await harness.client.post(
        "/internal/v1/admissions", json={**payload, "request_id": "b" * 32}, headers=internal
    )
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(refused.headers["retry-after"]) >= 1
    client = await harness.client.post(
        "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {API_KEY}"}
    )
    assert client.status_code == 429
    paths = (await harness.client.get("/openapi.json")).json()["paths"]
    assert "/internal/v1/admissions" not in paths


@pytest.mark.parametrize("ticks", range(6))
async def test_stopping_ends_the_housekeeping_task_however_its_cancellation_lands(ticks):
    # The housekeeping loop wakes when told to; a cancellation that lands in the same turn
    # as that wake-up (here: `ticks` turns of the loop after it) once went unnoticed on
    # Python 3.11, so the loop ran on and `stop` waited for it for ever.
    [admission] = replicas(MemoryLedger(), policy(max_budget_usd=1.0), count=1, heartbeat_s=60)
    await admission.start()
    task = admission._task
    assert task is not None
    await asyncio.sleep(0.02)  # the loop is waiting to be woken
    admission._wake.set()
    for _ in range(ticks):
        await asyncio.sleep(0)
    started = asyncio.get_running_loop().time()
    async with asyncio.timeout(10):
        await admission.stop()
    assert task.done()
    # Far short of the 60 s heartbeat the loop would otherwise sleep through.
    assert asyncio.get_running_loop().time() - started < 5.0


@pytest.fixture
def counted_vocabulary(monkeypatch) -> list[str]:
    """The tokenizer as if no request had loaded it yet; loading records the thread it ran
    on (then hands over the real vocabulary, loaded once for the test process)."""
    real = tokenizer.encoding()
    loads: list[str] = []

    def load() -> object:
        loads.append(threading.current_thread().name)
        tokenizer._encoding = real
        return real

    monkeypatch.setattr(tokenizer, "_encoding", None)
    monkeypatch.setattr(tokenizer, "_loading", None)
    monkeypatch.setattr(tokenizer, "encoding", load)
    return loads


async def test_a_budget_loads_the_vocabulary_too(counted_vocabulary, harness):
    limited_auth(harness, max_budget_usd=100.0)
    response = await harness.client.post(
        "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {API_KEY}"}
    )
    assert response.status_code == 200, response.text
    assert len(counted_vocabulary) == 1
    assert counted_vocabulary[0] != threading.main_thread().name


async def test_the_vocabulary_loads_for_token_limits_and_budgets_only_and_off_the_loop(
    counted_vocabulary, harness
):
    headers = {"Authorization": f"Bearer {API_KEY}"}
    # Started, and answering callers without limits or with a request limit only: the
    # vocabulary (about 140 MiB) is never loaded.
    for limits in ({}, {"rpm_limit": 100}):
        limited_auth(harness, **limits)
        harness.app.state.gateway.admission.policies.invalidate()
        response = await harness.client.post("/v1/chat/completions", json=CHAT, headers=headers)
        assert response.status_code == 200, response.text
    assert counted_vocabulary == [] and not tokenizer.loaded()

    limited_auth(harness, tpm_limit=100_000)
    harness.app.state.gateway.admission.policies.invalidate()
    for _ in range(2):
        response = await harness.client.post("/v1/chat/completions", json=CHAT, headers=headers)
        assert response.status_code == 200, response.text
        assert int(response.headers["x-ratelimit-remaining-tokens"]) < 100_000
    # Loaded once, by the first request under the token limit, in a worker thread.
    assert len(counted_vocabulary) == 1
    assert counted_vocabulary[0] != threading.main_thread().name


async def test_replies_settle_as_they_arrive_and_the_usage_topic_is_read_late(
    settings,
) -> None:
    # What a Kafka bus does with these options is tested against a broker
    # (libs/common/tests/integration/test_kafka_bus.py); here, that the gateway asks.
    listened: dict[str, dict] = {}

    class RecordingBus(InMemoryBus):
        async def listen(self, topic, handler, **options):  # type: ignore[no-untyped-def]
            listened[topic] = options
            return await super().listen(topic, handler, **options)

    bus = RecordingBus()
    await bus.start()
    topics = Topics(settings.topic_prefix)
    app = create_app(settings, bus=bus)
    try:
        async with app.router.lifespan_context(app):
            await async_wait_until(
                lambda: asyncio.sleep(0, len(listened) >= 3), timeout=10, message="listeners"
            )
            admission = app.state.gateway.admission
    finally:
        await bus.stop()
    carried = listened[topics.replies]["carried"]
    assert carried.header == USAGE_HEADER
    assert carried.handler == admission.on_reply_usage
    assert carried.key_filter == admission.settles
    assert listened[topics.usage]["max_delay_ms"] == USAGE_FALLBACK_DELAY_MS
    assert listened[topics.auth_events]["max_delay_ms"] is None  # limit changes at once


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0.25, "250ms"),
        (0.9996, "1s"),
        (1.5, "1.5s"),
        (9.996, "10s"),
        (59.4, "59s"),
        (59.6, "1m0s"),
        (359.7, "6m0s"),
        (3599.6, "1h0m0s"),
    ],
)
def test_reset_times_are_in_openais_format_rounded_before_the_unit_is_chosen(seconds, shown):
    from switchyard.gateway.governance.admission import format_duration

    assert format_duration(seconds) == shown


async def test_an_upstreams_used_up_quota_is_relayed_without_a_retry_after(harness):
    async def quota(request):
        return [
            failed_reply(request, 429, "insufficient_quota", "No quota.", code="insufficient_quota")
        ]

    async def rate_limited(request):
        return [failed_reply(request, 429, "requests", "Slow down.", code="rate_limit_exceeded")]

    headers = {"Authorization": f"Bearer {API_KEY}"}
    harness.respond[0] = quota
    used_up = await harness.client.post("/v1/chat/completions", json=CHAT, headers=headers)
    harness.respond[0] = rate_limited
    busy = await harness.client.post("/v1/chat/completions", json=CHAT, headers=headers)

    assert used_up.status_code == busy.status_code == 429
    assert "retry-after" not in used_up.headers
    assert used_up.headers["x-should-retry"] == "false"
    assert busy.headers["retry-after"] == "1" and "x-should-retry" not in busy.headers


@pytest.mark.parametrize("should_retry", [True, False])
async def test_an_upstreams_x_should_retry_reaches_the_client_of_either_api(harness, should_retry):
    async def server_error(request):
        return [failed_reply(request, 500, "api_error", "Boom.", should_retry=should_retry)]

    harness.respond[0] = server_error
    chat = await harness.client.post(
        "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {API_KEY}"}
    )
    messages = await harness.client.post(
        "/v1/messages",
        json={"model": CHAT["model"], "max_tokens": 8, "messages": CHAT["messages"]},
        headers={"x-api-key": API_KEY, "anthropic-version": "2023-06-01"},
    )

    expected = "true" if should_retry else "false"
    assert (chat.status_code, chat.headers["x-should-retry"]) == (500, expected)
    assert (messages.status_code, messages.headers["x-should-retry"]) == (500, expected)


@pytest.mark.parametrize("status", [429, 503, 529])
@pytest.mark.parametrize("retry_after_s", [None, 7])
async def test_an_upstream_saying_not_to_retry_gets_only_the_wait_it_gave(
    harness, status, retry_after_s
):
    async def told_not_to(request):
        details = {"should_retry": False, "retry_after_s": retry_after_s}
        return [failed_reply(request, status, "overloaded_error", "No.", **details)]

    harness.respond[0] = told_not_to
    anthropic = {"x-api-key": API_KEY, "anthropic-version": "2023-06-01"}
    body = {"model": CHAT["model"], "max_tokens": 8, "messages": CHAT["messages"]}
    chat = await harness.client.post(
        "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {API_KEY}"}
    )
    messages = await harness.client.post("/v1/messages", json=body, headers=anthropic)

    for response in (chat, messages):
        assert response.status_code == status
        assert response.headers["x-should-retry"] == "false"
        assert response.headers.get("retry-after") == (None if retry_after_s is None else "7")


async def test_an_error_without_x_should_retry_gets_none(harness):
    async def server_error(request):
        return [failed_reply(request, 500, "api_error", "Boom.")]

    harness.respond[0] = server_error
    response = await harness.client.post(
        "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {API_KEY}"}
    )

    assert response.status_code == 500 and "x-should-retry" not in response.headers


async def test_a_long_prompt_under_a_token_limit_is_counted_off_the_event_loop(
    harness, monkeypatch
):
    # A long prompt's tokens are counted in a worker thread (a 40 MB body took seconds),
    # not on the event loop every request shares; a short one's inline.
    import threading

    from switchyard.gateway.governance import estimate as estimating

    threads: list[bool] = []
    real_estimate = estimating.estimate

    def recording(*args, **kwargs):
        threads.append(threading.current_thread() is threading.main_thread())
        return real_estimate(*args, **kwargs)

    monkeypatch.setattr(estimating, "estimate", recording)
    limited_auth(harness, tpm_limit=10_000_000)
    short = {**CHAT, "max_tokens": 16}
    long = {**short, "messages": [{"role": "user", "content": "word " * 30_000}]}
    headers = {"x-api-key": API_KEY}

    answered = await harness.client.post("/v1/messages", json=long, headers=headers)
    after = await harness.client.post("/v1/messages", json=short, headers=headers)

    assert answered.status_code == 200, answered.text
    remaining = int(answered.headers["anthropic-ratelimit-tokens-remaining"])
    assert 10_000_000 - remaining > 30_000  # the long prompt was counted, and reserved
    assert after.status_code == 200
    assert threads == [False, True]


@pytest.mark.parametrize(
    "caps",
    [
        # Anthropic's Messages honours max_tokens; a Chat Completions cap sent beside it
        # (which a lenient server may ignore) must not shrink the reservation.
        {"max_tokens": 4096, "max_completion_tokens": 1},
        {"max_completion_tokens": 4096, "max_tokens": 1},
        {"max_output_tokens": 4096, "max_tokens": 1},
    ],
)
def test_a_reservation_covers_the_largest_output_cap_a_request_sends(caps) -> None:
    from switchyard.gateway.governance.estimate import estimate

    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    alone = estimate("m", {**body, "max_tokens": 4096}, PRICES, embeddings=False)

    assert estimate("m", {**body, **caps}, PRICES, embeddings=False) == alone


@pytest.mark.parametrize(
    ("provider", "marker", "rate"),
    [
        # Anthropic writes to its cache only where a request marks it: billed at 1.25
        # times plain input (2 times for an hour), while reserved at the plain price,
        # concurrent requests overspent a budget by about a fifth.
        ("anthropic", None, 1.0),
        ("anthropic", {"type": "ephemeral"}, 1.25),
        ("bedrock", {"type": "ephemeral", "ttl": "5m"}, 1.25),
        ("anthropic", {"type": "ephemeral", "ttl": "1h"}, 2.0),
        # Other providers cache on their own.
        ("openai", None, 1.25),
    ],
)
def test_a_reservation_covers_what_the_prompt_cache_may_be_billed(provider, marker, rate) -> None:
    from switchyard.common.routing import Deployment
    from switchyard.gateway.governance.estimate import estimate

    price = Price(
        input_per_1m=1.0,
        output_per_1m=5.0,
        cache_read_per_1m=0.1,
        cache_write_per_1m=1.25,
        cache_write_1h_per_1m=2.0,
    )
    region = {"region": "us-east-1"} if provider == "bedrock" else {}
    deployment = Deployment(name="d", provider=provider, model="c", base_url="http://x", **region)
    system: Any = "lorem " * 2000
    if marker is not None:
        system = [{"type": "text", "text": system, "cache_control": marker}]
    body = {"model": "c", "system": system, "messages": [], "max_tokens": 10}

    reserved = estimate(
        "c", body, PriceTable(models={"c": price}), embeddings=False, deployments=[deployment]
    )

    prompt = reserved.tokens - 10
    assert reserved.cost_usd == pytest.approx((prompt * rate + 10 * 5.0) / 1e6)


def test_a_marker_on_a_tool_or_at_the_top_level_may_write_the_cache_too() -> None:
    from switchyard.common.routing import Deployment
    from switchyard.gateway.governance.estimate import estimate

    price = Price(input_per_1m=1.0, output_per_1m=5.0, cache_write_per_1m=1.25)
    prices = PriceTable(models={"c": price})
    deployment = Deployment(name="d", provider="anthropic", model="c", base_url="http://x")
    plain = {"model": "c", "messages": [{"role": "user", "content": "hi " * 500}], "max_tokens": 1}
    tool = {"name": "t", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}}

    def reserved(body: dict[str, Any]) -> float:
        return estimate("c", body, prices, embeddings=False, deployments=[deployment]).cost_usd

    assert reserved({**plain, "cache_control": {"type": "ephemeral"}}) > reserved(plain)
    image = {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
    marked = {**image, "cache_control": {"type": "ephemeral"}}
    assert reserved(
        {
            **plain,
            "messages": [
                {"role": "user", "content": [marked, {"type": "text", "text": "hi " * 500}]}
            ],
        }
    ) > reserved(
        {
            **plain,
            "messages": [
                {"role": "user", "content": [image, {"type": "text", "text": "hi " * 500}]}
            ],
        }
    )
    assert reserved({**plain, "tools": [tool]}) > reserved(
        {**plain, "tools": [{k: v for k, v in tool.items() if k != "cache_control"}]}
    )


async def test_token_counts_cost_nothing_so_only_request_limits_apply(harness):
    # The providers charge nothing for counting tokens: a used-up budget or a token limit
    # below the prompt refuses no count, while the request limits hold as for any call.
    limited_auth(harness, max_budget_usd=0.0, tpm_limit=1, rpm_limit=2)
    anthropic_headers = {"Authorization": f"Bearer {API_KEY}", "anthropic-version": "2023-06-01"}
    count = {"model": "sim-claude", "messages": [{"role": "user", "content": "word " * 200}]}
    counted = await harness.client.post(
        "/v1/messages/count_tokens", json=count, headers=anthropic_headers
    )
    assert counted.status_code == 200, counted.text
    responses_count = await harness.client.post(
        "/v1/responses/input_tokens",
        json={"model": "sim-small", "input": "word " * 200},
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert responses_count.status_code == 200, responses_count.text
    third = await harness.client.post(
        "/v1/messages/count_tokens", json=count, headers=anthropic_headers
    )
    assert third.status_code == 429, third.text
    assert third.json()["error"]["type"] == "rate_limit_error"


async def test_a_request_after_an_invalidation_never_joins_a_policy_fetch_from_before() -> None:
    """A fetch in flight when a limit changes may carry the old limit: the next request
    fetches again rather than share its answer."""
    released, calls = asyncio.Event(), []

    async def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        rpm = len(calls)  # the first fetch gets the old limit, 1; the next the new, 2
        if rpm == 1:
            await released.wait()
        limits = {"rpm_limit": rpm}
        level = {"id": "u", "limits": limits, "budget_anchor_at": None}
        return httpx.Response(200, json={"tenant": "acme", "levels": {"user": level}})

    async def fetched(count: int) -> bool:
        return len(calls) >= count

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        source = PolicySource(lambda: client, auth_url="http://auth", internal_token="t")
        before = asyncio.create_task(source.get("u", None))
        await async_wait_until(lambda: fetched(1), interval=0.01)
        source.invalidate("user", "u")
        after = asyncio.create_task(source.get("u", None))
        await async_wait_until(lambda: fetched(2), interval=0.01)
        released.set()

        assert (await before).levels[0].limits.rpm_limit == 1
        assert (await after).levels[0].limits.rpm_limit == 2
