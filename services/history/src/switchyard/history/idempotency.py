"""Idempotency-Key claims, shared by every gateway replica (`history_idempotency_keys`).

A gateway receiving a POST with an `Idempotency-Key` asks `claim` first, in one
transaction:

- no row for (tenant, key), or only one older than the key's lifetime (24 h): the row is
  created (INSERT ... ON CONFLICT DO NOTHING decides between racing replicas) and the
  caller runs the request — outcome `claimed`, with a claim token;
- a row for another body, endpoint or user: `mismatch` (the gateway answers 422);
- a finished row: `completed`, with the stored response to replay byte for byte;
- a row still in progress: `in_progress` (the gateway waits, or answers 409); unless its
  lease ran out — the replica running it died without finishing — then the caller takes
  it over (`claimed`).

The replica that claimed a key stores the response with `complete` (or gives the key back
with `release` when nothing ran, e.g. the request was invalid or refused before it was
published). Both need the claim token, so a replica whose lease was taken over cannot
overwrite the new owner's result.

A replica that stopped waiting for its request (the request's deadline passed after it
was published: the broker may have it, inference may have run it) neither stores its
504 nor gives the key back: `await_outcome` ties the key to the request, whose outcome
history records. A retry then finds (`claim`), from the request's row:

- completed: `answered_late`, with its request id (the gateway answers 409: it never runs
  twice, and the answer is in the request's record);
- failed, cancelled, refused or expired by inference: the key is claimed anew, as a
  released one (a failure is retried);
- not recorded yet, pending, or expired by history's sweeper (which a late real outcome
  may still replace): `in_progress` until the key's lease, renewed by `await_outcome`,
  runs out; then the key is claimed anew, so it is never held for good by a request
  that never arrived.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from sqlalchemy import RowMapping, delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from switchyard.common.db import dialect_insert
from switchyard.history.models import (
    IdempotencyState,
    RequestStatus,
    idempotency_table,
    requests_table,
)

KEY_LIFETIME = timedelta(hours=24)

Outcome = Literal["claimed", "in_progress", "completed", "mismatch", "answered_late"]


@dataclass(frozen=True)
class ClaimRequest:
    """A request to claim `key` for `endpoint` and the body `fingerprint` (a hash), held for
    `lease_s` seconds."""

    tenant: str
    key: str
    user_id: str
    endpoint: str
    fingerprint: str
    lease_s: float


@dataclass(frozen=True)
class ClaimResult:
    """What a claim found. `outcome` is `claimed` (with the `claim_token` to complete or release
    it), `in_progress` (another request holds it; `request_id` when known), `completed` (the
    recorded response: `status_code`, `content_type`, `body` bytes, None if its content is not kept,
    and the `headers` describing the body), `answered_late` (the request `request_id` completed
    after its replica stopped waiting for it) or `mismatch` (the key was used for another
    request; `reason` says how)."""

    outcome: Outcome
    claim_token: str | None = None
    request_id: str | None = None
    status_code: int | None = None
    content_type: str | None = None
    body: bytes | None = None
    headers: dict[str, str] | None = None
    reason: str | None = None


class IdempotencyStore:
    """`Idempotency-Key` claims and recorded responses per tenant, kept `lifetime` (24 hours by
    default) after the claim."""

    def __init__(self, engine: AsyncEngine, lifetime: timedelta = KEY_LIFETIME) -> None:
        self._engine = engine
        self._dialect = engine.dialect.name
        self._lifetime = lifetime

    async def claim(self, claim: ClaimRequest) -> ClaimResult:
        """Claim the key, or report who holds it or what it answered (see `ClaimResult`). An expired
        entry is claimed anew."""
        now = datetime.now(UTC)
        token = secrets.token_hex(16)
        values = {
            "tenant": claim.tenant,
            "key": claim.key,
            "fingerprint": claim.fingerprint,
            "user_id": claim.user_id,
            "endpoint": claim.endpoint,
            "claim_token": token,
            "state": IdempotencyState.IN_PROGRESS.value,
            "request_id": None,
            "status_code": None,
            "content_type": None,
            "response_body": None,
            "response_headers": None,
            "created_at": now,
            "locked_until": now + timedelta(seconds=claim.lease_s),
            "completed_at": None,
            "expires_at": now + self._lifetime,
        }
        keys = idempotency_table.c
        this_key = (keys.tenant == claim.tenant, keys.key == claim.key)
        async with self._engine.begin() as connection:
            inserted = (
                await connection.execute(
                    dialect_insert(idempotency_table, self._dialect)
                    .values(values)
                    .on_conflict_do_nothing(index_elements=["tenant", "key"])
                    .returning(keys.key)
                )
            ).first()
            if inserted is not None:
                return ClaimResult("claimed", claim_token=token)
            query = select(idempotency_table).where(*this_key)
            if self._dialect == "postgresql":
                query = query.with_for_update()
            row = (await connection.execute(query)).mappings().first()
            if row is None:  # deleted between the two statements: the next try claims it
                return ClaimResult("in_progress")
            if row["expires_at"] <= now:
                await connection.execute(update(idempotency_table).where(*this_key).values(values))
                return ClaimResult("claimed", claim_token=token)
            if (row["fingerprint"], row["endpoint"], row["user_id"]) != (
                claim.fingerprint,
                claim.endpoint,
                claim.user_id,
            ):
                return ClaimResult("mismatch", reason=_mismatch_reason(row, claim))
            if row["state"] == IdempotencyState.COMPLETED.value:
                return ClaimResult(
                    "completed",
                    request_id=row["request_id"],
                    status_code=row["status_code"],
                    content_type=row["content_type"],
                    body=row["response_body"],
                    headers=row["response_headers"],
                )
            if row["state"] == IdempotencyState.AWAITING_OUTCOME.value:
                status, provisional = await _request_status(
                    connection, claim.tenant, row["request_id"]
                )
                if status == RequestStatus.COMPLETED.value:
                    return ClaimResult("answered_late", request_id=row["request_id"])
                ended = status not in (None, RequestStatus.PENDING.value) and not provisional
                if ended or row["locked_until"] <= now:
                    await connection.execute(
                        update(idempotency_table).where(*this_key).values(values)
                    )
                    return ClaimResult("claimed", claim_token=token)
                return ClaimResult("in_progress", request_id=row["request_id"])
            if row["locked_until"] <= now:
                # The replica running the first attempt went away without an answer.
                await connection.execute(
                    update(idempotency_table)
                    .where(*this_key)
                    .values(claim_token=token, locked_until=values["locked_until"])
                )
                return ClaimResult("claimed", claim_token=token)
            return ClaimResult("in_progress", request_id=row["request_id"])

    async def complete(
        self,
        tenant: str,
        key: str,
        claim_token: str,
        *,
        request_id: str | None,
        status_code: int,
        content_type: str,
        body: bytes | None,
        headers: dict[str, str] | None = None,
    ) -> bool:
        """Store the finished response of a claim (`body` None: its content is not kept;
        `headers`: those describing the body, replayed with it)."""
        return await self._update_held(
            tenant,
            key,
            claim_token,
            state=IdempotencyState.COMPLETED.value,
            request_id=request_id,
            status_code=status_code,
            content_type=content_type,
            response_body=body,
            response_headers=headers or None,
            completed_at=datetime.now(UTC),
        )

    async def await_outcome(
        self, tenant: str, key: str, claim_token: str, *, request_id: str, lease_s: float
    ) -> bool:
        """Tie an in-progress claim held with `claim_token` to its request `request_id`, whose
        replica stopped waiting for it (see the module's docstring), held `lease_s` more
        seconds at most while the request's outcome is unknown. Returns whether the claim
        was still held."""
        return await self._update_held(
            tenant,
            key,
            claim_token,
            state=IdempotencyState.AWAITING_OUTCOME.value,
            request_id=request_id,
            locked_until=datetime.now(UTC) + timedelta(seconds=lease_s),
        )

    async def _update_held(self, tenant: str, key: str, claim_token: str, **values: object) -> bool:
        """Set `values` on the in-progress claim of `key` held with `claim_token`; returns
        whether there was one."""
        keys = idempotency_table.c
        async with self._engine.begin() as connection:
            result = await connection.execute(
                update(idempotency_table)
                .where(
                    keys.tenant == tenant,
                    keys.key == key,
                    keys.claim_token == claim_token,
                    keys.state == IdempotencyState.IN_PROGRESS.value,
                )
                .values(**values)
            )
        return result.rowcount == 1

    async def release(self, tenant: str, key: str, claim_token: str) -> bool:
        """Drop an in-progress claim held with `claim_token`; returns whether there was one."""
        keys = idempotency_table.c
        async with self._engine.begin() as connection:
            result = await connection.execute(
                delete(idempotency_table).where(
                    keys.tenant == tenant,
                    keys.key == key,
                    keys.claim_token == claim_token,
                    keys.state == IdempotencyState.IN_PROGRESS.value,
                )
            )
        return result.rowcount == 1

    async def purge_expired(self, now: datetime | None = None) -> int:
        """Delete the entries expired by `now` (default: the current time); returns how many."""
        async with self._engine.begin() as connection:
            result = await connection.execute(
                delete(idempotency_table).where(
                    idempotency_table.c.expires_at <= (now or datetime.now(UTC))
                )
            )
        return result.rowcount or 0


async def _request_status(
    connection: AsyncConnection, tenant: str, request_id: str | None
) -> tuple[str | None, bool]:
    """The recorded status of the request `request_id` of `tenant` (None: not recorded yet)
    and whether it is history's own provisional expiry."""
    if request_id is None:
        return None, False
    requests = requests_table.c
    row = (
        await connection.execute(
            select(requests.status, requests.outcome_provisional).where(
                requests.request_id == request_id, requests.tenant == tenant
            )
        )
    ).first()
    if row is None:
        return None, False
    return row.status, bool(row.outcome_provisional)


def _mismatch_reason(row: RowMapping, claim: ClaimRequest) -> str:
    """Why `claim` cannot use the key `row` holds. Another caller's use is said first and
    alone: what the key was used for (its endpoint) is that caller's business."""
    if row["user_id"] != claim.user_id:
        return "This Idempotency-Key was already used by another caller of your organisation."
    if row["endpoint"] != claim.endpoint:
        return (
            f"This Idempotency-Key was already used for {row['endpoint']}; "
            "use a new key for a different request."
        )
    return (
        "This Idempotency-Key was already used with a different request body; "
        "a retry must send exactly the same body, or use a new key."
    )
