"""OpenAI's Responses API state, served from the request projection: a response as
`GET /v1/responses/{id}` shows it, its input items (cursor pages), its deletion, the
cancellation of a background response, and the conversation a `previous_response_id`
continues (the gateway reads it before publishing a chained request).

A response is a `history_requests` row of API `openai.responses`; its id
(`switchyard.common.responses.response_id`) names the row's request id and its creation
time. It is found under the same rules as the rest of history (the caller's tenant; an
ordinary user's own requests, an admin's whole tenant), and only while its state is
stored. Each way of not being stored answers 404 with a message saying which:

- never existed, or another tenant's (`response_not_found`);
- created before the tenant's retention period and purged (`response_purged`: told from
  the creation time in the id, since the purge leaves no row);
- created with `store: false` (`response_not_stored`), or while the tenant stored
  metadata only (`response_content_not_stored`);
- deleted through the API (`response_deleted`): its content is removed from the row and
  from its events, the row (and its usage) stays.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.common.errors import APIError
from switchyard.common.events import ClientAPI
from switchyard.common.headers import RECORDED_HEADER
from switchyard.common.responses import (
    ResponseRef,
    error_object,
    parse_response_id,
    response_object,
)
from switchyard.common.responses import response_id as issued_id
from switchyard.history.handlers import EventRecorder
from switchyard.history.jobs import cancellation_event
from switchyard.history.models import (
    RequestStatus,
    cache_entries_table,
    events_table,
    idempotency_table,
    requests_table,
)
from switchyard.history.privacy import (
    REDACTED_MARKER,
    redact_payload,
    redact_request_body,
    redact_response,
)
from switchyard.history.queries import Caller, HistoryQueries
from switchyard.history.tenants import TenantSettingsStore

MAX_ITEMS_PAGE = 100
DEFAULT_ITEMS_PAGE = 20
# How many of the caller's most recent stored responses an `item_reference` to an output
# item is looked for in, and how many rows are read at a time.
ITEM_LOOKBACK = 1000
ITEM_PAGE = 50
# At most this many item references are resolved in one request.
MAX_ITEM_REFERENCES = 1000
_INPUT_ITEM_ID = re.compile(r"^(?:msg|fc|fco|rs|item)_([0-9a-f]{8,64})_(\d{1,6})$")


def _input_item_ref(item_id: str) -> tuple[str, int] | None:
    """The request id and position of an input item id Switchyard gave
    (`switchyard.common.responses.input_items`), None for any other id."""
    matched = _INPUT_ITEM_ID.match(item_id)
    return (matched[1], int(matched[2])) if matched else None


# The error codes of work the sweep of revoked keys and disabled users cancelled
# (`revoked_work`): a cancelled response shows its error only then.
REVOKED_WORK_CODES = frozenset({"credentials_revoked", "user_disabled"})


def _issued_as(row: dict[str, Any], value: str) -> bool:
    """Whether `value` is the very id this row's response was given, not merely one naming
    its request id: the lookup goes by the request id alone, so the creation time in the id
    must match too (else any leading digits would reach, and delete, the response). That
    is the time its request was accepted (`issued_id`), or, for an answer given under
    another stamp (a response cache hit is renamed at the moment it is answered), the id
    its stored response carries."""
    if issued_id(row["request_id"], row["created_at"]) == value:
        return True
    response = row["response"]
    return isinstance(response, dict) and response.get("id") == value


def not_found(
    response_id: str,
    message: str | None = None,
    code: str = "response_not_found",
    *,
    recorded: bool = False,
) -> APIError:
    """The 404 `APIError` for a response the caller cannot see (or that was deleted);
    `recorded`: its request is recorded all the same (`RECORDED_HEADER`, for the gateway
    alone: the body is the same as for an id never made)."""
    return APIError(
        404,
        message or f"Response with id '{response_id}' not found.",
        param="response_id",
        code=code,
        headers={RECORDED_HEADER: "true"} if recorded else None,
    )


@dataclass(frozen=True)
class StoredResponse:
    """A Responses row found for the caller, and what its id says."""

    id: str
    ref: ResponseRef
    row: dict[str, Any]

    @property
    def body(self) -> dict[str, Any]:
        """The stored request body (empty when its content is not kept)."""
        return self.row["request_body"] or {}

    @property
    def status(self) -> str:
        """The request's status (`RequestStatus` value)."""
        return str(self.row["status"])

    @property
    def background(self) -> bool:
        """Whether it was created with `background: true`."""
        return self.body.get("background") is True

    def view(self) -> dict[str, Any]:
        """The response as the Responses API shows it now."""
        status = self.status
        if status == RequestStatus.COMPLETED.value and isinstance(self.row["response"], dict):
            return self.row["response"]
        fields: dict[str, Any] = {}
        if status == RequestStatus.PENDING.value:
            # A background response waits in the batch lane until inference begins it.
            waiting = self.background and self.row.get("started_at") is None
            shown = "queued" if waiting else "in_progress"
        elif status == RequestStatus.CANCELLED.value:
            shown = "cancelled"
            error = self.row["error"] or {}
            if error.get("code") in REVOKED_WORK_CODES:
                # Cancelled by the sweep of revoked credentials, not by its caller (whose
                # cancellation, as OpenAI's, carries no error): it says why.
                fields["error"] = error_object(
                    error.get("status", 403), error.get("message") or "Cancelled.", error["code"]
                )
        else:
            shown = "failed"
            error = self.row["error"] or {}
            fields["error"] = error_object(
                error.get("status", 500),
                error.get("message") or "The response failed.",
                error.get("code"),
            )
            # A stream that failed midway keeps the items it gave whole, as its
            # `response.failed` event showed them.
            given = self.row["response"]
            output = given.get("output") if isinstance(given, dict) else None
            if isinstance(output, list) and output:
                fields["output"] = output
        return response_object(
            self.body,
            id=self.id,
            created_at=self.row["created_at"],
            model=self.row["model"] or "",
            status=shown,
            **fields,
        )


