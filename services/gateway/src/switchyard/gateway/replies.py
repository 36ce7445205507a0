"""Replies waiting for their requests: the gateway replica that published a request
listens to its own partition of the replies topic and hands each reply, or each stream
chunk, to the HTTP request waiting for it."""

from __future__ import annotations

import asyncio
import zlib

import structlog

from switchyard.common.events import ChatChunk, ChatCompleted, ChatFailed, Event

Reply = ChatChunk | ChatCompleted | ChatFailed

log = structlog.get_logger("switchyard.gateway.replies")


def reply_partition(instance_id: str, partitions: int) -> int:
    """The replies partition this replica reads; stable for its instance id."""
    return zlib.crc32(instance_id.encode()) % max(1, partitions)


class PendingReplies:
    """The requests of this replica waiting for replies, by request id, each with a queue of its
    reply events (chunks, then a completed or failed event)."""

    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Queue[Reply]] = {}
        self._tenants: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def open(self, request_id: str, tenant: str | None = None) -> asyncio.Queue[Reply]:
        """Start collecting the replies of `request_id` (of `tenant`: a reply naming
        another tenant is not this request's, whatever wrote it); returns their queue."""
        queue: asyncio.Queue[Reply] = asyncio.Queue()
        self._waiting[request_id] = queue
        if tenant is not None:
            self._tenants[request_id] = tenant
        return queue

    def waiting_for(self, request_id: str) -> bool:
        """Whether a request of this replica waits for replies to `request_id` (the key
        of every reply event): the replies listener decodes only those."""
        return request_id in self._waiting

    def close(self, request_id: str) -> None:
        """Stop collecting the replies of `request_id` (later ones are dropped)."""
        self._waiting.pop(request_id, None)
        self._tenants.pop(request_id, None)

    async def deliver(self, event: Event) -> None:
        """Bus listener: route a reply to its waiting request; ignore anything else
        (replies for other replicas sharing the partition, or for requests given up on)."""
        if isinstance(event, ChatChunk | ChatCompleted | ChatFailed):
            queue = self._waiting.get(event.request_id)
            if queue is None:
                return
            tenant = self._tenants.get(event.request_id)
            if tenant is not None and event.tenant != tenant:
                # Only inference answers, in the request's tenant: anything else on the
                # topic under this request's id (a bad producer's) is not relayed.
                log.warning(
                    "reply of another tenant dropped",
                    request_id=event.request_id,
                    event_type=event.type,
                )
                return
            queue.put_nowait(event)
