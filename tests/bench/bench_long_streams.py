"""Long streams through embedded Switchyard: the event loop's stalls, CPU, GC and memory.

One stream of N text chunks goes from a fake upstream (Python, 127.0.0.1) through
`switchyard dev` (every service in one process, in-memory bus, SQLite) to a client that
reads the raw HTTP stream. The upstream writes `BATCH` events at a time, `GAP_S` apart, so
a stream of 200,000 chunks takes about 5 s if the gateway keeps up. Four routes:

- `/v1/messages` → Anthropic deployment (Anthropic Messages end to end);
- `/v1/messages` → OpenAI deployment (Chat Completions translated to Messages);
- Chat Completions → OpenAI deployment;
- Responses → Responses deployment (`responses_api: true`, passed through).

Each run is a fresh process (its own directory, databases and free ports, so memory and
the garbage collector start alike each time) that runs `switchyard dev` in-process and,
after one warm-up stream of 20 chunks, measures from the moment the client sends its
request until `SETTLE_S` after the stream's end (so work done once the stream is over,
recording the answer, counts too):

- stalls: a coroutine on the gateway's event loop sleeps 5 ms again and again and notes
  how late it wakes; while it is late, nothing else the loop serves (other streams,
  /livez) runs either;
- the garbage collector's passes per generation and their time (`gc.callbacks`);
- the process's CPU time (user + system, every thread) and its peak RSS (reset first);
- the client's time from sending the request to the stream's last byte, its status, and
  whether the stream is whole: every text piece, in order, and the protocol's final event.

Prints one table and writes it to bench-results/long-streams.md; exits with status 1 when
a stream was not whole. Everything listens on 127.0.0.1 only, on free ports, and stops by
itself, also on Ctrl+C or an error. Usage:
`.venv/bin/python tests/bench/bench_long_streams.py [--sizes 50000,200000] [--repeats 1]
[--scenarios messages-anthropic,messages-openai,chat-openai,responses]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchkit import (
    DEV_KEY,
    START_TIMEOUT_S,
    OwnedProcesses,
    embedded_group,
    free_port,
    machine,
    markdown_table,
    wait_http,
    write_results,
)

HOST = "127.0.0.1"
SCRIPT = str(Path(__file__).resolve())
# Upstream pacing: events per write, and the pause after each write. Without a pause the
# upstream would measure how fast Python can write, and the gateway would buffer.
BATCH = 50
GAP_S = 0.0005
# The probe's sleep, and how long the measurement goes on after the stream's end.
PROBE_S = 0.005
SETTLE_S = 0.5
WARMUP_CHUNKS = 20
# How long one stream may take, in seconds: generous (the code before 2026-12-05 took
# 20 s for 200,000 chunks) but bounded.
STREAM_BASE_S = 60.0
STREAM_PER_CHUNK_S = 1 / 2000


@dataclass(frozen=True)
class Scenario:
    """One route through the gateway: its name on the command line, its label in the
    table, the client's API (`chat`, `messages` or `responses`) and the public model."""

    key: str
    label: str
    api: str
    model: str


SCENARIOS = (
    Scenario(
        "messages-anthropic",
        "/v1/messages → Anthropic deployment",
        "messages",
        "long-anthropic",
    ),
    Scenario("messages-openai", "/v1/messages → OpenAI deployment", "messages", "long-openai"),
    Scenario("chat-openai", "Chat → OpenAI deployment", "chat", "long-openai"),
    Scenario("responses", "Responses → Responses deployment", "responses", "long-responses"),
)
BY_KEY = {scenario.key: scenario for scenario in SCENARIOS}


def piece(index: int) -> str:
    """The text of content chunk `index` (0-based): short, and different for each."""
    return f"w{index} "


def stream_timeout(chunks: int) -> float:
    """Seconds one stream of `chunks` chunks may take before the run is given up."""
    return STREAM_BASE_S + chunks * STREAM_PER_CHUNK_S


