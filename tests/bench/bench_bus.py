"""Kafka bus round trip at concurrency 1: the answering path of Kafka mode without the
services around it, so that the bus's own waits and CPU can be measured on a busy machine.

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 .venv/bin/python tests/bench/bench_bus.py \\
        [--requests 400] [--idle-seconds 5] [--commit-interval-ms 1000] [--listener-wait-ms 500]

Two processes, each with its own `KafkaBus` (as the gateway and inference have):

- the *caller* (this process) listens to partition 0 of a replies topic, then, one at a
  time, publishes a request (a real `chat.requested` event) to a 12-partition requests
  topic and waits for its reply;
- the *responder* (a child process) consumes the requests topic in a consumer group and
  answers each request like inference: the reply to the caller's partition (`acks=all`),
  carrying a usage event in its `usage` header (the record a redelivery reads back), then
  a usage record.

Prints the round trip's p50/p90/p99 (ms), the CPU each process spends per round trip
(ms, from /proc) and each process's CPU while idle (% of a core). Topics are created
with a unique prefix and deleted at the end; everything stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from switchyard.common.bus import kafka
from switchyard.common.bus.kafka import KafkaBus
from switchyard.common.events import ChatRequested, Event, encode_event
from switchyard.common.testing.events import chat_requested
from switchyard.common.testing.infra import unique_prefix

TICKS = os.sysconf("SC_CLK_TCK")
# The stretches of one round trip (medians are printed), between wall-clock marks taken in
# both processes (one machine, one clock).
HOPS = [
    "produce the request (acks=all)",
    "broker -> responder's group consumer -> handler",
    "produce the reply (acks=all)",
    "broker -> caller's listener",
]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` (from /proc/<pid>/stat)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def request_event() -> ChatRequested:
    body = {"model": "bench-model", "messages": [{"role": "user", "content": "Say hi."}]}
    return chat_requested(
        tenant="bench", model="bench-model", body=body, user_id="user-1", api_key_id="key-1"
    )


async def respond(servers: str, prefix: str, ready_file: str, commit_interval_s: float) -> None:
    """The responder: answer every request like inference does, until killed."""
    bus = KafkaBus(servers, client_id="bench-responder", commit_interval_s=commit_interval_s)
    await bus.start()

    stamps = Path(ready_file + ".stamps").open("w")  # noqa: ASYNC230 - once, at start-up

    async def answer(event: Event) -> None:
        key = event.request_id
        received = time.time()
        usage = {"usage": encode_event(event)}  # inference's terminal record carries one
        await bus.publish(f"{prefix}.replies", event, key=key, partition=0, headers=usage)
        reply_written = time.time()
        await bus.publish(f"{prefix}.usage", event, key=key)
        stamps.write(f"{key} {received} {reply_written}\n")
        stamps.flush()

    await bus.subscribe([f"{prefix}.requests"], f"{prefix}.group", answer, concurrency=16)
    Path(ready_file).write_text("ready")  # noqa: ASYNC240 - once, at start-up
    await asyncio.Event().wait()


async def call(args: argparse.Namespace) -> None:
    servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    prefix = unique_prefix("sybus")
    admin = AIOKafkaAdminClient(bootstrap_servers=servers)
    await admin.start()
    names = {"requests": 12, "replies": 4, "usage": 12}
    await admin.create_topics(
        [NewTopic(f"{prefix}.{name}", count, 1) for name, count in names.items()]
    )
    ready_file = os.path.join(tempfile.mkdtemp(prefix="sybus-"), "ready")
    responder = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--respond",
            prefix,
            "--ready-file",
            ready_file,
            "--commit-interval-ms",
            str(args.commit_interval_ms),
            "--listener-wait-ms",
            str(args.listener_wait_ms),
        ],
        stdout=subprocess.DEVNULL,
    )
    bus = KafkaBus(servers, client_id="bench-caller")
    try:
        deadline = time.monotonic() + 120
        while not Path(ready_file).exists():  # noqa: ASYNC240 - a local file, polled
            if responder.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the responder did not start")
            await asyncio.sleep(0.1)
        await bus.start()
        waiting: dict[str, asyncio.Future[None]] = {}

        arrived: dict[str, float] = {}
        published: dict[str, tuple[float, float]] = {}

        async def deliver(event: Event) -> None:
            arrived[event.request_id] = time.time()
            future = waiting.pop(event.request_id, None)
            if future is not None and not future.done():
                future.set_result(None)

        await bus.listen(f"{prefix}.replies", deliver, partitions=[0])

        async def round_trip() -> float:
            event = request_event()
            future = asyncio.get_running_loop().create_future()
            waiting[event.request_id] = future
            started = time.perf_counter()
            sent = time.time()
            await bus.publish(f"{prefix}.requests", event)
            published[event.request_id] = (sent, time.time())
            await asyncio.wait_for(future, 30)
            return (time.perf_counter() - started) * 1000

        for _ in range(20):  # the group settles; connections warm up
            await round_trip()
        pids = {"caller": os.getpid(), "responder": responder.pid}
        if args.idle_seconds:
            before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            await asyncio.sleep(args.idle_seconds)
            idle = {
                name: 100 * (cpu_seconds(pid) - before[name]) / args.idle_seconds
                for name, pid in pids.items()
            }
            print("idle CPU: " + ", ".join(f"{n} {v:.1f}%" for n, v in idle.items()))
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        published.clear()
        started = time.monotonic()
        times = [await round_trip() for _ in range(args.requests)]
        elapsed = time.monotonic() - started
        cpu = {
            name: 1000 * (cpu_seconds(pid) - before[name]) / args.requests
            for name, pid in pids.items()
        }
        q = statistics.quantiles(times, n=100)
        print(
            f"{args.requests} round trips, {args.requests / elapsed:.0f}/s: "
            f"p50 {q[49]:.2f} ms, p90 {q[89]:.2f} ms, p99 {q[98]:.2f} ms; CPU per round trip: "
            + ", ".join(f"{n} {v:.2f} ms" for n, v in cpu.items())
        )
        await asyncio.sleep(0.5)
        hops: dict[str, list[float]] = {name: [] for name in HOPS}
        lines = Path(ready_file + ".stamps").read_text().splitlines()  # noqa: ASYNC240
        for line in lines:
            key, received, reply = line.split()
            if key not in published or key not in arrived:
                continue
            sent, acked = published[key]
            marks = [sent, acked, float(received), float(reply), arrived[key]]
            for name, (a, b) in zip(HOPS, itertools.pairwise(marks), strict=True):
                hops[name].append((b - a) * 1000)
        for name, values in hops.items():
            print(f"  {name}: p50 {statistics.median(values):.2f} ms")
    finally:
        responder.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            responder.wait(timeout=10)
        if responder.poll() is None:
            responder.kill()
        await bus.stop()
        with contextlib.suppress(Exception):
            await admin.delete_topics([f"{prefix}.{name}" for name in names])
        await admin.close()
        shutil.rmtree(Path(ready_file).parent, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument("--respond", metavar="PREFIX", help=argparse.SUPPRESS)
    parser.add_argument("--ready-file", help=argparse.SUPPRESS)
    parser.add_argument(
        "--commit-interval-ms",
        type=int,
        default=int(kafka.DEFAULT_COMMIT_INTERVAL_S * 1000),
        help="the responder's SWITCHYARD_KAFKA_COMMIT_INTERVAL_MS",
    )
    parser.add_argument(
        "--listener-wait-ms",
        type=int,
        default=kafka.LISTENER_FETCH_MAX_WAIT_MS,
        help="fetch_max_wait_ms of every listener (both processes)",
    )
    args = parser.parse_args()
    kafka.LISTENER_FETCH_MAX_WAIT_MS = args.listener_wait_ms
    if args.respond:
        servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
        asyncio.run(respond(servers, args.respond, args.ready_file, args.commit_interval_ms / 1000))
    else:
        asyncio.run(call(args))


if __name__ == "__main__":
    main()
