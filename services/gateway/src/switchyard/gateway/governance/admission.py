"""Admission: may this request run, under every budget and rate limit above its caller?

The narrow interface the request path uses:

    ticket = await admission.admit(principal, model, body)   # raises Refused
    ticket.attach(request_id)                                 # before publishing
    ...                                                       # usage event settles it
    ticket.cancel()                                           # if it was never published

How it stays exact for the fleet and fast for one request (docs/governance.md):
- the fleet's counters live in the `Ledger` (PostgreSQL); this replica draws *leases*
  (allowance) from them and admits locally, so an admitted request costs no round trip
  while its replica holds allowance; a lease is refilled (one round trip, shared by every
  request waiting for it) when it runs out, and given back when it idles;
- each request reserves at every level that has a limit: 1 request, its estimated tokens
  (prompt + output cap), its most possible cost, 1 parallel slot; the usage event of the
  request settles the reservation with what it really used, and the difference goes back
  to this replica's allowance. On Kafka it is taken from the terminal reply that carries
  it (`on_reply_usage`), as the reply arrives; the usage topic (`<prefix>.usage`, which
  every replica listens to, in batches) settles the requests whose reply this replica did
  not read while it waited (jobs, a client gone, a deadline passed, internal admissions);
- the sum of all leases never exceeds a limit, so N replicas never admit more than the
  limit; what one replica holds unused is returned after `lease_idle_s`.

When the ledger does not answer within its timeout, each tenant's failure mode decides:
rate limits fail open by default (admitted without counting), budgets fail closed
(refused with 503). Every request waiting on the refill that failed gets its failure
mode at once, and the store then counts as down: for `STORE_BACKOFF_S` a request that
needs it follows its failure mode without asking it; after that one grant at a time (a
probe) asks it, until one succeeds. So no request waits more than about one timeout
however many arrive together, and a store that is back is used again within a back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from prometheus_client import Counter, Histogram

from switchyard.common import tokenizer
from switchyard.common.errors import APIError
from switchyard.common.events import ClientAPI, Event, LimitsChanged, UsageRecorded
from switchyard.common.governance import LEVEL_NAMES, BudgetClock, FailureMode, scope_key
from switchyard.common.pricing import PriceTable
from switchyard.common.routing import DEFAULT_ANTHROPIC_MAX_TOKENS, Deployment
from switchyard.common.tasks import cancel_and_wait
from switchyard.common.text import quantity
from switchyard.gateway.governance.estimate import Estimate, estimate, estimate_without_blocking
from switchyard.gateway.governance.ledger import (
    WHOLE_KINDS,
    WINDOW_S,
    Grant,
    GrantRequest,
    Kind,
    LeaseChange,
    Ledger,
    LedgerUnavailable,
)
from switchyard.gateway.governance.policy import (
    LevelLimits,
    Policy,
    PolicySource,
    PolicyUnavailable,
)

log = structlog.get_logger("switchyard.gateway.governance")

REFUSED = Counter(
    "switchyard_gateway_governance_refused_total",
    "Requests refused by a budget or rate limit.",
    ["level", "kind"],
)
GRANTS = Histogram(
    "switchyard_gateway_governance_grant_seconds",
    "Round trips to the limit store for more allowance.",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
STORE_FAILURES = Counter(
    "switchyard_gateway_governance_store_failures_total",
    "Limit store calls that failed or timed out, by what the failure mode did.",
    ["outcome"],
)
LATE_USAGE = Counter(
    "switchyard_gateway_governance_late_usage_total",
    "Usage events of another run of a request already settled (a run taken over from a "
    "replica that stalled, then finished), added to the budgets' spend.",
)

# How much a refill asks for beyond what the request needs: a tenth of the limit, at
# most a hundred requests' worth (the ledger caps it at a quarter of what is left).
LEASE_SHARE = 0.1
LEASE_REQUESTS = 100
# A counter found exhausted is not asked again for this long (refusals stay cheap).
EXHAUSTED_S = 0.05
MAX_ROUNDS = 1000
# After a grant fails (the store down, or slower than its timeout), requests that need
# the store follow their failure mode for this long without asking it: asking it for
# each would make each wait its own timeout, queued behind the others' (the SQLite ledger
# takes one transaction at a time, a PostgreSQL pool a few), so latency would grow with
# the number of requests, and a struggling database would get more work. Then the next
# request that needs a grant asks (a probe; the others still do not while it is on its
# way): a failure starts another back-off, a success ends the outage. A second: a store
# that is back is used again within about that long, which is also the Retry-After a
# tenant failing closed is given.
STORE_BACKOFF_S = 1.0


# The APIs whose requests generate no output: nothing is reserved for one.
INPUT_ONLY_APIS = frozenset(
    {
        ClientAPI.OPENAI_EMBEDDINGS,
        ClientAPI.ANTHROPIC_COUNT_TOKENS,
        ClientAPI.OPENAI_RESPONSES_INPUT_TOKENS,
    }
)

# The APIs whose requests are never billed (they count tokens, the provider charges nothing
# for them: Anthropic's "Token counting" guide, OpenAI's input token counts): they count
# against request limits (`rpm_limit`, `max_parallel_requests`) only, never a budget or TPM.
UNBILLED_APIS = frozenset(
    {
        ClientAPI.ANTHROPIC_COUNT_TOKENS,
        ClientAPI.OPENAI_RESPONSES_INPUT_TOKENS,
    }
)

# A refusal that passes later than this (seconds) is not worth an SDK's automatic retry:
# the official SDKs retry a 429 within about a minute (or wait as long as Retry-After says).
SDK_RETRY_WAIT_S = 60


class Refused(APIError):
    """A request over a budget or rate limit: 429 naming the level, the limit and when it
    resets (`rate_limit_exceeded` for rate limits, `insufficient_quota` for budgets)."""

    def __init__(
        self,
        *,
        level: str,
        scope_id: str,
        kind: Kind,
        limit: float,
        reset_at: float | None,
        now: float,
        headers: dict[str, str] | None = None,
        needed: float | None = None,
        left: float | None = None,
        output: bool = True,
        spent: float | None = None,
    ) -> None:
        """`needed`: what the request reserves at most, in the limit's unit (USD, requests,
        tokens); `left`: what a budget has left after what is spent and reserved, when
        known; `spent`: what it has spent, when known. A budget not used up but too small
        for this request, and a rate limit smaller than the request, say so and invite no
        retry; a budget that would take the request once the requests in progress settle
        (they reserve their most, and usually use less) says that and invites one;
        `output`: whether `needed` holds output (false for embeddings and token counts,
        which make none)."""
        self.level, self.scope_id, self.kind = level, scope_id, kind
        # The caller's team, for the refusal's record (set by `Admission.admit`).
        self.team_id: str | None = None
        self.limit, self.reset_at = limit, reset_at
        # The snapshots of the rate-limit headers (`rate_headers`): the limit refused here
        # has nothing left; `Admission` adds the tightest other requests and tokens limits
        # it knows of, so a client refused for one kind still learns its other budget.
        self.requests: RateSnapshot | None = None
        self.tokens: RateSnapshot | None = None
        if kind in ("requests", "tokens"):
            setattr(self, kind, RateSnapshot(limit=limit, remaining=0, reset_at=reset_at))
        who = f"{LEVEL_NAMES.get(level, level)} {scope_id}"
        retry_after = max(1, math.ceil(reset_at - now)) if reset_at is not None else 1
        all_headers = dict(headers or {})
        held = (
            kind == "spend"
            and spent is not None
            and needed is not None
            and spent + needed <= limit + 1e-9
        )
        if held:
            assert spent is not None
            resets = (
                f"it resets at {_iso(reset_at)}" if reset_at is not None else "it does not reset"
            )
            message = (
                f"The {_usd(limit)} budget for the {who} is held by requests in progress "
                f"({_usd(spent)} spent so far); retry when they finish ({resets})."
            )
            # A retry may fit once they finish, which is not known here: at the latest the
            # period's reset (a lifetime budget has none: a second, then refused again as
            # used up once their usage is settled). Never `x-should-retry: false`.
            wait = str(retry_after) if reset_at is not None else "1"
            super().__init__(
                429,
                message,
                type="insufficient_quota",
                code="insufficient_quota",
                headers={**all_headers, "Retry-After": wait},
            )
            return
        if kind == "spend":
            when = (
                f"it resets at {_iso(reset_at)}"
                if reset_at is not None
                else "it does not reset (a lifetime budget)"
            )
            # What a smaller request could still have: what is left beyond the requests
            # in progress or, with nothing left beyond them, what is not spent yet (they
            # reserve their most and usually use less). None: the budget is used up.
            room: str | None = None
            if needed is not None and left is not None and 0 < left < needed:
                room = "left"
            elif needed is not None and spent is not None and spent < limit - 1e-9:
                left, room = limit - spent, "not yet spent"
            if room is not None and not output:
                assert needed is not None and left is not None
                most, rest = _usd_apart(needed, left)
                message = (
                    f"This request may cost up to {most} (its input), more than the "
                    f"{rest} {room} of the {_usd(limit)} budget for the {who}; send less "
                    f"input, or raise the budget; {when}."
                )
            elif room is not None:
                assert needed is not None and left is not None
                most, rest = _usd_apart(needed, left)
                message = (
                    f"This request may cost up to {most} (its prompt, and its output "
                    f"at most as long as max_tokens allows), more than the {rest} {room} "
                    f"of the {_usd(limit)} budget for the {who}; set a lower max_tokens (or "
                    f"max_output_tokens), or raise the budget; {when}."
                )
            else:
                message = f"Budget of {_usd(limit)} for the {who} is used up; {when}."
            error_type, code = "insufficient_quota", "insufficient_quota"
            # Retrying helps only once the period resets: no Retry-After for a lifetime
            # budget (an empty value tells the error writer to send none).
            all_headers["Retry-After"] = str(retry_after) if reset_at is not None else ""
            too_big = room is not None
            if reset_at is None or retry_after > SDK_RETRY_WAIT_S or too_big:
                # The SDKs retry a 429 on their own within a minute; this one would fail
                # the same way, and they skip retrying on this header.
                all_headers["x-should-retry"] = "false"
        else:
            count, s = quantity(limit), "" if limit == 1 else "s"
            what = {
                "requests": f"{count} request{s} per minute",
                "tokens": f"{count} token{s} per minute",
                "parallel": f"{count} request{s} in progress at once",
            }[kind]
            if reset_at is not None:
                when = f"retry after {_iso(reset_at)}"
            elif kind == "parallel":
                # A slot frees when a request ends (or, if its outcome never comes, at its
                # deadline plus a minute): not necessarily shortly.
                when = "retry when one of them ends"
            else:
                when = "retry shortly"
            message = f"Rate limit of {what} reached for the {who}; {when}."
            error_type = "tokens" if kind == "tokens" else "requests"
            code = "rate_limit_exceeded"
            all_headers["Retry-After"] = str(retry_after)
            if needed is not None and needed > limit:
                # More than the whole limit: no window will ever admit it, so no retry
                # (no Retry-After, and the SDKs skip retrying on `x-should-retry`).
                if kind != "tokens" or limit <= 0:
                    # (A tokens limit of 0 admits nothing, however short the request.)
                    message = f"The {who} may make no requests: its limit is {what}."
                elif output:
                    message = (
                        f"Request too large: it may use up to {quantity(needed)} tokens (its "
                        "prompt, and its output at most as long as max_tokens allows), more than "
                        f"the whole limit of {what} for the {who}; set a lower max_tokens (or "
                        "max_output_tokens), or raise the limit."
                    )
                else:
                    message = (
                        f"Request too large: its input is about {quantity(needed)} tokens, more "
                        f"than the whole limit of {what} for the {who}; send less input, or raise "
                        "the limit."
                    )
                all_headers["Retry-After"] = ""
                all_headers["x-should-retry"] = "false"
        super().__init__(429, message, type=error_type, code=code, headers=all_headers)

    def rate_headers(self, api: Any) -> dict[str, str]:
        """The rate-limit headers of this refusal for a client of `api` (see
        `Ticket.headers_for`), like an admitted request's: the requests or tokens limit it
        hit with `remaining` 0, and the other kind's tightest limit with what it has left,
        as `Admission` knew it when refusing. A budget or parallel refusal carries the
        requests and tokens limits known then. A limit this replica holds nothing of in
        the current window is left out (learning it would cost a round trip to the
        ledger); a refusal made outside `Admission` carries only the limit it hit. Empty
        when no requests or tokens limit is known."""
        return Ticket(requests=self.requests, tokens=self.tokens).headers_for(api)

    @property
    def reason(self) -> str:
        """Why, in a word or two, for history: e.g. `budget:team` or `rpm:api_key`."""
        word = {"spend": "budget", "requests": "rpm", "tokens": "tpm", "parallel": "parallel"}
        return f"{word[self.kind]}:{self.level}"


def _of_tenant(tenant: str | None, event: UsageRecorded) -> bool:
    """Whether usage `event` is of a request of `tenant` (a ticket's; None: not known, as
    for a ticket made before it was kept). Request ids are the gateways' own (an HMAC),
    so another tenant's usage naming one is no run of that request: it settles nothing."""
    if tenant is None or event.tenant == tenant:
        return True
    log.warning(
        "usage of another tenant naming an admitted request ignored",
        request_id=event.request_id,
        tenant=event.tenant,
    )
    return False


