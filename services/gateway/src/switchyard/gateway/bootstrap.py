"""Composition root of the gateway: `build(settings, bus, *, adapters)` wires the bus,
the HTTP client to auth and history, the limit ledger and the routing table into the
`Gateway` the routes use. Each adapter defaults to the production one from `Settings`;
tests and embedded mode pass fakes here instead of reaching into the objects it builds.

The routing table comes from the same reloading source inference uses
(`switchyard.common.routing.RoutingSource`), polled by the app every
`routing_reload_interval_s`: after an edit of the routing file, `/v1/models`, the
unknown-model check and inference agree again within that interval, without a restart."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import structlog

from switchyard.common.bus import EventBus, Subscription
from switchyard.common.db import SCHEMA_BEHIND
from switchyard.common.egress import TargetPolicy, parse_networks
from switchyard.common.governance import BudgetClock
from switchyard.common.pricing import PriceError, PriceSource
from switchyard.common.routing import Deployment, RoutingSource, RoutingTable
from switchyard.common.sliding_window import SlidingWindowLimiter
from switchyard.common.topics import Topics
from switchyard.gateway.auth import Authenticator, revoked_key_retention_s
from switchyard.gateway.config import Settings, ledger_kind
from switchyard.gateway.governance.admission import Admission
from switchyard.gateway.governance.ledger import Ledger, LedgerUnavailable, MemoryLedger
from switchyard.gateway.governance.policy import PolicySource
from switchyard.gateway.internal_http import build_http_client
from switchyard.gateway.recent_jobs import RecentIds, RecentJobs
from switchyard.gateway.replies import PendingReplies
from switchyard.gateway.request_id import RequestIds
from switchyard.gateway.revocations import (
    REVOKED_MESSAGES,
    REVOKING_EVENTS,
    RevocationState,
    RevocationSync,
)

if TYPE_CHECKING:
    from switchyard.common.events import Event
    from switchyard.gateway.auth import Principal
    from switchyard.gateway.cache import ResponseCache
    from switchyard.gateway.dispatch import Dispatch

log = structlog.get_logger("switchyard.gateway")

# How long readiness waits for the limit store: within `/readyz`'s own bound, so a store
# that does not answer reads as down (ready: the limits' failure modes handle it), never
# as a failed check.
LIMIT_STORE_PROBE_TIMEOUT_S = 1.5


@dataclass
class Gateway:
    """Everything one gateway replica holds, as `build` wires it: settings, bus, HTTP
    client, authenticator, admission, routing, pending replies, cache and the listeners the
    lifespan starts. Route handlers reach it at `app.state.gateway`."""

    settings: Settings
    bus: EventBus
    topics: Topics
    authenticator: Authenticator
    # The current routing table, reloaded when its file changes (read `routing`).
    routing_source: RoutingSource
    http: httpx.AsyncClient
    pending: PendingReplies = field(default_factory=PendingReplies)
    reply_partition: int = 0
    replies_listener: Subscription | None = None
    in_flight: int = 0
    # Fire-and-forget tasks (e.g. cancellations) kept referenced until they finish.
    background: set[asyncio.Future[Any]] = field(default_factory=set)
    # Keeps the authenticator's revocation state current from the auth events topic.
    revocations: RevocationSync | None = None
    # Budgets and rate limits (governance/admission.py).
    admission: Admission | None = None
    # The price table admission reserves by, reloaded when its file changes (`watch_prices`),
    # as inference reloads the one it bills by.
    price_source: PriceSource | None = None
    governance_listeners: list[Subscription] = field(default_factory=list)
    # Where job webhooks may point (checked at POST /v1/jobs; history checks again).
    webhook_policy: TargetPolicy = field(default_factory=TargetPolicy)
    # Jobs accepted here lately, so cancelling one at once works (see recent_jobs.py).
    recent_jobs: RecentJobs = field(default_factory=RecentJobs)
    # Responses this replica relayed to their end lately: a GET right after waits for
    # history to record the outcome (api/responses.py).
    answered_responses: RecentIds = field(default_factory=RecentIds)
    # Reads waiting for history to record what they name, per "tenant/user"
    # (api/history.py `read_when_recorded`).
    waiting_reads: Counter[str] = field(default_factory=Counter)
    # The exact-match response cache (cache.py).
    cache: ResponseCache = field(init=False)
    # Recognises the request ids the gateways made (request_id.py).
    request_ids: RequestIds = field(init=False)
    # Set by `begin_drain`: ends the requests still held once the drain period is over.
    drain_timer: asyncio.TimerHandle | None = None

    def __post_init__(self) -> None:
        from switchyard.gateway.cache import ResponseCache

        self.cache = ResponseCache(self)
        self.request_ids = RequestIds(self.settings.request_id_key())

    @property
    def routing(self) -> RoutingTable:
        """The routing table as of now (one attribute read; a reload swaps it whole)."""
        return self.routing_source.table

    async def listening_for_replies(self) -> bool:
        """Readiness: True once this replica listens to its replies partition."""
        return self.replies_listener is not None

    async def revocations_loaded(self) -> bool:
        """Readiness: True once the revocation state has been loaded from auth."""
        return self.revocations is not None and await self.revocations.ready()

    def begin_drain(self) -> None:
        """The process was asked to stop (`switchyard.common.stopping`): the server takes no
        new connection and waits for the requests it holds. Those still waiting for their
        replies `shutdown_drain_s` from now are ended then (`end_held_requests`), so that
        wait ends before the orchestrator's kill would cut them silently. Call on the event
        loop; a second call changes nothing."""
        if self.drain_timer is not None:
            return
        drain_s = self.settings.shutdown_drain_s
        log.info("stopping: waiting for the requests held", held=len(self.pending), drain_s=drain_s)
        loop = asyncio.get_running_loop()
        self.drain_timer = loop.call_later(drain_s, self.end_held_requests)

    def end_held_requests(self) -> int:
        """End every request still waiting for its reply with 503 `gateway_shutting_down`
        (a JSON error, or a stream's error event, in its API's format). Inference still
        answers each and history records it. Returns how many were ended."""
        ended = self.pending.fail_all(
            503,
            "gateway_shutting_down",
            "The gateway answering this request is shutting down and could not wait for its "
            "end. The request still runs to its end and is recorded under its request id "
            "(GET /v1/history/{request_id}); a retry runs it again.",
        )
        if ended:
            log.warning("stopping: requests ended before their replies", ended=ended)
        return ended

    def end_revoked_requests(self, event: Event | None = None) -> None:
        """End every request still running whose caller is now refused (`event`, an auth
        event, applied to `authenticator.revocations`; None: after the snapshot loaded):
        403 `user_disabled` for a disabled user's, 403 `credentials_revoked` for a revoked
        API key's, access token's or sign-in's, as their jobs are cancelled (a JSON
        error, or a stream's error event after what it was given). Each is cancelled at
        inference, so a leaked key's streams stop spending at once instead of running to
        their end."""
        if event is not None and not isinstance(event, REVOKING_EVENTS):
            return
        ended = 0
        for code, message in REVOKED_MESSAGES.items():

            def refused(dispatch: Dispatch, code: str = code) -> bool:
                principal = dispatch.principal
                return (
                    principal is not None
                    and dispatch.may_be_ended()
                    and self.refusal_code(principal) == code
                )

            ended += self.pending.fail_where(refused, 403, code, message)
        if ended:
            log.warning("requests of revoked credentials ended", ended=ended)

    def refusal_code(self, principal: Principal) -> str | None:
        """Why `principal` is refused now (`RevocationState.refusal_code`): the code a
        request of theirs is ended with, or None."""
        return self.authenticator.revocations.refusal_code(
            user_id=principal.user_id,
            jti=principal.token_id,
            session_id=principal.session_id,
            api_key_id=principal.api_key_id,
        )

    async def limit_store_current(self) -> bool:
        """Readiness: False while the limit store's database lacks a table, column or
        function this version uses (its `switchyard db upgrade --service gateway` not run;
        logged as such), so a rollout stops at this replica instead of serving with no
        budget or rate limit counted. True otherwise, also while the store does not answer:
        each limit's `failure_mode` decides, request by request, what an outage means."""
        if self.admission is None:
            return True
        try:
            current = await self.admission.ledger.schema_current(LIMIT_STORE_PROBE_TIMEOUT_S)
        except LedgerUnavailable:
            return True
        if not current:
            log.error(SCHEMA_BEHIND, store="limit ledger (governance_*)")
        return current


