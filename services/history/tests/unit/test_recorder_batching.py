"""The recorder folds a batch's contributions per request before writing (one row write
per request per batch): whatever the batching, the rows are those of applying every event
on its own. Also: webhooks registered, auth events kept, privacy, time and duration
parsing."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from switchyard.common.db import upgrade
from switchyard.common.events import ApiKeyRevoked, ApiKeyRevokedData, Priority, TerminalStatus
from switchyard.history.bootstrap import history_engine
from switchyard.history.config import MIGRATIONS_DIR, VERSION_TABLE
from switchyard.history.handlers import EventRecorder
from switchyard.history.models import requests_table, webhooks_table
from switchyard.history.privacy import redact_payload, redact_request_body, redact_response
from switchyard.history.timeparse import TimeFormatError, parse_duration, parse_instant


def _story(events, index: int) -> list:
    request = events.requested(user_id=f"user-{index % 3}", model=f"m{index % 2}")
    kind = index % 4
    if kind == 0:
        return [request, events.completed(request), events.usage(request)]
    if kind == 1:
        return [request, events.failed(request), events.usage(request, cost_usd=0)]
    if kind == 2:  # a late failure after the completion
        return [request, events.completed(request), events.failed(request), events.chunk(request)]
    return [request]


async def _rows_after(tmp_path, name: str, batches: list[list]) -> dict:
    url = f"sqlite+aiosqlite:///{tmp_path / name}.db"
    upgrade(MIGRATIONS_DIR, url, VERSION_TABLE)
    engine = history_engine(url)
    try:
        recorder = EventRecorder(engine)
        for batch in batches:
            await recorder.record(batch)
        async with engine.connect() as connection:
            rows = (await connection.execute(select(requests_table))).mappings().all()
        return {row["request_id"]: dict(row) for row in rows}
    finally:
        await engine.dispose()


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_any_batching_gives_the_rows_of_one_event_at_a_time(tmp_path, events, seed):
    generator = random.Random(seed)
    stories = [_story(events, index) for index in range(24)]
    stream = [event for story in stories for event in story]
    generator.shuffle(stream)
    stream += generator.sample(stream, 10)  # redeliveries
    reference = await _rows_after(tmp_path, f"single-{seed}", [[event] for event in stream])

    batches, position = [], 0
    while position < len(stream):
        size = generator.randint(1, 15)
        batches.append(stream[position : position + size])
        position += size
    batched = await _rows_after(tmp_path, f"batched-{seed}", batches)
    whole = await _rows_after(tmp_path, f"whole-{seed}", [stream])

    assert batched == reference
    assert whole == reference
    assert len(reference) == 24


async def test_a_job_with_a_webhook_registers_it_once(recorder, engine, events):
    job = events.requested(priority=Priority.BATCH, webhook_url="https://example.com/hook")
    plain = events.requested(priority=Priority.BATCH)
    await recorder.record([job, plain])
    await recorder.record([job])

    async with engine.connect() as connection:
        rows = (await connection.execute(select(webhooks_table))).mappings().all()
    assert [(row["request_id"], row["url"], row["status"]) for row in rows] == [
        (job.request_id, "https://example.com/hook", "pending")
    ]


async def test_auth_events_are_kept_in_the_event_store_only(recorder, tables):
    revoked = ApiKeyRevoked(
        source="auth",
        tenant="acme",
        request_id="audit-1",
        data=ApiKeyRevokedData(key_id="key-1", user_id="alice"),
    )
    await recorder.record([revoked, revoked])

    assert await tables.event_ids() == [revoked.id]
    assert await tables.requests() == {}


async def test_text_with_nul_characters_is_stored(recorder, tables, events):
    request = events.requested(prompt="before\x00after")
    await recorder.record([request])
    assert (await tables.request(request.request_id))["status"] == "pending"


async def test_metadata_only_tenants_keep_counts_not_text(engine, recorder, tables, events):
    from switchyard.history.tenants import TenantSettingsStore

    await TenantSettingsStore(engine).update("quiet", store_content=False)
    request = events.requested(tenant="quiet", prompt="secret plan")
    await recorder.record([request, events.failed(request, status=TerminalStatus.EXPIRED)])

    row = await tables.request(request.request_id)
    assert row["request_body"] == {
        "model": "sim-small",
        "message_count": 1,
        "message_roles": ["user"],
        "redacted": True,
    }
    assert row["status"] == "expired"


def test_redaction_keeps_metadata_only():
    body = {
        "model": "m",
        "temperature": 0.2,
        "max_tokens": 9,
        "user": "end-user-123",
        "stop": ["secret"],
        "tools": [{"type": "function", "function": {"name": "lookup", "description": "x"}}],
        "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
    }
    response = {
        "id": "c1",
        "object": "chat.completion",
        "model": "m",
        "usage": {"prompt_tokens": 1},
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"content": "secret"}}],
    }
    assert redact_request_body(body) == {
        "model": "m",
        "temperature": 0.2,
        "max_tokens": 9,
        "message_count": 2,
        "message_roles": ["system", "user"],
        "redacted": True,
    }
    assert "secret" not in str(redact_response(response))
    assert redact_response(response)["usage"] == {"prompt_tokens": 1}
    payload = {"type": "chat.requested", "data": {"body": body, "user_id": "u"}}
    assert "secret" not in str(redact_payload(payload))
    assert redact_payload(payload)["data"]["user_id"] == "u"


def test_instants_and_durations():
    now = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
    assert parse_instant("2025-03-01", now=now) == datetime(2025, 3, 1, tzinfo=UTC)
    assert parse_instant("2025-03-01T12:00:00Z") == datetime(2025, 3, 1, 12, tzinfo=UTC)
    assert parse_instant("2025-03-01T13:00:00+01:00") == datetime(2025, 3, 1, 12, tzinfo=UTC)
    assert parse_instant("2025-03-01T12:00:00") == datetime(2025, 3, 1, 12, tzinfo=UTC)
    assert parse_instant("7d", now=now) == now - timedelta(days=7)
    assert parse_instant("90m", now=now) == now - timedelta(minutes=90)
    assert parse_duration("2w") == timedelta(days=14)
    for bad in ("", "yesterday", "2025-02-30", "7 days", "-1d", "12x"):
        with pytest.raises(TimeFormatError):
            parse_instant(bad)


@pytest.mark.parametrize("text", ["0001-01-01", "1969-12-31", "9999-12-31", "0001-01-01T00:00:00Z"])
def test_a_valid_time_out_of_range_is_refused_as_out_of_range(text: str) -> None:
    # Whether a date alone or a full instant, the reason is the range, not the format.
    with pytest.raises(TimeFormatError, match="out of range"):
        parse_instant(text)


# Full-width, Arabic-Indic and Devanagari sevens.
@pytest.mark.parametrize("text", ["\uff17d", "\u0667d", "\u0967h"])
def test_a_duration_takes_ascii_digits_only(text: str) -> None:
    with pytest.raises(TimeFormatError):
        parse_duration(text)
