"""Reading dead letters and replaying them (`switchyard.common.deadletter`) with a fake
bus; the real-Kafka path is in tests/integration/test_deadletter_replay.py."""

from __future__ import annotations

from collections.abc import Sequence
from types import SimpleNamespace

import pytest
from aiokafka.structs import ConsumerRecord
from typer.testing import CliRunner

from switchyard.common.bus.kafka import REPLAYED_FROM_HEADER
from switchyard.common.deadletter import (
    REPLAY_OF_HEADER,
    REPLAYED_TO_HEADER,
    DeadLetterError,
    MarkerNotWrittenError,
    by_record,
    from_records,
    parse_id,
    replay,
    select,
)
from switchyard.common.testing.tables import table_cells

DLQ = "sy.deadletter"


def record(
    partition: int,
    offset: int,
    headers: list[tuple[str, bytes]],
    value: bytes | None = b'{"id":"e1"}',
    key: bytes | None = b"req-1",
    timestamp: int = 1_764_806_400_000,
) -> ConsumerRecord:
    return ConsumerRecord(
        DLQ, partition, offset, timestamp, 0, key, value, None, -1, -1, tuple(headers)
    )


def letter_record(
    partition: int = 0,
    offset: int = 7,
    *,
    topic: str = "sy.requests.interactive",
    source_partition: str = "2",
    group: str = "sy.history",
    extra: Sequence[tuple[str, bytes]] = (),
    value: bytes | None = b'{"id":"e1"}',
) -> ConsumerRecord:
    return record(
        partition,
        offset,
        [
            ("type", b"chat.requested"),
            ("request_id", b"req-1"),
            ("traceparent", b"00-abc-def-01"),
            ("deadletter.topic", topic.encode()),
            ("deadletter.partition", source_partition.encode()),
            ("deadletter.offset", b"41"),
            ("deadletter.group", group.encode()),
            ("deadletter.reason", b"handler failed: DataError('value too long')"),
            *extra,
        ],
        value,
    )


class FakeBus:
    def __init__(self, partitions: int = 3, fail: BaseException | None = None) -> None:
        self.partitions = partitions
        self.fail = fail
        self.published: list[tuple[str, bytes, bytes | None, int | None, list]] = []

    async def partition_count(self, topic: str) -> int:
        return self.partitions

    async def publish_raw(self, topic, value, *, key, partition, headers) -> None:
        if self.fail is not None:
            raise self.fail
        self.published.append((topic, value, key, partition, list(headers)))


def test_a_letter_keeps_the_original_record_and_its_coordinates_apart():
    (letter,) = from_records([letter_record()])
    assert letter.id == "0:7"
    assert (letter.topic, letter.source_partition, letter.source_offset) == (
        "sy.requests.interactive",
        2,
        41,
    )
    assert letter.group == "sy.history"
    assert letter.reason.startswith("handler failed")
    assert letter.headers == [
        ("type", b"chat.requested"),
        ("request_id", b"req-1"),
        ("traceparent", b"00-abc-def-01"),
    ]
    assert letter.header("type") == "chat.requested"
    assert letter.replayable() is None
    summary = letter.summary()
    assert summary["id"] == "0:7" and summary["request_id"] == "req-1"
    assert summary["value_bytes"] == len(b'{"id":"e1"}') and summary["replays"] == []


def test_a_letter_without_headers_names_its_event_from_its_value():
    # A record published with no `type` or `request_id` header (another producer's):
    # `deadletter list` showed `?` though the JSON said which event it was.
    value = b'{"type":"usage.recorded","request_id":"req-9","id":"e9"}'
    headerless = record(
        0,
        8,
        [
            ("deadletter.topic", b"sy.usage"),
            ("deadletter.partition", b"0"),
            ("deadletter.offset", b"3"),
            ("deadletter.group", b"sy.history"),
            ("deadletter.reason", b"undecodable"),
        ],
        value,
    )
    (letter,) = from_records([headerless])
    assert (letter.named("type"), letter.named("request_id")) == ("usage.recorded", "req-9")
    assert letter.summary()["request_id"] == "req-9"
    (garbage,) = from_records([record(0, 9, list(headerless.headers), b"\xff not json")])
    assert garbage.named("request_id") is None
    (listed,) = from_records([letter_record()])
    assert listed.named("request_id") == "req-1"  # the header first