class ResponseStore:
    """Finds, shows, pages, deletes and cancels stored responses (see the module doc)."""

    def __init__(
        self,
        engine: AsyncEngine,
        queries: HistoryQueries,
        tenants: TenantSettingsStore,
        recorder: EventRecorder,
        default_retention_days: int | None,
    ) -> None:
        self._engine = engine
        self._queries = queries
        self._tenants = tenants
        self._recorder = recorder
        self._default_retention_days = default_retention_days

    async def _retention_days(self, tenant: str) -> int | None:
        settings = await self._tenants.get(tenant)
        return settings.retention_days or self._default_retention_days

    async def find(self, caller: Caller, response_id: str) -> StoredResponse:
        """The caller's stored response; APIError 404 saying why it is not there."""
        ref = parse_response_id(response_id)
        if ref is None:
            raise not_found(response_id)
        row = await self._queries.get_request(caller, ref.request_id)
        if row is None and await self._queries.recorded(ref.request_id):
            # Recorded since the read above (a request's events all come at once: a
            # response cache hit's do), or another caller's: read once more to tell.
            row = await self._queries.get_request(caller, ref.request_id)
            if row is None:
                raise not_found(response_id, recorded=True)
        if row is None:
            days = await self._retention_days(caller.tenant)
            if days is not None and ref.created_at < datetime.now(UTC) - timedelta(days=days):
                raise not_found(
                    response_id,
                    f"Response '{response_id}' is older than this tenant's retention period "
                    f"({days} days): its stored state was purged.",
                    "response_purged",
                )
            raise not_found(response_id)
        if row["api"] != ClientAPI.OPENAI_RESPONSES.value or not _issued_as(row, response_id):
            raise not_found(response_id, recorded=True)
        found = StoredResponse(response_id, ref, row)
        if row["response_deleted_at"] is not None:
            raise not_found(
                response_id, f"Response '{response_id}' was deleted.", "response_deleted"
            )
        if found.body.get("store") is False:
            raise not_found(
                response_id,
                f"Response '{response_id}' was created with 'store: false': its state was "
                "not stored.",
                "response_not_stored",
            )
        if found.body.get(REDACTED_MARKER) is True or row["input_items"] is None:
            raise not_found(
                response_id,
                f"Response '{response_id}' was created while this tenant stored metadata only: "
                "its content was not stored.",
                "response_content_not_stored",
            )
        return found

    async def conversation(self, caller: Caller, response_id: str) -> list[dict[str, Any]]:
        """The items a response continuing `response_id` starts from: its input items,
        then its output items. APIError 404 (not stored), 409 (still in progress) or 400
        (it did not complete)."""
        found = await self.find(caller, response_id)
        if found.status == RequestStatus.PENDING.value:
            raise APIError(
                409,
                f"Previous response '{response_id}' is still in progress; wait for it to "
                "complete before continuing it.",
                param="previous_response_id",
                code="response_in_progress",
            )
        response = found.row["response"]
        if found.status != RequestStatus.COMPLETED.value or not isinstance(response, dict):
            raise APIError(
                400,
                f"Previous response '{response_id}' did not complete (status: "
                f"{found.view()['status']}); only a completed response can be continued.",
                param="previous_response_id",
                code="previous_response_not_completed",
            )
        output = response.get("output")
        return [*found.row["input_items"], *(output if isinstance(output, list) else [])]

    async def items(self, caller: Caller, ids: list[str]) -> dict[str, dict[str, Any]]:
        """The stored items these `ids` name, by id, for `item_reference` input items: an
        input item Switchyard named (`<kind>_<request id>_<position>`) is read from its
        response; any other id is looked for among the output items of the caller's most
        recent stored, completed responses, newest first, at most `ITEM_LOOKBACK` of them
        (a conversation's items come from its own recent turns). Ids not found are absent.
        Only responses the caller may read are searched: its tenant's, its own unless an
        admin, stored (not `store: false`, deleted or metadata only)."""
        found: dict[str, dict[str, Any]] = {}
        wanted = set(ids)
        for item_id in list(wanted):
            named = _input_item_ref(item_id)
            if named is None:
                continue
            row = await self._queries.get_request(caller, named[0])
            items = row.get("input_items") if row is not None else None
            if (
                row is not None
                and row["api"] == ClientAPI.OPENAI_RESPONSES.value
                and row["response_deleted_at"] is None
                and isinstance(items, list)
            ):
                for item in items:
                    if isinstance(item, dict) and item.get("id") == item_id:
                        found[item_id] = item
                        wanted.discard(item_id)
        before: tuple[datetime, str] | None = None
        searched = 0
        while wanted and searched < ITEM_LOOKBACK:
            rows = await self._queries.recent_response_outputs(
                caller, limit=min(ITEM_PAGE, ITEM_LOOKBACK - searched), before=before
            )
            if not rows:
                break
            searched += len(rows)
            before = (rows[-1]["created_at"], rows[-1]["request_id"])
            for row in rows:
                response = row["response"]
                output = response.get("output") if isinstance(response, dict) else None
                for item in output if isinstance(output, list) else ():
                    output_id = item.get("id") if isinstance(item, dict) else None
                    if isinstance(output_id, str) and output_id in wanted:
                        found[output_id] = item
                        wanted.discard(output_id)
        return found

    async def input_items(
        self,
        caller: Caller,
        response_id: str,
        *,
        limit: int = DEFAULT_ITEMS_PAGE,
        order: Literal["asc", "desc"] = "desc",
        after: str | None = None,
        before: str | None = None,
    ) -> dict[str, Any]:
        """A page of the response's input items in `order` (OpenAI's default: newest
        first), after or before the item with that id: `{"object": "list", "data",
        "first_id", "last_id", "has_more"}`."""
        found = await self.find(caller, response_id)
        items = list(found.row["input_items"])
        if order == "desc":
            items.reverse()
        ids = [item.get("id") for item in items]
        start, end = 0, len(items)
        for param, cursor in (("after", after), ("before", before)):
            if cursor is None:
                continue
            if cursor not in ids:
                raise APIError(
                    400,
                    f"Invalid value for '{param}': no input item '{cursor}' in response "
                    f"'{response_id}'.",
                    param=param,
                    code="invalid_cursor",
                )
            if param == "after":
                start = ids.index(cursor) + 1
            else:
                end = ids.index(cursor)
        window = items[start:end]
        page = window[:limit] if before is None else window[-limit:]
        has_more = len(window) > len(page)
        return {
            "object": "list",
            "data": page,
            "first_id": page[0].get("id") if page else None,
            "last_id": page[-1].get("id") if page else None,
            "has_more": has_more,
        }

    async def delete(self, caller: Caller, response_id: str) -> dict[str, Any]:
        """Remove the response's content (request body and reply reduced to metadata,
        input items dropped, in the row and in its stored events), and every other copy
        history keeps of it: the answer an `Idempotency-Key` would replay (a retry is then
        told it is not kept) and the response cache's entries made from it. The row and
        its usage stay. APIError 409 for a response still in progress; of several deletions
        at once, one is answered `deleted` and the others 404 `response_deleted`."""
        found = await self.find(caller, response_id)
        if found.status == RequestStatus.PENDING.value:
            advice = (
                "cancel it before deleting it"
                if found.background
                else "delete it once it has finished"
            )
            raise APIError(
                409,
                f"Response '{response_id}' is still in progress; {advice}.",
                param="response_id",
                code="response_in_progress",
            )
        request_id = found.ref.request_id
        r, e = requests_table.c, events_table.c
        async with self._engine.begin() as connection:
            marked = await connection.execute(
                update(requests_table)
                .where(r.request_id == request_id, r.response_deleted_at.is_(None))
                .values(
                    request_body=redact_request_body(found.row["request_body"]),
                    response=redact_response(found.row["response"]),
                    input_items=None,
                    response_deleted_at=datetime.now(UTC),
                )
            )
            if marked.rowcount == 0:  # another deletion came first
                raise not_found(
                    response_id, f"Response '{response_id}' was deleted.", "response_deleted"
                )
            events = (
                await connection.execute(
                    select(e.event_id, e.payload).where(e.request_id == request_id)
                )
            ).all()
            for event_id, payload in events:
                await connection.execute(
                    update(events_table)
                    .where(e.event_id == event_id)
                    .values(payload=redact_payload(payload))
                )
            tenant = found.row["tenant"]
            keys = idempotency_table.c
            await connection.execute(
                update(idempotency_table)
                .where(keys.tenant == tenant, keys.request_id == request_id)
                .values(response_body=None, response_headers=None)
            )
            cached = cache_entries_table.c
            await connection.execute(
                delete(cache_entries_table).where(
                    cached.tenant == tenant, cached.source_request_id == request_id
                )
            )
        return {"id": response_id, "object": "response.deleted", "deleted": True}

    async def cancel(self, caller: Caller, response_id: str, *, accepted: bool) -> dict[str, Any]:
        """Cancel a background response that has not finished: history records the
        cancellation (its terminal state) and answers the cancelled response. APIError
        400 for a response not created with `background: true`, 409 for one that
        finished. With `accepted` (the gateway accepted it moments ago), a response not
        recorded yet is cancelled before its request arrives."""
        ref = parse_response_id(response_id)
        if ref is None:
            raise not_found(response_id)
        if accepted and await self._queries.get_request(caller, ref.request_id) is None:
            await self._recorder.record(
                [
                    cancellation_event(
                        caller.tenant, ref.request_id, by_owner=not caller.sees_whole_tenant
                    )
                ]
            )
            found = await self._queries.get_request(caller, ref.request_id)
            if found is None:
                return response_object(
                    {"background": True},
                    id=response_id,
                    created_at=ref.created_at,
                    model="",
                    status="cancelled",
                )
        found_response = await self.find(caller, response_id)
        if not found_response.background:
            raise APIError(
                400,
                f"Response '{response_id}' was not created with 'background: true'; only "
                "background responses can be cancelled.",
                param="response_id",
                code="response_not_cancellable",
            )
        if found_response.status == RequestStatus.PENDING.value:
            by_owner = found_response.row.get("user_id") == caller.user_id
            await self._recorder.record(
                [cancellation_event(caller.tenant, ref.request_id, by_owner=by_owner)]
            )
            found_response = await self.find(caller, response_id)
        if found_response.status != RequestStatus.CANCELLED.value:
            raise APIError(
                409,
                f"Response '{response_id}' already finished with status "
                f"'{found_response.view()['status']}'; only a queued or in-progress response "
                "can be cancelled.",
                param="response_id",
                code="response_not_cancellable",
            )
        return found_response.view()
