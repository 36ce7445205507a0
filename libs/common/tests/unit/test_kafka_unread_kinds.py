"""Which Kafka records a batch group passes over unread (`subscribe_batch`'s
`skip_types`): only those whose `type` header and own envelope both name a skipped type,
so a record with a misleading or doubled header is decoded and handled, never lost."""

from __future__ import annotations

from aiokafka.structs import ConsumerRecord

from switchyard.common.bus.base import serialise
from switchyard.common.bus.kafka import _unread_kind
from switchyard.common.events import (
    ChatChunk,
    ChatChunkData,
    ChatRequestData,
    ChatRequested,
    ClientAPI,
    StreamEvent,
    utcnow,
)

CHUNK = b"chat.chunk"
SKIPPED = frozenset({CHUNK})


def record(value: bytes | None, headers: list[tuple[str, bytes]]) -> ConsumerRecord:
    return ConsumerRecord("sy.replies", 0, 1, 0, 0, b"req-1", value, None, -1, -1, tuple(headers))


def chunk() -> bytes:
    return serialise(
        ChatChunk(
            source="inference",
            tenant="acme",
            request_id="req-1",
            # A `type` key inside the data, as every stream event has: never the one read.
            data=ChatChunkData(
                sequence=0, run="r", events=[StreamEvent(data={"type": "chat.completed"})]
            ),
        )
    )


def request(source: str = "gateway") -> bytes:
    return serialise(
        ChatRequested(
            source=source,
            tenant="acme",
            request_id="req-1",
            data=ChatRequestData(
                api=ClientAPI.OPENAI_CHAT_COMPLETIONS,
                model="m",
                body={"type": "chat.chunk", "messages": [{"role": "user", "content": "hi"}]},
                user_id="u",
                deadline=utcnow(),
            ),
        )
    )


def test_a_chunk_named_by_its_header_is_passed_over():
    assert _unread_kind(record(chunk(), [("type", CHUNK)]), SKIPPED)


def test_a_header_alone_never_makes_an_event_go_unread():
    # A request on its way to history with a chunk's header: decoded and recorded.
    assert not _unread_kind(record(request(), [("type", CHUNK)]), SKIPPED)
    # The header given twice, whichever comes first: decoded.
    for headers in (
        [("type", CHUNK), ("type", b"chat.requested")],
        [("type", CHUNK), ("type", CHUNK)],
    ):
        assert not _unread_kind(record(chunk(), headers), SKIPPED)
    # No header, another type's header, or no value: decoded (or dead-lettered).
    assert not _unread_kind(record(chunk(), []), SKIPPED)
    assert not _unread_kind(record(chunk(), [("type", b"chat.requested")]), SKIPPED)
    assert not _unread_kind(record(None, [("type", CHUNK)]), SKIPPED)
    # A value whose own type merely begins like the skipped one.
    longer = chunk().replace(b'"type":"chat.chunk"', b'"type":"chat.chunkier"', 1)
    assert not _unread_kind(record(longer, [("type", CHUNK)]), SKIPPED)


def test_a_type_written_inside_a_string_is_not_the_events_own():
    # `"type":"chat.chunk"` inside a string value is escaped (`\"type\":...`): the
    # envelope's own key is the first unescaped one.
    forged = request(source='x"type":"chat.chunk"')
    assert b'\\"type\\":\\"chat.chunk' in forged
    assert not _unread_kind(record(forged, [("type", CHUNK)]), SKIPPED)


def test_a_type_inside_data_written_first_is_not_the_events_own():
    # JSON written by hand with `data` before the envelope's fields: the first `"type":"`
    # is a reply's own, inside `data`. A completed reply with a chunk's header is decoded
    # (and recorded), not passed over.
    wire = (
        b'{"data":{"api":"openai.chat_completions","response":{"type":"chat.chunk"}},'
        b'"type":"chat.completed","id":"e","source":"x","tenant":"acme","request_id":"r"}'
    )
    assert not _unread_kind(record(wire, [("type", CHUNK)]), SKIPPED)
