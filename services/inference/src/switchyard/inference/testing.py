"""Test support for the inference service: a recording upstream (a small server that
records exactly what reached it and answers scripted replies, served with
`switchyard.common.testing.servers.serve_app`), a raw HTTP/1.1 server that keeps each
request's head byte for byte and answers with exact bytes (`RawServer`), and a harness that runs
`ChatRequestHandler` on the in-memory bus and collects what a gateway and a billing
consumer would see. Suites that need the provider simulator use
`switchyard.simulator.testing`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from switchyard.common import exactjson
from switchyard.common.bus import InMemoryBus
from switchyard.common.events import (
    ChatCancelRequested,
    ChatChunk,
    ChatCompleted,
    ChatFailed,
    ChatRequestData,
    ChatRequested,
    ClientAPI,
    ReplyAddress,
    StreamEvent,
    UsageRecorded,
    new_id,
    utcnow,
)
from switchyard.common.testing.infra import async_wait_until
from switchyard.common.topics import Topics
from switchyard.inference.handlers import ChatRequestHandler

REPLY_PARTITION = 3
# The head of a streamed answer (without its blank line), for a `RawReply`.
SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"


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
    api: ClientAPI | str = ClientAPI.OPENAI_CHAT_COMPLETIONS,
    headers: dict[str, str] | None = None,
) -> ChatRequested:
    """A `chat.requested` event as the gateway publishes it: the client's body unchanged
    (the public model name in it), in the client's `api`."""
    api = ClientAPI(api)
    if body is None:
        if api is ClientAPI.OPENAI_EMBEDDINGS:
            body = {"model": model, "input": text}
        elif api is ClientAPI.ANTHROPIC_MESSAGES:
            body = {
                "model": model,
                "max_tokens": 256,
                "messages": [{"role": "user", "content": text}],
            }
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
            model=model,
            body=body,
            headers=headers or {},
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


def cancel_request(request_id: str, reason: str | None = None) -> ChatCancelRequested:
    """A `chat.cancel_requested` for `request_id`, as the gateway publishes it when a client
    goes away (or, with `reason`, when its caller is refused while it runs)."""
    data = {} if reason is None else {"reason": reason}
    return ChatCancelRequested(source="gateway", tenant="acme", request_id=request_id, data=data)


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
        """A harness on a new in-memory bus: a `ChatRequestHandler` built with
        `handler_options` (its constructor's keywords) and collectors on the reply partition,
        another reply partition and the usage topic of `topics`."""
        bus = InMemoryBus(partitions={topics.replies: 12})
        handler = ChatRequestHandler(
            publish=bus.publish,
            publish_in_order=bus.publish_in_order,
            topics=topics,
            **handler_options,
        )
        harness = cls(handler, bus, topics)
        await bus.listen(topics.replies, _append(harness.replies), partitions=[REPLY_PARTITION])
        await bus.listen(topics.replies, _append(harness.other_partition), partitions=[0])
        await bus.listen(topics.usage, _append(harness.usage))
        return harness

    async def stop(self) -> None:
        """Stop the bus and its listeners."""
        await self.bus.stop()

    def events_of(self, request_id: str) -> list[Any]:
        """Every event published to the reply partition for `request_id`, in order."""
        return [event for event in self.replies if event.request_id == request_id]

    def chunks_of(self, request_id: str) -> list[ChatChunk]:
        """The `chat.chunk` records published for `request_id`, in publication order."""
        return [e for e in self.events_of(request_id) if isinstance(e, ChatChunk)]

    def stream_of(self, request_id: str) -> list[StreamEvent]:
        """The client stream events of a request, in the order the gateway relays them."""
        chunks = sorted(self.chunks_of(request_id), key=lambda chunk: chunk.data.sequence)
        return [event for chunk in chunks for event in chunk.data.events]

    async def reply(self, request_id: str, timeout: float = 10) -> ChatCompleted | ChatFailed:
        """The terminal event of `request_id` once published; raises TimeoutError after
        `timeout` seconds."""

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
        """The `usage.recorded` of `request_id` once published; raises TimeoutError after
        `timeout` seconds."""

        async def found() -> Any:
            return next((e for e in self.usage if e.request_id == request_id), None)

        return await async_wait_until(found, timeout=timeout, interval=0.005, message="usage")

    async def handle(self, request: ChatRequested) -> ChatCompleted | ChatFailed:
        """Hand `request` to the handler as the bus would, and return its terminal event."""
        await self.handler(request)
        return await self.reply(request.request_id)

    async def first_chunk(self, request_id: str, timeout: float = 10) -> ChatChunk:
        """The first `chat.chunk` record of `request_id` once published; raises TimeoutError
        after `timeout` seconds."""

        async def found() -> Any:
            chunks = self.chunks_of(request_id)
            return chunks[0] if chunks else None

        return await async_wait_until(found, timeout=timeout, interval=0.005, message="a chunk")


def _append(events: list[Any]) -> Callable[[Any], Awaitable[None]]:
    async def append(event: Any) -> None:
        events.append(event)

    return append


async def settle() -> None:
    """Let the in-memory bus deliver what was published."""
    for _ in range(3):
        await asyncio.sleep(0)


# --------------------------------------------------------------------------- recording


