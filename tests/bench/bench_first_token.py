"""Where a stream's first token spends the time Switchyard adds, against a JSON answer.

A Python upstream on 127.0.0.1 answers Chat Completions as the side-by-side benchmark's
nginx does (a JSON completion at once, or an SSE stream whose first content comes 10 ms
after its opening chunk) and notes, on the one monotonic clock every process shares,
when each request arrived and when it sent the answer (JSON) or the first content
(stream). A client sends requests one at a time (concurrency 1) through Switchyard and
notes when it sent each and when it got that answer or first content. For each, it
prints the median of:

- *before the upstream*: the client sent it → the upstream got it (gateway, bus,
  inference, the upstream request);
- *after the upstream*: the upstream sent the answer or first content → the client got
  it (inference reading and relaying it, bus, gateway writing it).

`--gap-ms` idles between requests (a stream idles 10 ms between its opening chunk and
its content; compare how much slower each hop is after idling). Embedded mode by
default; `--mode kafka` needs KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL (`make infra-up`).
Usage: `.venv/bin/python tests/bench/bench_first_token.py [--mode embedded|kafka]
[--requests 300] [--rounds 2] [--gap-ms 2]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchkit import DEV_KEY, START_TIMEOUT_S, embedded_group, kafka_deployment

OPENING = {"role": "assistant", "content": ""}
CONTENT = {"content": "Hello"}


def _chunk(delta: dict, finish: str | None = None, **extra: object) -> bytes:
    data = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "bench-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }
    line = b"data: " + json.dumps(data).encode() + b"\n\n"
    return f"{len(line):x}\r\n".encode() + line + b"\r\n"


COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1,
        "model": "bench-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
).encode()
DONE = b"data: [DONE]\n\n"
STREAM_END = (
    _chunk({}, "stop", usage={"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4})
    + f"{len(DONE):x}\r\n".encode()
    + DONE
    + b"\r\n0\r\n\r\n"
)


@dataclass
class Marks:
    """Monotonic times (seconds) of one request, by its tag (the user message)."""

    arrived: dict[str, float] = field(default_factory=dict)
    answered: dict[str, float] = field(default_factory=dict)


class Upstream:
    """The Chat Completions stand-in: notes arrival and answer times per request."""

    def __init__(self) -> None:
        self.marks = Marks()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                arrived = time.monotonic()
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                body = json.loads(await reader.readexactly(length))
                tag = body["messages"][0]["content"]
                self.marks.arrived[tag] = arrived
                if body.get("stream"):
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                        b"transfer-encoding: chunked\r\n\r\n" + _chunk(OPENING)
                    )
                    await writer.drain()
                    await asyncio.sleep(0.01)
                    self.marks.answered[tag] = time.monotonic()
                    writer.write(_chunk(CONTENT))
                    await writer.drain()
                    writer.write(STREAM_END)
                else:
                    self.marks.answered[tag] = time.monotonic()
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                        + f"content-length: {len(COMPLETION)}\r\n\r\n".encode()
                        + COMPLETION
                    )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            writer.close()  # the client went, or the benchmark ended


async def _client(
    port: int, key: str, upstream: Upstream, count: int, stream: bool, gap_s: float
) -> list[tuple[float, float]]:
    """`count` requests one at a time; (before, after the upstream) seconds of each."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    timings = []
    try:
        for index in range(count):
            tag = f"{'stream' if stream else 'json'}-{index}-{time.monotonic_ns()}"
            body = json.dumps(
                {"model": "bench", "stream": stream, "messages": [{"role": "user", "content": tag}]}
            ).encode()
            request = (
                f"POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\n"
                f"authorization: Bearer {key}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\n\r\n"
            ).encode() + body
            sent = time.monotonic()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if stream:
                got = None
                while True:
                    size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                    data = await reader.readexactly(size + 2)
                    if got is None and b'"Hello"' in data:
                        got = time.monotonic()
                    if size == 0:
                        break
            else:
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                got = time.monotonic()
            assert got is not None, "no content in the stream"
            marks = upstream.marks
            timings.append((marks.arrived[tag] - sent, got - marks.answered[tag]))
            await asyncio.sleep(gap_s)
    finally:
        writer.close()
    return timings


async def _measure(port: int, key: str, upstream: Upstream, args: argparse.Namespace) -> None:
    await _client(port, key, upstream, 30, False, 0.002)  # warm-up
    await _client(port, key, upstream, 30, True, 0.002)
    print("| round | answer | requests | before the upstream p50 ms | after it p50 ms | sum |")
    print("|---|---|---:|---:|---:|---:|")
    for round_ in range(1, args.rounds + 1):
        for stream in (False, True):
            timings = await _client(port, key, upstream, args.requests, stream, args.gap_ms / 1000)
            before = statistics.median(t[0] for t in timings) * 1000
            after = statistics.median(t[1] for t in timings) * 1000
            what = "stream, first content" if stream else "JSON"
            print(
                f"| {round_} | {what} | {len(timings)} | {before:.2f} | {after:.2f} "
                f"| {before + after:.2f} |",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=("embedded", "kafka"), default="embedded")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--gap-ms", type=float, default=2.0)
    args = parser.parse_args()

    loop = asyncio.new_event_loop()
    upstream = Upstream()
    server = loop.run_until_complete(asyncio.start_server(upstream.serve, "127.0.0.1", 0))
    port = server.sockets[0].getsockname()[1]
    workdir = Path(tempfile.mkdtemp(prefix="bench-first-token-"))
    routing = workdir / "routing.yaml"
    routing.write_text(
        "models:\n  bench:\n    deployments:\n      - {name: bench, provider: openai, "
        f'model: bench-model, base_url: "http://127.0.0.1:{port}/v1"}}\n'
    )
    print(f"{args.mode} mode, {args.requests} requests per cell, gap {args.gap_ms:g} ms")
    try:
        if args.mode == "embedded":
            group = embedded_group(workdir, routing, "embedded")
            gateway_port = int(group.env["SWITCHYARD_GATEWAY_PORT"])
            try:
                group.start("embedded", "dev", port=gateway_port, timeout=START_TIMEOUT_S)
                loop.run_until_complete(_measure(gateway_port, DEV_KEY, upstream, args))
            finally:
                group.stop_all()
        else:
            with kafka_deployment(workdir / "kafka", routing, "syfirst") as deployment:
                deployment.start_services()
                time.sleep(3)  # every consumer group settled
                gateway_port = int(deployment.gateway.rsplit(":", 1)[1])
                loop.run_until_complete(_measure(gateway_port, deployment.key, upstream, args))
    finally:
        server.close()
        pending = asyncio.all_tasks(loop)  # the upstream's connections
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()


if __name__ == "__main__":
    sys.exit(main())
