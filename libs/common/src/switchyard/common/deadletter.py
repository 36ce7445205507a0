"""The dead-letter topic on Kafka (`<prefix>.deadletter`): list what no consumer could
handle, and replay chosen records to the topics they came from once the cause is fixed
(`switchyard deadletter list` and `switchyard deadletter replay`).

A dead letter is a copy of the original record (value, key, headers) with its coordinates
added as headers by `KafkaBus.dead_letter`: `deadletter.topic`, `.partition`, `.offset`,
`.group`, `.reason`, and `.left_out` for a stub whose record could not be copied whole.
Replaying publishes the original value, key and headers (the `deadletter.*` ones taken
off) to the original topic and partition (the key's partition if the topic has fewer
partitions now), with `deadletter.replayed_from: <partition>:<offset>` added, and then a
marker on the dead-letter topic (`deadletter.replay_of`, `deadletter.replayed_to` and
`deadletter.replay_sent`, no value) so that the next listing shows the letter as
replayed and `replay --all` passes over it.

Every group on the topic receives the replayed record, not only the one that failed; so
the letters several groups left of one record (the same topic, partition and offset) are
replayed as one record, and each gets its marker:
that is safe because every consumer takes an event twice without harm (history stores an
event id once; inference looks a request carrying `deadletter.replayed_from` up on its
reply partition before running it, as it does a redelivery, and answers a request whose
deadline has passed as expired without calling the upstream; a gateway drops a reply or
usage event of a request it no longer waits for). Two operators replaying the same letter
at the same moment both publish it; that is safe for the same reason.

Embedded mode's in-memory bus keeps its dead letters in memory only; this module speaks
to Kafka.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson
import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from switchyard.common.bus.kafka import (
    FETCH_MAX_BYTES,
    REPLAYED_FROM_HEADER,
    UNREADABLE_REASON,
    RecordReader,
    skipping_unreadable,
    unescape_deadletter_header,
)
from switchyard.common.kafka_admin import partition_count
from switchyard.common.kafka_security import client_options
from switchyard.common.topics import TOPIC_SPECS, Topics

log = structlog.get_logger("switchyard.common.deadletter")

HEADER_PREFIX = "deadletter."
REPLAY_OF_HEADER = "deadletter.replay_of"
"""Header of a replay marker on the dead-letter topic: the replayed letter's id."""
REPLAYED_TO_HEADER = "deadletter.replayed_to"
"""Header of a replay marker: `<topic>` or `<topic>:<partition>` the letter went to."""
REPLAY_SENT_HEADER = "deadletter.replay_sent"
"""Header of a replay marker: the id of the letter whose record was sent, one for every
marker of one replay (the record's other letters are marked with it)."""

_ID = re.compile(r"^(\d{1,9}):(\d{1,19})$")
# Attempts at writing a replay's marker once its record went.
MARKER_ATTEMPTS = 3


class RawPublisher(Protocol):
    """What a replay needs of the bus (`KafkaBus` has both)."""

    async def partition_count(self, topic: str) -> int:
        """How many partitions `topic` has."""
        ...

    async def publish_raw(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None,
        partition: int | None,
        headers: Sequence[tuple[str, bytes]],
    ) -> None:
        """Publish one record as it is, acknowledged by every in-sync replica."""
        ...


class DeadLetterError(Exception):
    """A dead letter that cannot be replayed (a stub, unknown, replayed already) or an id
    that is not `<partition>:<offset>`; the message says which and why."""


class MarkerNotWrittenError(DeadLetterError):
    """A letter was replayed, but the marker recording it could not be written: the next
    listing will not show the replay, so it must not be replayed again by hand."""


@dataclass(frozen=True)
class Replay:
    """One earlier replay of a letter: where it went and when (UTC), and which letter's
    record was sent (None in markers written before they said so)."""

    to: str
    at: datetime
    sent: str | None = None


