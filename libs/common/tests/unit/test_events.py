"""Event contracts: what goes on the wire comes back identical; anything else is refused."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from switchyard.common.events import (
    ChatRequestData,
    ChatRequested,
    EventDecodeError,
    ReplyAddress,
    decode_event,
    encode_event,
    event_json_schema,
)

SCHEMA_FILE = Path(__file__).parents[4] / "docs" / "events" / "v1.schema.json"


def a_request(**overrides) -> ChatRequested:
    data = ChatRequestData(
        model="sim-small",
        body={"model": "sim-small", "messages": []},
        user_id="u1",
        deadline=datetime.now(UTC) + timedelta(seconds=30),
        reply_to=ReplyAddress(partition=3, instance_id="gw-1"),
    )
    return ChatRequested(source="gateway", tenant="acme", request_id="r1", data=data, **overrides)


def test_round_trip_keeps_every_field():
    event = a_request()
    decoded = decode_event(encode_event(event))
    assert decoded == event
    assert decoded.time.tzinfo is not None


def test_wire_format_is_json_with_the_envelope():
    wire = json.loads(encode_event(a_request()))
    assert {
        "id",
        "type",
        "source",
        "time",
        "tenant",
        "request_id",
        "schema_version",
        "data",
    } <= set(wire)
    assert wire["type"] == "chat.requested"
    assert wire["schema_version"] == 1
    assert wire["time"].endswith("Z") or wire["time"].endswith("+00:00")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda wire: wire.update(schema_version=2),
        lambda wire: wire.update(type="chat.unknown"),
        lambda wire: wire.pop("tenant"),
        lambda wire: wire["data"].update(deadline="not a date"),
        lambda wire: wire.update(time="2026-01-01T00:00:00"),  # naive timestamps are refused
    ],
)
def test_invalid_or_unknown_events_are_refused(mutate):
    wire = json.loads(encode_event(a_request()))
    mutate(wire)
    with pytest.raises(EventDecodeError):
        decode_event(json.dumps(wire))


def test_malformed_json_is_refused():
    with pytest.raises(EventDecodeError):
        decode_event(b"{not json")


def test_published_schema_is_up_to_date():
    """docs/events/v1.schema.json is generated from the models (`switchyard events schema`)."""
    committed = json.loads(SCHEMA_FILE.read_text())
    assert committed == json.loads(json.dumps(event_json_schema())), (
        "regenerate with: switchyard events schema --output docs/events/v1.schema.json"
    )