def _usd(amount: float, places: int = 6) -> str:
    """An amount of USD as people read it: `$0.01`, `$12.5`, `$0.000007` (never `4.5e-06`),
    to at most `places` decimals; more (up to 12) for an amount above zero that would read
    `$0`, and below that `less than $0.000000000001`."""
    for shown_places in range(places, max(places, 12) + 1):
        shown = f"{amount:,.{shown_places}f}".rstrip("0").rstrip(".") or "0"
        if shown != "0" or amount <= 0:
            return "$" + shown
    return "less than $0.000000000001"


def _usd_apart(first: float, second: float) -> tuple[str, str]:
    """`_usd` of two amounts that differ, with as many decimals (6 to 12) as they need to
    read differently: a request "may cost up to $0.000018, more than the $0.000018 left"
    would contradict itself."""
    for places in range(6, 13):
        shown = _usd(first, places), _usd(second, places)
        if shown[0] != shown[1]:
            return shown
    return shown


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def format_duration(seconds: float) -> str:
    """OpenAI's reset format: `250ms`, `1.5s`, `12s`, `6m0s`, `1h2m3s`; each unit rounded
    before it is chosen, so 59.6 s is `1m0s`, never `60s`."""
    milliseconds = round(max(0.0, seconds) * 1000)
    if milliseconds < 1000:
        return f"{milliseconds}ms"
    if milliseconds < 9995:
        return f"{milliseconds / 1000:.3g}s"
    whole = round(milliseconds / 1000)
    if whole < 60:
        return f"{whole}s"
    minutes, rest = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{rest}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes}m{rest}s"