@dataclass
class DeadLetter:
    """One record of the dead-letter topic.

    `partition`/`offset`: where it sits on the dead-letter topic (its id: `"p:o"`).
    `topic`/`source_partition`/`source_offset`: where the original record was (empty / None
    when the headers lack them). `key`, `value` and `headers`: the original record's (its
    headers without the `deadletter.*` ones). `left_out`: set for a stub, whose value was
    not kept. `replays`: the replays recorded by markers, oldest first."""

    partition: int
    offset: int
    at: datetime
    topic: str
    source_partition: int | None
    source_offset: int | None
    group: str
    reason: str
    left_out: str | None
    # The letter this record was replayed from, when it failed again after a replay.
    replayed_from: str | None
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    replays: list[Replay] = field(default_factory=list)
    # The topics a letter of this deployment may be replayed to (empty: not checked):
    # the dead-letter topic is written by every service, so the topic a letter names is
    # only as trustworthy as the least of them.
    replay_targets: frozenset[str] = frozenset()
    # The value read as JSON, once `named` needed it ({} when it is not an object).
    _document: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def id(self) -> str:
        """`<partition>:<offset>` on the dead-letter topic."""
        return f"{self.partition}:{self.offset}"

    def header(self, name: str) -> str | None:
        """The original record's header `name`, decoded (UTF-8, errors replaced)."""
        for key, value in self.headers:
            if key == name:
                return value.decode(errors="replace")
        return None

    def named(self, name: str) -> str | None:
        """The original record's `name` (`type`, `request_id`): its header, else the field
        of its JSON value (a record published without headers still says which event it
        was), None when neither says it as a string."""
        value = self.header(name)
        if value is not None:
            return value
        if self._document is None:
            try:
                document = orjson.loads(self.value) if self.value else None
            except orjson.JSONDecodeError:
                document = None
            self._document = document if isinstance(document, dict) else {}
        field_value = self._document.get(name)
        return field_value if isinstance(field_value, str) else None

    def replayable(self) -> str | None:
        """Why this letter cannot be replayed (None if it can)."""
        if self.left_out is not None:
            return f"it is a stub, its record was not kept ({self.left_out})"
        if self.reason.startswith(UNREADABLE_REASON) and not self.value:
            # Written before stubs of unreadable records said so.
            return "it is a stub, its record was not kept (the Kafka client could not read it)"
        if not self.topic:
            return "it does not say which topic it came from"
        if self.replay_targets and self.topic not in self.replay_targets:
            return (
                f"it names {self.topic!r}, which is not a topic of this deployment "
                f"({', '.join(sorted(self.replay_targets))})"
            )
        return None

    def summary(self) -> dict[str, Any]:
        """A JSON-ready description (no value bytes): what `list --json` prints."""
        return {
            "id": self.id,
            "dead_lettered_at": self.at.isoformat(),
            "topic": self.topic,
            "partition": self.source_partition,
            "offset": self.source_offset,
            "group": self.group,
            "reason": self.reason,
            "type": self.named("type"),
            "request_id": self.named("request_id"),
            "value_bytes": len(self.value),
            "left_out": self.left_out,
            "replayed_from": self.replayed_from,
            "replays": [{"to": replay.to, "at": replay.at.isoformat()} for replay in self.replays],
        }


def parse_id(text: str) -> tuple[int, int]:
    """`"<partition>:<offset>"` as two integers; raises DeadLetterError otherwise."""
    match = _ID.match(text.strip())
    if match is None:
        raise DeadLetterError(
            f"{text!r} is not a dead letter id: expected <partition>:<offset>, as "
            "`switchyard deadletter list` prints it (e.g. 0:17)"
        )
    return int(match[1]), int(match[2])


def _text(headers: dict[str, bytes], name: str) -> str | None:
    value = headers.get(name)
    return None if value is None else value.decode(errors="replace")


def _number(headers: dict[str, bytes], name: str) -> int | None:
    text = _text(headers, name)
    return int(text) if text is not None and text.isdigit() else None


def replay_targets(deadletter_topic: str) -> frozenset[str]:
    """The topics a letter of the dead-letter topic `deadletter_topic` may be replayed to:
    every topic of its deployment (the prefix it carries) but the dead-letter topic."""
    prefix = deadletter_topic.removesuffix(".deadletter")
    topics = Topics(prefix)
    return frozenset(
        topics.name(spec.suffix) for spec in TOPIC_SPECS if spec.suffix != "deadletter"
    )