def routing_yaml(upstream_url: str) -> str:
    """The routing file for `switchyard dev`: `long-openai` (Chat Completions),
    `long-responses` (the Responses API, passed through) and `long-anthropic` (Messages),
    each one deployment on the fake upstream at `upstream_url` (its root, no /v1). No
    retries: a failed call shows at once instead of being tried again."""
    deployments = {
        "long-openai": f'provider: openai, base_url: "{upstream_url}/v1"',
        "long-responses": f'provider: openai, responses_api: true, base_url: "{upstream_url}/v1"',
        "long-anthropic": f'provider: anthropic, base_url: "{upstream_url}"',
    }
    lines = ["models:"]
    for model, fields in deployments.items():
        lines += [
            f"  {model}:",
            "    deployments:",
            f"      - {{name: fake-{model}, model: fake, max_retries: 0, {fields}}}",
        ]
    return "\n".join(lines) + "\n"


# -- the fake upstream (its own process) ---------------------------------------------


def sse(data: dict[str, Any], event: str | None = None) -> bytes:
    """One server-sent event carrying `data` as compact JSON, named `event` if given."""
    line = b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"
    return f"event: {event}\n".encode() + line if event else line


def chat_events(chunks: int) -> Iterator[bytes]:
    """An OpenAI Chat Completions stream of `chunks` content chunks, with usage, ending in
    `[DONE]`."""
    base = {
        "id": "chatcmpl-long",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "fake",
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return sse({**base, "choices": [choice]})

    yield chunk({"role": "assistant", "content": ""})
    for index in range(chunks):
        yield chunk({"content": piece(index)})
    yield chunk({}, "stop")
    usage = {"prompt_tokens": 3, "completion_tokens": chunks, "total_tokens": chunks + 3}
    yield sse({**base, "choices": [], "usage": usage})
    yield b"data: [DONE]\n\n"


def messages_events(chunks: int) -> Iterator[bytes]:
    """An Anthropic Messages stream of one text block of `chunks` deltas."""
    message: dict[str, Any] = {
        "id": "msg_long",
        "type": "message",
        "role": "assistant",
        "model": "fake",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 3, "output_tokens": 1},
    }
    yield sse({"type": "message_start", "message": message}, "message_start")
    block = {"type": "text", "text": ""}
    start = {"type": "content_block_start", "index": 0, "content_block": block}
    yield sse(start, "content_block_start")
    for index in range(chunks):
        delta = {"type": "text_delta", "text": piece(index)}
        event = {"type": "content_block_delta", "index": 0, "delta": delta}
        yield sse(event, "content_block_delta")
    yield sse({"type": "content_block_stop", "index": 0}, "content_block_stop")
    stop = {"stop_reason": "end_turn", "stop_sequence": None}
    end = {"type": "message_delta", "delta": stop, "usage": {"output_tokens": chunks}}
    yield sse(end, "message_delta")
    yield sse({"type": "message_stop"}, "message_stop")


def responses_events(chunks: int) -> Iterator[bytes]:
    """An OpenAI Responses stream of one output message of `chunks` text deltas, ending in
    `response.completed`."""
    response: dict[str, Any] = {
        "id": "resp_long",
        "object": "response",
        "created_at": 1,
        "status": "in_progress",
        "model": "fake",
        "output": [],
        "usage": None,
    }
    sequence = 0

    def event(kind: str, **fields: Any) -> bytes:
        nonlocal sequence
        sequence += 1
        return sse({"type": kind, "sequence_number": sequence - 1, **fields}, kind)

    at = {"item_id": "msg_long", "output_index": 0, "content_index": 0}
    item = {
        "id": "msg_long",
        "type": "message",
        "status": "in_progress",
        "role": "assistant",
        "content": [],
    }
    yield event("response.created", response=response)
    yield event("response.in_progress", response=response)
    yield event("response.output_item.added", output_index=0, item=item)
    empty = {"type": "output_text", "text": "", "annotations": []}
    yield event("response.content_part.added", **at, part=empty)
    for index in range(chunks):
        yield event("response.output_text.delta", **at, delta=piece(index))
    text = "".join(piece(index) for index in range(chunks))
    yield event("response.output_text.done", **at, text=text)
    part = {"type": "output_text", "text": text, "annotations": []}
    yield event("response.content_part.done", **at, part=part)
    done = {**item, "status": "completed", "content": [part]}
    yield event("response.output_item.done", output_index=0, item=done)
    usage = {
        "input_tokens": 3,
        "output_tokens": chunks,
        "total_tokens": chunks + 3,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 0},
    }
    completed = {**response, "status": "completed", "output": [done], "usage": usage}
    yield event("response.completed", response=completed)


