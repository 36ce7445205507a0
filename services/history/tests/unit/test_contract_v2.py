"""History on event contract version 2: requests recorded in the API the client called,
the API their deployment was called with, cache and reasoning tokens,
metadata-only storage of Anthropic replies, version 1 events still recorded, and the
migration of version 1 rows (on SQLite here, on PostgreSQL in the integration suite)."""

from __future__ import annotations

import orjson
from sqlalchemy import text

from switchyard.common.events import ClientAPI, decode_event


async def test_an_anthropic_request_is_recorded_and_served_in_anthropics_api(
    service, recorder, events
):
    request = events.requested(api=ClientAPI.ANTHROPIC_MESSAGES, model="sim-claude")
    request.data.body["system"] = [
        {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}
    ]
    completed = events.completed(
        request,
        answer="Hello!",
        input_tokens=120,
        output_tokens=30,
        upstream_api=ClientAPI.OPENAI_CHAT_COMPLETIONS,
        cache_read_input_tokens=100,
        cache_creation_input_tokens=15,
        reasoning_tokens=12,
    )
    await recorder.record([request, completed])

    item = (
        await service.client.get(f"/v1/history/{request.request_id}", headers=service.headers())
    ).json()
    assert (item["api"], item["client_api"], item["upstream_api"]) == (
        "anthropic.messages",
        "anthropic.messages",
        "openai.chat_completions",
    )
    assert item["request"] == request.data.body
    assert item["response"]["content"] == [{"type": "text", "text": "Hello!"}]
    # No usage record yet: the reply's own usage is shown, cache and reasoning included.
    assert item["usage"] == {
        "input_tokens": 120,
        "output_tokens": 30,
        "total_tokens": 150,
        "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 15,
        "cache_creation_1h_input_tokens": 0,
        "reasoning_tokens": 12,
    }


async def test_the_usage_record_is_what_history_keeps(recorder, tables, events):
    request = events.requested()
    await recorder.record(
        [
            events.usage(request, input_tokens=50, cache_read_input_tokens=40, reasoning_tokens=2),
            request,
            events.completed(request, input_tokens=10, cache_read_input_tokens=1),
        ]
    )
    row = await tables.request(request.request_id)
    assert (row["input_tokens"], row["cache_read_input_tokens"], row["reasoning_tokens"]) == (
        50,
        40,
        2,
    )
    assert row["cache_creation_input_tokens"] == 0


async def test_embeddings_requests_are_recorded_as_openai_embeddings(recorder, tables, events):
    request = events.requested(api=ClientAPI.OPENAI_EMBEDDINGS)
    await recorder.record([request])
    row = await tables.request(request.request_id)
    assert (row["api"], row["client_api"]) == ("openai.embeddings", "openai.embeddings")


async def test_a_version_1_event_is_recorded_as_version_2(recorder, tables):
    # An Anthropic client's request of contract version 1, still in a topic during the
    # upgrade: its body was translated to Chat Completions, and is recorded as such.
    raw = {
        "id": "e-1",
        "type": "chat.requested",
        "source": "gateway",
        "time": "2025-03-01T12:00:00Z",
        "tenant": "acme",
        "request_id": "r-v1",
        "schema_version": 1,
        "data": {
            "api": "anthropic",
            "operation": "chat",
            "model": "sim-small",
            "body": {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}]},
            "user_id": "alice",
            "deadline": "2025-03-01T12:02:00Z",
        },
    }
    await recorder.record([decode_event(orjson.dumps(raw))])
    row = await tables.request("r-v1")
    assert (row["api"], row["client_api"]) == ("openai.chat_completions", "openai.chat_completions")
    assert row["request_body"] == raw["data"]["body"]


async def test_metadata_only_keeps_no_text_of_an_anthropic_exchange(
    service, recorder, tables, events
):
    admin = service.headers(user_id="root", role="admin")
    await service.client.put("/v1/history/settings", json={"store_content": False}, headers=admin)
    # Texts no id or timestamp of a row can hold by chance (a time's microseconds may
    # read 432126).
    request = events.requested(api=ClientAPI.ANTHROPIC_MESSAGES, prompt="my pin is PIN-4321")
    request.data.body["system"] = "the secret word is swordfish"
    request.data.body["thinking"] = {"type": "enabled", "budget_tokens": 1024}
    await recorder.record([request, events.completed(request, answer="PIN-4321 and swordfish")])

    item = (
        await service.client.get(f"/v1/history/{request.request_id}", headers=service.headers())
    ).json()
    assert item["request"]["message_roles"] == ["user"]
    assert item["request"]["max_tokens"] == 256
    assert {key: item["response"][key] for key in ("type", "role", "stop_reason")} == {
        "type": "message",
        "role": "assistant",
        "stop_reason": "end_turn",
    }
    assert "content" not in item["response"]
    dump = []
    async with tables.engine.connect() as connection:
        for table in ("history_requests", "history_events"):
            dump += [str(row) for row in (await connection.execute(text(f"SELECT * FROM {table}")))]
    assert not [row for row in dump if "PIN-4321" in row or "swordfish" in row]


async def test_version_1_rows_migrate_and_are_served_next_to_version_2_rows(
    tmp_path, events, v1_migration_check
):
    await v1_migration_check(f"sqlite+aiosqlite:///{tmp_path / 'v1.db'}", events)