def from_records(
    records: Iterable[ConsumerRecord], deadletter_topic: str | None = None
) -> list[DeadLetter]:
    """The dead letters among `records` of the dead-letter topic, in (partition, offset)
    order, each with the replays its markers record. A marker naming no letter among
    `records` is ignored. Given the `deadletter_topic` they were read from, a letter
    naming a topic outside its deployment cannot be replayed (`replay_targets`)."""
    targets = replay_targets(deadletter_topic) if deadletter_topic else frozenset()
    letters: dict[str, DeadLetter] = {}
    markers: list[tuple[str, Replay]] = []
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        headers = list(record.headers or ())
        coordinates = {name: value for name, value in headers if name.startswith(HEADER_PREFIX)}
        at = datetime.fromtimestamp(max(record.timestamp, 0) / 1000, UTC)
        replay_of = _text(coordinates, REPLAY_OF_HEADER)
        if replay_of is not None:
            to = _text(coordinates, REPLAYED_TO_HEADER) or ""
            markers.append((replay_of, Replay(to, at, _text(coordinates, REPLAY_SENT_HEADER))))
            continue
        letter = DeadLetter(
            partition=record.partition,
            offset=record.offset,
            at=at,
            topic=_text(coordinates, "deadletter.topic") or "",
            source_partition=_number(coordinates, "deadletter.partition"),
            source_offset=_number(coordinates, "deadletter.offset"),
            group=_text(coordinates, "deadletter.group") or "",
            reason=_text(coordinates, "deadletter.reason") or "",
            left_out=_text(coordinates, "deadletter.left_out"),
            replayed_from=_text(coordinates, REPLAYED_FROM_HEADER),
            key=record.key,
            value=record.value or b"",
            headers=[
                (unescape_deadletter_header(name), value)
                for name, value in headers
                if not name.startswith(HEADER_PREFIX)
            ],
            replay_targets=targets,
        )
        letters[letter.id] = letter
    for letter_id, replay in markers:
        if letter_id in letters:
            letters[letter_id].replays.append(replay)
    # One record several groups left letters of was replayed whole by the replay of any
    # of them (every group received it): each of its letters shows that replay.
    for same in by_record(list(letters.values())):
        if len(same) > 1:
            # One replay marks each letter: its markers name the letter sent, and are one.
            seen: dict[object, Replay] = {}
            for replay in sorted((r for one in same for r in one.replays), key=lambda r: r.at):
                seen.setdefault((replay.sent, replay.to) if replay.sent else replay, replay)
            replays = list(seen.values())
            for one in same:
                one.replays = list(replays)
    return list(letters.values())


async def read_dead_letters(
    bootstrap_servers: str,
    topic: str,
    *,
    max_message_bytes: int,
    timeout_s: float = 30.0,
    read_timeout_s: float = 600.0,
) -> list[DeadLetter]:
    """Every dead letter on `topic`, read from the beginning of each partition up to its
    end when the read began, in (partition, offset) order. Raises TimeoutError when the
    broker does not answer within `timeout_s` (or the read takes over `read_timeout_s`),
    DeadLetterError when the topic does not exist, KafkaError when the broker refuses."""
    async with asyncio.timeout(timeout_s):
        partitions = await partition_count(bootstrap_servers, topic)
    if partitions is None:
        raise DeadLetterError(f"topic {topic} does not exist on {bootstrap_servers}")
    consumer = AIOKafkaConsumer(
        **client_options(),
        bootstrap_servers=bootstrap_servers,
        client_id="switchyard-deadletter",
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=max_message_bytes,
        fetch_max_bytes=max(FETCH_MAX_BYTES, max_message_bytes),
    )
    try:
        async with asyncio.timeout(timeout_s):
            await consumer.start()
        async with asyncio.timeout(read_timeout_s):
            assigned = [TopicPartition(topic, partition) for partition in range(partitions)]
            consumer.assign(assigned)
            ends = await consumer.end_offsets(assigned)
            # An explicit seek: `seek_to_beginning` only asks for a reset, which can race
            # the reset `assign` starts.
            starts = await consumer.beginning_offsets(assigned)
            for tp in assigned:
                consumer.seek(tp, starts[tp])
            records: list[ConsumerRecord] = []
            remaining = {tp for tp in assigned if ends[tp] > starts[tp]}
            # A record the Kafka client cannot parse (a header key that is not UTF-8) is
            # left out with a warning, never the end of the listing.
            reader = RecordReader(_skip_unreadable)
            while remaining:
                batches = await reader.getmany(consumer, *remaining, timeout_ms=500)
                for tp, batch in batches.items():
                    records.extend(record for record in batch if record.offset < ends[tp])
                    if batch and batch[-1].offset + 1 >= ends[tp]:
                        remaining.discard(tp)
                for tp in list(remaining):
                    if await consumer.position(tp) >= ends[tp]:
                        remaining.discard(tp)
    finally:
        await consumer.stop()
    return from_records(records, topic)


_skip_unreadable = skipping_unreadable(
    log, "dead-letter records the Kafka client cannot read were left out"
)


def select(
    letters: Sequence[DeadLetter],
    ids: Sequence[str] = (),
    *,
    topic: str | None = None,
    group: str | None = None,
) -> list[DeadLetter]:
    """The letters named by `ids` (each `"p:o"`; every one must exist, else
    DeadLetterError), or, with no ids, every letter; then only those of `topic` and
    `group` when given."""
    chosen: list[DeadLetter]
    if ids:
        by_id = {letter.id: letter for letter in letters}
        chosen = []
        for text in ids:
            partition, offset = parse_id(text)
            letter = by_id.get(f"{partition}:{offset}")
            if letter is None:
                raise DeadLetterError(f"no dead letter {partition}:{offset} on the topic")
            if letter not in chosen:
                chosen.append(letter)
    else:
        chosen = list(letters)
    return [
        letter
        for letter in chosen
        if (topic is None or letter.topic == topic) and (group is None or letter.group == group)
    ]