@dataclass
class Recorded:
    """One request as it reached the recording upstream."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any  # the JSON body parsed (None if it was not JSON)
    raw: bytes
    query: str = ""  # the query string, undecoded
    raw_path: str = ""  # the path as sent (percent-encoding kept)


@dataclass
class Scripted:
    """A reply the recording upstream gives: JSON (`json`) or SSE (`events`: a list of
    (event name or None, data) pairs, data being a JSON-able value or a raw string), with
    `status` and `headers`."""

    json: Any = None
    events: list[tuple[str | None, Any]] | None = None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    # Bytes sent as they are, in `chunks` (e.g. AWS event-stream frames), of `media_type`.
    chunks: list[bytes] | None = None
    media_type: str = "application/octet-stream"


class RecordingUpstream:
    """A provider stand-in that records exactly what reached it (path, headers, body) and
    answers the scripted replies in order (the last one is repeated). Serve it with
    `serve_app(recorder.app())`; point an OpenAI deployment at `<root>/v1`, an Anthropic
    one at `<root>`."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.replies: list[Scripted] = []
        self.root = ""  # set by whoever serves it

    @property
    def last(self) -> Recorded:
        """The last request that reached the upstream."""
        return self.requests[-1]

    def script(self, *replies: Scripted) -> None:
        """Forget what was recorded and answer `replies` from now on, in order (the last one
        repeated; none scripted: a 500 saying so)."""
        self.replies = list(replies)
        self.requests.clear()

    def app(self) -> Any:
        """The Starlette app that records each request (any path) and answers the next
        scripted reply: JSON, Server-Sent Events, or raw chunks."""
        import orjson
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import Response, StreamingResponse
        from starlette.routing import Route

        async def record(request: Request) -> Response:
            raw = await request.body()
            try:
                body = exactjson.loads(raw)
            except orjson.JSONDecodeError:
                body = None
            self.requests.append(
                Recorded(
                    request.method,
                    request.url.path,
                    dict(request.headers),
                    body,
                    raw,
                    request.url.query,
                    request.scope.get("raw_path", b"").decode("latin-1"),
                )
            )
            if not self.replies:
                return Response(b'{"error": "nothing scripted"}', status_code=500)
            reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
            if reply.chunks is not None:
                chunks = reply.chunks

                async def raw_chunks() -> Any:
                    for piece in chunks:
                        yield piece

                return StreamingResponse(
                    raw_chunks(),
                    status_code=reply.status,
                    media_type=reply.media_type,
                    headers=reply.headers,
                )
            if reply.events is None:
                return Response(
                    exactjson.dumps(reply.json),
                    status_code=reply.status,
                    media_type="application/json",
                    headers=reply.headers,
                )

            async def stream() -> Any:
                for name, data in reply.events or ():
                    payload = data if isinstance(data, str) else exactjson.dumps(data).decode()
                    head = f"event: {name}\n" if name else ""
                    yield f"{head}data: {payload}\n\n".encode()

            return StreamingResponse(
                stream(),
                status_code=reply.status,
                media_type="text/event-stream",
                headers=reply.headers,
            )

        return Starlette(routes=[Route("/{path:path}", record, methods=["POST", "GET"])])


@dataclass
class RawReply:
    """What a `RawServer` answers: a head (status line and headers, without the blank
    line) and body chunks; `chunked` sends them in the chunked encoding, its last chunk
    `end_after_s` seconds after the others (a separate packet); `cut` closes the
    connection after the chunks instead (a stream broken half-way; without `chunked`,
    the body is the one the connection's close delimits)."""

    head: bytes
    chunks: list[bytes] = field(default_factory=list)
    chunked: bool = False
    end_after_s: float = 0.0
    cut: bool = False


def json_reply(body: bytes, status: str = "200 OK", headers: bytes = b"") -> RawReply:
    """A JSON reply with `status` (e.g. `"503 Service Unavailable"`) and the extra header
    lines `headers` (each ending in CRLF)."""
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n".encode()
        + headers
    )
    return RawReply(head, [body])


class RawServer:
    """An HTTP/1.1 provider stand-in below any HTTP library, on 127.0.0.1: it keeps
    connections alive, records each request's head as it came off the socket (the bytes
    up to the blank line) and the number of connections it accepted, and answers `reply`
    to every request. Use it as `async with RawServer(reply) as server:` (`server.root`
    is its base URL)."""

    def __init__(self, reply: RawReply) -> None:
        self.reply = reply
        self.heads: list[bytes] = []
        self.connections = 0
        self.root = ""
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.root = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                await self._answer(writer)
        except (asyncio.IncompleteReadError, ConnectionError, RuntimeError):
            # The client went away, or the connection was cut on purpose.
            writer.close()

    async def _answer(self, writer: asyncio.StreamWriter) -> None:
        reply = self.reply
        writer.write(reply.head + b"\r\n")
        if not reply.chunked:
            writer.write(b"".join(reply.chunks))
            await writer.drain()
            if reply.cut:  # a body delimited by the connection's close
                writer.close()
            return
        for chunk in reply.chunks:
            writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        await writer.drain()
        if reply.cut:
            writer.close()
            return
        await asyncio.sleep(reply.end_after_s)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