@dataclass(frozen=True)
class RateSnapshot:
    """The tightest limit of one kind after admission, for the rate-limit headers."""

    limit: float
    remaining: float
    reset_at: float | None


@dataclass(slots=True)
class _Need:
    level: LevelLimits
    kind: Kind
    limit: float
    amount: float
    window_s: float | None = None
    period_start: float | None = None
    period_end: float | None = None
    failure_mode: FailureMode = FailureMode.CLOSED
    uncounted: bool = False  # store down and the tenant fails open
    output: bool = True  # `amount` holds an output reservation (not for embeddings, counts)
    counter: tuple[str, str] = ("", "")

    def __post_init__(self) -> None:
        self.counter = (scope_key(self.level.level, self.level.scope_id), self.kind)


@dataclass
class _Allowance:
    window_start: float
    window_end: float | None
    unused: float
    limit: float
    committed: float
    touched: float


@dataclass(frozen=True)
class Reservation:
    """Part of a lease held for one admitted request: `amount` of the counter (`scope`, `kind`)
    in the window that started at `window_start` (epoch seconds), in the kind's unit."""

    scope: str
    kind: Kind
    window_start: float
    amount: float


# A counter a settled request's usage went to: (scope, kind, window_start).
_Counted = tuple[str, Kind, float]


def _used(event: UsageRecorded) -> dict[str, float]:
    """What the run `event` reports used, by counter kind: tokens (input plus output),
    spend (USD) and parallel slots (none: a slot is given back, never spent)."""
    usage = event.data.usage
    return {
        "tokens": float(usage.input_tokens + usage.output_tokens),
        "spend": float(event.data.cost_usd),
        "parallel": 0.0,
    }


@dataclass
class Ticket:
    """An admitted request's reservations, its team and its rate-limit headers."""

    admission: Admission | None = None
    team_id: str | None = None
    # The caller's tenant: a usage event of another tenant never settles the ticket.
    tenant: str | None = None
    reservations: list[Reservation] = field(default_factory=list)
    requests: RateSnapshot | None = None
    tokens: RateSnapshot | None = None
    request_id: str | None = None
    expires_at: float = 0.0
    settled: bool = False

    def attach(self, request_id: str, deadline_s: float = 120.0) -> None:
        """Register the request so its usage event settles the reservations; call before
        publishing it."""
        self.request_id = request_id
        if self.admission is not None and self.reservations:
            self.expires_at = time.monotonic() + deadline_s + 60.0
            self.admission._pending[request_id] = self

    def cancel(self) -> None:
        """The request was never published: give everything back."""
        if self.admission is not None and not self.settled:
            self.admission._undo(self)

    def settle(self, *, tokens: float, cost_usd: float) -> None:
        """The request ended here without a usage event to wait for (a response cache
        hit): settle its reservations with `tokens` used and `cost_usd` spent (USD); the
        request itself stays counted against requests-per-minute limits."""
        if self.admission is not None and not self.settled:
            self.admission._settle(self, {"tokens": tokens, "spend": cost_usd, "parallel": 0.0})

    def openai_headers(self) -> dict[str, str]:
        """`x-ratelimit-{limit,remaining,reset}-{requests,tokens}` (OpenAI's)."""
        headers: dict[str, str] = {}
        now = time.time()
        for kind, snapshot in (("requests", self.requests), ("tokens", self.tokens)):
            if snapshot is None:
                continue
            headers[f"x-ratelimit-limit-{kind}"] = str(int(snapshot.limit))
            headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, int(snapshot.remaining)))
            if snapshot.reset_at is not None:
                headers[f"x-ratelimit-reset-{kind}"] = format_duration(snapshot.reset_at - now)
        return headers

    def headers_for(self, api: Any) -> dict[str, str]:
        """The headers for a client of `api`: `"anthropic"`/`"openai"`, or a contract
        value with a `vendor` (e.g. `anthropic.messages`)."""
        vendor = str(getattr(api, "vendor", api)).split(".", 1)[0]
        return self.anthropic_headers() if vendor == "anthropic" else self.openai_headers()

    def anthropic_headers(self) -> dict[str, str]:
        """`anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}` (RFC 3339)."""
        headers: dict[str, str] = {}
        for kind, snapshot in (("requests", self.requests), ("tokens", self.tokens)):
            if snapshot is None:
                continue
            headers[f"anthropic-ratelimit-{kind}-limit"] = str(int(snapshot.limit))
            headers[f"anthropic-ratelimit-{kind}-remaining"] = str(max(0, int(snapshot.remaining)))
            if snapshot.reset_at is not None:
                headers[f"anthropic-ratelimit-{kind}-reset"] = _iso(snapshot.reset_at)
        return headers


