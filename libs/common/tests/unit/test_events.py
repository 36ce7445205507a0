"""Event contracts: what goes on the wire comes back identical; anything else is refused."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switchyard.common.asyncapi import asyncapi_document
from switchyard.common.events import (
    EVENT_CLASSES,
    ChatChunk,
    ChatCompleted,
    ChatFailed,
    ChatFailedData,
    ChatRequestData,
    ChatRequested,
    ClientAPI,
    ErrorInfo,
    EventDecodeError,
    ReplyAddress,
    TerminalStatus,
    decode_event,
    encode_event,
    event_json_schema,
)
from switchyard.common.topics import TOPIC_SPECS

DOCS = Path(__file__).parents[4] / "docs" / "events"
SCHEMA_FILE = DOCS / "v2.schema.json"
ASYNCAPI_FILE = DOCS / "asyncapi.json"


def a_request(**overrides) -> ChatRequested:
    data = ChatRequestData(
        api=ClientAPI.OPENAI_CHAT_COMPLETIONS,
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


def test_a_failure_names_what_its_stream_gave_only_when_it_gave_something():
    """A consumer of an earlier release refuses unknown fields: a failure whose stream gave
    nothing travels as it did before, without `response`; one that gave something keeps it."""
    error = ErrorInfo(status=500, type="server_error", message="The upstream failed.")
    failed = ChatFailed(
        source="inference",
        tenant="acme",
        request_id="r1",
        data=ChatFailedData(status=TerminalStatus.FAILED, error=error),
    )
    wire = json.loads(encode_event(failed))
    assert "response" not in wire["data"]
    assert decode_event(encode_event(failed)) == failed

    given = {"object": "response", "output": [{"type": "reasoning", "id": "rs_1"}]}
    streamed = failed.model_copy(
        update={"data": failed.data.model_copy(update={"response": given})}
    )
    assert json.loads(encode_event(streamed))["data"]["response"] == given
    assert decode_event(encode_event(streamed)) == streamed


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
    assert wire["schema_version"] == 2
    assert wire["time"].endswith("Z") or wire["time"].endswith("+00:00")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda wire: wire.update(schema_version=3),
        lambda wire: wire.update(schema_version=0),
        lambda wire: wire.update(type="chat.unknown"),
        lambda wire: wire.pop("tenant"),
        lambda wire: wire["data"].update(deadline="not a date"),
        lambda wire: wire.update(time="2026-01-01T00:00:00"),  # naive timestamps are refused
        # Instants no consumer can convert to UTC (year 0, year 10000), or no event has.
        lambda wire: wire.update(time="0001-01-01T00:00:00+14:00"),
        lambda wire: wire["data"].update(deadline="9999-12-31T23:59:59-14:00"),
        lambda wire: wire.update(time="1969-12-31T23:59:59Z"),
        # Ids and names every consumer keys on and stores: PostgreSQL's text holds no NUL.
        lambda wire: wire.update(request_id="req\u0000-1"),
        lambda wire: wire.update(tenant="acme\u0000"),
        lambda wire: wire.update(id="\u0000"),
        lambda wire: wire["data"].update(user_id="u\u00001"),
        lambda wire: wire["data"].update(team_id="\u0000team"),
        # Longer than history stores them: taken, answered, then refused by history's
        # database, the request was recorded as expired and its usage dead-lettered.
        lambda wire: wire.update(id="e" * 65),
        lambda wire: wire.update(request_id="r" * 65),
        lambda wire: wire.update(source="s" * 65),
        lambda wire: wire.update(tenant="t" * 129),
        lambda wire: wire["data"].update(user_id="u" * 129),
        lambda wire: wire["data"].update(model="m" * 257),
        lambda wire: wire["data"].update(replay_of="r" * 65),
        # Dated after every report's range: stored, never reported.
        lambda wire: wire.update(time="9000-01-01T00:00:00Z"),
    ],
)
def test_invalid_or_unknown_events_are_refused(mutate):
    wire = json.loads(encode_event(a_request()))
    mutate(wire)
    with pytest.raises(EventDecodeError):
        decode_event(json.dumps(wire))


def test_times_at_the_edges_of_the_range_are_taken():
    for time, deadline in [
        ("1970-01-01T00:00:00Z", "9999-12-31T23:59:59Z"),
        ("1970-01-01T10:00:00+10:00", "9999-12-31T22:00:00-01:00"),
    ]:
        wire = json.loads(encode_event(a_request()))
        wire["time"] = time
        wire["data"]["deadline"] = deadline
        assert decode_event(json.dumps(wire)).data.deadline.year == 9999


def test_ids_and_names_at_the_most_history_stores_are_taken():
    wire = json.loads(encode_event(a_request()))
    wire.update(id="e" * 64, request_id="r" * 64, source="s" * 64, tenant="t" * 128)
    wire["data"].update(user_id="u" * 128, model="m" * 256, replay_of="r" * 64)
    wire["time"] = "8999-12-31T23:59:59Z"
    assert decode_event(json.dumps(wire)).request_id == "r" * 64


@pytest.mark.parametrize("number", ["1e309", "-1e309", "Infinity", "NaN"])
@pytest.mark.parametrize(
    "field",
    ["cost_usd", "latency_ms", "time_to_first_token_ms", "saved_cost_usd"],
)
def test_no_number_an_event_carries_is_infinite_or_nan(field, number):
    # JSON has no such number: stored as null, it broke the event store's copy, the
    # projection's "first usage wins", and every sum and rounding reading it.
    usage = {
        "id": "e1",
        "type": "usage.recorded",
        "source": "inference",
        "time": "2026-01-01T00:00:00Z",
        "tenant": "acme",
        "request_id": "r1",
        "schema_version": 2,
        "data": {"model": "m", "user_id": "u1", "status": "completed", "usage": {}},
    }
    raw = json.dumps(usage).replace('"usage": {}', f'"usage": {{}}, "{field}": {number}')
    with pytest.raises(EventDecodeError):
        decode_event(raw)
    assert decode_event(raw.replace(number, "1.5")).data.model_dump()[field] == 1.5


def test_a_cost_or_duration_beyond_any_real_one_is_refused():
    from pydantic import ValidationError

    from switchyard.common.events import MAX_COST_USD, MAX_DURATION_MS, UsageData

    base = {"model": "m", "user_id": "u1", "status": "completed", "usage": {}}
    UsageData(**base, cost_usd=MAX_COST_USD, latency_ms=MAX_DURATION_MS)
    for field, value in [("cost_usd", 1.7e308), ("latency_ms", 1e300)]:
        with pytest.raises(ValidationError):
            UsageData(**base, **{field: value})


@pytest.mark.parametrize("length", [1, 32, 33, 64])
def test_a_derived_event_id_fits_history_and_is_the_same_every_time(length):
    from switchyard.common.events import MAX_EVENT_ID_LENGTH, derived_event_id

    event_id = "e" * length
    reply = derived_event_id(event_id, "reply.0123456789abcdef")
    chunk = derived_event_id(event_id, "0123456789abcdef.chunk-12345678")
    assert len(reply) <= MAX_EVENT_ID_LENGTH and len(chunk) <= MAX_EVENT_ID_LENGTH
    assert reply == derived_event_id(event_id, "reply.0123456789abcdef")
    assert reply != derived_event_id("f" * length, "reply.0123456789abcdef")
    if length <= 32:  # Switchyard's own ids: kept readable, and as they were
        assert reply == f"{event_id}.reply.0123456789abcdef"


def test_malformed_json_is_refused():
    with pytest.raises(EventDecodeError):
        decode_event(b"{not json")


def test_published_schema_is_up_to_date():
    """docs/events/v2.schema.json is generated from the models (`make schema`)."""
    committed = json.loads(SCHEMA_FILE.read_text())
    assert committed == json.loads(json.dumps(event_json_schema())), "regenerate: make schema"


def test_published_asyncapi_document_is_up_to_date():
    """docs/events/asyncapi.json is generated from the models and topics (`make schema`)."""
    committed = json.loads(ASYNCAPI_FILE.read_text())
    assert committed == json.loads(json.dumps(asyncapi_document())), "regenerate: make schema"


def test_asyncapi_lists_every_topic_and_every_event_on_a_topic():
    document = asyncapi_document()
    addresses = {channel["address"] for channel in document["channels"].values()}
    assert addresses == {"{prefix}." + spec.suffix for spec in TOPIC_SPECS}
    carried = {
        message["$ref"].rsplit("/", 1)[-1]
        for channel in document["channels"].values()
        for message in channel["messages"].values()
    }
    assert carried == {cls.__name__ for cls in EVENT_CLASSES}
    for operation in document["operations"].values():
        channel_id = operation["channel"]["$ref"].rsplit("/", 1)[-1]
        for message in operation["messages"]:
            assert message["$ref"].startswith(f"#/channels/{channel_id}/messages/")


V1_REQUEST = {
    "id": "e1",
    "type": "chat.requested",
    "source": "gateway",
    "time": "2026-01-01T00:00:00Z",
    "tenant": "acme",
    "request_id": "r1",
    "schema_version": 1,
    "data": {
        "api": "anthropic",
        "operation": "chat",
        "model": "sim-small",
        "body": {"model": "sim-small", "messages": [{"role": "user", "content": "Hi"}]},
        "stream": False,
        "user_id": "u1",
        "deadline": "2026-01-01T00:01:00Z",
    },
}


def test_version_1_request_is_read_as_version_2_in_openai_chat_shape():
    """A v1 request (still in a topic during an upgrade) carried an OpenAI-shaped body,
    even when the client had called the Anthropic API."""
    event = decode_event(json.dumps(V1_REQUEST))
    assert isinstance(event, ChatRequested)
    assert event.schema_version == 2
    assert event.data.api is ClientAPI.OPENAI_CHAT_COMPLETIONS
    assert event.data.body == V1_REQUEST["data"]["body"]


def test_version_1_chunk_and_embeddings_reply_are_upgraded():
    chunk = {
        **V1_REQUEST,
        "type": "chat.chunk",
        "data": {"sequence": 4, "chunk": {"id": "c", "choices": []}},
    }
    event = decode_event(json.dumps(chunk))
    assert isinstance(event, ChatChunk)
    assert event.data.sequence == 4
    assert [e.data for e in event.data.events] == [{"id": "c", "choices": []}]
    completed = {
        **V1_REQUEST,
        "type": "chat.completed",
        "data": {
            "response": {"object": "list", "data": []},
            "provider": "openai",
            "deployment": "d",
            "usage": {"input_tokens": 3, "output_tokens": 0},
            "latency_ms": 1.0,
        },
    }
    event = decode_event(json.dumps(completed))
    assert isinstance(event, ChatCompleted)
    assert event.data.api is ClientAPI.OPENAI_EMBEDDINGS
    assert event.data.usage.input_tokens == 3


# Any JSON value: what a buggy or old producer could put anywhere in an event.
_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(["chat.requested", "chat.completed", "chat.chunk", "chat.failed", "x"]),
    version=st.sampled_from([1, 2, 3, "1", None]),
    data=st.dictionaries(
        st.sampled_from(["api", "operation", "model", "response", "sequence", "chunk", "body"]),
        _json_values,
        max_size=4,
    )
    | _json_values,
)
def test_no_document_fails_decoding_other_than_as_undecodable(kind, version, data) -> None:
    # Consumers dead-letter or skip what raises EventDecodeError; anything else raised here
    # would crash them on one record (a version 1 event with a list in `data.api` did).
    document = {
        "id": "e1",
        "type": kind,
        "source": "gateway",
        "time": "2026-12-01T00:00:00Z",
        "tenant": "t",
        "request_id": "r1",
        "schema_version": version,
        "data": data,
    }
    try:
        decode_event(orjson.dumps(document))
    except EventDecodeError:
        pass


@pytest.mark.parametrize(
    "data",
    [{"api": ["openai"], "model": "m"}, {"api": "openai", "operation": {"x": 1}}],
)
def test_a_version_1_request_naming_its_api_as_a_list_is_undecodable(data) -> None:
    document = {
        "id": "e1",
        "type": "chat.requested",
        "source": "gateway",
        "time": "2026-12-01T00:00:00Z",
        "tenant": "t",
        "request_id": "r1",
        "schema_version": 1,
        "data": data,
    }
    with pytest.raises(EventDecodeError):
        decode_event(orjson.dumps(document))


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=64))
def test_no_bytes_fail_decoding_other_than_as_undecodable(raw) -> None:
    try:
        decode_event(raw)
    except EventDecodeError:
        pass


def _nested(depth: int) -> object:
    value: object = "leaf"
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize("depth", [190, 210, 250])
def test_every_event_the_serialiser_writes_is_read_back_however_deep(depth: int) -> None:
    """An upstream's reply (or tool arguments parsed from it) nested deeper than pydantic's
    JSON parser goes (200 levels) but within what the serialiser writes (254): published,
    it must be read by every consumer, not skipped by the gateway and dead-lettered by
    history while the client waits."""
    from switchyard.common.bus.base import serialise
    from switchyard.common.testing.events import chat_requested

    event = chat_requested(body={"model": "m", "messages": [], "deep": _nested(depth)})

    decoded = decode_event(serialise(event))

    assert decoded == event


def test_a_deep_event_keeps_its_integers_beyond_64_bits() -> None:
    from switchyard.common.bus.base import serialise
    from switchyard.common.testing.events import chat_requested

    big = 123456789012345678901234567890
    event = chat_requested(body={"model": "m", "messages": [], "n": big, "deep": _nested(230)})

    decoded = decode_event(serialise(event))

    assert decoded == event and decoded.data.body["n"] == big


def test_a_deep_document_that_is_no_event_is_still_refused() -> None:
    raw = orjson.dumps({"type": "chat.requested", "deep": _nested(250)})
    with pytest.raises(EventDecodeError):
        decode_event(raw)
    with pytest.raises(EventDecodeError):
        decode_event(orjson.dumps(_nested(250)))
