"""Job webhooks: once a job that asked for one reaches a terminal state, history POSTs the
job (status, result or error, usage) to its `webhook_url`, signed with the tenant's
secret, and retries with exponential backoff until the receiver answers 2xx or the
attempts run out.

What a receiver gets:

    POST <webhook_url>
    Content-Type: application/json
    Switchyard-Webhook-Id: whd_<job id>         (the same for every retry: deduplicate on it)
    Switchyard-Event: job.completed             (or job.failed, job.cancelled, job.expired)
    Switchyard-Timestamp: 1735689600            (Unix seconds when this attempt was signed)
    Switchyard-Signature: v1=<hex>              (HMAC-SHA256 of "<timestamp>.<raw body>")

    {"id": "whd_...", "type": "job.completed", "created_at": "...Z", "data": {<job>}}

`data` is the job as `GET /v1/jobs/{id}` shows it, with who created it (`user_id`,
`api_key_id`, `team_id`: null where it has none) and `webhook` holding only the `url`
this delivery was made for.

To verify: recompute the HMAC over the timestamp, a dot and the raw body bytes with the
tenant's secret (`GET /v1/history/settings` as a tenant admin, or
`switchyard tenant-settings show`), compare in constant time, and refuse timestamps more
than five minutes from your clock (replayed requests) and ids already processed.
`verify_signature` below does exactly that.

Targets are checked by `switchyard.common.egress`: only public addresses (plus the
networks in `SWITCHYARD_WEBHOOK_ALLOWED_NETWORKS`), resolved once per connection and
connected to as checked; redirects are not followed. A malformed or refused URL fails the
delivery at once; what the job's owner sees of a failure is its kind (`receiver answered
500`, `timed out`, `could not connect`), never what the receiver sent.

One outcome can still change after it was delivered: history's own expiry (the sweeper's,
`job.expired`) stands only until a real outcome arrives, which replaces it. The webhook then
starts again and delivers the real outcome (`job.completed`, say) under the id
`whd_<job id>.1`, which supersedes `whd_<job id>` (an attempt of the expiry already in
flight may still land after it: the revision after the dot, not the arrival order, says
which is final). A job whose expiry no attempt had reached yet gets only its real outcome,
under `whd_<job id>`. An outcome recorded before its request (a reply overtaking it, a
cancellation recorded first) is delivered as soon as the request is.

Deliveries are claimed with a lease (`FOR UPDATE SKIP LOCKED` on PostgreSQL), so several
history replicas share the work and a replica dying mid-delivery only delays it: the
delivery is at least once.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import structlog
from prometheus_client import Counter
from sqlalchemy import and_, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.common import exactjson
from switchyard.common.backoff import Backoff, poll_delay
from switchyard.common.egress import (
    GuardedTransport,
    InvalidTargetURL,
    RefusedDestination,
    TargetPolicy,
    UnresolvableDestination,
    check_target_url,
)
from switchyard.common.tasks import cancel_and_wait
from switchyard.history.jobs import job_object
from switchyard.history.models import (
    RequestStatus,
    WebhookStatus,
    requests_table,
    webhooks_table,
)
from switchyard.history.queries import AnySelect
from switchyard.history.tenants import TenantSettingsStore
from switchyard.history.timeparse import isoformat_z

log = structlog.get_logger("switchyard.history.webhooks")

SIGNATURE_HEADER = "Switchyard-Signature"
TIMESTAMP_HEADER = "Switchyard-Timestamp"
ID_HEADER = "Switchyard-Webhook-Id"
EVENT_HEADER = "Switchyard-Event"
DEFAULT_TOLERANCE_S = 300

# Seconds an idle connection to a receiver is kept for the next delivery: under the
# shortest idle timeout common servers close one after (gunicorn's 2 s; uvicorn's and
# Node's 5 s). At httpx's 5 s, a delivery sent on a connection the receiver was closing
# failed as an attempt, delivered only after the backoff.
WEBHOOK_KEEPALIVE_S = 1.5
WEBHOOK_LIMITS = httpx.Limits(
    max_connections=100, max_keepalive_connections=20, keepalive_expiry=WEBHOOK_KEEPALIVE_S
)

DELIVERIES = Counter(
    "switchyard_history_webhook_attempts_total",
    "Webhook delivery attempts, by outcome (delivered, retry, failed).",
    ["outcome"],
)


# A webhook row is its job's only when both name the same tenant: a request naming another
# tenant than its row's gets none (`EventRecorder._write_webhooks`), and a row registered
# before that rule must not have another tenant's job POSTed to its address.
_of_its_job = and_(
    webhooks_table.c.request_id == requests_table.c.request_id,
    webhooks_table.c.tenant == requests_table.c.tenant,
)


# The creator of a job, as its request row names them, in every delivery's `data`.
CREATOR_FIELDS = ("user_id", "api_key_id", "team_id")


def delivery_id_of(request_id: str, revision: int) -> str:
    """The `Switchyard-Webhook-Id` of a job's webhook: `whd_<job id>`, the same for every
    attempt; once the job's outcome changed after it may have been delivered (history's
    expiry replaced by the real outcome), `whd_<job id>.<revision>`, so a receiver that
    deduplicates on ids takes the new outcome."""
    return f"whd_{request_id}" if not revision else f"whd_{request_id}.{revision}"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The `Switchyard-Signature` value for a webhook: `v1=` and the hex HMAC-SHA256, keyed with
    `secret`, of `{timestamp}.` (Unix seconds) followed by the body bytes."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "v1=" + digest.hexdigest()


class SignatureError(ValueError):
    """A webhook whose signature headers are missing, stale or do not match."""

    pass


def verify_signature(
    secret: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> None:
    """Raise SignatureError unless `body` and `headers` are a fresh webhook signed with
    `secret`. (Receivers must also refuse a `Switchyard-Webhook-Id` they already handled.)"""
    lowered = {name.lower(): value for name, value in headers.items()}
    try:
        timestamp = int(lowered[TIMESTAMP_HEADER.lower()])
        signature = lowered[SIGNATURE_HEADER.lower()]
    except (KeyError, ValueError):
        raise SignatureError("missing or malformed signature headers") from None
    if abs((now if now is not None else time.time()) - timestamp) > tolerance_s:
        raise SignatureError("timestamp outside the tolerance: possibly a replay")
    if not hmac.compare_digest(sign(secret, timestamp, body), signature):
        raise SignatureError("signature does not match")


# Beyond an attempt's timeout, what a lease leaves for writing the attempt's outcome.
LEASE_MARGIN_S = 30.0


@dataclass(frozen=True)
class WebhookPolicy:
    """How job webhooks are delivered: attempts, backoff and timeout (seconds), the lease a
    replica holds on a delivery (seconds), concurrency limits and the allowed targets."""

    max_attempts: int = 10
    initial_backoff_s: float = 1.0
    max_backoff_s: float = 600.0
    timeout_s: float = 10.0
    lease_s: float = 60.0
    # Deliveries in flight at once on this replica, and at most this many per tenant, so
    # one tenant's slow or failing receivers never hold up another tenant's webhooks.
    max_concurrency: int = 32
    max_per_tenant: int = 4
    targets: TargetPolicy = field(default_factory=TargetPolicy)

    def lease(self) -> float:
        """How long (seconds) a claimed delivery is left to its replica before another may
        take it: `lease_s`, or longer when an attempt may last longer (a timeout of
        minutes), so that a receiver still answering is never sent the webhook again."""
        return max(self.lease_s, self.timeout_s + LEASE_MARGIN_S)

    def backoff(self, attempts: int) -> float:
        """The wait (seconds) before the next delivery after `attempts` failed ones: the
        common `Backoff` policy (full jitter, capped at `max_backoff_s`)."""
        return Backoff(self.initial_backoff_s, self.max_backoff_s).delay(attempts)


def describe_failure(exc: BaseException) -> str:
    """What a job's owner is told about a failed attempt: the kind of failure only, never
    what the receiver (or something that is not one) said."""
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return "timed out"
    if isinstance(exc, httpx.ConnectError):
        return "could not connect"
    if isinstance(exc, UnresolvableDestination):
        return "could not resolve the host"
    return "the connection failed"


class WebhookDispatcher:
    """Delivers job webhooks: POSTs each finished job, signed with its tenant's secret, retrying
    with backoff until delivered or out of attempts."""

    def __init__(
        self,
        engine: AsyncEngine,
        tenants: TenantSettingsStore,
        policy: WebhookPolicy,
        *,
        http: httpx.AsyncClient | None = None,
        batch: int = 20,
    ) -> None:
        self._engine = engine
        self._dialect = engine.dialect.name
        self._tenants = tenants
        self._policy = policy
        self._http = http
        self._batch = batch
        self._in_flight: dict[str, int] = {}  # tenant -> deliveries in flight
        self._tasks: set[asyncio.Task[None]] = set()

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            # Connects only to addresses the policy allows, resolved once per connection;
            # redirects are never followed (a 3xx is a failed attempt).
            self._http = httpx.AsyncClient(
                transport=GuardedTransport(self._policy.targets, limits=WEBHOOK_LIMITS),
                follow_redirects=False,
                trust_env=False,
            )
        return self._http

    async def run(self, interval_s: float) -> None:
        """Deliver due webhooks until cancelled. Each delivery runs on its own (bounded
        overall by the attempt timeout), so a slow receiver holds one slot, not the loop."""
        owns_client = self._http is None
        failures = 0
        try:
            while True:
                try:
                    started = await self._start_due()
                    failures = 0
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - e.g. the database is down: retried
                    failures += 1
                    if failures == 1 or failures % 10 == 0:
                        log.warning("webhook delivery round failed", error=repr(exc))
                    started = 0
                if started == 0:
                    # Back off while the database is away; poll at the interval otherwise.
                    await asyncio.sleep(poll_delay(interval_s, failures))
                else:
                    await asyncio.sleep(0)
        finally:
            if self._tasks:
                await asyncio.gather(*(cancel_and_wait(task) for task in list(self._tasks)))
            if owns_client and self._http is not None:
                await self._http.aclose()
                self._http = None

    async def _start_due(self) -> int:
        free = self._policy.max_concurrency - len(self._tasks)
        if free <= 0:
            return 0
        claimed = await self._claim(min(free, self._batch))
        for row in claimed:
            tenant = row["tenant"]
            self._in_flight[tenant] = self._in_flight.get(tenant, 0) + 1
            task = asyncio.create_task(self._attempt(row))
            self._tasks.add(task)
            task.add_done_callback(functools.partial(self._finished, tenant=tenant))
        return len(claimed)

    def _finished(self, task: asyncio.Task[None], tenant: str) -> None:
        self._tasks.discard(task)
        left = self._in_flight.get(tenant, 1) - 1
        if left > 0:
            self._in_flight[tenant] = left
        else:
            self._in_flight.pop(tenant, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("webhook attempt crashed", error=repr(task.exception()))

    async def deliver_due(self) -> int:
        """Claim the webhooks that are due and attempt each once; returns how many."""
        claimed = await self._claim()
        if claimed:
            await asyncio.gather(*(self._attempt(row) for row in claimed))
        return len(claimed)

    def _due(
        self, now: datetime, counts: dict[str, int], limit: int, *, ranked: bool = False
    ) -> AnySelect:
        """The ids and tenants of due webhooks, oldest first, at most `limit`, of tenants
        under their cap by `counts`; `ranked`: at most each tenant's `max_per_tenant`
        oldest (a window over every due row: only when a tenant overflowed)."""
        w, r = webhooks_table.c, requests_table.c
        capped = [
            tenant for tenant, count in counts.items() if count >= self._policy.max_per_tenant
        ]
        conditions = [
            w.status == WebhookStatus.PENDING.value,
            w.next_attempt_at <= now,
            r.status != RequestStatus.PENDING.value,
            *([w.tenant.not_in(capped)] if capped else []),
        ]
        if not ranked:
            return (
                select(w.request_id, w.tenant)
                .join_from(webhooks_table, requests_table, _of_its_job)
                .where(*conditions)
                .order_by(w.next_attempt_at)
                .limit(limit)
            )
        due_rows = (
            select(
                w.request_id,
                w.tenant,
                w.next_attempt_at,
                func.row_number()
                .over(partition_by=w.tenant, order_by=w.next_attempt_at)
                .label("place"),
            )
            .join_from(webhooks_table, requests_table, _of_its_job)
            .where(*conditions)
            .subquery()
        )
        return (
            select(due_rows.c.request_id, due_rows.c.tenant)
            .where(due_rows.c.place <= self._policy.max_per_tenant)
            .order_by(due_rows.c.next_attempt_at)
            .limit(limit)
        )

    async def _choose(
        self, candidates: AnySelect, counts: dict[str, int], chosen: list[str], limit: int
    ) -> bool:
        """Add to `chosen` (up to `limit`) the `candidates` whose tenant is under its cap by
        `counts`, counting them in; whether any was passed over for its tenant's cap."""
        async with self._engine.connect() as connection:
            found = (await connection.execute(candidates)).all()
        overflowed = False
        for request_id, tenant in found:
            if request_id in chosen:
                continue
            if counts.get(tenant, 0) >= self._policy.max_per_tenant:
                overflowed = True
                continue
            if len(chosen) == limit:
                break
            counts[tenant] = counts.get(tenant, 0) + 1
            chosen.append(request_id)
        return overflowed

    async def _claim(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Lease up to `limit` due webhooks, at most `max_per_tenant` in flight per tenant
        (counting the ones already running here), for `lease()` seconds."""
        limit = limit or self._batch
        now = datetime.now(UTC)
        w = webhooks_table.c
        counts = dict(self._in_flight)
        chosen: list[str] = []
        # The oldest due webhooks first (an index range scan), leaving out tenants at their
        # cap here: a tenant with thousands due to a receiver that never answers would
        # otherwise fill every candidate row, and the cap leave nothing for anybody.
        overflowed = await self._choose(self._due(now, counts, limit * 4), counts, chosen, limit)
        if overflowed and len(chosen) < limit:
            # A tenant had more due than its cap among them (a backlog to a receiver that
            # answers): each other tenant's oldest, ranked, so none waits behind it.
            await self._choose(
                self._due(now, counts, limit * 4, ranked=True), counts, chosen, limit
            )
        if not chosen:
            return []
        due = select(w.request_id).where(
            w.request_id.in_(chosen),
            w.status == WebhookStatus.PENDING.value,
            w.next_attempt_at <= now,
        )
        if self._dialect == "postgresql":
            due = due.with_for_update(skip_locked=True)
        async with self._engine.begin() as connection:
            ids = list((await connection.execute(due)).scalars())
            if not ids:
                return []
            # Leased: another replica (or this one after a crash) retries after the lease.
            await connection.execute(
                update(webhooks_table)
                .where(w.request_id.in_(ids))
                .values(
                    attempts=w.attempts + 1,
                    last_attempt_at=now,
                    next_attempt_at=now + timedelta(seconds=self._policy.lease()),
                )
            )
            rows = (
                await connection.execute(
                    select(
                        requests_table,
                        w.url.label("webhook_url"),
                        w.status.label("webhook_status"),
                        w.attempts.label("webhook_attempts"),
                        w.delivered_at.label("webhook_delivered_at"),
                        w.last_error.label("webhook_last_error"),
                        w.revision.label("webhook_revision"),
                    )
                    .join_from(requests_table, webhooks_table, _of_its_job)
                    .where(w.request_id.in_(ids))
                )
            ).mappings()
            return [dict(row) for row in rows]

    async def _attempt(self, row: dict[str, Any]) -> None:
        status_code: int | None = None
        error: str | None = None
        final = False
        try:
            job = job_object(row)
            event_type = f"job.{job['status']}"
            delivery_id = delivery_id_of(row["request_id"], row["webhook_revision"])
            body = exactjson.dumps(
                {
                    "id": delivery_id,
                    "type": event_type,
                    "created_at": isoformat_z(datetime.now(UTC)),
                    # Who created the job, and the address this delivery was made for,
                    # signed with them: the secret is the tenant's, so any member may have
                    # a genuine delivery sent to any receiver; a receiver serving one team
                    # refuses another's, and one made for another address.
                    "data": {
                        **job,
                        **{name: row.get(name) for name in CREATOR_FIELDS},
                        "webhook": {"url": row["webhook_url"]},
                    },
                }
            )
            check_target_url(row["webhook_url"])
            secret = await self._tenants.webhook_secret(row["tenant"])
            timestamp = int(time.time())
            # The whole attempt is bounded, not only each read: a receiver trickling its
            # answer cannot hold the delivery slot past the timeout.
            async with asyncio.timeout(self._policy.timeout_s):
                response = await self._client().post(
                    row["webhook_url"],
                    content=body,
                    headers={
                        "Content-Type": "application/json",
                        "User-Agent": "Switchyard-Webhooks/1",
                        ID_HEADER: delivery_id,
                        EVENT_HEADER: event_type,
                        TIMESTAMP_HEADER: str(timestamp),
                        SIGNATURE_HEADER: sign(secret, timestamp, body),
                    },
                    timeout=self._policy.timeout_s,
                )
            status_code = response.status_code
            if not 200 <= status_code < 300:
                error = f"receiver answered {status_code}"
        except InvalidTargetURL as exc:
            error, final = f"invalid webhook_url: it {exc}", True
        except RefusedDestination:
            error = "refused destination: not a public address"
            final = True
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure is one failed attempt
            if not isinstance(exc, httpx.HTTPError | TimeoutError | UnresolvableDestination):
                log.warning("webhook attempt failed unexpectedly", error=repr(exc))
            error = describe_failure(exc)
        await self._settle(row, status_code, error, final=final)

    async def _settle(
        self,
        row: dict[str, Any],
        status_code: int | None,
        error: str | None,
        *,
        final: bool = False,
    ) -> None:
        now = datetime.now(UTC)
        attempts = row["webhook_attempts"]
        w = webhooks_table.c
        values: dict[str, Any] = {"last_status_code": status_code, "last_error": error}
        if error is None:
            outcome = "delivered"
            values.update(status=WebhookStatus.DELIVERED.value, delivered_at=now)
        elif final or attempts >= self._policy.max_attempts:
            outcome = "failed"
            values.update(status=WebhookStatus.FAILED.value)
        else:
            outcome = "retry"
            values.update(next_attempt_at=now + timedelta(seconds=self._policy.backoff(attempts)))
        DELIVERIES.labels(outcome).inc()
        log.info(
            "webhook attempt",
            request_id=row["request_id"],
            outcome=outcome,
            attempts=attempts,
            status_code=status_code,
            error=error,
        )
        try:
            async with self._engine.begin() as connection:
                await connection.execute(
                    update(webhooks_table)
                    .where(
                        w.request_id == row["request_id"],
                        w.status == WebhookStatus.PENDING.value,
                        # An attempt carrying an outcome since replaced settles nothing.
                        w.revision == row["webhook_revision"],
                    )
                    .values(values)
                )
        except Exception as exc:  # noqa: BLE001 - the lease runs out and it is tried again
            log.warning("could not record a webhook attempt", error=repr(exc))
