"""`make bench` (part): what a response cache hit adds, in Kafka mode, at concurrency 1.

Every service runs as its own process on the real Kafka broker and PostgreSQL (as in
run.py). The bench tenant turns the response cache on (`switchyard tenant-settings set
--cache`); one request primes it; then the Go load generator sends the same deterministic
request (`temperature: 0`) for a few seconds: every one is a hit, answered by the gateway
without crossing Kafka (its events are published after the answer). "Added" is the hit's
p50 minus the simulator's own p50 for the same request at the same concurrency, the
measure run.py uses; the target is at most 1 ms. For comparison, the same request with
`X-Switchyard-Cache: off` goes the whole way (gateway, Kafka, inference, simulator).
Everything talks to 127.0.0.1 only and stops by itself; results go to
bench-results/cache.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from benchkit import (
    build_loadgen,
    free_port,
    kafka_deployment,
    load,
    markdown_table,
    simulator_routing,
    start_simulator,
    write_results,
)

BODY = {
    "model": "sim-small",
    "temperature": 0,
    "messages": [{"role": "user", "content": "Say hello to the cache benchmark"}],
}
TARGET_ADDED_MS = 1.0


def stored(gateway: str) -> float:
    for line in httpx.get(f"{gateway}/metrics", timeout=5).text.splitlines():
        if line.startswith('switchyard_gateway_cache_stores_total{outcome="stored"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def served(gateway: str) -> float:
    """Model requests the gateway has answered (every API, status and model)."""
    total = 0.0
    for line in httpx.get(f"{gateway}/metrics", timeout=5).text.splitlines():
        if line.startswith("switchyard_gateway_request_duration_seconds_count{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process `pid` (Linux /proc), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_cpu(pid: int, seconds: float = 3.0) -> float:
    """The process's CPU seconds per second while it serves nothing (its consumers'
    polling, timers): subtracted from a cell's CPU time."""
    before, start = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pid) - before) / (time.monotonic() - start)


def measured(gateway: str, pid: int, idle: float, run: Callable[[], dict]) -> dict:
    """`run()`'s load generator result, with `cpu_ms` added: the gateway process's CPU
    time per request it answered meanwhile (warm-up included on both sides; its idle CPU
    rate `idle` subtracted), which a shared, noisy machine disturbs much less than the
    latency."""
    requests, cpu, start = served(gateway), cpu_seconds(pid), time.monotonic()
    out = run()
    cpu, elapsed = cpu_seconds(pid) - cpu, time.monotonic() - start
    requests = served(gateway) - requests
    busy = max(0.0, cpu - idle * elapsed)
    return {**out, "cpu_ms": busy * 1000 / requests if requests else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per cell")
    args = parser.parse_args()
    rows: list[tuple[str, dict]] = []
    with tempfile.TemporaryDirectory(prefix="switchyard-bench-cache-") as tmp:
        workdir = Path(tmp)
        loadgen = build_loadgen(workdir)
        if loadgen is None:
            sys.exit("the benchmark's load generator needs Go (go build); install golang")
        body = workdir / "body.json"
        body.write_text(json.dumps(BODY))
        stream_body = workdir / "stream.json"
        stream_body.write_text(json.dumps({**BODY, "stream": True}))
        simulator_port = free_port()
        simulator_url = f"http://127.0.0.1:{simulator_port}"
        routing = workdir / "routing.yaml"
        routing.write_text(simulator_routing(simulator_url))
        with kafka_deployment(workdir, routing, "sybenchc", tenant="bench") as deployment:
            start_simulator(deployment.group, simulator_port)
            direct_url = f"{simulator_url}/v1/chat/completions"
            direct = load(loadgen, direct_url, body, concurrency=1, seconds=args.seconds)
            rows.append(("direct (simulator)", direct))
            deployment.group.cli(
                "tenant-settings", "set", "--tenant", "bench", "--new-tenant", "--cache"
            )
            deployment.start_services()
            gateway, key = deployment.gateway, deployment.key
            url = f"{gateway}/v1/chat/completions"
            auth = {"Authorization": f"Bearer {key}"}
            for primer in (BODY, {**BODY, "stream": True}):
                before = stored(gateway)
                # A gateway that could not read the tenant's cache settings yet (history
                # slow to answer on a loaded machine) caches nothing for a moment.
                deadline = time.monotonic() + 30
                while True:
                    first = httpx.post(url, json=primer, headers=auth, timeout=30)
                    if first.headers.get("x-switchyard-cache") == "miss":
                        break
                    assert time.monotonic() < deadline, first.headers
                    time.sleep(0.5)
                deadline = time.monotonic() + 10
                while stored(gateway) <= before and time.monotonic() < deadline:
                    time.sleep(0.05)
            hit = httpx.post(url, json=BODY, headers=auth, timeout=30)
            assert hit.headers.get("x-switchyard-cache") == "hit", hit.headers
            cells = [
                ("Kafka mode, cache hit", body, False, ()),
                ("Kafka mode, cache hit (stream)", stream_body, True, ()),
                ("Kafka mode, cache off", body, False, ("X-Switchyard-Cache: off",)),
            ]
            pid = deployment.processes[-1].popen.pid  # the gateway, started last
            idle = idle_cpu(pid)
            for name, cell_body, stream, headers in cells:

                def run(
                    cell_body: Path = cell_body,
                    stream: bool = stream,
                    headers: tuple[str, ...] = headers,
                ) -> dict:
                    return load(
                        loadgen,
                        url,
                        cell_body,
                        concurrency=1,
                        seconds=args.seconds,
                        api_key=key,
                        stream=stream,
                        headers=headers,
                    )

                rows.append((name, measured(gateway, pid, idle, run)))
    floor = rows[0][1]["p50_ms"]
    lines = [
        f"Response cache, c=1, {args.seconds:g} s per cell ({os.cpu_count()} cores, "
        f"{time.strftime('%Y-%m-%d', time.gmtime())})",
        "",
    ]
    table = []
    for name, out in rows:
        added = "" if name.startswith("direct") else f"{out['p50_ms'] - floor:+.2f}"
        p50, p99 = f"{out['p50_ms']:.2f}", f"{out['p99_ms']:.2f}"
        cpu = "" if out.get("cpu_ms") is None else f"{out['cpu_ms']:.2f}"
        table.append([name, f"{out['rps']:,.0f}", p50, p99, added, cpu, str(out["errors"])])
    header = [
        "set-up",
        "requests/s",
        "p50 ms",
        "p99 ms",
        "added p50 ms",
        "gateway CPU ms/request",
        "errors",
    ]
    lines += markdown_table(header, table)
    hit_added = rows[1][1]["p50_ms"] - floor
    verdict = "met" if hit_added <= TARGET_ADDED_MS else "missed"
    load_average = os.getloadavg()[0]
    lines += [
        "",
        f"Cache hit added p50: {hit_added:+.2f} ms (target ≤ {TARGET_ADDED_MS} ms: {verdict}); "
        f"load average {load_average:.1f}. CPU ms/request: the gateway process's CPU time "
        "per request, its idle rate subtracted.",
    ]
    write_results("cache.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