def refused(letter: DeadLetter, *, again: bool = False) -> str | None:
    """Why `replay` would refuse `letter` (a stub, no topic, replayed already without
    `again`), or None."""
    refusal = letter.replayable()
    if refusal is not None:
        return f"dead letter {letter.id} cannot be replayed: {refusal}"
    if letter.replays and not again:
        last = letter.replays[-1]
        return (
            f"dead letter {letter.id} was replayed already (to {last.to} at "
            f"{last.at.isoformat()}); pass --again to replay it once more"
        )
    return None


def by_record(letters: Sequence[DeadLetter]) -> list[list[DeadLetter]]:
    """`letters` grouped by the record they copy, in the order each record first appears:
    one record that several consumer groups failed on is dead-lettered once by each, and
    replaying it once reaches every group, so its letters are replayed together
    (`replay`'s `same_record`). A letter that does not say where its record was is a
    group of its own."""
    groups: dict[object, list[DeadLetter]] = {}
    for letter in letters:
        known = letter.source_partition is not None and letter.source_offset is not None
        where: object = (
            (letter.topic, letter.source_partition, letter.source_offset) if known else letter.id
        )
        groups.setdefault(where, []).append(letter)
    return list(groups.values())


async def replay(
    bus: RawPublisher,
    letter: DeadLetter,
    deadletter_topic: str,
    *,
    again: bool = False,
    same_record: Sequence[DeadLetter] = (),
) -> str:
    """Publish `letter`'s record to the topic it came from, then a marker of the replay on
    `deadletter_topic` (tried `MARKER_ATTEMPTS` times) for it and for each letter of
    `same_record` (other groups' copies of the same record, `by_record`: not sent again,
    since the one record reaches every group); return where it went
    (`<topic>:<partition>`, or `<topic>` when its key chose). Raises DeadLetterError when
    the letter cannot be replayed (a stub, no topic) or was replayed already and `again`
    is False; BusUnavailableError and the bus's other errors when Kafka does not take the
    record (nothing was replayed); MarkerNotWrittenError when the record went but a
    marker could not be written."""
    refusal = refused(letter, again=again)
    if refusal is not None:
        raise DeadLetterError(refusal)
    try:
        count = await bus.partition_count(letter.topic)
    except TimeoutError:
        raise DeadLetterError(
            f"dead letter {letter.id} cannot be replayed: its topic {letter.topic} gave no "
            "partitions in time (does it exist?)"
        ) from None
    partition = letter.source_partition
    if partition is not None and partition >= count:
        partition = None  # the topic has fewer partitions now: the key chooses
    headers = [*letter.headers, (REPLAYED_FROM_HEADER, letter.id.encode())]
    await bus.publish_raw(
        letter.topic, letter.value, key=letter.key, partition=partition, headers=headers
    )
    to = letter.topic if partition is None else f"{letter.topic}:{partition}"
    unmarked: list[str] = []
    failure: Exception | None = None
    # Every marker is tried, whichever fails: each letter left unmarked is named.
    for marked in (letter, *(other for other in same_record if other is not letter)):
        marked.replays.append(Replay(to, datetime.now(UTC), letter.id))
        try:
            await _mark(bus, marked, deadletter_topic, to, sent=letter)
        except Exception as exc:  # noqa: BLE001 - the record went: say so, whatever failed
            unmarked.append(marked.id)
            failure = exc
    if unmarked:
        raise MarkerNotWrittenError(
            f"dead letter {letter.id} was replayed to {to}, but the marker recording it "
            f"could not be written for {', '.join(unmarked)} ({failure!r}): do not replay "
            f"{'it' if len(unmarked) == 1 else 'them'} again"
        ) from failure
    return to


async def _mark(
    bus: RawPublisher, marked: DeadLetter, deadletter_topic: str, to: str, *, sent: DeadLetter
) -> None:
    """Write the marker saying `marked`'s record went to `to` (as `sent`'s record), tried
    `MARKER_ATTEMPTS` times. Raises the bus's last error."""
    marker = [
        (REPLAY_OF_HEADER, marked.id.encode()),
        (REPLAYED_TO_HEADER, to.encode()),
        (REPLAY_SENT_HEADER, sent.id.encode()),
    ]
    for attempt in range(1, MARKER_ATTEMPTS + 1):
        try:
            await bus.publish_raw(
                deadletter_topic, b"", key=marked.key, partition=marked.partition, headers=marker
            )
            return
        except Exception:
            if attempt == MARKER_ATTEMPTS:
                raise
            await asyncio.sleep(0.5 * attempt)
