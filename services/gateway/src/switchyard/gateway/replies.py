"""Replies waiting for their requests: the gateway replica that published a request
listens to its own partition of the replies topic and hands each reply, or each stream
chunk, to the HTTP request waiting for it."""

from __future__ import annotations

import asyncio
import zlib

import structlog

from switchyard.common.errorformat import Vendor, error_type
from switchyard.common.events import (
    ChatChunk,
    ChatCompleted,
    ChatFailed,
    ChatFailedData,
    ErrorInfo,
    Event,
    TerminalStatus,
)

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
        self._vendors: dict[str, Vendor] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def open(
        self, request_id: str, tenant: str | None = None, vendor: Vendor = "openai"
    ) -> asyncio.Queue[Reply]:
        """Start collecting the replies of `request_id` (of `tenant`: a reply naming
        another tenant is not this request's, whatever wrote it; asked in the API of
        `vendor`); returns their queue."""
        queue: asyncio.Queue[Reply] = asyncio.Queue()
        self._waiting[request_id] = queue
        if tenant is not None:
            self._tenants[request_id] = tenant
        self._vendors[request_id] = vendor
        return queue

    def waiting_for(self, request_id: str) -> bool:
        """Whether a request of this replica waits for replies to `request_id` (the key
        of every reply event): the replies listener decodes only those."""
        return request_id in self._waiting

    def close(self, request_id: str) -> None:
        """Stop collecting the replies of `request_id` (later ones are dropped)."""
        self._waiting.pop(request_id, None)
        self._tenants.pop(request_id, None)
        self._vendors.pop(request_id, None)

    def fail_all(self, status: int, code: str, message: str) -> int:
        """End every request still waiting as failed here, without its reply: each gets a
        `chat.failed` (source `gateway`, never published: inference still answers it and
        history records that) with an error of HTTP `status`, `code` and `message`, typed
        in its API's own words. Returns how many were waiting."""
        for request_id, queue in self._waiting.items():
            vendor = self._vendors.get(request_id, "openai")
            queue.put_nowait(
                ChatFailed(
                    source="gateway",
                    tenant=self._tenants.get(request_id, "unknown"),
                    request_id=request_id,
                    data=ChatFailedData(
                        status=TerminalStatus.FAILED,
                        error=ErrorInfo(
                            status=status,
                            type=error_type(vendor, status),
                            code=code,
                            message=message,
                        ),
                    ),
                )
            )
        return len(self._waiting)

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