def test_markers_attach_to_their_letters_and_are_not_letters():
    marker = record(
        0,
        9,
        [(REPLAY_OF_HEADER, b"0:7"), (REPLAYED_TO_HEADER, b"sy.requests.interactive:2")],
        value=b"",
    )
    stray = record(1, 3, [(REPLAY_OF_HEADER, b"1:1")], value=b"")
    letters = from_records([marker, letter_record(), stray])
    assert [letter.id for letter in letters] == ["0:7"]
    assert [replay.to for replay in letters[0].replays] == ["sy.requests.interactive:2"]


def test_a_stub_or_a_letter_without_a_topic_cannot_be_replayed():
    stub = letter_record(extra=[("deadletter.left_out", b"the value (3000000 bytes)")], value=b"")
    (letter,) = from_records([stub])
    assert "stub" in (letter.replayable() or "")
    (nameless,) = from_records([record(0, 1, [("deadletter.reason", b"x")])])
    assert nameless.topic == "" and "which topic" in (nameless.replayable() or "")


def test_the_stub_of_an_unreadable_record_cannot_be_replayed_even_when_unmarked():
    """Letters for records the Kafka client could not parse were once written without
    `deadletter.left_out`: their empty value is no record to replay either."""
    unreadable = [("deadletter.reason", b"undecodable record (unreadable): CorruptRecordError()")]
    (letter,) = from_records([letter_record(extra=unreadable, value=b"")])
    assert "stub" in (letter.replayable() or "")


@pytest.mark.parametrize(
    "topic",
    ["__consumer_offsets", "other.requests.interactive", DLQ, "sy.requests.interactive.x"],
)
def test_a_letter_naming_a_topic_outside_its_deployment_cannot_be_replayed(topic):
    """Every service writes the dead-letter topic: the topic a letter names is not trusted
    beyond the deployment's own topics."""
    (letter,) = from_records([letter_record(topic=topic)], DLQ)
    refusal = letter.replayable() or ""
    assert "not a topic of this deployment" in refusal and "sy.usage" in refusal
    (own,) = from_records([letter_record(topic="sy.auth.events")], DLQ)
    assert own.replayable() is None


async def test_a_replay_to_a_topic_outside_the_deployment_publishes_nothing():
    bus = FakeBus()
    (letter,) = from_records([letter_record(topic="__consumer_offsets")], DLQ)
    with pytest.raises(DeadLetterError, match="not a topic of this deployment"):
        await replay(bus, letter, DLQ)
    assert bus.published == []


def test_header_values_that_are_not_utf8_or_numbers_do_not_break_reading():
    (letter,) = from_records([letter_record(source_partition="two", extra=[("type", b"\xff\xfe")])])
    assert letter.source_partition is None
    assert letter.header("request_id") == "req-1"


@pytest.mark.parametrize("text", ["", "7", "a:b", "0:-1", "0:1:2", " : ", "1.0:2"])
def test_ids_that_are_not_partition_colon_offset_are_refused(text):
    with pytest.raises(DeadLetterError, match="not a dead letter id"):
        parse_id(text)


def test_select_by_id_topic_and_group():
    letters = from_records(
        [
            letter_record(0, 1),
            letter_record(1, 1, topic="sy.replies", group="sy.history"),
            letter_record(2, 5, group="sy.inference"),
        ]
    )
    assert [x.id for x in select(letters, ["1:1", "0:1", "1:1"])] == ["1:1", "0:1"]
    assert [x.id for x in select(letters, topic="sy.replies")] == ["1:1"]
    assert [x.id for x in select(letters, group="sy.inference")] == ["2:5"]
    with pytest.raises(DeadLetterError, match="no dead letter 0:99"):
        select(letters, ["0:99"])


async def test_replay_publishes_the_original_record_to_its_partition_then_a_marker():
    (letter,) = from_records([letter_record()])
    bus = FakeBus(partitions=3)
    assert await replay(bus, letter, DLQ) == "sy.requests.interactive:2"
    (topic, value, key, partition, headers), marker = bus.published
    assert (topic, value, key, partition) == (
        "sy.requests.interactive",
        b'{"id":"e1"}',
        b"req-1",
        2,
    )
    assert headers == [*letter.headers[:3], (REPLAYED_FROM_HEADER, b"0:7")]
    assert marker[0] == DLQ and marker[1] == b"" and marker[3] == 0
    assert (REPLAY_OF_HEADER, b"0:7") in marker[4]
    assert len(letter.replays) == 1