def build(
    settings: Settings,
    bus: EventBus,
    *,
    http: httpx.AsyncClient | None = None,
    ledger: Ledger | None = None,
    budget_clock: BudgetClock | None = None,
) -> Gateway:
    """Wire the gateway from `settings` and the event `bus` (not started here; the app's
    lifespan starts what needs a running loop).

    Adapters, each `None` meaning the production one from `settings`:
    - `http`: the client for every call to auth (key lookups, JWKS, revocations, limit
      policies, admin proxying) and history; `build_http_client()` by default. The app
      closes it at shutdown, whoever made it.
    - `ledger`: the store behind fleet-wide limits; `build_ledger(settings)` by default.
    - `budget_clock`: where budget days start and end; `BudgetClock(settings.budget_day_s)`.

    Returns the `Gateway`. Raises `ValueError` for a malformed
    `webhook_allowed_networks`, and whatever `build_ledger` raises when the PostgreSQL
    ledger cannot be set up from `database_url`."""
    http = http if http is not None else build_http_client()
    authenticator = Authenticator(
        http,
        auth_url=settings.auth_url,
        internal_token=settings.internal_token,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        key_ttl_s=settings.api_key_cache_ttl_s,
        negative_ttl_s=settings.api_key_negative_cache_ttl_s,
        jwks_min_interval_s=settings.jwks_refresh_min_interval_s,
        leeway_s=settings.jwt_leeway_s,
        token_cache_size=settings.jwt_cache_size,
        lookup_concurrency=settings.api_key_lookup_concurrency,
        revocations=RevocationState(
            grace_s=settings.jwt_leeway_s,
            key_retention_s=revoked_key_retention_s(
                settings.api_key_cache_ttl_s, settings.auth_stale_if_error_s
            ),
        ),
        stale_if_error_s=settings.auth_stale_if_error_s,
        failed_lookups=(
            SlidingWindowLimiter(
                settings.api_key_failed_lookups_per_address,
                settings.api_key_failed_lookups_window_s,
            )
            if settings.api_key_failed_lookups_per_address > 0
            else None
        ),
    )
    topics = Topics(settings.topic_prefix)
    revocations = RevocationSync(
        bus,
        topics.auth_events,
        authenticator.revocations,
        authenticator.fetch_revocations,
        on_signing_key_rotated=authenticator.jwks.refresh,
    )
    gateway = Gateway(
        settings=settings,
        bus=bus,
        topics=topics,
        authenticator=authenticator,
        routing_source=RoutingSource(settings.routing_file, settings.simulator_url),
        http=http,
        revocations=revocations,
        pending=PendingReplies(settings.stream_max_buffered_events),
        webhook_policy=TargetPolicy(
            parse_networks(settings.webhook_allowed_networks), resolve_timeout_s=2.0
        ),
    )
    # After the authenticator's own hooks (its caches are purged first).
    authenticator.revocations.add_hook(gateway.end_revoked_requests)
    authenticator.revocations.add_loaded_hook(gateway.end_revoked_requests)
    gateway.price_source = PriceSource(settings.prices_file)
    gateway.admission = Admission(
        ledger=ledger if ledger is not None else build_ledger(settings),
        # Read through the gateway at each call, so a test that swaps `gateway.http`
        # after start-up swaps this one too.
        policies=PolicySource(
            lambda: gateway.http,
            auth_url=settings.auth_url,
            internal_token=settings.internal_token,
            ttl_s=settings.policy_cache_ttl_s,
            stale_if_error_s=settings.auth_stale_if_error_s,
            outage=authenticator.outage,
        ),
        prices=gateway.price_source.table,
        # Read at each request: the routing file is reloaded when it changes.
        deployments_of=lambda model: _route_deployments(gateway.routing, model),
        replica=settings.instance_id,
        budget_clock=budget_clock or BudgetClock(day_s=settings.budget_day_s),
        lease_idle_s=settings.governance_lease_idle_s,
        heartbeat_s=settings.governance_heartbeat_s,
        reap_after_s=settings.governance_reap_after_s,
        settled_remembered=settings.governance_settled_remembered,
        anthropic_default_max_tokens=settings.anthropic_default_max_tokens,
    )
    return gateway