def prompt_text(body: dict[str, Any]) -> str:
    """The text of the last user message of a Chat, Messages or Responses request."""
    content: Any = body["messages"][-1]["content"] if "messages" in body else body.get("input")
    if isinstance(content, list):  # Responses input items, or content parts
        last = content[-1] if content else {}
        content = last.get("content", last.get("text", "")) if isinstance(last, dict) else ""
    if isinstance(content, list):
        content = " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content if isinstance(content, str) else ""


def http_chunk(data: bytes) -> bytes:
    """`data` as one chunk of a chunked HTTP body."""
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


async def serve_upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer the requests of one connection: a stream of as many chunks as the prompt's
    `chunks=N` asks (5 without), in the protocol of the path; 404 for other paths."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            path = lines[0].split()[1].decode().split("?")[0]
            length = 0
            for line in lines[1:]:
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = json.loads(await reader.readexactly(length)) if length else {}
            if path.endswith("/chat/completions"):
                make = chat_events
            elif path.endswith("/v1/messages"):
                make = messages_events
            elif path.endswith("/responses"):
                make = responses_events
            else:
                missing = b'{"error":{"message":"not found"}}'
                writer.write(
                    b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%s" % (len(missing), missing)
                )
                await writer.drain()
                continue
            found = re.search(r"chunks=(\d+)", prompt_text(body))
            events = make(int(found.group(1)) if found else 5)
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"transfer-encoding: chunked\r\n\r\n"
            )
            batch: list[bytes] = []
            for event in events:
                batch.append(event)
                if len(batch) >= BATCH:
                    writer.write(http_chunk(b"".join(batch)))
                    batch.clear()
                    await writer.drain()
                    await asyncio.sleep(GAP_S)
            if batch:
                writer.write(http_chunk(b"".join(batch)))
            writer.write(b"0\r\n\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def upstream_main(port: int) -> None:
    """Serve the fake upstream on 127.0.0.1:`port` until the process is stopped."""
    server = await asyncio.start_server(serve_upstream, HOST, port)
    async with server:
        await server.serve_forever()


# -- the client (its own process, started by the gateway process) ----------------------


def request_bytes(port: int, api: str, model: str, chunks: int) -> bytes:
    """The HTTP request asking the gateway on `port` for a stream of `chunks` chunks of
    `model` through `api` (`chat`, `messages` or `responses`), with the dev API key."""
    prompt = f"chunks={chunks}"
    auth = f"authorization: Bearer {DEV_KEY}\r\n"
    body: dict[str, Any] = {"model": model, "stream": True}
    if api == "chat":
        path = "/v1/chat/completions"
        body["messages"] = [{"role": "user", "content": prompt}]
    elif api == "messages":
        path = "/v1/messages"
        body["max_tokens"] = 2 * chunks + 100
        body["messages"] = [{"role": "user", "content": prompt}]
        auth = f"x-api-key: {DEV_KEY}\r\nanthropic-version: 2023-06-01\r\n"
    else:
        path = "/v1/responses"
        body["input"] = prompt
        body["store"] = False
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nhost: {HOST}:{port}\r\n{auth}"
        f"content-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


def dechunk(data: bytes) -> bytes | None:
    """The body carried by the chunked HTTP body `data`, or None when it is cut short."""
    out: list[bytes] = []
    at = 0
    while True:
        end = data.find(b"\r\n", at)
        if end < 0:
            return None
        size = int(data[at:end].split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        start = end + 2
        if start + size + 2 > len(data):
            return None
        out.append(data[start : start + size])
        at = start + size + 2


def sse_events(body: bytes) -> Iterator[str]:
    """The `data` of every server-sent event of `body`, in order."""
    for block in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        data = [line[5:].strip() for line in block.split(b"\n") if line.startswith(b"data:")]
        if data:
            yield b"\n".join(data).decode()


def check_stream(api: str, body: bytes, chunks: int) -> dict[str, Any]:
    """Whether the SSE `body` of an `api` stream is whole: `pieces` (text pieces seen),
    `text_ok` (they are the upstream's `chunks` pieces, in order), `final` (the last event
    is the protocol's final one: `[DONE]`, `message_stop`, `response.completed`) and
    `error` (the first error event or event that is not JSON, or None)."""
    pieces: list[str] = []
    last, error = "", None
    for data in sse_events(body):
        if data == "[DONE]":
            last = data
            continue
        try:
            event = json.loads(data)
        except ValueError:  # an event cut short
            last, error = "", error or f"not JSON: {data[:100]}"
            continue
        last = event.get("type", "")
        if "error" in event or last == "error":
            error = error or data[:300]
        if api == "chat":
            for choice in event.get("choices") or []:
                text = (choice.get("delta") or {}).get("content")
                if text:
                    pieces.append(text)
        elif api == "messages":
            delta = event.get("delta") or {}
            if last == "content_block_delta" and delta.get("type") == "text_delta":
                pieces.append(delta["text"])
        elif last == "response.output_text.delta":
            pieces.append(event["delta"])
    final = {"chat": "[DONE]", "messages": "message_stop", "responses": "response.completed"}
    expected = "".join(piece(index) for index in range(chunks))
    return {
        "pieces": len(pieces),
        "text_ok": len(pieces) == chunks and "".join(pieces) == expected,
        "final": last == final[api],
        "error": error,
    }


async def read_stream(port: int, request: bytes) -> tuple[int, bytes, bool, float]:
    """Send `request` to the gateway on `port` and read the whole answer; returns its
    status, its body as received, whether that is chunked, and the seconds from sending
    to its last byte. Reads in large blocks and parses nothing meanwhile, so the client
    takes little CPU from the gateway."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(request)
        started = time.monotonic()
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        headers = head.lower()
        chunked = b"transfer-encoding: chunked" in headers
        found = re.search(rb"content-length: *(\d+)", headers)
        length = int(found.group(1)) if found and not chunked else None
        blocks: list[bytes] = []
        received = 0
        tail = b"\r\n"  # the end of the head: a body may be the last chunk alone
        while length is None or received < length:
            block = await reader.read(1 << 16)
            if not block:
                break
            blocks.append(block)
            received += len(block)
            tail = (tail + block[-8:])[-8:]
            # The last chunk ("0", no trailers): a data chunk's size never follows "\r\n"
            # as a lone "0". `dechunk` checks the framing afterwards.
            if chunked and tail.endswith(b"\r\n0\r\n\r\n"):
                break
        seconds = time.monotonic() - started
    finally:
        writer.close()
    return status, b"".join(blocks), chunked, seconds


def client_main(port: int, api: str, model: str, chunks: int) -> None:
    """Print `ready`, wait for a line on stdin, stream from the gateway, then print two
    JSON lines: at the stream's end `status`, `bytes` and `seconds`; after checking it,
    `complete` and what `check_stream` found."""
    request = request_bytes(port, api, model, chunks)
    print("ready", flush=True)
    sys.stdin.readline()  # the gateway process's signal to start: its measurement began
    status, raw, chunked, seconds = asyncio.run(read_stream(port, request))
    print(json.dumps({"status": status, "bytes": len(raw), "seconds": seconds}), flush=True)
    body = dechunk(raw) if chunked else raw
    if body is not None and status == 200:
        checked = check_stream(api, body, chunks)
    else:
        error = "the stream was cut short" if body is None else body[:300].decode("replace")
        checked = {"pieces": 0, "text_ok": False, "final": False, "error": error}
    complete = status == 200 and checked["text_ok"] and checked["final"]
    print(json.dumps({**checked, "complete": complete}), flush=True)


# -- the gateway process: `switchyard dev` in-process, and the measurement ----------------


def rss_mib(field: str) -> float:
    """This process's resident memory in MiB: `VmRSS` (now) or `VmHWM` (peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise LookupError(field)


def cpu_seconds() -> float:
    """User plus system CPU seconds of this process so far, every thread included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class LoopProbe:
    """Stalls of the event loop it runs on and the garbage collector's passes, counted
    between `start()` and `stop()`."""

    def __init__(self) -> None:
        self.measuring = False
        self.lateness_ms: list[float] = []
        self.passes: list[tuple[int, float]] = []
        self._gc_started = 0.0
        self._cpu = 0.0
        self._rss_before = 0.0
        self._peak_reset = False

    def on_gc(self, phase: str, info: dict[str, int]) -> None:
        """`gc.callbacks` entry: note each collection's generation and its milliseconds."""
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self.measuring:
            elapsed_ms = (time.perf_counter() - self._gc_started) * 1000
            self.passes.append((info["generation"], elapsed_ms))

    async def run(self) -> None:
        """Sleep `PROBE_S` again and again, noting how many ms late each wake-up is."""
        while True:
            before = time.perf_counter()
            await asyncio.sleep(PROBE_S)
            if self.measuring:
                self.lateness_ms.append((time.perf_counter() - before - PROBE_S) * 1000)

    def start(self) -> None:
        """Begin counting: forget earlier figures, note the CPU time and RSS, and reset the
        process's peak RSS to its current RSS (Linux: 5 to /proc/self/clear_refs)."""
        self.lateness_ms, self.passes = [], []
        self._rss_before = rss_mib("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self._peak_reset = True
        except OSError:  # not allowed here: the peak is then the process's lifetime peak
            self._peak_reset = False
        self._cpu = cpu_seconds()
        self.measuring = True

    def stop(self) -> dict[str, Any]:
        """Stop counting; returns `cpu_s`, `max_stall_ms`, `p99_stall_ms`, `probes`,
        `gc_passes` and `gc_ms` (lists by generation 0, 1, 2), `rss_before_mib`,
        `peak_rss_mib` and `peak_reset` (False: the peak is the process's lifetime one)."""
        self.measuring = False
        cpu = cpu_seconds() - self._cpu
        lateness = sorted(self.lateness_ms)
        p99 = lateness[min(len(lateness) - 1, int(len(lateness) * 0.99))] if lateness else 0.0
        return {
            "cpu_s": cpu,
            "max_stall_ms": lateness[-1] if lateness else 0.0,
            "p99_stall_ms": p99,
            "probes": len(lateness),
            "gc_passes": [sum(1 for g, _ in self.passes if g == gen) for gen in range(3)],
            "gc_ms": [sum(ms for g, ms in self.passes if g == gen) for gen in range(3)],
            "rss_before_mib": self._rss_before,
            "peak_rss_mib": rss_mib("VmHWM"),
            "peak_reset": self._peak_reset,
        }


async def one_stream(
    port: int, scenario: Scenario, chunks: int, probe: LoopProbe | None
) -> dict[str, Any]:
    """One stream of `chunks` chunks through the gateway on `port`, read by a client
    process; with `probe`, measured from the request to `SETTLE_S` after the stream's end.
    Returns the client's two reports merged, plus `probe.stop()`'s figures."""
    client = await asyncio.create_subprocess_exec(
        sys.executable,
        SCRIPT,
        "_client",
        str(port),
        scenario.api,
        scenario.model,
        str(chunks),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert client.stdin is not None and client.stdout is not None

    async def line() -> bytes:
        assert client.stdout is not None
        read = await client.stdout.readline()
        if not read:
            raise RuntimeError(f"the client exited early ({await client.wait()})")
        return read

    try:
        async with asyncio.timeout(stream_timeout(chunks)):
            await line()  # started and ready: its interpreter's start-up is not measured
            if probe is not None:
                gc.collect()  # nothing left over to collect inside the measurement
                probe.start()
            client.stdin.write(b"go\n")
            await client.stdin.drain()
            ended = json.loads(await line())
            figures: dict[str, Any] = {}
            if probe is not None:
                await asyncio.sleep(SETTLE_S)
                figures = probe.stop()
            checked = json.loads(await line())
            await client.wait()
    finally:
        if client.returncode is None:
            client.kill()
            await client.wait()
    return {**ended, **checked, **figures}


async def wait_ready(port: int) -> None:
    """Wait until the gateway on `port` accepts connections and start-up has frozen its
    heap (`freeze_startup_heap`, the last step before serving); TimeoutError after
    START_TIMEOUT_S."""
    async with asyncio.timeout(START_TIMEOUT_S):
        while True:
            try:
                _, writer = await asyncio.open_connection(HOST, port)
            except OSError:
                await asyncio.sleep(0.1)
                continue
            writer.close()
            break
        # Frozen right after the banner; a start-up that froze nothing goes on after 10 s.
        for _ in range(100):
            if gc.get_freeze_count() > 0:
                break
            await asyncio.sleep(0.1)


async def serve_and_measure(plugins: list[Any], scenario: Scenario, chunks: int) -> dict:
    """Run `switchyard dev`'s services in this event loop, measure one stream of `chunks`
    chunks through `scenario` after a warm-up one, then stop the services; returns
    `one_stream`'s figures. Raises the services' start-up error, or RuntimeError when they
    stopped (a signal) before the measurement ended."""
    from switchyard.common.dev import run_embedded

    port = int(os.environ["SWITCHYARD_GATEWAY_PORT"])
    probe = LoopProbe()
    gc.callbacks.append(probe.on_gc)

    async def measure() -> dict[str, Any]:
        await wait_ready(port)
        warm = await one_stream(port, scenario, WARMUP_CHUNKS, None)
        if not warm["complete"]:
            raise RuntimeError(f"the warm-up stream was not whole: {warm}")
        ticking = asyncio.create_task(probe.run())
        try:
            return await one_stream(port, scenario, chunks, probe)
        finally:
            ticking.cancel()

    runner = asyncio.create_task(run_embedded(HOST, plugins, migrate=False))
    measuring = asyncio.create_task(measure())
    try:
        await asyncio.wait([runner, measuring], return_when=asyncio.FIRST_COMPLETED)
        if not measuring.done():
            measuring.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await measuring
            runner.result()  # a start-up error, if that is what ended it
            raise RuntimeError("switchyard dev stopped before the measurement ended")
        return measuring.result()
    finally:
        if not measuring.done():
            measuring.cancel()
        if not runner.done():
            # How `switchyard dev` is stopped: its signal handler stops the servers in order.
            os.kill(os.getpid(), signal.SIGTERM)
            async with asyncio.timeout(60):
                await runner
        gc.callbacks.remove(probe.on_gc)


def gateway_main(scenario: Scenario, chunks: int, result: Path) -> None:
    """Prepare and run `switchyard dev` in this process as its command does (settings
    checked, routing and prices files loaded, databases migrated, under the working
    directory's `.switchyard/`), measure one stream, and write the figures to `result`
    (JSON)."""
    import uvloop

    from switchyard.common import dev
    from switchyard.common.httpserver import configured_limits
    from switchyard.common.logging import configure_logging
    from switchyard.common.plugins import discover

    configured_limits()
    plugins = discover()
    dev.apply_dev_environment(plugins)
    dev.wire_service_urls(plugins, HOST)
    for plugin in plugins:
        plugin.settings()
        if plugin.preflight is not None:
            plugin.preflight()
    dev.private_state_dir()
    dev.migrate_all(plugins)
    secrets = [os.environ.get("SWITCHYARD_INTERNAL_TOKEN"), DEV_KEY]
    configure_logging("dev", "WARNING", "console", secrets=secrets)
    figures = uvloop.run(serve_and_measure(plugins, scenario, chunks))
    result.write_text(json.dumps(figures))


# -- the benchmark (the parent process) --------------------------------------------------


def run_once(
    owned: OwnedProcesses, workdir: Path, routing: Path, name: str, scenario: Scenario, chunks: int
) -> dict[str, Any]:
    """One stream of `chunks` chunks through `scenario` in a new gateway process, its
    directory `workdir`/`name`; returns its figures (`serve_and_measure`). Raises
    RuntimeError with the end of its log when it fails or overruns."""
    # The environment `switchyard dev` gets in the other benchmarks: free ports, the dev
    # key, the routing file, without DATABASE_URL, KAFKA_BOOTSTRAP_SERVERS or
    # SWITCHYARD_BUS. The process is started here, to run the services in-process.
    group = embedded_group(workdir, routing, name)
    env = {
        **group.env,
        # Never the default port, though the routing file uses no simulator.
        "SWITCHYARD_SIMULATOR_URL": f"http://{HOST}:{free_port()}/v1",
        "PYTHONUNBUFFERED": "1",
    }
    result = group.workdir / "result.json"
    log = group.workdir / "gateway.log"
    command = [sys.executable, SCRIPT, "_gateway", scenario.key, str(chunks), str(result)]
    popen = owned.start(command, log, env, group.workdir)
    try:
        code = popen.wait(timeout=START_TIMEOUT_S + 30 + stream_timeout(chunks))
    except subprocess.TimeoutExpired:
        code = None
    finally:
        OwnedProcesses.stop(popen)
        owned.popens.remove(popen)
    if code != 0 or not result.exists():
        tail = log.read_text(errors="replace")[-4000:]
        ended = "ran out of time" if code is None else f"exited with {code}"
        raise RuntimeError(f"{scenario.key} {chunks:,}: the gateway process {ended}:\n{tail}")
    return dict(json.loads(result.read_text()))


def table_row(scenario: Scenario, chunks: int, figures: dict[str, Any]) -> list[str]:
    """The table's cells for one run's `figures`."""
    if figures["complete"]:
        whole = "yes"
    else:
        whole = f"no: status {figures['status']}, {figures['pieces']:,}/{chunks:,} pieces"
        whole += "" if figures["final"] else ", no final event"
        whole += f", {figures['error']}" if figures.get("error") else ""
    peak = f"{figures['peak_rss_mib']:.0f}" + ("" if figures["peak_reset"] else " (lifetime)")
    return [
        scenario.label,
        f"{chunks:,}",
        f"{figures['seconds']:.2f}",
        f"{figures['cpu_s']:.2f}",
        f"{figures['max_stall_ms']:.1f}",
        f"{figures['p99_stall_ms']:.1f}",
        "/".join(str(count) for count in figures["gc_passes"]),
        f"{sum(figures['gc_ms']):.0f}",
        f"{figures['rss_before_mib']:.0f}",
        peak,
        whole,
    ]


HEADER = [
    "scenario",
    "chunks",
    "stream s",
    "CPU s",
    "max stall ms",
    "p99 stall ms",
    "GC passes gen 0/1/2",
    "GC ms",
    "RSS before MiB",
    "peak RSS MiB",
    "200 and whole",
]


def main() -> None:
    """Parse the command line, run every scenario at every size, print and write the
    table; exit with status 1 when a stream was not whole."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="50000,200000", help="content chunks per stream")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each stream")
    parser.add_argument("--scenarios", default=",".join(BY_KEY), help="streams to run")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    scenarios = [BY_KEY[key] for key in args.scenarios.split(",")]
    host = machine(load_average=True)
    rows: list[list[str]] = []
    broken: list[str] = []
    owned = OwnedProcesses()
    with tempfile.TemporaryDirectory(prefix="switchyard-bench-long-") as tmp:
        workdir = Path(tmp)
        try:
            port = free_port()
            upstream = [sys.executable, SCRIPT, "_upstream", str(port)]
            owned.start(upstream, workdir / "upstream.log", dict(os.environ), workdir)
            wait_http(f"http://{HOST}:{port}/", timeout=60)  # answers 404 once it listens
            routing = workdir / "routing.yaml"
            routing.write_text(routing_yaml(f"http://{HOST}:{port}"))
            for chunks in sizes:
                for scenario in scenarios:
                    for repeat in range(args.repeats):
                        name = f"{scenario.key}-{chunks}-{repeat}"
                        figures = run_once(owned, workdir, routing, name, scenario, chunks)
                        rows.append(table_row(scenario, chunks, figures))
                        print(" | ".join(rows[-1]), flush=True)
                        if not figures["complete"]:
                            broken.append(f"{scenario.label}, {chunks:,} chunks: {rows[-1][-1]}")
        finally:
            owned.stop_all()
    lines = [
        "# Long streams (`tests/bench/bench_long_streams.py`)",
        "",
        f"Machine: {host}.",
        "",
        "One stream per run, each run a fresh `switchyard dev` process (embedded mode), after "
        f"a warm-up stream of {WARMUP_CHUNKS} chunks. The upstream writes {BATCH} events "
        f"every {GAP_S * 1000:g} ms or so. Stream s: the client's time from its request to "
        "the stream's last byte. The other figures are the gateway process's, from the "
        f"request to {SETTLE_S:g} s after the stream's end: CPU time (every thread), the "
        f"lateness of a {PROBE_S * 1000:g} ms sleep on its event loop (stall), the garbage "
        "collector's passes and their total time, and peak RSS.",
        "",
        *markdown_table(HEADER, rows, left=1),
        "",
    ]
    write_results("long-streams.md", "\n".join(lines))
    if broken:
        sys.exit("streams not whole:\n" + "\n".join(broken))


if __name__ == "__main__":
    # The processes this script starts run it again in another role.
    role = sys.argv[1] if len(sys.argv) > 1 else ""
    if role == "_upstream":
        asyncio.run(upstream_main(int(sys.argv[2])))
    elif role == "_client":
        client_main(int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]))
    elif role == "_gateway":
        gateway_main(BY_KEY[sys.argv[2]], int(sys.argv[3]), Path(sys.argv[4]))
    else:
        try:
            main()
        except KeyboardInterrupt:  # what it started is stopped by then (`main`'s finally)
            sys.exit(130)