async def test_a_replayed_letter_needs_again_and_a_topic_with_fewer_partitions_uses_the_key():
    (letter,) = from_records([letter_record(source_partition="5")])
    bus = FakeBus(partitions=3)
    assert await replay(bus, letter, DLQ) == "sy.requests.interactive"
    assert bus.published[0][3] is None
    with pytest.raises(DeadLetterError, match="replayed already"):
        await replay(bus, letter, DLQ)
    assert len(bus.published) == 2
    await replay(bus, letter, DLQ, again=True)
    assert len(bus.published) == 4


async def test_a_refused_publish_writes_no_marker():
    (letter,) = from_records([letter_record()])
    bus = FakeBus(fail=RuntimeError("broker gone"))
    with pytest.raises(RuntimeError):
        await replay(bus, letter, DLQ)
    assert bus.published == [] and letter.replays == []


async def test_a_stub_is_refused_before_anything_is_published():
    (letter,) = from_records([letter_record(extra=[("deadletter.left_out", b"all")], value=b"")])
    bus = FakeBus()
    with pytest.raises(DeadLetterError, match="stub"):
        await replay(bus, letter, DLQ)
    assert bus.published == []


def test_the_replay_command_needs_ids_or_all_and_refuses_a_bad_id(monkeypatch):
    from switchyard.common import cli

    runner = CliRunner()
    app = cli.build()
    result = runner.invoke(app, ["deadletter", "replay"])
    assert result.exit_code == 2
    assert "name the letters to replay" in result.output
    result = runner.invoke(app, ["deadletter", "replay", "0:1", "--all"])
    assert result.exit_code == 2

    letters = from_records([letter_record()])
    monkeypatch.setattr(
        cli, "_dead_letters", lambda topic, group=None: (object(), letters, topic, group)
    )
    result = runner.invoke(app, ["deadletter", "replay", "zero"])
    assert result.exit_code == 1
    assert "'zero' is not a dead letter id" in result.output


def test_the_list_command_prints_a_header_row_and_a_row_per_letter(monkeypatch):
    from switchyard.common import cli

    letters = from_records(
        [letter_record(0, 1), letter_record(1, 2, extra=[("deadletter.left_out", b"x")])]
    )
    monkeypatch.setattr(
        cli, "_dead_letters", lambda topic, group=None: (object(), letters, topic, group)
    )
    result = CliRunner().invoke(cli.build(), ["deadletter", "list"])
    assert result.exit_code == 0, result.output
    header = result.stdout.splitlines()[0].split()
    assert header == list(cli.DEAD_LETTER_COLUMNS)
    rows = table_cells(result.stdout)
    assert [list(row.values())[:7] for row in rows[:1]] == [
        [
            "0:1",
            "2025-12-04T00:00:00Z",
            "sy.requests.interactive[2]@41",
            "sy.history",
            "chat.requested",
            "req-1",
            "-",
        ]
    ]
    assert rows[1]["replayed"] == "stub"
    assert "2 of 2 dead letter(s)" in result.stderr


def test_the_list_prints_what_headers_say_escaped(monkeypatch):
    """A letter's headers are any producer's: a line break, tab, NUL or escape sequence in
    them is shown escaped, never a line, column or terminal command of its own."""
    from switchyard.common import cli

    forged = record(
        0,
        1,
        [
            ("request_id", b"req-1\n9:999\tFAKE-LINE\x00\x1b[2J"),
            ("deadletter.topic", b"sy.requests.interactive"),
            ("deadletter.group", b"g\x1b]0;x\x07"),
        ],
    )
    letters = from_records([forged])
    monkeypatch.setattr(
        cli, "_dead_letters", lambda topic, group=None: (object(), letters, topic, group)
    )
    result = CliRunner().invoke(cli.build(), ["deadletter", "list"])
    assert result.exit_code == 0, result.output
    [row] = table_cells(result.stdout)
    assert len(result.stdout.splitlines()) == 3  # header, rule, the letter
    assert row["group"] == "g\\x1b]0;x\\x07"
    assert "FAKE-LINE" in row["request_id"]
    assert "\x00" not in result.stdout and "\x1b" not in result.stdout


