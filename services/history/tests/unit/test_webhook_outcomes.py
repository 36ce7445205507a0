"""A job's webhook agrees with the job's final outcome however that outcome arrives:
history's own expiry replaced by a late reply (before any attempt, after a delivery,
while retrying, after giving up, or while an attempt is on its way), an outcome recorded
before its request (a reply overtaking it, a cancellation recorded first), and a request
naming another tenant under the job's id, which must not have the job POSTed to it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy import insert, select

from switchyard.common.events import ChatRequested, Priority
from switchyard.history.handlers import EventRecorder
from switchyard.history.jobs import cancellation_event
from switchyard.history.models import webhooks_table
from switchyard.history.queries import Caller
from switchyard.history.tenants import TenantSettingsStore
from switchyard.history.webhooks import WebhookDispatcher, WebhookPolicy

HOOK = "https://hooks.example.com/switchyard"
ALICE = Caller(tenant="acme", user_id="alice", role="user")


@dataclass
class Receiver:
    """Answers each delivery with the next of `answers` (204 once they run out) and keeps
    what it was sent: (delivery id, event, job status)."""

    answers: list[int] = field(default_factory=list)
    deliveries: list[tuple[str, str, str]] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        assert body["id"] == request.headers["Switchyard-Webhook-Id"]
        assert body["type"] == request.headers["Switchyard-Event"]
        self.deliveries.append((body["id"], body["type"], body["data"]["status"]))
        self.urls.append(str(request.url))
        return httpx.Response(self.answers.pop(0) if self.answers else 204)


@pytest.fixture
def receiver() -> Receiver:
    return Receiver()


@pytest.fixture
async def client(receiver: Receiver) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(receiver.handle)) as client:
        yield client


def dispatcher(engine, client: httpx.AsyncClient, max_attempts: int = 3) -> WebhookDispatcher:
    # A failed attempt waits a minute: only a webhook started again is due at once.
    policy = WebhookPolicy(max_attempts=max_attempts, initial_backoff_s=60, max_backoff_s=60)
    return WebhookDispatcher(engine, TenantSettingsStore(engine), policy, http=client)


def job(events, **options) -> ChatRequested:
    return events.requested(priority=Priority.BATCH, timeout_s=3600, webhook_url=HOOK, **options)


async def webhook(engine, request_id: str) -> dict:
    async with engine.connect() as connection:
        row = (
            await connection.execute(
                select(webhooks_table).where(webhooks_table.c.request_id == request_id)
            )
        ).mappings()
        return dict(row.one())


async def expire(recorder: EventRecorder) -> None:
    """The sweeper's expiry: the factory's deadlines are long past."""
    assert await recorder.expire_overdue(datetime.now(UTC)) == 1


@pytest.mark.parametrize(
    ("answers", "max_attempts", "expiry_webhook"),
    [([204], 3, "delivered"), ([500], 3, "pending"), ([500], 1, "failed")],
    ids=["expiry-delivered", "expiry-retrying", "expiry-given-up"],
)
async def test_a_late_reply_after_an_expiry_was_sent_is_delivered_under_a_new_id(
    recorder, engine, events, queries, receiver, client, answers, max_attempts, expiry_webhook
):
    """The receiver has (or may have) `job.expired` under `whd_<id>`; the reply that replaces
    the expiry starts the webhook again, and `job.completed` goes out under `whd_<id>.1`, which
    a receiver deduplicating on ids does not drop."""
    request = job(events)
    hooks = dispatcher(engine, client, max_attempts)
    receiver.answers = answers
    await recorder.record([request])
    await expire(recorder)
    assert await hooks.deliver_due() == 1
    assert (await webhook(engine, request.request_id))["status"] == expiry_webhook

    await recorder.record([events.completed(request), events.usage(request)])
    assert await hooks.deliver_due() == 1

    first = f"whd_{request.request_id}"
    assert receiver.deliveries == [
        (first, "job.expired", "expired"),
        (f"{first}.1", "job.completed", "completed"),
    ]
    row = await webhook(engine, request.request_id)
    assert (row["status"], row["attempts"], row["revision"], row["last_error"]) == (
        "delivered",
        1,
        1,
        None,
    )
    shown = await queries.get_job(ALICE, request.request_id)
    assert shown is not None
    assert (shown["status"], shown["webhook_status"]) == ("completed", "delivered")

    # The reply again (a redelivery) and the sweeper again change nothing any more.
    await recorder.record([events.completed(request)])
    assert await recorder.expire_overdue(datetime.now(UTC)) == 0
    assert await hooks.deliver_due() == 0
    assert await webhook(engine, request.request_id) == row


async def test_an_expiry_replaced_before_any_attempt_is_never_sent(
    recorder, engine, events, receiver, client
):
    request = job(events)
    await recorder.record([request])
    await expire(recorder)
    await recorder.record([events.failed(request)])

    assert await dispatcher(engine, client).deliver_due() == 1

    assert receiver.deliveries == [(f"whd_{request.request_id}", "job.failed", "failed")]
    assert (await webhook(engine, request.request_id))["revision"] == 0


async def test_an_attempt_carrying_a_replaced_expiry_does_not_settle_the_real_outcome(
    recorder, engine, events, receiver, client
):
    """The expiry's attempt is on its way when the reply replaces it: its answer must not
    mark the webhook delivered (the real outcome would never go out)."""
    request = job(events)
    hooks = dispatcher(engine, client)
    await recorder.record([request])
    await expire(recorder)
    [claimed] = await hooks._claim()

    await recorder.record([events.completed(request)])
    await hooks._attempt(claimed)  # the receiver answers 204 to the expiry

    row = await webhook(engine, request.request_id)
    assert (row["status"], row["attempts"], row["revision"]) == ("pending", 0, 1)
    assert await hooks.deliver_due() == 1
    assert [event for _, event, _ in receiver.deliveries] == ["job.expired", "job.completed"]
    assert receiver.deliveries[-1][0] == f"whd_{request.request_id}.1"
    assert (await webhook(engine, request.request_id))["status"] == "delivered"


@pytest.mark.parametrize("batches", ["apart", "one batch"])
@pytest.mark.parametrize("outcome", ["cancelled", "completed"])
async def test_an_outcome_recorded_before_its_request_is_delivered_once_the_request_is(
    recorder, engine, events, receiver, client, outcome, batches
):
    """A cancellation recorded before its job's request (the gateway vouched for a job not
    recorded yet; after a crash the two can come in that order) and a reply overtaking its
    request: the job's webhook is registered when the request comes, and delivers that
    outcome."""
    request = job(events)
    first = (
        cancellation_event(request.tenant, request.request_id, by_owner=True)
        if outcome == "cancelled"
        else events.completed(request)
    )
    if batches == "apart":
        await recorder.record([first])
        assert await dispatcher(engine, client).deliver_due() == 0
        await recorder.record([request])
    else:
        await recorder.record([first, request])

    row = await webhook(engine, request.request_id)
    assert (row["tenant"], row["url"], row["status"]) == ("acme", HOOK, "pending")
    assert await dispatcher(engine, client).deliver_due() == 1
    assert receiver.deliveries == [(f"whd_{request.request_id}", f"job.{outcome}", outcome)]


async def test_a_request_naming_another_tenant_gets_no_webhook_for_the_job(
    recorder, engine, events, queries, receiver, client
):
    """Another tenant's request under a job's id leaves the job's row as it is; it must not
    register its own address for that job (which would receive the job's result, signed
    with the job's tenant's secret)."""
    own = events.requested(priority=Priority.BATCH, timeout_s=3600)
    await recorder.record([own, events.completed(own)])
    forged = job(events, request_id=own.request_id, tenant="intruder")
    forged = forged.model_copy(
        update={"data": forged.data.model_copy(update={"webhook_url": "https://evil.example/"})}
    )
    await recorder.record([forged])

    async with engine.connect() as connection:
        assert (await connection.execute(select(webhooks_table))).all() == []
    assert await dispatcher(engine, client).deliver_due() == 0
    assert receiver.deliveries == []


async def test_a_webhook_row_of_another_tenant_is_neither_delivered_nor_shown(
    recorder, engine, events, queries, receiver, client
):
    """A row registered for another tenant under a job's id (before requests naming another
    tenant were refused one) is not the job's webhook."""
    own = events.requested(priority=Priority.BATCH, timeout_s=3600)
    await recorder.record([own, events.completed(own)])
    now = datetime.now(UTC)
    async with engine.begin() as connection:
        await connection.execute(
            insert(webhooks_table).values(
                request_id=own.request_id,
                tenant="intruder",
                url="https://evil.example/",
                status="pending",
                attempts=0,
                next_attempt_at=now,
                created_at=now,
            )
        )

    assert await dispatcher(engine, client).deliver_due() == 0
    assert receiver.deliveries == []
    shown = await queries.get_job(ALICE, own.request_id)
    assert shown is not None and shown["webhook_url"] is None


