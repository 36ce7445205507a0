"""Test support for the inference service (and for suites that need a provider): the
provider simulator served on a free 127.0.0.1 port in a background thread, a handle on
its control API, and a harness that runs `ChatRequestHandler` on the in-memory bus and
collects what a gateway and a billing consumer would see."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx

from switchyard.common.bus import InMemoryBus
from switchyard.common.events import (
    ChatCancelRequested,
    ChatChunk,
    ChatCompleted,
    ChatFailed,
    ChatRequestData,
    ChatRequested,
    ReplyAddress,
    UsageRecorded,
    new_id,
    utcnow,
)
from switchyard.common.testing.infra import async_wait_until
from switchyard.common.topics import Topics
from switchyard.inference.handlers import ChatRequestHandler

REPLY_PARTITION = 3


@dataclass
class SimulatorHandle:
    root: str  # http://127.0.0.1:PORT
    control: httpx.Client

    @property
    def openai_url(self) -> str:
        return f"{self.root}/v1"

    def stats(self) -> dict[str, Any]:
        return self.control.get("/_sim/stats").raise_for_status().json()

    def calls(self, model: str | None = None) -> int:
        stats = self.stats()
        return stats["models"].get(model, 0) if model else stats["total"]

    def fault(self, **fault: Any) -> None:
        self.control.post("/_sim/faults", json=fault).raise_for_status()

    def latency(self, latency_ms: float) -> None:
        self.control.put("/_sim/latency", json={"latency_ms": latency_ms}).raise_for_status()

    def reset(self) -> None:
        self.control.post("/_sim/reset").raise_for_status()
        self.latency(0)


@contextmanager
def serve_simulator() -> Iterator[str]:
    """Run the simulator over real HTTP until the block ends; yields its root URL."""
    import uvicorn

    from switchyard.inference.simulator import create_simulator_app

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        create_simulator_app(), log_level="warning", lifespan="on", timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the simulator did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=5)


def chat_request(
    model: str = "sim-small",
    text: str = "Hello there",
    *,
    deadline_s: float = 30,
    body: dict[str, Any] | None = None,
    stream: bool = False,
    include_usage: bool | None = None,
    reply_to: bool = True,
    priority: str = "interactive",
    operation: str = "chat",
    api: str = "openai",
) -> ChatRequested:
    """A `chat.requested` event as the gateway publishes it."""
    if body is None:
        if operation == "embeddings":
            body = {"model": model, "input": text}
        else:
            body = {"model": model, "messages": [{"role": "user", "content": text}]}
    if stream:
        body = {**body, "stream": True}
        if include_usage is not None:
            body["stream_options"] = {"include_usage": include_usage}
    return ChatRequested(
        source="gateway",
        tenant="acme",
        request_id=f"req-{new_id()[:12]}",
        data=ChatRequestData(
            api=api,
            operation=operation,
            model=model,
            body=body,
            stream=stream,
            user_id="user-1",
            api_key_id="key-1",
            priority=priority,
            deadline=utcnow() + timedelta(seconds=deadline_s),
            reply_to=ReplyAddress(partition=REPLY_PARTITION, instance_id="gw-1")
            if reply_to
            else None,
        ),
    )


def cancel_request(request_id: str) -> ChatCancelRequested:
    return ChatCancelRequested(source="gateway", tenant="acme", request_id=request_id, data={})


@dataclass
class Harness:
    """A handler on the in-memory bus, with what reaches the reply partition and the usage
    topic collected in order."""

    handler: ChatRequestHandler
    bus: InMemoryBus
    topics: Topics
    replies: list[Any] = field(default_factory=list)
    other_partition: list[Any] = field(default_factory=list)
    usage: list[UsageRecorded] = field(default_factory=list)

    @classmethod
    async def start(cls, topics: Topics, **handler_options: Any) -> Harness:
        bus = InMemoryBus(partitions={topics.replies: 12})
        handler = ChatRequestHandler(publish=bus.publish, topics=topics, **handler_options)
        harness = cls(handler, bus, topics)
        await bus.listen(topics.replies, _append(harness.replies), partitions=[REPLY_PARTITION])
        await bus.listen(topics.replies, _append(harness.other_partition), partitions=[0])
        await bus.listen(topics.usage, _append(harness.usage))
        return harness

    async def stop(self) -> None:
        await self.bus.stop()

    def events_of(self, request_id: str) -> list[Any]:
        return [event for event in self.replies if event.request_id == request_id]

    def chunks_of(self, request_id: str) -> list[ChatChunk]:
        return [e for e in self.events_of(request_id) if isinstance(e, ChatChunk)]

    async def reply(self, request_id: str, timeout: float = 10) -> ChatCompleted | ChatFailed:
        async def found() -> Any:
            return next(
                (
                    event
                    for event in self.events_of(request_id)
                    if isinstance(event, ChatCompleted | ChatFailed)
                ),
                None,
            )

        return await async_wait_until(
            found, timeout=timeout, interval=0.005, message="terminal reply"
        )

    async def usage_of(self, request_id: str, timeout: float = 10) -> UsageRecorded:
        async def found() -> Any:
            return next((e for e in self.usage if e.request_id == request_id), None)

        return await async_wait_until(found, timeout=timeout, interval=0.005, message="usage")

    async def handle(self, request: ChatRequested) -> ChatCompleted | ChatFailed:
        await self.handler(request)
        return await self.reply(request.request_id)

    async def first_chunk(self, request_id: str, timeout: float = 10) -> ChatChunk:
        async def found() -> Any:
            chunks = self.chunks_of(request_id)
            return chunks[0] if chunks else None

        return await async_wait_until(found, timeout=timeout, interval=0.005, message="a chunk")


def _append(events: list[Any]):
    async def append(event: Any) -> None:
        events.append(event)

    return append


async def settle() -> None:
    """Let the in-memory bus deliver what was published."""
    for _ in range(3):
        await asyncio.sleep(0)