def test_an_empty_list_still_prints_its_header_row(monkeypatch):
    from switchyard.common import cli

    letters = from_records([])
    monkeypatch.setattr(
        cli, "_dead_letters", lambda topic, group=None: (object(), letters, topic, group)
    )
    result = CliRunner().invoke(cli.build(), ["deadletter", "list", "--topic", "control"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == list(cli.DEAD_LETTER_COLUMNS) and len(lines) == 2
    assert "0 of 0 dead letter(s)" in result.stderr


async def test_a_marker_that_cannot_be_written_says_the_letter_went(monkeypatch):
    from switchyard.common import deadletter

    async def no_wait(_seconds):
        return None

    monkeypatch.setattr(deadletter.asyncio, "sleep", no_wait)

    class MarkerFails(FakeBus):
        async def publish_raw(self, topic, value, *, key, partition, headers) -> None:
            if topic == DLQ:
                self.fail_count = getattr(self, "fail_count", 0) + 1
                raise RuntimeError("broker gone")
            await super().publish_raw(topic, value, key=key, partition=partition, headers=headers)

    (letter,) = from_records([letter_record()])
    bus = MarkerFails()
    with pytest.raises(deadletter.MarkerNotWrittenError, match="was replayed to .* do not"):
        await replay(bus, letter, DLQ)
    assert len(bus.published) == 1  # the record, once
    assert bus.fail_count == deadletter.MARKER_ATTEMPTS
    assert len(letter.replays) == 1


def test_a_dry_run_applies_the_rules_of_a_real_one(monkeypatch):
    from switchyard.common import cli

    marker = record(0, 9, [(REPLAY_OF_HEADER, b"0:1"), (REPLAYED_TO_HEADER, b"t:2")], b"")
    letters = from_records(
        [
            letter_record(0, 1),
            letter_record(1, 2, extra=[("deadletter.left_out", b"x")], value=b""),
            letter_record(2, 3, source_partition="0"),  # another record
            marker,
        ]
    )
    settings = SimpleNamespace(
        topic_prefix="sy", kafka_bootstrap_servers="127.0.0.1:1", kafka_max_message_bytes=1000
    )
    monkeypatch.setattr(
        cli, "_dead_letters", lambda topic, group=None: (settings, letters, topic, group)
    )
    runner = CliRunner()
    named = runner.invoke(cli.build(), ["deadletter", "replay", "0:1", "1:2", "2:3", "--dry-run"])
    assert named.exit_code == 1
    assert "2:3\twould go to sy.requests.interactive" in named.stdout
    assert "0:1 was replayed already" in named.stderr and "1:2 cannot be replayed" in named.stderr
    # --all passes over stubs, with --again too; replayed ones only without --again.
    every = runner.invoke(cli.build(), ["deadletter", "replay", "--all", "--again", "--dry-run"])
    assert every.exit_code == 0, every.output
    assert [line.split("\t")[0] for line in every.stdout.splitlines()] == ["0:1", "2:3"]


def test_a_long_reason_keeps_its_end_on_the_list():
    from switchyard.common.cli import _one_line

    reason = (
        "undecodable event: 1 validation error for tagged-union[" + "X," * 200 + "] Invalid JSON"
    )
    short = _one_line(reason)
    assert len(short) <= 200 and short.endswith("Invalid JSON") and " … " in short


async def test_a_topic_that_does_not_answer_is_a_clear_refusal():
    class Gone(FakeBus):
        async def partition_count(self, topic: str) -> int:
            raise TimeoutError

    (letter,) = from_records([letter_record()])
    with pytest.raises(DeadLetterError, match="gave no partitions in time"):
        await replay(Gone(), letter, DLQ)


def test_letters_of_one_record_are_grouped_and_others_stay_apart():
    history = letter_record(0, 1, group="sy.history")
    inference = letter_record(1, 2, group="sy.inference")
    another = letter_record(2, 3, source_partition="0")
    nowhere = record(0, 4, [("deadletter.topic", b"sy.usage"), ("deadletter.group", b"g")])
    letters = from_records([history, inference, another, nowhere])
    assert sorted([letter.id for letter in group] for group in by_record(letters)) == [
        ["0:1", "1:2"],
        ["0:4"],
        ["2:3"],
    ]


async def test_a_record_several_groups_failed_on_is_sent_once_and_each_letter_marked():
    # One garbage record on a topic two groups read leaves two letters; replaying each
    # sent it twice, and each copy failed again in both groups: four letters, then eight.
    first, second = from_records(
        [letter_record(0, 1, group="sy.history"), letter_record(1, 2, group="sy.inference")]
    )
    bus = FakeBus()
    to = await replay(bus, first, DLQ, same_record=[second])
    assert to == "sy.requests.interactive:2"
    sent = [p for p in bus.published if p[0] == "sy.requests.interactive"]
    markers = [dict(p[4])[REPLAY_OF_HEADER] for p in bus.published if p[0] == DLQ]
    assert len(sent) == 1 and markers == [b"0:1", b"1:2"]
    assert first.replays and second.replays
    # Replaying the second now needs --again: its record went.
    with pytest.raises(DeadLetterError, match="replayed already"):
        await replay(bus, second, DLQ)


def test_replay_all_sends_each_record_once_and_says_what_it_passed_over(monkeypatch):
    from switchyard.common import cli

    letters = from_records(
        [
            letter_record(0, 1, group="sy.history"),
            letter_record(1, 2, group="sy.inference"),
            letter_record(2, 3, source_partition="0"),
            letter_record(2, 4, extra=[("deadletter.left_out", b"x")], value=b""),
        ]
    )
    settings = SimpleNamespace(
        topic_prefix="sy", kafka_bootstrap_servers="127.0.0.1:1", kafka_max_message_bytes=1000
    )
    monkeypatch.setattr(
        cli, "_dead_letters", lambda topic, group=None: (settings, letters, topic, group)
    )
    result = CliRunner().invoke(cli.build(), ["deadletter", "replay", "--all", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "0:1\twould go to sy.requests.interactive",
        "1:2\tthe same record as 0:1: sent once",
        "2:3\twould go to sy.requests.interactive",
    ]
    assert "1 letter(s) passed over: stubs" in result.stderr
    assert "3 of 3 dead letter(s) would be replayed" in result.stderr


def test_a_replay_of_one_letter_of_a_record_shows_on_its_every_letter():
    # `replay 0:1` marked only 0:1: a later `--all` sent the record again as 1:2.
    marker = record(0, 9, [(REPLAY_OF_HEADER, b"0:1"), (REPLAYED_TO_HEADER, b"t:2")], b"")
    first, second, other = from_records(
        [
            letter_record(0, 1, group="sy.history"),
            letter_record(1, 2, group="sy.inference"),
            letter_record(2, 3, source_partition="0"),
            marker,
        ]
    )
    assert [replay.to for replay in first.replays] == ["t:2"]
    assert [replay.to for replay in second.replays] == ["t:2"]
    assert other.replays == []


async def test_every_marker_is_tried_and_each_unmarked_letter_named(monkeypatch):
    from switchyard.common import deadletter

    monkeypatch.setattr(deadletter, "MARKER_ATTEMPTS", 1)

    class MarkersFail(FakeBus):
        async def publish_raw(self, topic, value, *, key, partition, headers) -> None:
            if topic == DLQ and dict(headers)[REPLAY_OF_HEADER] != b"1:2":
                raise RuntimeError("marker refused")
            await super().publish_raw(topic, value, key=key, partition=partition, headers=headers)

    first, second, third = from_records(
        [
            letter_record(0, 1, group="sy.history"),
            letter_record(1, 2, group="sy.inference"),
            letter_record(2, 3, group="sy.inference-batch"),
        ]
    )
    bus = MarkersFail()
    with pytest.raises(MarkerNotWrittenError) as unmarked:
        await replay(bus, first, DLQ, same_record=[second, third])
    assert "0:1, 2:3" in str(unmarked.value) and "1:2" not in str(unmarked.value)
    markers = [dict(p[4])[REPLAY_OF_HEADER] for p in bus.published if p[0] == DLQ]
    assert markers == [b"1:2"]
    assert len([p for p in bus.published if p[0] != DLQ]) == 1


async def test_one_replay_of_a_record_counts_once_on_each_of_its_letters():
    # One replay writes a marker per letter, milliseconds apart: a listing said
    # "replayed 2x" on each letter after one replay.
    first, second = from_records(
        [letter_record(0, 1, group="sy.history"), letter_record(1, 2, group="sy.inference")]
    )
    bus = FakeBus()
    await replay(bus, first, DLQ, same_record=[second])
    markers = [
        record(p[3] or 0, 100 + n, list(p[4]), b"", timestamp=1_764_806_400_000 + n)
        for n, p in enumerate(bus.published)
        if p[0] == DLQ
    ]
    again = from_records(
        [
            letter_record(0, 1, group="sy.history"),
            letter_record(1, 2, group="sy.inference"),
            *markers,
        ]
    )
    assert [len(letter.replays) for letter in again] == [1, 1]
    assert again[0].replays[0].sent == "0:1"