async def test_idle_connections_to_receivers_are_let_go_before_common_servers_close_them(engine):
    # gunicorn closes an idle connection after 2 s (uvicorn and Node after 5 s): a delivery
    # sent on one it was closing failed as an attempt, delivered only after the backoff.
    own = WebhookDispatcher(engine, TenantSettingsStore(engine), WebhookPolicy())
    client = own._client()
    try:
        assert client._transport._pool._keepalive_expiry < 2.0
    finally:
        await client.aclose()


async def test_one_tenants_backlog_never_keeps_another_tenants_webhooks_waiting(
    recorder, engine, events, client
):
    """A tenant with many jobs due (aimed at a receiver that never answers) filled every
    candidate row; once it had `max_per_tenant` deliveries in flight, the cap left nothing
    to claim, and no other tenant's webhook went out while its backlog lasted."""
    flood = [job(events, tenant="flood") for _ in range(90)]
    await recorder.record([*flood, *(events.completed(request) for request in flood)])
    other = job(events, tenant="other")
    await recorder.record([other, events.completed(other)])
    hooks = dispatcher(engine, client)
    policy_cap = WebhookPolicy().max_per_tenant

    # The flooding tenant is at its cap here: the other tenant's webhook is claimed.
    hooks._in_flight["flood"] = policy_cap
    claimed = await hooks._claim(limit=5)
    assert [row["tenant"] for row in claimed] == ["other"]

    # With nothing in flight, each tenant gets at most its cap in one claim, and every
    # tenant with one due is among them.
    hooks._in_flight.clear()
    more = [job(events, tenant="third") for _ in range(2)]
    await recorder.record([*more, *(events.completed(request) for request in more)])
    claimed = await hooks._claim(limit=20)
    tenants = [row["tenant"] for row in claimed]
    assert tenants.count("flood") == policy_cap and tenants.count("third") == 2


async def test_a_delivery_is_leased_for_longer_than_its_attempt_may_last(
    recorder, engine, events, client
):
    """With a timeout beyond the 60 s lease, a receiver answering after 70 s was sent the
    same webhook again while the first attempt was still open."""
    request = job(events)
    await recorder.record([request, events.completed(request)])
    policy = WebhookPolicy(timeout_s=75)
    assert policy.lease() >= 75 + 30
    hooks = WebhookDispatcher(engine, TenantSettingsStore(engine), policy, http=client)
    before = datetime.now(UTC)
    [claimed] = await hooks._claim()
    row = await webhook(engine, claimed["request_id"])
    assert (row["next_attempt_at"] - before).total_seconds() >= 105
    assert await hooks._claim() == []
