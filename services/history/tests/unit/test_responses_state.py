"""The Responses API state history keeps (`/v1/responses`): a response as the API shows
it, its input items in cursor pages, the conversation `previous_response_id` continues,
deletion, cancellation of background responses, and the reasons a response is not
there (unknown, another tenant's, not stored, metadata only, purged, deleted)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from switchyard.common.events import (
    ChatCompleted,
    ChatCompletedData,
    ChatRequestData,
    ChatRequested,
    ChatStarted,
    ChatStartedData,
    ClientAPI,
    Priority,
    TokenUsage,
    UsageData,
    UsageRecorded,
    new_id,
)
from switchyard.common.headers import RECORDED_HEADER
from switchyard.common.responses import response_id
from switchyard.common.testing.infra import async_wait_until
from switchyard.history.models import events_table
from switchyard.history.projection import contribution, merge
from switchyard.history.sweeper import purge_by_retention

RESPONSES = ClientAPI.OPENAI_RESPONSES


def requested(
    body: dict,
    *,
    at: datetime | None = None,
    previous_items: list | None = None,
    tenant: str = "acme",
    user_id: str = "alice",
    background: bool = False,
) -> ChatRequested:
    time = at or datetime.now(UTC)
    return ChatRequested(
        source="gateway",
        tenant=tenant,
        request_id=new_id(),
        time=time,
        data=ChatRequestData(
            api=RESPONSES,
            model="sim-small",
            body={"model": "sim-small", **body},
            previous_items=previous_items,
            user_id=user_id,
            api_key_id="key-1",
            priority=Priority.BATCH if background else Priority.INTERACTIVE,
            deadline=time + timedelta(minutes=5),
        ),
    )


def rid(request: ChatRequested) -> str:
    return response_id(request.request_id, request.time)


def completed(request: ChatRequested, text: str) -> ChatCompleted:
    response = {
        "id": rid(request),
        "object": "response",
        "created_at": int(request.time.timestamp()),
        "status": "completed",
        "model": "sim-small",
        "output": [
            {
                "id": f"msg_out_{request.request_id}",
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ],
        "usage": {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5},
    }
    return ChatCompleted(
        source="inference",
        tenant=request.tenant,
        request_id=request.request_id,
        data=ChatCompletedData(
            api=RESPONSES,
            response=response,
            provider="openai",
            deployment="simulator",
            upstream_api=RESPONSES,
            usage=TokenUsage(input_tokens=3, output_tokens=2),
            latency_ms=5,
        ),
    )


def usage(request: ChatRequested) -> UsageRecorded:
    return UsageRecorded(
        source="inference",
        tenant=request.tenant,
        request_id=request.request_id,
        data=UsageData(
            api=RESPONSES,
            model="sim-small",
            user_id=request.data.user_id,
            status="completed",
            usage=TokenUsage(input_tokens=3, output_tokens=2),
            cost_usd=0.25,
        ),
    )


async def answered(service, request: ChatRequested, text: str = "Hi there") -> dict:
    await service.publish(request, completed(request, text), usage(request))
    await service.wait_for(request.request_id, "completed", user_id=request.data.user_id)
    return await get(service, f"/v1/responses/{rid(request)}", user_id=request.data.user_id)


async def get(service, path: str, expect: int = 200, **identity) -> dict:
    response = await service.client.get(path, headers=service.headers(**identity))
    assert response.status_code == expect, response.text
    return response.json()


async def test_a_stored_response_is_served_as_the_responses_api_shows_it(service):
    request = requested({"input": "Hello", "metadata": {"topic": "greeting"}})
    view = await answered(service, request, "Hi there")

    assert view["id"] == rid(request)
    assert view["object"] == "response"
    assert view["status"] == "completed"
    assert view["output"][0]["content"][0]["text"] == "Hi there"


async def test_input_items_are_listed_newest_first_in_cursor_pages(service):
    inputs = [{"role": "user", "content": f"question {n}"} for n in range(5)]
    request = requested({"input": inputs})
    await answered(service, request)
    path = f"/v1/responses/{rid(request)}/input_items"

    first = await get(service, f"{path}?limit=2")
    assert [item["content"][0]["text"] for item in first["data"]] == ["question 4", "question 3"]
    assert first["object"] == "list" and first["has_more"] is True
    assert first["first_id"] == first["data"][0]["id"]
    assert first["last_id"] == first["data"][1]["id"]
    # Every stored item is a message item with an id and input_text content.
    assert all(item["type"] == "message" and item["id"] for item in first["data"])
    assert first["data"][0]["content"][0]["type"] == "input_text"

    second = await get(service, f"{path}?limit=2&after={first['last_id']}")
    assert [item["content"][0]["text"] for item in second["data"]] == ["question 2", "question 1"]
    last = await get(service, f"{path}?limit=2&after={second['last_id']}")
    assert [item["content"][0]["text"] for item in last["data"]] == ["question 0"]
    assert last["has_more"] is False

    # OpenAI's `include` is taken (the `openai` SDK sends it as `include[]`), and a
    # parameter the Responses API does not have is refused.
    included = await get(service, f"{path}?limit=2&include[]=message.input_image.image_url")
    assert included["data"] == first["data"]
    await get(service, f"{path}?starting_after=x", expect=400)
    ascending = await get(service, f"{path}?order=asc&limit=3")
    assert [item["content"][0]["text"] for item in ascending["data"]] == [
        "question 0",
        "question 1",
        "question 2",
    ]
    before = await get(service, f"{path}?order=asc&before={ascending['last_id']}&limit=1")
    assert [item["content"][0]["text"] for item in before["data"]] == ["question 1"]


async def test_a_chained_response_keeps_the_whole_conversation(service):
    first = requested({"input": "My name is Ada."})
    await answered(service, first, "Nice to meet you, Ada.")
    conversation = await get(service, f"/v1/responses/{rid(first)}/conversation")
    texts = [item["content"][0]["text"] for item in conversation["data"]]
    assert texts == ["My name is Ada.", "Nice to meet you, Ada."]

    second = requested(
        {"input": "What is my name?", "previous_response_id": rid(first)},
        previous_items=conversation["data"],
    )
    await answered(service, second, "Ada.")
    items = await get(service, f"/v1/responses/{rid(second)}/input_items?order=asc")
    assert [item["content"][0]["text"] for item in items["data"]] == [
        "My name is Ada.",
        "Nice to meet you, Ada.",
        "What is my name?",
    ]
    again = await get(service, f"/v1/responses/{rid(second)}/conversation")
    assert len(again["data"]) == 4  # three inputs and the new answer


async def test_unknown_and_other_tenants_responses_are_not_found(service):
    request = requested({"input": "secret plans"})
    await answered(service, request)

    unknown = await get(service, "/v1/responses/resp_nothing", 404)
    assert unknown["error"]["code"] == "response_not_found"
    other_tenant = await get(service, f"/v1/responses/{rid(request)}", 404, tenant="globex")
    assert other_tenant["error"]["code"] == "response_not_found"
    other_user = await get(service, f"/v1/responses/{rid(request)}", 404, user_id="bob")
    assert other_user["error"]["code"] == "response_not_found"
    admin = await get(service, f"/v1/responses/{rid(request)}", user_id="root", role="admin")
    assert admin["id"] == rid(request)
    # A chat completion's request id is not a response.
    chat = requested({"input": "x"})
    not_a_response = response_id("no-such-request", chat.time)
    assert (await get(service, f"/v1/responses/{not_a_response}", 404))["error"][
        "code"
    ] == "response_not_found"


async def test_the_gateway_alone_learns_that_another_callers_response_is_recorded(service):
    """Another tenant's or user's response, or the response's request under another time,
    is told apart (a header for the gateway, which then does not wait for it to be
    recorded); the body is the one an id never made gets, and an id never made has no
    such header."""
    request = requested({"input": "secret plans"})
    await answered(service, request)
    later = response_id(request.request_id, request.time + timedelta(seconds=1))
    paths = [f"/v1/responses/{rid(request)}", f"/v1/responses/{rid(request)}/input_items"]
    for path, identity in [
        *((path, {"tenant": "globex"}) for path in paths),
        *((path, {"user_id": "bob"}) for path in paths),
        (f"/v1/responses/{later}", {}),
    ]:
        answer = await service.client.get(path, headers=service.headers(**identity))
        assert answer.status_code == 404, (path, identity)
        assert answer.headers[RECORDED_HEADER] == "true", (path, identity)
        assert answer.json()["error"]["code"] == "response_not_found"
    never = response_id(new_id(), request.time)
    answer = await service.client.get(f"/v1/responses/{never}", headers=service.headers())
    assert answer.status_code == 404 and RECORDED_HEADER not in answer.headers


async def test_a_response_recorded_between_two_reads_is_found_not_said_anothers(
    service, monkeypatch
):
    """The caller's read finds no row, and by the time history asks whether the request is
    recorded at all, it is (a response cache hit's events all come at once): the response
    is read again and shown, never answered as another caller's, which the gateway would
    pass on as a 404 without waiting."""
    from switchyard.history.queries import HistoryQueries

    request = requested({"input": "hello"})
    await answered(service, request)
    real = HistoryQueries.get_request
    missed: list[str] = []

    async def read_before_the_record(self, caller, request_id):
        if not missed:
            missed.append(request_id)
            return None
        return await real(self, caller, request_id)

    monkeypatch.setattr(HistoryQueries, "get_request", read_before_the_record)
    assert (await get(service, f"/v1/responses/{rid(request)}"))["id"] == rid(request)
    assert missed == [request.request_id]


async def test_a_reply_that_overtook_its_request_is_not_said_recorded(service, tables):
    """A reply and its usage stored before their `chat.requested` (which says whose the
    request is) do not make the request recorded: its owner's gateway, reading it right
    after creating it, keeps waiting for it instead of answering 404."""
    request = requested({"input": "hello"})
    await service.publish(completed(request, "Hi"), usage(request))

    async def row_stored() -> bool:
        return request.request_id in await tables.requests()

    await async_wait_until(row_stored, timeout=10, message="the reply's row")
    answer = await service.client.get(f"/v1/responses/{rid(request)}", headers=service.headers())
    assert answer.status_code == 404
    assert RECORDED_HEADER not in answer.headers

    await service.publish(request)
    await service.wait_for(request.request_id, "completed")
    assert (await get(service, f"/v1/responses/{rid(request)}"))["id"] == rid(request)


async def test_a_response_created_with_store_false_is_not_found_and_says_why(service):
    request = requested({"input": "Do not keep this", "store": False})
    await service.publish(request, completed(request, "ok"))
    await service.wait_for(request.request_id, "completed")

    error = (await get(service, f"/v1/responses/{rid(request)}", 404))["error"]
    assert error["code"] == "response_not_stored"
    assert "store: false" in error["message"]
    error = (await get(service, f"/v1/responses/{rid(request)}/conversation", 404))["error"]
    assert error["code"] == "response_not_stored"


async def test_a_metadata_only_tenant_keeps_no_conversation(service):
    await service.components.tenants.update("acme", store_content=False)
    request = requested({"input": "private words"}, previous_items=[{"type": "message"}])
    await service.publish(request, completed(request, "private answer"))
    await service.wait_for(request.request_id, "completed")

    error = (await get(service, f"/v1/responses/{rid(request)}", 404))["error"]
    assert error["code"] == "response_content_not_stored"
    assert "metadata only" in error["message"]
    async with service.components.engine.connect() as connection:
        payloads = (
            await connection.execute(
                select(events_table.c.payload).where(
                    events_table.c.request_id == request.request_id
                )
            )
        ).scalars()
        text = str(list(payloads))
    assert "private words" not in text and "private answer" not in text


async def test_a_response_purged_by_retention_is_reported_as_purged(service):
    await service.components.tenants.update("acme", retention_days=1)
    old = requested({"input": "long ago"}, at=datetime.now(UTC) - timedelta(days=10))
    await answered(service, old)

    purged = await purge_by_retention(
        service.components.engine, service.components.tenants, default_days=None
    )
    assert purged.requests == 1
    error = (await get(service, f"/v1/responses/{rid(old)}", 404))["error"]
    assert error["code"] == "response_purged"
    assert "retention period (1 days)" in error["message"]
    # An id of a response that never existed, but recent, is simply not found.
    recent = requested({"input": "x"})
    error = (await get(service, f"/v1/responses/{rid(recent)}", 404))["error"]
    assert error["code"] == "response_not_found"


async def test_deleting_a_response_removes_its_content_and_keeps_its_usage(service):
    request = requested({"input": "forget me", "instructions": "be kind"})
    await answered(service, request, "forgotten answer")

    deleted = await service.client.delete(
        f"/v1/responses/{rid(request)}", headers=service.headers()
    )
    assert deleted.json() == {"id": rid(request), "object": "response.deleted", "deleted": True}
    error = (await get(service, f"/v1/responses/{rid(request)}", 404))["error"]
    assert error["code"] == "response_deleted"
    again = await service.client.delete(f"/v1/responses/{rid(request)}", headers=service.headers())
    assert again.status_code == 404

    row = await get(service, f"/v1/history/{request.request_id}")
    assert row["usage"]["input_tokens"] == 3 and row["usage"]["output_tokens"] == 2
    everything = str(row)
    async with service.components.engine.connect() as connection:
        everything += str(
            list(
                (
                    await connection.execute(
                        select(events_table.c.payload).where(
                            events_table.c.request_id == request.request_id
                        )
                    )
                ).scalars()
            )
        )
    for content in ("forget me", "be kind", "forgotten answer"):
        assert content not in everything


async def test_a_background_response_can_be_cancelled_until_it_finishes(service):
    queued = requested({"input": "long task", "background": True}, background=True)
    await service.publish(queued)
    await service.wait_for(queued.request_id, "pending")
    view = await get(service, f"/v1/responses/{rid(queued)}")
    assert view["status"] == "queued" and view["background"] is True

    cancel = await service.client.post(
        f"/v1/responses/{rid(queued)}/cancel", headers=service.headers()
    )
    assert cancel.status_code == 200, cancel.text
    assert cancel.json()["status"] == "cancelled"
    assert (await get(service, f"/v1/responses/{rid(queued)}"))["status"] == "cancelled"
    # Continuing a cancelled response is refused, naming the parameter.
    refused = (await get(service, f"/v1/responses/{rid(queued)}/conversation", 400))["error"]
    assert refused["param"] == "previous_response_id"

    done = requested({"input": "quick", "background": True}, background=True)
    await answered(service, done)
    late = await service.client.post(f"/v1/responses/{rid(done)}/cancel", headers=service.headers())
    assert late.status_code == 409
    assert late.json()["error"]["code"] == "response_not_cancellable"

    foreground = requested({"input": "now"})
    await answered(service, foreground)
    refused = await service.client.post(
        f"/v1/responses/{rid(foreground)}/cancel", headers=service.headers()
    )
    assert refused.status_code == 400
    assert "background" in refused.json()["error"]["message"]


def started(request: ChatRequested, at: datetime | None = None) -> ChatStarted:
    return ChatStarted(
        source="inference",
        tenant=request.tenant,
        request_id=request.request_id,
        time=at or datetime.now(UTC),
        data=ChatStartedData(priority=Priority.BATCH),
    )


async def test_a_background_response_is_queued_until_inference_starts_it(service):
    """OpenAI's lifecycle: `queued` while it waits in the batch lane, `in_progress` once
    inference begins it (`chat.started`), then its outcome."""
    queued = requested({"input": "long task", "background": True}, background=True)
    await service.publish(queued)
    await service.wait_for(queued.request_id, "pending")
    assert (await get(service, f"/v1/responses/{rid(queued)}"))["status"] == "queued"

    await service.publish(started(queued))

    async def running() -> bool:
        view = await get(service, f"/v1/responses/{rid(queued)}")
        return view["status"] == "in_progress"

    await async_wait_until(running, timeout=10, message="in_progress")
    await answered(service, queued, "Done")
    assert (await get(service, f"/v1/responses/{rid(queued)}"))["status"] == "completed"


async def test_a_start_recorded_before_its_request_still_counts(service):
    """Topics are not ordered with each other: `chat.started` (replies) may be recorded
    before `chat.requested` (requests); the first start is kept either way."""
    early = requested({"input": "early", "background": True}, background=True)
    first = datetime.now(UTC)
    await service.publish(started(early, first))
    await service.publish(started(early, first + timedelta(seconds=5)))
    await service.publish(early)
    await service.wait_for(early.request_id, "pending")

    async def running() -> bool:
        view = await get(service, f"/v1/responses/{rid(early)}")
        return view["status"] == "in_progress"

    await async_wait_until(running, timeout=10, message="in_progress")


def test_the_first_start_is_kept_whatever_order_the_events_come_in():
    request = requested({"input": "x", "background": True}, background=True)
    first, later = datetime.now(UTC), datetime.now(UTC) + timedelta(seconds=5)
    rows = [contribution(event) for event in (started(request, first), request)]
    rows.append(contribution(started(request, later)))
    merged = rows[0]
    for row in rows[1:]:
        assert row is not None
        merged = merge(merged, row)
    assert merged["started_at"] == first
    assert merged["request_body"] == request.data.body


async def test_a_background_response_cancelled_for_a_revoked_key_says_why(service):
    """docs/jobs.md: revoking a key cancels its background responses with a 403 error
    coded `credentials_revoked`; one its caller cancelled carries none (as OpenAI's)."""
    from switchyard.common.events import ApiKeyRevoked, ApiKeyRevokedData
    from switchyard.history.revoked_work import cancel_revoked_work

    queued = requested({"input": "long task", "background": True}, background=True)
    await service.publish(queued)
    await service.wait_for(queued.request_id, "pending")
    components = service.components
    revoked = ApiKeyRevoked(
        source="auth",
        tenant="acme",
        request_id=new_id(),
        data=ApiKeyRevokedData(key_id="key-1", user_id="alice"),
    )
    await components.recorder.record([revoked])
    assert await cancel_revoked_work(components.engine, components.recorder, None) == 1

    view = await get(service, f"/v1/responses/{rid(queued)}")
    assert view["status"] == "cancelled"
    assert view["error"]["code"] == "credentials_revoked"

    mine = requested({"input": "mine", "background": True}, background=True, user_id="bob")
    await service.publish(mine)
    await service.wait_for(mine.request_id, "pending", user_id="bob")
    cancel = await service.client.post(
        f"/v1/responses/{rid(mine)}/cancel", headers=service.headers(user_id="bob")
    )
    assert cancel.status_code == 200
    assert (await get(service, f"/v1/responses/{rid(mine)}", user_id="bob"))["error"] is None


async def test_a_response_cancelled_before_history_saw_it_stays_cancelled(service):
    queued = requested({"input": "racing", "background": True}, background=True)
    cancel = await service.client.post(
        f"/v1/responses/{rid(queued)}/cancel?accepted=true", headers=service.headers()
    )
    assert cancel.status_code == 200
    assert cancel.json()["status"] == "cancelled"
    await service.publish(queued)
    await service.wait_for(queued.request_id, "cancelled")
    assert (await get(service, f"/v1/responses/{rid(queued)}"))["status"] == "cancelled"


def restamped(value: str, stamp: str) -> str:
    """`value` (a response id) with other leading hex digits: its creation time."""
    return value[: len("resp_")] + stamp + value[len("resp_") + len(stamp) :]


async def test_only_the_exact_id_a_response_was_given_finds_it(service):
    request = requested({"input": "mine"})
    await answered(service, request)
    real = rid(request)
    one_second_off = response_id(request.request_id, request.time + timedelta(seconds=1))
    for forged in (restamped(real, "ffffffff"), restamped(real, "00000000"), one_second_off):
        assert forged != real
        for path in ("", "/input_items", "/conversation"):
            error = (await get(service, f"/v1/responses/{forged}{path}", 404))["error"]
            assert error["code"] == "response_not_found", (forged, path)
            assert forged in error["message"] and real not in error["message"]
        deleted = await service.client.delete(f"/v1/responses/{forged}", headers=service.headers())
        assert deleted.status_code == 404, deleted.text
        cancelled = await service.client.post(
            f"/v1/responses/{forged}/cancel", headers=service.headers()
        )
        assert cancelled.status_code == 404, cancelled.text
    # The real one is untouched, and found under its own id only.
    assert (await get(service, f"/v1/responses/{real}"))["id"] == real
    assert len(await items(service, [f"msg_out_{request.request_id}"])) == 1


async def test_a_forged_id_cancels_no_background_response(service):
    queued = requested({"input": "long task", "background": True}, background=True)
    await service.publish(queued)
    await service.wait_for(queued.request_id, "pending")
    forged = restamped(rid(queued), "ffffffff")

    for query in ("", "?accepted=true"):
        refused = await service.client.post(
            f"/v1/responses/{forged}/cancel{query}", headers=service.headers()
        )
        assert refused.status_code == 404, refused.text
        assert refused.json()["error"]["code"] == "response_not_found"
    assert (await get(service, f"/v1/responses/{rid(queued)}"))["status"] == "queued"


async def test_a_response_answered_under_another_stamp_is_found_by_that_id(service):
    # A response cache hit is renamed the moment it is answered, which may be a second
    # after its request was stamped: its stored response carries the id it was given.
    request = requested({"input": "cached"})
    given = response_id(request.request_id, request.time + timedelta(seconds=1))
    reply = completed(request, "from the cache")
    reply.data.response["id"] = given
    await service.publish(request, reply, usage(request))
    await service.wait_for(request.request_id, "completed")

    assert (await get(service, f"/v1/responses/{given}"))["id"] == given
    assert (await get(service, f"/v1/responses/{rid(request)}"))["id"] == given
    other = (await get(service, f"/v1/responses/{restamped(given, 'ffffffff')}", 404))["error"]
    assert other["code"] == "response_not_found"


async def test_a_pending_response_cannot_be_continued_or_deleted_yet(service):
    pending = requested({"input": "still thinking"})
    await service.publish(pending)
    await service.wait_for(pending.request_id, "pending")
    assert (await get(service, f"/v1/responses/{rid(pending)}"))["status"] == "in_progress"
    busy = (await get(service, f"/v1/responses/{rid(pending)}/conversation", 409))["error"]
    assert busy["code"] == "response_in_progress"
    delete = await service.client.delete(f"/v1/responses/{rid(pending)}", headers=service.headers())
    assert delete.status_code == 409
    # Not a background response: it cannot be cancelled, so the advice is to wait.
    assert "once it has finished" in delete.json()["error"]["message"]
    background = requested({"input": "later", "background": True}, background=True)
    await service.publish(background)
    await service.wait_for(background.request_id, "pending")
    delete = await service.client.delete(
        f"/v1/responses/{rid(background)}", headers=service.headers()
    )
    assert delete.status_code == 409
    assert "cancel it before deleting it" in delete.json()["error"]["message"]


async def test_of_deletions_at_once_one_deletes_and_the_others_find_it_deleted(service):
    request = requested({"input": "forget me"})
    await answered(service, request)

    answers = await asyncio.gather(
        *(
            service.client.delete(f"/v1/responses/{rid(request)}", headers=service.headers())
            for _ in range(5)
        )
    )

    assert sorted(answer.status_code for answer in answers) == [200, 404, 404, 404, 404]
    assert {answer.json()["error"]["code"] for answer in answers if answer.status_code == 404} == {
        "response_deleted"
    }


async def test_bad_paging_parameters_are_refused_naming_the_parameter(service):
    request = requested({"input": "hi"})
    await answered(service, request)
    path = f"/v1/responses/{rid(request)}/input_items"
    for query, param in (
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=ten", "limit"),
        ("limit=%EF%BC%93", "limit"),  # a full-width 3
        ("order=sideways", "order"),
        ("after=msg_unknown", "after"),
        ("before=msg_unknown", "before"),
    ):
        error = (await get(service, f"{path}?{query}", 400))["error"]
        assert error["param"] == param, query
    missing_identity = await service.client.get(path)
    assert missing_identity.status_code in (401, 403)


async def items(service, ids: list[str], expect: int = 200, **identity) -> list[dict]:
    response = await service.client.post(
        "/v1/responses/items", json={"ids": ids}, headers=service.headers(**identity)
    )
    assert response.status_code == expect, response.text
    return response.json()["data"] if expect == 200 else response.json()


async def test_item_references_find_stored_output_and_input_items_of_the_callers_responses(
    service,
):
    first = requested({"input": "What is 2 + 2?"})
    await answered(service, first, "4")
    second = requested({"input": [{"role": "user", "content": "And 3 + 3?"}]})
    await answered(service, second, "6")
    output_ids = [f"msg_out_{first.request_id}", f"msg_out_{second.request_id}"]
    input_id = f"msg_{second.request_id}_0"  # the id history gave the input item

    found = await items(service, [output_ids[1], "msg_nowhere", input_id, output_ids[0]])
    assert [item["id"] for item in found] == [output_ids[1], input_id, output_ids[0]]
    assert found[0]["content"][0]["text"] == "6"
    assert found[1]["role"] == "user" and found[1]["content"][0]["text"] == "And 3 + 3?"
    assert found[2]["content"][0]["text"] == "4"

    # Only what the caller may read: not another user's (an admin of the tenant may), not
    # another tenant's.
    assert await items(service, output_ids, user_id="bob") == []
    assert await items(service, [input_id], user_id="bob") == []
    assert await items(service, output_ids, tenant="globex") == []
    assert len(await items(service, output_ids, user_id="root", role="admin")) == 2


async def test_item_references_skip_responses_not_stored_or_deleted(service):
    kept = requested({"input": "keep"})
    await answered(service, kept, "kept")
    unstored = requested({"input": "do not keep", "store": False})
    await service.publish(unstored, completed(unstored, "not kept"))
    await service.wait_for(unstored.request_id, "completed")
    deleted = requested({"input": "delete"})
    await answered(service, deleted, "deleted")
    response = await service.client.delete(
        f"/v1/responses/{rid(deleted)}", headers=service.headers()
    )
    assert response.status_code == 200

    ids = [f"msg_out_{r.request_id}" for r in (kept, unstored, deleted)]
    assert [item["id"] for item in await items(service, ids)] == [ids[0]]
    assert await items(service, [f"msg_{deleted.request_id}_0"]) == []


async def test_item_references_read_large_responses_a_few_at_a_time(service, monkeypatch):
    """Looking for an item among recent responses reads their sizes first, and no more
    responses at once than fit in `PAGE_BYTES` (one at least): a request naming an
    unknown id must not load fifty responses of megabytes each together."""
    from switchyard.history import queries

    monkeypatch.setattr(queries, "PAGE_BYTES", 10_000)
    oldest = requested({"input": "first"})
    await answered(service, oldest, "a" * 4_000)
    for n in range(4):
        await answered(service, requested({"input": f"next {n}"}), "b" * 4_000)
    read: list[int] = []
    original = queries.HistoryQueries.recent_response_outputs

    async def counted(self, caller, **options):
        rows = await original(self, caller, **options)
        read.append(len(rows))
        return rows

    monkeypatch.setattr(queries.HistoryQueries, "recent_response_outputs", counted)
    found = await items(service, [f"msg_out_{oldest.request_id}", "msg_nowhere"])
    assert [item["id"] for item in found] == [f"msg_out_{oldest.request_id}"]
    assert found[0]["content"][0]["text"] == "a" * 4_000
    assert read and max(read) == 2 and sum(read) == 5


async def test_item_references_are_bounded_and_checked(service):
    assert (await items(service, [], 400))["error"]["param"] == "ids"
    assert (await items(service, ["x"] * 1001, 400))["error"]["param"] == "ids"
    response = await service.client.post(
        "/v1/responses/items", json={"ids": "msg_1"}, headers=service.headers()
    )
    assert response.status_code == 400


async def test_a_caller_narrowed_to_one_api_key_sees_only_what_that_key_made(service):
    """The gateway narrows a key without `history:read` to its own requests: another key
    of the same user reads, lists, continues and deletes none of them."""
    request = requested({"input": "Hello"})  # made with key-1
    await answered(service, request)
    path = f"/v1/responses/{rid(request)}"

    def narrowed(key: str) -> dict[str, str]:
        return {**service.headers(), "x-switchyard-api-key-only": key}

    own = await service.client.get(path, headers=narrowed("key-1"))
    assert own.status_code == 200, own.text
    for other in (
        await service.client.get(path, headers=narrowed("key-2")),
        await service.client.get(path + "/input_items", headers=narrowed("key-2")),
        await service.client.delete(path, headers=narrowed("key-2")),
    ):
        assert other.status_code == 404, other.text
    listed = await service.client.get("/v1/history", headers=narrowed("key-2"))
    assert listed.json()["data"] == []
    assert (await service.client.get(path, headers=service.headers())).status_code == 200
