"""A client that goes away mid-reply makes the gateway ask inference to stop (or, when
configured, lets the request complete), on a real HTTP server; so does one that stops
reading its stream, whose stream is cut instead of held in memory."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket

import httpx
import pytest
import uvicorn

from switchyard.common.events import ChatCancelRequested
from switchyard.common.testing.infra import async_wait_until
from switchyard.common.testing.processes import free_port

from .conftest import API_KEY, chunk

BODY = {"model": "sim-small", "messages": [{"role": "user", "content": "Hello"}]}


@contextlib.asynccontextmanager
async def serving(app):
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_config=None)
    )
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def cancellations(harness) -> list[ChatCancelRequested]:
    seen: list[ChatCancelRequested] = []

    async def on_control(event):
        seen.append(event)

    topic = harness.app.state.gateway.topics.control
    await harness.bus.listen(topic, on_control)
    return seen


async def hang_up_after_the_first_event(client, path="/v1/chat/completions", body=None) -> None:
    """Stream `body` (a streamed chat completion by default) from `path`, read up to its
    first `data:` line, and hang up."""
    async with client.stream(
        "POST",
        path,
        json=body or {**BODY, "stream": True},
        headers={"Authorization": f"Bearer {API_KEY}"},
    ) as response:
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                break


async def never_finishes(request):
    return [chunk(request, 0, "first words")]  # then silence: the stream stays open


@pytest.mark.parametrize("stream", [True, False])
async def test_disconnect_publishes_a_cancellation(harness, stream):
    seen = await cancellations(harness)
    harness.respond[0] = never_finishes
    async with serving(harness.app) as url, httpx.AsyncClient(base_url=url, timeout=5) as client:
        if stream:
            await hang_up_after_the_first_event(client)
        else:
            request = asyncio.ensure_future(
                client.post(
                    "/v1/chat/completions",
                    json=BODY,
                    headers={"Authorization": f"Bearer {API_KEY}"},
                )
            )
            # Hang up once the request was published (inference has it): before that
            # there is nothing to cancel.
            await async_wait_until(
                lambda: asyncio.sleep(0, harness.requests),
                timeout=5,
                message="the request to be published",
            )
            request.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await request
        await async_wait_until(
            lambda: asyncio.sleep(0, seen), timeout=5, message="a cancellation on the control topic"
        )
    [cancel] = seen
    assert cancel.request_id == harness.requests[0].request_id
    assert cancel.tenant == "acme"
    assert harness.app.state.gateway.in_flight == 0


async def test_disconnect_can_be_configured_to_let_the_request_complete(harness):
    harness.settings.on_client_disconnect = "complete"
    seen = await cancellations(harness)
    harness.respond[0] = never_finishes
    async with serving(harness.app) as url, httpx.AsyncClient(base_url=url, timeout=5) as client:
        await hang_up_after_the_first_event(client)
        await async_wait_until(
            lambda: asyncio.sleep(0, harness.app.state.gateway.in_flight == 0),
            timeout=5,
            message="the request to be released",
        )
    await asyncio.sleep(0.2)
    assert seen == []


def waits_for_replies() -> list[asyncio.Task]:
    """Tasks still waiting on a dispatch's reply queue."""
    return [
        task
        for task in asyncio.all_tasks()
        if not task.done() and getattr(task.get_coro(), "__qualname__", "") == "Queue.get"
    ]


@pytest.mark.parametrize("api", ["chat", "messages"])
async def test_a_stream_the_client_left_leaves_no_wait_for_replies_behind(harness, api):
    # The stream's task is cancelled when the client goes; the wait for its next reply
    # must go with it (else "Task was destroyed but it is pending!" once collected).
    harness.respond[0] = never_finishes
    path, body = (
        ("/v1/chat/completions", {**BODY, "stream": True})
        if api == "chat"
        else ("/v1/messages", {**BODY, "model": "sim-small", "max_tokens": 5, "stream": True})
    )
    async with serving(harness.app) as url, httpx.AsyncClient(base_url=url, timeout=5) as client:
        await hang_up_after_the_first_event(client, path, body)
        await released_leaving_no(harness, waits_for_replies, "task waiting for replies")


async def released_leaving_no(harness, tasks, what: str) -> None:
    """Wait until the gateway has released the request, then until `tasks()` (the tasks
    of a kind still pending) is empty."""
    await async_wait_until(
        lambda: asyncio.sleep(0, harness.app.state.gateway.in_flight == 0),
        timeout=5,
        message="the request to be released",
    )
    await async_wait_until(
        lambda: asyncio.sleep(0, not tasks()), timeout=2, message=f"no {what} left"
    )


def watchers_left() -> list[asyncio.Task]:
    """Tasks still watching a request's connection for the client to go."""
    return [
        task
        for task in asyncio.all_tasks()
        if not task.done() and getattr(task.get_coro(), "__qualname__", "") == "_client_gone"
    ]


