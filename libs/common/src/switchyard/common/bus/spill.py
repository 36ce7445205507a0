"""A first-in, first-out queue of bus deliveries that keeps its head in memory and the
rest in a file: the in-memory bus's queue for a batch group (history's store), whose
backlog grows by the ten thousand while requests arrive faster than a store on SQLite
writes them, and would otherwise be held in memory, about a kilobyte an event.

The file is a temporary one, removed from its directory as soon as it is opened (readable
only by this process, gone with it): a delivery in it is exactly as lasting as one in
memory, and the in-memory bus never promised more. Records are appended at the end and
read from the front with positioned reads and writes (`os.pwrite`, `os.pread`); the file is
emptied whenever every record in it was read. A write that fails leaves the queue in memory
from then on, in order: nothing is dropped for it. A file that cannot be read back loses
what it held, as a crash would, and says so in an error line.
"""

from __future__ import annotations

import asyncio
import os
import struct
import tempfile
from collections import deque
from pathlib import Path

import structlog

log = structlog.get_logger("switchyard.bus.spill")

# (topic, the serialised event, trace context of the publisher or None).
Delivery = tuple[str, bytes, str | None]

# A record's head: the lengths of its topic, its event and its trace context (-1: None).
_HEAD = struct.Struct(">HIi")


class SpillingQueue:
    """FIFO of `Delivery` with the asyncio.Queue methods the in-memory bus uses
    (`put_nowait`, `get`, `get_nowait`, `qsize`, `empty`). At most `in_memory` deliveries
    are held in memory; the rest go to a temporary file in `directory`, and come back in
    order as the head is taken."""

    def __init__(self, in_memory: int, directory: str | Path) -> None:
        self.in_memory = max(1, in_memory)
        self._directory = Path(directory)
        self._head: deque[Delivery] = deque()
        # After a disk error: deliveries behind the file's, kept in memory.
        self._tail: deque[Delivery] = deque()
        self._fd: int | None = None
        self._disk_ok = True
        self._spilled = 0
        self._read_at = 0
        self._write_at = 0
        self._ready = asyncio.Event()

    @property
    def spilled(self) -> int:
        """Deliveries in the file now."""
        return self._spilled

    def qsize(self) -> int:
        """Deliveries queued, in memory and in the file."""
        return len(self._head) + self._spilled + len(self._tail)

    def empty(self) -> bool:
        """Whether no delivery is queued."""
        return self.qsize() == 0

    def put_nowait(self, item: Delivery) -> None:
        """Queue `item` behind every delivery queued before it."""
        if not self._spilled and not self._tail and len(self._head) < self.in_memory:
            self._head.append(item)
        elif self._tail or not self._disk_ok or not self._spill(item):
            self._tail.append(item)
        self._ready.set()

    def get_nowait(self) -> Delivery:
        """The oldest delivery. Raises asyncio.QueueEmpty when there is none."""
        if not self._head:
            self._refill()
        if not self._head:
            raise asyncio.QueueEmpty
        item = self._head.popleft()
        if len(self._head) < self.in_memory // 2:
            self._refill()
        if self.empty():
            self._ready.clear()
        return item

    async def get(self) -> Delivery:
        """The oldest delivery, waiting for one."""
        while self.empty():
            self._ready.clear()
            await self._ready.wait()
        return self.get_nowait()

    def close(self) -> None:
        """Close the file (the deliveries still in it are lost, as memory's would be)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # -- the file ---------------------------------------------------------------------------

    def _spill(self, item: Delivery) -> bool:
        """Append `item` to the file; False (and memory from then on) on a disk error."""
        topic, raw, carrier = item
        topic_bytes = topic.encode()
        carrier_bytes = carrier.encode() if carrier is not None else b""
        record = (
            _HEAD.pack(len(topic_bytes), len(raw), -1 if carrier is None else len(carrier_bytes))
            + topic_bytes
            + raw
            + carrier_bytes
        )
        try:
            if self._fd is None:
                self._fd = _unlinked_file(self._directory)
            written = os.pwrite(self._fd, record, self._write_at)
            if written != len(record):
                raise OSError("short write")
        except OSError as exc:
            self._disk_error(exc)
            return False
        self._write_at += len(record)
        self._spilled += 1
        return True

    def _refill(self) -> None:
        """Move deliveries from the file (then from the tail) to the head, in order, up to
        `in_memory` in all."""
        while len(self._head) < self.in_memory and self._spilled:
            item = self._read_one()
            if item is None:
                return  # the file failed: what it held is lost, as memory's would be
            self._head.append(item)
        while len(self._head) < self.in_memory and self._tail and not self._spilled:
            self._head.append(self._tail.popleft())

    def _read_one(self) -> Delivery | None:
        assert self._fd is not None
        try:
            head = os.pread(self._fd, _HEAD.size, self._read_at)
            topic_length, raw_length, carrier_length = _HEAD.unpack(head)
            body_length = topic_length + raw_length + max(0, carrier_length)
            body = os.pread(self._fd, body_length, self._read_at + _HEAD.size)
            if len(body) != body_length:
                raise OSError("short read")
        except (OSError, struct.error) as exc:
            log.error(
                "spilled deliveries unreadable, dropped", count=self._spilled, error=repr(exc)
            )
            self._spilled = 0
            self._disk_error(exc)
            return None
        self._read_at += _HEAD.size + body_length
        self._spilled -= 1
        if not self._spilled:
            self._read_at = self._write_at = 0
            try:
                os.ftruncate(self._fd, 0)
            except OSError as exc:
                self._disk_error(exc)
        topic = body[:topic_length].decode()
        raw = body[topic_length : topic_length + raw_length]
        carrier = None if carrier_length < 0 else body[topic_length + raw_length :].decode()
        return topic, raw, carrier

    def _disk_error(self, exc: BaseException) -> None:
        if self._disk_ok:
            log.error("bus queue cannot use its file, kept in memory", error=repr(exc))
        self._disk_ok = False


def _unlinked_file(directory: Path) -> int:
    """A new file in `directory`, readable by this process only and already removed from
    the directory (so nothing is left behind, whatever ends the process): its descriptor."""
    directory.mkdir(parents=True, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix="bus-queue-", dir=directory)
    os.unlink(path)
    return fd