class Admission:
    """Budgets and rate limits of one gateway replica (see the module docstring)."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        policies: PolicySource,
        prices: PriceTable,
        replica: str,
        budget_clock: BudgetClock | None = None,
        lease_idle_s: float = 2.0,
        heartbeat_s: float = 2.0,
        reap_after_s: float = 15.0,
        clock: Callable[[], float] = time.time,
        deployments_of: Callable[[str], Sequence[Deployment]] | None = None,
        store_backoff_s: float = STORE_BACKOFF_S,
        settled_remembered: int = 10_000,
        anthropic_default_max_tokens: int = DEFAULT_ANTHROPIC_MAX_TOKENS,
    ) -> None:
        """`settled_remembered`: how many settled requests this replica remembers (the
        most recent), so that the usage of another run of one of them still counts;
        `anthropic_default_max_tokens`: inference's, the `max_tokens` it sends an
        Anthropic-protocol deployment for a request without a cap (`estimate`)."""
        self.ledger = ledger
        self.policies = policies
        self.prices = prices
        self.anthropic_default_max_tokens = anthropic_default_max_tokens
        # A public model's deployments (its route's), which price a request as inference
        # will (`estimate`); none known: the public model's own price.
        self.deployments_of = deployments_of or (lambda model: ())
        self.replica = replica
        self.budget_clock = budget_clock or BudgetClock()
        self.lease_idle_s = lease_idle_s
        self.heartbeat_s = heartbeat_s
        self.reap_after_s = reap_after_s
        self._clock = clock
        self._allowances: dict[tuple[str, str], _Allowance] = {}
        self._exhausted: dict[tuple[str, str], tuple[float, Grant]] = {}
        # The refill on its way for each counter; its result is the store's failure, if
        # it failed, which every request waiting on it then shares (`_refill`).
        self._refills: dict[tuple[str, str], asyncio.Future[LedgerUnavailable | None]] = {}
        # While the store counts as down: until when (monotonic) nothing asks it; 0 when
        # it is up (`STORE_BACKOFF_S`).
        self.store_backoff_s = store_backoff_s
        self._down_until = 0.0
        # Grants on their way to the store: while it counts as down, at most one (a probe).
        self._granting = 0
        # What the requests waiting for each counter need in all (asked for when short).
        self._demand: dict[tuple[str, str], float] = {}
        self._pending: dict[str, Ticket] = {}
        # The requests settled (or expired) lately, by request id: the ids of the usage
        # events counted for each, and the counters its tokens and spend went to
        # (`_settle_late`). Each run of a request has a usage event of its own: a run
        # taken over after its replica stalled, and the stalled run finishing later, are
        # both billed (history adds them up), so both count against the budgets.
        self.settled_remembered = settled_remembered
        self._settled: OrderedDict[
            str, tuple[tuple[str, ...], tuple[_Counted, ...], str | None]
        ] = OrderedDict()
        # Tickets whose usage had not come by their deadline plus a minute (their parallel
        # slot given back, their tokens and spend still reserved), by request id, the most
        # recent `settled_remembered`: a usage that comes later settles them as usual.
        self._expired: OrderedDict[str, Ticket] = OrderedDict()
        self._periods: dict[tuple[str | None, float | None], tuple[float, float | None]] = {}
        self._settlements: list[LeaseChange] = []
        # Settlement writes under way (`flush`).
        self._writes: set[asyncio.Future[None]] = set()
        self._wake = asyncio.Event()
        self._background: set[asyncio.Future[None]] = set()
        self._task: asyncio.Task[None] | None = None

    # -- admitting -------------------------------------------------------------------

    async def admit(
        self,
        principal: Any,
        model: str,
        body: dict[str, Any],
        *,
        embeddings: bool = False,
        billed: bool = True,
    ) -> Ticket:
        """A ticket for the request, or Refused (429) naming the level over its limit;
        APIError 503 when limits cannot be checked and the tenant fails closed.
        `embeddings`: the request generates no output (none is reserved); `billed` False:
        it costs nothing (`UNBILLED_APIS`), so only request limits apply to it."""
        try:
            policy = await self.policies.get(principal.user_id, principal.api_key_id)
        except PolicyUnavailable:
            raise APIError(
                503,
                "Limits cannot be checked right now; retry shortly.",
                code="limits_unavailable",
                headers={"Retry-After": "1"},
            ) from None
        if not policy.limited:
            return Ticket(team_id=policy.team_id)
        try:
            return await self._admit_limited(policy, model, body, embeddings, billed)
        except Refused as refused:
            refused.team_id = policy.team_id  # recorded with the refusal
            raise

    async def _admit_limited(
        self, policy: Policy, model: str, body: dict[str, Any], embeddings: bool, billed: bool
    ) -> Ticket:
        counts_tokens = billed and policy.counts_tokens
        if counts_tokens and not tokenizer.loaded():
            # The first such request loads the vocabulary in a thread (the estimate below
            # would load it on the event loop, blocking every other request for a second).
            await tokenizer.load()
        cost = None
        if counts_tokens:
            cost = await estimate_without_blocking(
                model, body, self.prices, embeddings=embeddings, **self._routed(model)
            )
        needs = self._needs(policy, model, body, embeddings, cost, billed=billed)
        # Each round either admits, refuses (a refill found the counter exhausted), or
        # waits for a refill that granted something, which other waiting requests may
        # have taken first; so rounds end, but a busy replica may need several.
        for _ in range(MAX_ROUNDS):
            now = self._clock()
            missing = [need for need in needs if not need.uncounted and not self._covers(need, now)]
            if not missing:
                return self._take(needs, policy, now)
            for need in missing:
                refused = self._exhausted_refusal(need, now)
                if refused is not None:
                    raise self._with_rates(refused, needs, now)
            for need in missing:
                self._demand[need.counter] = self._demand.get(need.counter, 0.0) + need.amount
            try:
                await self._refill(missing)
            finally:
                for need in missing:
                    left = self._demand.get(need.counter, 0.0) - need.amount
                    if left > 1e-12:
                        self._demand[need.counter] = left
                    else:
                        self._demand.pop(need.counter, None)
        now = self._clock()
        raise self._with_rates(self._refusal(missing[0], now, None), needs, now)

    def _estimate(self, model: str, body: dict[str, Any], embeddings: bool) -> Estimate:
        """`estimate` of a request to `model`, priced by its route's deployments, on the
        event loop: only for a need `admit` did not estimate first (it does, off the loop
        for a large body, whenever a level limits tokens or spend)."""
        return estimate(model, body, self.prices, embeddings=embeddings, **self._routed(model))

    def _routed(self, model: str) -> dict[str, Any]:
        """What an estimate of a request to `model` needs of its route: the deployments
        that may serve it and inference's `max_tokens` for an Anthropic one."""
        return {
            "deployments": self.deployments_of(model),
            "anthropic_default_max_tokens": self.anthropic_default_max_tokens,
        }

    def _needs(
        self,
        policy: Policy,
        model: str,
        body: dict[str, Any],
        embeddings: bool,
        cost: Estimate | None = None,
        *,
        billed: bool = True,
    ) -> list[_Need]:
        now = self._clock()
        needs = []
        for level in policy.levels:
            limits = level.limits
            rate_mode = policy.rate_limit_failure_mode
            if limits.rpm_limit is not None:
                needs.append(
                    _Need(level, "requests", limits.rpm_limit, 1, WINDOW_S, failure_mode=rate_mode)
                )
            if limits.tpm_limit is not None and billed:
                cost = cost or self._estimate(model, body, embeddings)
                needs.append(
                    _Need(
                        level,
                        "tokens",
                        limits.tpm_limit,
                        cost.tokens,
                        WINDOW_S,
                        failure_mode=rate_mode,
                        output=not embeddings,
                    )
                )
            if limits.max_parallel_requests is not None:
                needs.append(
                    _Need(
                        level,
                        "parallel",
                        limits.max_parallel_requests,
                        1,
                        failure_mode=rate_mode,
                    )
                )
            if limits.max_budget_usd is not None and billed:
                cost = cost or self._estimate(model, body, embeddings)
                period_start, period_end = self._period(level, now)
                needs.append(
                    _Need(
                        level,
                        "spend",
                        limits.max_budget_usd,
                        cost.cost_usd,
                        period_start=period_start,
                        period_end=period_end,
                        failure_mode=policy.budget_failure_mode,
                        output=not embeddings,
                    )
                )
        return needs

    def _period(self, level: LevelLimits, now: float) -> tuple[float, float | None]:
        """The current budget period of a level (epoch seconds), cached until it ends."""
        key = (level.limits.budget_period, level.budget_anchor)
        cached = self._periods.get(key)
        if cached is not None and (cached[1] is None or now < cached[1]) and now >= cached[0]:
            return cached
        anchor = datetime.fromtimestamp(level.budget_anchor or 0.0, UTC)
        period = self.budget_clock.period(
            level.limits.budget_period, anchor, datetime.fromtimestamp(now, UTC)
        )
        found = (period.start.timestamp(), period.end.timestamp() if period.end else None)
        if len(self._periods) > 10_000:
            self._periods.clear()
        self._periods[key] = found
        return found

    def _valid(self, allowance: _Allowance, need: _Need, now: float) -> bool:
        if need.period_start is not None:
            return allowance.window_start == need.period_start
        return allowance.window_end is None or now < allowance.window_end

    def _covers(self, need: _Need, now: float) -> bool:
        allowance = self._allowances.get(need.counter)
        return (
            allowance is not None
            and self._valid(allowance, need, now)
            and allowance.unused + 1e-12 >= need.amount
        )

    def _take(self, needs: list[_Need], policy: Policy, now: float) -> Ticket:
        """Deduct every need from its allowance (no await: atomic within this replica)."""
        ticket = Ticket(admission=self, team_id=policy.team_id, tenant=policy.tenant)
        touched = time.monotonic()
        for need in needs:
            if need.uncounted:
                continue
            allowance = self._allowances[need.counter]
            allowance.unused -= need.amount
            allowance.touched = touched
            if need.kind != "requests":
                ticket.reservations.append(
                    Reservation(need.counter[0], need.kind, allowance.window_start, need.amount)
                )
            if need.kind in ("requests", "tokens"):
                snapshot = self._snapshot(need, allowance)
                current = getattr(ticket, need.kind)
                if current is None or snapshot.remaining < current.remaining:
                    setattr(ticket, need.kind, snapshot)
        return ticket

    @staticmethod
    def _snapshot(need: _Need, allowance: _Allowance) -> RateSnapshot:
        """The rate-limit headers' view of the limit of `need` (requests or tokens) given
        its counter's `allowance`: what the fleet had left when this replica last heard
        from the ledger, plus what this replica holds unused."""
        return RateSnapshot(
            limit=need.limit,
            remaining=max(0.0, need.limit - allowance.committed) + allowance.unused,
            reset_at=allowance.window_end,
        )

    def _with_rates(self, refused: Refused, needs: list[_Need], now: float) -> Refused:
        """`refused` (of one of `needs`) with the tightest requests and tokens limits of
        `needs` for its rate-limit headers, as `_take` gives an admitted request's (nothing
        was taken: `remaining` is before this request); the limit it hit keeps `remaining`
        0. From this replica's allowances only: a refusal makes no round trip to the
        ledger, so a limit it holds nothing of in the current window is left out."""
        for need in needs:
            # The kind refused shows the limit that refused, even if another level's
            # allowance reads lower (overrun by requests that used more than reserved).
            if need.kind not in ("requests", "tokens") or need.kind == refused.kind:
                continue
            allowance = self._allowances.get(need.counter)
            if allowance is None or not self._valid(allowance, need, now):
                continue
            snapshot = self._snapshot(need, allowance)
            current = getattr(refused, need.kind)
            if current is None or snapshot.remaining < current.remaining:
                setattr(refused, need.kind, snapshot)
        return refused

    def _exhausted_refusal(self, need: _Need, now: float) -> Refused | None:
        seen = self._exhausted.get(need.counter)
        if seen is None:
            return None
        until, grant = seen
        window_over = (
            need.period_start is not None and need.period_start != grant.window_start
        ) or (grant.window_end is not None and now >= grant.window_end)
        # The ledger found the counter too low for an earlier need; a smaller one that
        # fits what it had left is asked for again, not refused on the earlier's account.
        if time.monotonic() >= until or window_over or need.amount <= self._left(need, grant):
            del self._exhausted[need.counter]
            return None
        return self._refusal(need, now, grant)

    def _left(self, need: _Need, grant: Grant) -> float:
        """What the counter of `need` had left when `grant` was answered: the limit less
        what was committed fleet-wide, plus what this replica holds unused."""
        allowance = self._allowances.get(need.counter)
        unused = (
            allowance.unused
            if allowance is not None and allowance.window_start == grant.window_start
            else 0.0
        )
        return max(0.0, need.limit - grant.committed) + unused

    def _unflushed(self, counter: tuple[str, str], window_start: float) -> float:
        """What this replica's requests used of `counter` in the window starting at
        `window_start` and settled, not yet written to the ledger (`flush`)."""
        return sum(
            change.amount
            for change in self._settlements
            if (change.scope, change.kind) == counter and change.window_start == window_start
        )

    def _refusal(self, need: _Need, now: float, grant: Grant | None) -> Refused:
        REFUSED.labels(need.level.level, need.kind).inc()
        reset_at = None
        if need.kind in ("requests", "tokens"):
            reset_at = grant.window_end if grant is not None else now + WINDOW_S
        elif need.kind == "spend":
            reset_at = need.period_end
        left = self._left(need, grant) if need.kind == "spend" and grant is not None else None
        spent = None
        if need.kind == "spend" and grant is not None:
            # The ledger's spend lacks what this replica's requests settled since its last
            # flush: without it, a budget those used up reads as held by requests in
            # progress (and invites retries that cannot fit).
            spent = grant.spent + self._unflushed(need.counter, grant.window_start)
        return Refused(
            spent=spent,
            level=need.level.level,
            scope_id=need.level.scope_id,
            kind=need.kind,
            limit=need.limit,
            reset_at=reset_at,
            now=now,
            needed=need.amount,
            left=left,
            output=need.output,
        )

    async def _refill(self, missing: list[_Need]) -> None:
        """Ask the ledger for more of every missing counter (one round trip; requests
        that need a counter already being refilled wait for that refill).

        A refill that fails gives every request waiting on it its failure mode at once
        (`_store_down`), as it does the request that asked. While the store counts as
        down, a request follows its failure mode without asking or waiting, during the
        back-off (`STORE_BACKOFF_S`) and while a grant is on its way; after the back-off,
        with none on its way, its grant is the probe."""
        if self._down_until and (self._granting or time.monotonic() < self._down_until):
            self._store_down(missing)
            return
        waits: list[tuple[asyncio.Future[LedgerUnavailable | None], _Need]] = []
        asks: list[_Need] = []
        for need in missing:
            running = self._refills.get(need.counter)
            if running is not None:
                waits.append((running, need))
            elif need.counter not in {ask.counter for ask in asks}:
                asks.append(need)
        failed: list[_Need] = []
        if asks:
            future: asyncio.Future[LedgerUnavailable | None] = (
                asyncio.get_running_loop().create_future()
            )
            asked = {need.counter for need in asks}
            for need in asks:
                self._refills[need.counter] = future
            error: LedgerUnavailable | None = None
            self._granting += 1
            try:
                await self._grant(asks)
            except LedgerUnavailable as exc:
                error = exc
                failed = [need for need in missing if need.counter in asked]
                if not self._down_until:  # once an outage, not once per probe
                    log.warning(
                        "limit store unavailable", error=repr(exc), backoff_s=self.store_backoff_s
                    )
                self._down_until = time.monotonic() + self.store_backoff_s
            else:
                if self._down_until:
                    log.info("limit store answers again")
                self._down_until = 0.0
            finally:
                self._granting -= 1
                for need in asks:
                    self._refills.pop(need.counter, None)
                # Cancelled or failed otherwise: None, and the waiting requests ask again.
                future.set_result(error)
        for running, need in waits:
            if await asyncio.shield(running) is not None:
                failed.append(need)
        if failed:
            self._store_down(failed)

    async def _grant(self, asks: list[_Need]) -> None:
        requests = []
        now = self._clock()
        for need in asks:
            allowance = self._allowances.get(need.counter)
            # What this replica holds of the current window; below zero when requests used
            # more than it held and the ledger has not been told yet (`flush`): the grant
            # then covers that overrun as well as the need, even a need of nothing.
            have = (
                allowance.unused
                if allowance is not None and self._valid(allowance, need, now)
                else 0.0
            )
            want_min = max(need.amount - have, 0.0) or need.amount
            target = max(want_min, min(need.limit * LEASE_SHARE, need.amount * LEASE_REQUESTS))
            demand = max(want_min, self._demand.get(need.counter, 0.0) - have)
            if need.kind in WHOLE_KINDS:
                want_min, target, demand = (
                    math.ceil(want_min),
                    math.ceil(target),
                    math.ceil(demand),
                )
            requests.append(
                GrantRequest(
                    scope=need.counter[0],
                    kind=need.kind,
                    limit=need.limit,
                    want_min=want_min,
                    want_max=target,
                    demand=demand,
                    window_s=need.window_s,
                    period_start=need.period_start,
                    period_end=need.period_end,
                )
            )
        started = time.perf_counter()
        try:
            grants = await self.ledger.grant(self.replica, requests)
        finally:
            GRANTS.observe(time.perf_counter() - started)
        touched = time.monotonic()
        for need, grant in zip(asks, grants, strict=True):
            allowance = self._allowances.get(need.counter)
            if allowance is None or allowance.window_start != grant.window_start:
                allowance = _Allowance(
                    grant.window_start, grant.window_end, 0.0, need.limit, 0.0, touched
                )
                self._allowances[need.counter] = allowance
            allowance.unused += grant.amount
            allowance.window_end = grant.window_end
            allowance.limit = need.limit
            allowance.committed = grant.committed
            allowance.touched = touched
            if grant.amount <= 0:
                self._exhausted[need.counter] = (touched + EXHAUSTED_S, grant)
                if allowance.unused > 0:
                    # Less than a request needs: give it back for replicas that can use it.
                    self._give_back(need.counter, allowance)

    def _give_back(self, counter: tuple[str, str], allowance: _Allowance) -> None:
        change = LeaseChange(counter[0], counter[1], allowance.window_start, allowance.unused)  # type: ignore[arg-type]
        allowance.unused = 0.0
        self._release_later(change)

    def _release_later(self, change: LeaseChange) -> None:
        """Give `change` back to the ledger in the background (not retried if it fails:
        the allowance stays counted until its window ends or the replica is reaped)."""

        async def release() -> None:
            with contextlib.suppress(LedgerUnavailable):
                await self.ledger.release(self.replica, [change])

        task = asyncio.ensure_future(release())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _store_down(self, needs: list[_Need]) -> None:
        """The store could not grant `needs` (of one request): APIError 503 if any of them
        fails closed, else each is admitted uncounted (counted by `STORE_FAILURES`; the
        outage is logged once, by `_refill`, not once per request)."""
        closed = [need for need in needs if need.failure_mode == FailureMode.CLOSED]
        if closed:
            STORE_FAILURES.labels("refused").inc()
            raise APIError(
                503,
                "Budgets and rate limits cannot be checked right now; retry shortly.",
                code="limits_unavailable",
                headers={"Retry-After": "1"},
            )
        STORE_FAILURES.labels("admitted_uncounted").inc()
        for need in needs:
            need.uncounted = True

    def _undo(self, ticket: Ticket) -> None:
        ticket.settled = True
        if ticket.request_id is not None:
            self._pending.pop(ticket.request_id, None)
        for reservation in ticket.reservations:
            allowance = self._allowances.get((reservation.scope, reservation.kind))
            if allowance is not None and allowance.window_start == reservation.window_start:
                allowance.unused += reservation.amount

    # -- settling --------------------------------------------------------------------

    def settles(self, request_id: str) -> bool:
        """Whether a request of this replica waits for its usage (the key of its
        `usage.recorded`, and of its terminal reply) to settle its reservations."""
        return request_id in self._pending

    def on_usage(self, event: UsageRecorded) -> None:
        """Settle the reservations of one of this replica's requests with its real usage:
        tokens and cost to the ledger, the unused rest back to this replica's allowance.
        The usage of another run of a request settled already (a new usage event id) is
        added to the spend of the counters it settled (`_settle_late`); the same usage
        event again (read from the reply and from the usage topic, or republished) is
        not."""
        pending = self._pending.get(event.request_id) or self._expired.get(event.request_id)
        if pending is not None and not _of_tenant(pending.tenant, event):
            return
        ticket = self._pending.pop(event.request_id, None)
        if ticket is None or ticket.settled:
            # A ticket that expired waiting still holds its tokens and spend: settled now.
            ticket = self._expired.pop(event.request_id, None)
            if ticket is None:
                self._settle_late(event)
                return
        self._settle(ticket, _used(event))
        self._remember_settled(ticket, (event.id,))

    def _remember_settled(self, ticket: Ticket, usage_ids: tuple[str, ...]) -> None:
        """Keep what a later run of `ticket`'s request needs to be counted (bounded)."""
        if self.settled_remembered <= 0 or ticket.request_id is None:
            return
        counted = tuple(
            (reservation.scope, reservation.kind, reservation.window_start)
            for reservation in ticket.reservations
            if reservation.kind in ("tokens", "spend")
        )
        if not counted:
            return
        self._settled[ticket.request_id] = (usage_ids, counted, ticket.tenant)
        self._settled.move_to_end(ticket.request_id)
        while len(self._settled) > self.settled_remembered:
            self._settled.popitem(last=False)

    def _settle_late(self, event: UsageRecorded) -> None:
        """Count the usage of a run of a request settled before (its tokens and cost
        committed as used at once: there is no reservation left to take them from);
        nothing for a request this replica did not admit or no longer remembers."""
        remembered = self._settled.get(event.request_id)
        if remembered is None:
            return
        usage_ids, counted, tenant = remembered
        if event.id in usage_ids or not _of_tenant(tenant, event):
            return
        self._settled[event.request_id] = ((*usage_ids, event.id), counted, tenant)
        used = _used(event)
        for scope, kind, window_start in counted:
            spent = used[kind]
            if spent > 0:
                # All of it an overrun: the ledger commits it, and no lease is touched.
                self._settlements.append(LeaseChange(scope, kind, window_start, spent, spent))
        LATE_USAGE.inc()
        log.info(
            "usage of another run of a settled request counted",
            request_id=event.request_id,
            tokens=used["tokens"],
            cost_usd=used["spend"],
        )
        if len(self._settlements) >= 500:
            self._wake.set()

    def _settle(self, ticket: Ticket, used: dict[str, float]) -> None:
        """Settle `ticket` with what it used, by kind (`tokens`, `spend`, `parallel`)."""
        ticket.settled = True
        if ticket.request_id is not None:
            self._pending.pop(ticket.request_id, None)
        for reservation in ticket.reservations:
            spent = used[reservation.kind]
            counter = (reservation.scope, reservation.kind)
            allowance = self._allowances.get(counter)
            overrun = 0.0
            if allowance is None:
                # Dropped while the request ran (its level's limits changed): the ledger
                # still counts the reservation in this replica's lease. What the request
                # used beyond it is committed with the settlement; what it left is given
                # back.
                overrun = max(0.0, spent - reservation.amount)
                if reservation.amount > spent:
                    self._release_later(
                        LeaseChange(
                            reservation.scope,
                            reservation.kind,
                            reservation.window_start,
                            reservation.amount - spent,
                        )
                    )
            elif allowance.window_start == reservation.window_start:
                # Below zero when the request used more than this replica held: see `flush`.
                allowance.unused += reservation.amount - spent
                # Capacity came back: the counter may no longer be exhausted.
                self._exhausted.pop(counter, None)
            if spent > 0:
                self._settlements.append(
                    LeaseChange(
                        reservation.scope,
                        reservation.kind,
                        reservation.window_start,
                        spent,
                        overrun,
                    )
                )
        if len(self._settlements) >= 500:
            self._wake.set()

    async def on_reply_usage(self, event: Event) -> None:
        """Bus handler of the usage event a terminal reply carries (its `usage` header):
        settles the request with it; any other event there is logged and ignored."""
        if isinstance(event, UsageRecorded):
            self.on_usage(event)
        else:
            log.warning("a reply carried an event that is no usage event", type=event.type)

    async def on_event(self, event: Event) -> None:
        """Bus listener of the usage topic (settlements) and the auth events topic (limit
        changes)."""
        if isinstance(event, UsageRecorded):
            self.on_usage(event)
        elif isinstance(event, LimitsChanged):
            await self.limits_changed(event.data.scope, event.data.scope_id)

    async def limits_changed(self, level: str, scope_id: str) -> None:
        """A level's limits changed: forget its policy, give back what this replica
        holds of it, so the new limit governs the next request on every replica."""
        self.policies.invalidate(level, scope_id)
        prefix = scope_key(level, scope_id)
        returned = []
        for counter, allowance in list(self._allowances.items()):
            if counter[0] != prefix:
                continue
            self._exhausted.pop(counter, None)
            if allowance.unused > 0:
                returned.append(
                    LeaseChange(counter[0], counter[1], allowance.window_start, allowance.unused)  # type: ignore[arg-type]
                )
            elif allowance.unused < 0:
                # Used beyond what it held: committed with the next settlements (`flush`).
                self._settlements.append(
                    LeaseChange(
                        counter[0],
                        counter[1],  # type: ignore[arg-type]
                        allowance.window_start,
                        0.0,
                        -allowance.unused,
                    )
                )
            del self._allowances[counter]
        for counter in [c for c in self._exhausted if c[0] == prefix]:
            del self._exhausted[counter]
        if returned:
            with contextlib.suppress(LedgerUnavailable):
                await self.ledger.release(self.replica, returned)

    # -- housekeeping ----------------------------------------------------------------

    async def start(self) -> None:
        """Start the background task that heartbeats, flushes settlements and reaps dead
        replicas."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="governance")

    async def stop(self) -> None:
        """Stop the background task, settle what is pending and return every lease to the ledger
        (a ledger that cannot be reached is skipped)."""
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        with contextlib.suppress(LedgerUnavailable):
            await self.flush()
            await self.release_idle(everything=True)

    async def flush(self) -> None:
        """Write pending settlements to the ledger (kept for the next try if it fails).

        With them go the overruns: what requests used beyond everything this replica held
        of a counter (its allowance below zero). Until then this replica's next grant
        covers an overrun (its allowance counts against what it asks for); the ledger then
        counts it as committed, so no replica is granted it, even when this one never asks
        again (both ledgers sum a batch per counter: an overrun adds to what the replica
        holds before the usage takes it off)."""
        overruns = []
        for (scope, kind), allowance in self._allowances.items():
            if allowance.unused < 0:
                overruns.append(
                    LeaseChange(scope, kind, allowance.window_start, 0.0, -allowance.unused)  # type: ignore[arg-type]
                )
                allowance.unused = 0.0
        # Writes another flush (the background one) took its batch for and has not
        # finished: waited for too, so that a caller reading the ledger right after this
        # (`GET /v1/spend`) sees every settlement made before it.
        earlier = [write for write in self._writes if not write.done()]
        if self._settlements or overruns:
            batch, self._settlements = overruns + self._settlements, []
            write = asyncio.ensure_future(self.ledger.settle(self.replica, batch))
            self._writes.add(write)
            write.add_done_callback(self._writes.discard)
            try:
                # Shielded: stopping the background task while a settlement is on its way
                # must not lose it (the write goes on; trying it again could count it twice).
                await asyncio.shield(write)
            except LedgerUnavailable:
                self._settlements = batch + self._settlements
                raise
        if earlier:
            # Their failures are their own flush's to handle (it keeps the batch).
            await asyncio.shield(asyncio.gather(*earlier, return_exceptions=True))

    async def release_idle(self, *, everything: bool = False) -> None:
        """Give back allowance this replica has not used for `lease_idle_s`, and forget
        allowance of windows that have ended."""
        now = self._clock()
        idle_before = time.monotonic() - self.lease_idle_s
        returned = []
        for counter, allowance in list(self._allowances.items()):
            if allowance.window_end is not None and allowance.window_end <= now:
                del self._allowances[counter]
                continue
            if allowance.unused > 0 and (everything or allowance.touched < idle_before):
                returned.append(
                    LeaseChange(counter[0], counter[1], allowance.window_start, allowance.unused)  # type: ignore[arg-type]
                )
                allowance.unused = 0.0
        if returned:
            await self.ledger.release(self.replica, returned)
        # Tickets whose usage never came (their request expired): free parallel slots.
        monotonic = time.monotonic()
        for request_id, ticket in list(self._pending.items()):
            if ticket.expires_at and ticket.expires_at < monotonic:
                del self._pending[request_id]
                ticket.settled = True
                for reservation in ticket.reservations:
                    held = self._allowances.get((reservation.scope, reservation.kind))
                    if (
                        reservation.kind == "parallel"
                        and held is not None
                        and held.window_start == reservation.window_start
                    ):
                        held.unused += reservation.amount
                # Its usage may still come (a replica that stalled): settled then, without
                # the parallel slot given back here.
                ticket.reservations = [r for r in ticket.reservations if r.kind != "parallel"]
                if self.settled_remembered > 0 and ticket.reservations:
                    self._expired[request_id] = ticket
                    while len(self._expired) > self.settled_remembered:
                        self._expired.popitem(last=False)

    async def _run(self) -> None:
        last_heartbeat = last_reap = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.1):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
                await self.release_idle()
                now = time.monotonic()
                if now - last_heartbeat >= self.heartbeat_s:
                    last_heartbeat = now
                    await self.ledger.heartbeat(self.replica)
                if now - last_reap >= self.heartbeat_s * 5:
                    last_reap = now
                    reaped = await self.ledger.reap(self.reap_after_s)
                    if reaped:
                        log.info("leases of silent replicas returned", replicas=reaped)
            except LedgerUnavailable as exc:
                log.warning("limit store unavailable for housekeeping", error=repr(exc))
                await asyncio.sleep(0.5)
            except Exception as exc:  # noqa: BLE001 - never let housekeeping die
                log.error("governance housekeeping failed", error=repr(exc))
                await asyncio.sleep(0.5)
