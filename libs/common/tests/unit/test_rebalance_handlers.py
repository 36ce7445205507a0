"""A Kafka group member whose partitions are revoked while a handler is still running past
the revocation grace (aiokafka rebalances eagerly: every member gives up every partition
at each rebalance, and gets its share back at once): the handler runs on while the
partition comes back to this member, and is cancelled once the partition is another
member's, so that two members do not go on answering one event. The consumer
here is a fake; no broker is needed."""

from __future__ import annotations

import asyncio

from aiokafka.structs import ConsumerRecord, TopicPartition

from switchyard.common.bus.kafka import _GroupSubscription
from switchyard.common.events import Event
from switchyard.common.testing.events import chat_requested, consumer_record
from switchyard.common.testing.group_member import group_member

TP = TopicPartition("requests", 0)
OTHER = TopicPartition("requests", 1)


def record(offset: int) -> ConsumerRecord:
    return consumer_record(TP.topic, TP.partition, offset, chat_requested())


class FakeConsumer:
    """What the member asks of its consumer around a rebalance; records every commit."""

    def __init__(self) -> None:
        self.commits: list[dict] = []

    async def commit(self, offsets: dict) -> None:
        self.commits.append(offsets)

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict:
        return {tp: 1 for tp in partitions}

    def highwater(self, tp: TopicPartition) -> int | None:
        return None

    def subscribe(self, topics: list[str], listener: object) -> None:
        self.listener = listener


class Coordinator:
    """aiokafka's group coordinator, as far as the member reads it."""

    def __init__(self, member_id: str) -> None:
        self.member_id = member_id


class Member:
    """A group member with one handler that runs until `release` is set."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.cancelled = False

        async def handler(event: Event) -> None:
            self.started.set()
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled = True
                raise

        self.consumer = FakeConsumer()
        self.sub = group_member(self.consumer, handler)
        self.sub.revoke_grace_s = 0.05

    async def handling_past_a_revocation(self) -> asyncio.Task[None]:
        """Start the handler of offset 0, then revoke its partition; the running task."""
        self.sub._start(self.consumer, {TP: [record(0)]})  # type: ignore[arg-type]
        (task,) = self.sub.tasks[TP]
        await asyncio.wait_for(self.started.wait(), timeout=5)
        await self.sub.on_partitions_revoked([TP])
        assert not task.done()  # past the grace, still running
        assert TP not in self.sub.tasks and TP not in self.sub.progress
        return task


async def test_a_handler_whose_partition_comes_back_runs_on():
    member = Member()
    task = await member.handling_past_a_revocation()

    await member.sub.on_partitions_assigned([TP, OTHER])

    await asyncio.sleep(0.05)
    assert not task.done()  # the copy delivered again finds it running (its handler joins it)
    # The copy of offset 0, delivered again, waits in the new progress of the partition.
    copy_started = asyncio.Event()
    copy_release = asyncio.Event()

    async def copy_handler(event: Event) -> None:
        copy_started.set()
        await copy_release.wait()

    member.sub.handler = copy_handler
    member.sub._start(member.consumer, {TP: [record(0)]})  # type: ignore[arg-type]
    await asyncio.wait_for(copy_started.wait(), timeout=5)
    member.release.set()
    await asyncio.wait_for(task, timeout=5)
    assert not member.cancelled
    assert member.sub.orphans == {}
    # The first run finished in the progress it started in, not in the copy's.
    assert member.sub.progress[TP].committable() is None
    copy_release.set()
    (copy,) = member.sub.tasks[TP]
    await asyncio.wait_for(copy, timeout=5)
    assert member.sub.progress[TP].committable() == 1


async def test_a_handler_whose_partition_went_to_another_member_is_cancelled():
    member = Member()
    task = await member.handling_past_a_revocation()

    await member.sub.on_partitions_assigned([OTHER])

    assert member.sub.orphans == {}
    await asyncio.wait([task], timeout=5)  # cancelled without holding up the callback
    assert task.done() and member.cancelled


async def test_a_dropped_member_stops_its_handlers_at_once():
    """A member the coordinator no longer counts (it rejoined too late, its session
    expired) learns it at its revocation: its partitions are already other members', so
    its handlers get no grace and are not kept for an assignment."""
    member = Member()
    member.sub.revoke_grace_s = 30.0  # would hold the test up, were it given
    member.consumer._coordinator = Coordinator(member_id="")  # type: ignore[attr-defined]
    member.sub._start(member.consumer, {TP: [record(0)]})  # type: ignore[arg-type]
    (task,) = member.sub.tasks[TP]
    await asyncio.wait_for(member.started.wait(), timeout=5)

    await asyncio.wait_for(member.sub.on_partitions_revoked([TP]), timeout=5)

    assert task.done() and member.cancelled
    assert member.sub.orphans == {}


async def test_handlers_kept_with_no_assignment_in_time_are_cancelled():
    """No assignment follows the revocation within the rebalance timeout: the group went on
    without this member, and its kept handlers stop."""
    member = Member()
    member.sub.orphan_timeout_s = 0.1
    task = await member.handling_past_a_revocation()

    await asyncio.wait([task], timeout=5)

    assert task.done() and member.cancelled
    assert member.sub.orphans == {}


async def test_handlers_left_from_a_revocation_are_cancelled_when_the_member_closes():
    member = Member()
    task = await member.handling_past_a_revocation()

    await member.sub._before_close()

    assert task.done() and member.cancelled
    assert member.sub.orphans == {}


async def test_a_kept_handler_gets_the_grace_when_the_member_closes():
    member = Member()
    task = await member.handling_past_a_revocation()
    await member.sub.on_partitions_assigned([TP])
    member.sub.revoke_grace_s = 5.0
    asyncio.get_running_loop().call_later(0.2, member.release.set)

    await member.sub._before_close()

    assert task.done() and not member.cancelled


async def test_the_group_waits_for_a_member_through_its_revocation_grace():
    """The coordinator drops a member that has not rejoined within the rebalance timeout:
    it must outlast the grace the member's handlers get plus the commit after it, or a
    member that waited for its handlers loses every partition it had (aiokafka's default
    is the 10 s session timeout, no longer than the 10 s grace)."""
    member = Member()
    sub = member.sub
    sub.revoke_grace_s = _GroupSubscription.revoke_grace_s  # the real grace
    opened: dict = {}

    def consumer(*topics: str, group: str | None, **options) -> FakeConsumer:
        opened.update(options, group=group)
        return FakeConsumer()

    async def start(consumer: FakeConsumer) -> None:
        return None

    sub.bus._consumer = consumer  # type: ignore[method-assign,assignment]
    sub.bus._start_consumer = start  # type: ignore[method-assign,assignment]

    await sub._open()

    revocation_s = sub.revoke_grace_s + sub.bus.close_timeout_s
    assert opened["group"] == "g"
    assert opened["rebalance_timeout_ms"] > revocation_s * 1000