async def test_a_client_leaving_a_stream_whose_records_all_wait_is_seen_to_go(harness):
    """Records that are all there already are relayed without a wait per record: the
    client's going is still seen (by the one watcher each request has), inference is asked
    to stop, and nothing is left watching once the request is released."""
    seen = await cancellations(harness)
    text = "y" * 2000

    async def all_at_once(request):
        return [chunk(request, sequence, text) for sequence in range(3000)]

    harness.respond[0] = all_at_once
    async with serving(harness.app) as url, httpx.AsyncClient(base_url=url, timeout=5) as client:
        await hang_up_after_the_first_event(client)
        await async_wait_until(
            lambda: asyncio.sleep(0, seen), timeout=5, message="a cancellation on the control topic"
        )
        await released_leaving_no(harness, watchers_left, "task watching the connection")
    assert [cancel.request_id for cancel in seen] == [harness.requests[0].request_id]


async def _read_to_end(sock, timeout_s: float) -> bytes:
    """Everything the gateway sends on `sock` until the chunked body ends or it closes."""
    loop = asyncio.get_running_loop()
    received = bytearray()
    async with asyncio.timeout(timeout_s):
        while not received.endswith(b"0\r\n\r\n"):
            data = await loop.sock_recv(sock, 65536)
            if not data:
                break
            received += data
    return bytes(received)


@pytest.mark.parametrize("api", ["chat", "messages"])
async def test_a_client_that_stops_reading_has_its_stream_cut(harness, api):
    # A stream far larger than the sockets' buffers, to a client that reads nothing: past
    # `max_buffered_events` the gateway drops what waits instead of holding the whole
    # stream, asks inference to stop, and ends the stream with the API's error event.
    gateway = harness.app.state.gateway
    gateway.pending.max_buffered_events = 64
    seen = await cancellations(harness)
    text = "x" * 4000
    background: list[asyncio.Task] = []

    async def floods(request):
        # As a fast model streams: the first record at once, then 3,000 more (12 MB) in
        # runs of 50, each published as the one before it is.
        async def rest():
            for start in range(1, 3001, 50):
                for sequence in range(start, start + 50):
                    await harness.bus.publish(
                        gateway.topics.replies,
                        chunk(request, sequence, text),
                        key=request.request_id,
                        partition=request.data.reply_to.partition,
                    )
                await asyncio.sleep(0.005)

        background.append(asyncio.create_task(rest()))
        return [chunk(request, 0, text)]

    harness.respond[0] = floods
    path, body = (
        ("/v1/chat/completions", {**BODY, "stream": True})
        if api == "chat"
        else ("/v1/messages", {**BODY, "max_tokens": 5, "stream": True})
    )
    raw = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nhost: gateway\r\nauthorization: Bearer {API_KEY}\r\n"
        "anthropic-version: 2023-06-01\r\ncontent-type: application/json\r\n"
        f"content-length: {len(raw)}\r\n\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    async with serving(harness.app) as url:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", int(url.rsplit(":", 1)[1])))
            await loop.sock_sendall(sock, head + raw)
            await async_wait_until(
                lambda: asyncio.sleep(0, seen), timeout=10, message="the stream to be cut"
            )
            received = await _read_to_end(sock, timeout_s=10)
        await async_wait_until(
            lambda: asyncio.sleep(0, gateway.in_flight == 0),
            timeout=5,
            message="the request to be released",
        )
    for task in background:
        task.cancel()
    [cancel] = seen
    assert cancel.request_id == harness.requests[0].request_id
    assert received.startswith(b"HTTP/1.1 200")
    assert received.endswith(b"0\r\n\r\n")  # the stream ended, not just the connection
    assert b"client_too_slow" in received
    if api == "messages":
        assert b"event: error" in received
    assert len(received) < 6_000_000  # most of the 12 MB was dropped, not relayed


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {**BODY, "stream": True}),
        ("/v1/messages", {**BODY, "max_tokens": 16, "stream": True}),
    ],
)
async def test_a_stream_its_client_left_is_not_kept_under_its_idempotency_key(harness, path, body):
    """The stream's 200 went out with its first event: cut by the client's going away, it
    was stored as the key's answer, and every retry for a day got those few events, with
    no end."""
    from .conftest import completed_reply
    from .history_fakes import install

    await install(harness)
    harness.respond[0] = never_finishes
    headers = {
        "Authorization": f"Bearer {API_KEY}",
        "Idempotency-Key": f"left{path}",
        "anthropic-version": "2023-06-01",
    }
    async with serving(harness.app) as url, httpx.AsyncClient(base_url=url, timeout=5) as client:
        async with client.stream("POST", path, json=body, headers=headers) as response:
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    break
        await async_wait_until(
            lambda: asyncio.sleep(0, harness.app.state.gateway.in_flight == 0),
            timeout=5,
            message="the first request to end",
        )
        harness.respond[0] = lambda request: asyncio.sleep(
            0, [chunk(request, 0, "all"), completed_reply(request)]
        )
        again = await client.post(path, json=body, headers=headers)

    assert again.status_code == 200
    assert "idempotent-replayed" not in again.headers
    assert b"all" in again.content  # run again, whole
    assert len(harness.requests) == 2