async def watch_prices(gateway: Gateway, interval_s: float) -> None:
    """Reload the prices file every `interval_s` seconds when it changed, until cancelled,
    and give admission the new table: budgets and token limits reserve at the prices
    inference bills at (it reloads the same file). An invalid file is logged and the
    previous table kept."""
    source = gateway.price_source
    if source is None or not source.path or interval_s <= 0:
        return
    while True:
        await asyncio.sleep(interval_s)
        try:
            if source.reload_if_changed() and gateway.admission is not None:
                gateway.admission.prices = source.table
                log.info("price table reloaded", path=source.path)
        except PriceError as exc:
            log.error("price file not reloaded; keeping the previous table", error=str(exc))
        except Exception:  # noqa: BLE001 - a bug must not stop the watcher
            log.exception("price reload failed")


def _route_deployments(routing: RoutingTable, model: str) -> Sequence[Deployment]:
    """The deployments routing sends public model `model` to (none for an unknown one)."""
    route = routing.models.get(model)
    return route.deployments if route is not None else ()


def build_ledger(settings: Settings) -> Ledger:
    """The limit ledger `settings.governance_store` asks for: PostgreSQL (shared by the
    fleet), SQLite (shared by the processes of one machine, kept across restarts) or this
    process's memory (only when asked for); `auto` picks the kind of `database_url`.
    Raises ValueError (`config.ledger_kind`) for a URL the ledger cannot use; `Settings`
    already refused it."""
    store = ledger_kind(settings.governance_store, settings.database_url)
    if store == "postgres":
        from switchyard.gateway.governance.postgres import PostgresLedger

        return PostgresLedger.connect(
            settings.database_url, timeout_s=settings.governance_store_timeout_s
        )
    if store == "sqlite":
        from switchyard.gateway.governance.sqlite import SQLiteLedger

        return SQLiteLedger.connect(
            settings.database_url, timeout_s=settings.governance_store_timeout_s
        )
    return MemoryLedger()