@pytest.mark.parametrize("stream", [True, False])
async def test_a_request_ended_by_a_revocation_is_not_kept_under_its_idempotency_key(
    harness, stream
):
    """Its 403 `credentials_revoked` is no answer to keep: the caller's retry with a new
    credential (a new sign-in, a rotated key) runs the request, not a replay of the 403
    for the key's whole lifetime."""
    from datetime import UTC, datetime, timedelta

    from switchyard.common.events import TokenRevoked, TokenRevokedData, new_id

    from .conftest import completed_reply
    from .history_fakes import install

    await install(harness)
    harness.respond[0] = never_finishes
    gateway = harness.app.state.gateway
    body = {
        "model": "sim-small",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": stream,
    }
    key = {"Idempotency-Key": f"revoked-{stream}"}
    # With `history:read`, a key is the user's across credentials (`claimed_key`).
    reads = ["chat", "history:read"]
    old = {"Authorization": f"Bearer {harness.auth.token(jti='jti-old', scopes=reads)}", **key}
    first = asyncio.ensure_future(
        harness.client.post("/v1/chat/completions", json=body, headers=old)
    )
    await async_wait_until(
        lambda: asyncio.sleep(0, len(gateway.pending) == 1),
        timeout=5,
        message="the request to be held",
    )
    revoked = TokenRevokedData(
        jti="jti-old", user_id="user-jwt", expires_at=datetime.now(UTC) + timedelta(minutes=5)
    )
    gateway.authenticator.revocations.apply(
        TokenRevoked(source="auth", tenant="acme", request_id=new_id(), data=revoked)
    )
    ended = await asyncio.wait_for(first, 5)
    assert "credentials_revoked" in ended.text
    assert ended.status_code == (200 if stream else 403)
    await async_wait_until(
        lambda: asyncio.sleep(0, gateway.in_flight == 0),
        timeout=5,
        message="the first request to end",
    )
    harness.respond[0] = lambda request: asyncio.sleep(
        0, [chunk(request, 0, "all"), completed_reply(request)]
    )
    new = {"Authorization": f"Bearer {harness.auth.token(jti='jti-new', scopes=reads)}", **key}
    again = await harness.client.post("/v1/chat/completions", json=body, headers=new)

    assert again.status_code == 200, again.text
    assert "idempotent-replayed" not in again.headers
    assert len(harness.requests) == 2  # run again


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/responses"])
async def test_a_stream_read_to_its_own_end_is_kept_though_its_outcome_came_later(harness, path):
    """Messages' `message_stop` (the Responses API's `response.completed`) is an event of
    the stream: a client that hangs up right after it has the whole answer, though the
    request's outcome reaches the gateway a moment later. That stream is the key's
    answer: a retry must not run the request again."""
    from switchyard.common.events import StreamEvent

    from .conftest import anthropic_stream, completed_reply, record
    from .history_fakes import install

    def responses_stream(request, pieces):
        response = {"id": "resp_1", "object": "response", "status": "in_progress", "output": []}
        events = [
            StreamEvent(
                event="response.created",
                data={"type": "response.created", "sequence_number": 0, "response": response},
            ),
            *[
                StreamEvent(
                    event="response.output_text.delta",
                    data={
                        "type": "response.output_text.delta",
                        "sequence_number": index + 1,
                        "delta": piece,
                    },
                )
                for index, piece in enumerate(pieces)
            ],
            StreamEvent(
                event="response.completed",
                data={
                    "type": "response.completed",
                    "sequence_number": len(pieces) + 1,
                    "response": {**response, "status": "completed"},
                },
            ),
        ]
        return [record(request, index, [event]) for index, event in enumerate(events)]

    await install(harness)
    replies = harness.app.state.gateway.topics.replies

    async def stream_then_outcome(request):
        records = (
            anthropic_stream(request, ["all"])
            if path == "/v1/messages"
            else responses_stream(request, ["all"])
        )
        for one in records:
            await harness.bus.publish(
                replies, one, key=request.request_id, partition=request.data.reply_to.partition
            )
        await asyncio.sleep(0.3)
        return [completed_reply(request)]

    harness.respond[0] = stream_then_outcome
    body = (
        {**BODY, "max_tokens": 16, "stream": True}
        if path == "/v1/messages"
        else {"model": "sim-small", "input": "Hello", "stream": True}
    )
    last = "message_stop" if path == "/v1/messages" else "response.completed"
    headers = {
        "Authorization": f"Bearer {API_KEY}",
        "Idempotency-Key": f"whole{path}",
        "anthropic-version": "2023-06-01",
    }
    seen = await cancellations(harness)
    async with serving(harness.app) as url, httpx.AsyncClient(base_url=url, timeout=5) as client:
        async with client.stream("POST", path, json=body, headers=headers) as response:
            async for line in response.aiter_lines():
                if line.startswith("data:") and last in line:
                    break
        await async_wait_until(
            lambda: asyncio.sleep(0, harness.app.state.gateway.in_flight == 0),
            timeout=5,
            message="the first request to end",
        )
        again = await client.post(path, json=body, headers=headers)

    assert again.headers.get("idempotent-replayed") == "true"
    assert len(harness.requests) == 1
    assert not seen  # nothing to stop: it had ended
