"""`make bench`: throughput and latency of Switchyard against the provider simulator.

Three set-ups are measured with the same load generator (tests/bench/loadgen, Go, so that
generating load costs the measured processes little CPU), each with an instant upstream
and one answering in 50 ms, at concurrency 1, 16 and 64:

- the simulator called directly (the floor);
- Switchyard embedded: `switchyard dev`, one process, in-memory bus, SQLite;
- Switchyard on Kafka with PostgreSQL history: every service its own process.

It prints a Markdown table (requests/s, p50, p99, latency added over direct at the same
concurrency, time to first token when streaming, peak RSS per process) and writes it to
bench-results/latest.md. Everything talks to 127.0.0.1 only and stops by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from benchkit import (
    DEV_KEY,
    START_TIMEOUT_S,
    build_loadgen,
    embedded_group,
    kafka_deployment,
    load,
    machine,
    markdown_table,
    simulator_routing,
    start_simulator,
    write_results,
)

from switchyard.common.testing.processes import ProcessGroup, free_port
from switchyard.simulator.testing import simulator_at

CHAT_BODY = {
    "model": "sim-small",
    "messages": [{"role": "user", "content": "Say hello to the benchmark"}],
}


@dataclass
class Row:
    setup: str
    upstream_ms: int
    concurrency: int
    stream: bool
    rps: float
    p50_ms: float
    p99_ms: float
    ttft_p50_ms: float | None
    errors: int
    added_p50_ms: float | None = None


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    rss: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def measure(
    report: Report,
    setup: str,
    loadgen: Path,
    url: str,
    workdir: Path,
    simulator_url: str,
    args: argparse.Namespace,
    api_key: str | None,
    after_cell=None,
) -> None:
    body = workdir / "chat.json"
    body.write_text(json.dumps(CHAT_BODY))
    stream_body = workdir / "chat-stream.json"
    stream_body.write_text(
        json.dumps({**CHAT_BODY, "stream": True, "stream_options": {"include_usage": True}})
    )
    cells = [(concurrency, False) for concurrency in args.concurrency] + [(1, True)]
    with simulator_at(simulator_url) as simulator:
        for upstream_ms in args.latencies:
            with simulator.slowed(upstream_ms):
                for concurrency, stream in cells:
                    out = load(
                        loadgen,
                        url,
                        stream_body if stream else body,
                        concurrency=concurrency,
                        seconds=args.seconds,
                        stream=stream,
                        api_key=api_key,
                    )
                    ttft = out["ttft_p50_ms"] if stream else None
                    report.rows.append(
                        Row(
                            setup,
                            upstream_ms,
                            concurrency,
                            stream,
                            out["rps"],
                            out["p50_ms"],
                            out["p99_ms"],
                            ttft,
                            out["errors"],
                        )
                    )
                    cell = f"  {setup:<28} upstream {upstream_ms:>3} ms  c={concurrency:<3} "
                    if stream:
                        print(
                            f"{cell}streaming: TTFT p50 {ttft:.2f} ms, "
                            f"total p50 {out['p50_ms']:.2f} ms",
                            flush=True,
                        )
                        continue
                    print(
                        f"{cell}{out['rps']:>8.0f} req/s  p50 {out['p50_ms']:.2f} ms  "
                        f"p99 {out['p99_ms']:.2f} ms  errors {out['errors']}",
                        flush=True,
                    )
                    if after_cell is not None:
                        after_cell(upstream_ms, concurrency)


def bench_direct(report, loadgen, workdir, simulator_url, args) -> None:
    print("simulator called directly", flush=True)
    measure(
        report,
        "direct (simulator)",
        loadgen,
        f"{simulator_url}/v1/chat/completions",
        workdir,
        simulator_url,
        args,
        None,
    )


def bench_embedded(report, loadgen, workdir, simulator_url, args) -> None:
    print("Switchyard embedded (switchyard dev)", flush=True)
    group = embedded_group(workdir, workdir / "routing.yaml", "embedded")
    port = int(group.env["SWITCHYARD_GATEWAY_PORT"])
    try:
        process = group.start("embedded", "dev", port=port, timeout=START_TIMEOUT_S)
        measure(
            report,
            "embedded (1 process)",
            loadgen,
            f"http://127.0.0.1:{port}/v1/chat/completions",
            workdir,
            simulator_url,
            args,
            DEV_KEY,
        )
        report.rss["embedded (1 process)"] = {"switchyard dev": process.peak_rss_mb() or 0}
    finally:
        group.stop_all()


def bench_kafka(report, loadgen, workdir, simulator_url, args) -> None:
    print("Switchyard on Kafka + PostgreSQL (every service its own process)", flush=True)
    with kafka_deployment(workdir / "kafka", workdir / "routing.yaml", "sybench") as deployment:
        processes = {process.name: process for process in deployment.start_services()}
        setup = "Kafka + Postgres (4 processes)"

        def sample_lag(upstream_ms: int, concurrency: int) -> None:
            # History's backlog right after the load stops, and how long it takes to drain.
            import asyncio

            from bench_history import history_lag

            servers = deployment.servers
            prefix = deployment.group.env["SWITCHYARD_TOPIC_PREFIX"]
            lag = asyncio.run(history_lag(servers, prefix))
            started = time.monotonic()
            remaining = lag
            while remaining > 0 and time.monotonic() - started < 30:
                time.sleep(0.2)
                remaining = asyncio.run(history_lag(servers, prefix))
            report.notes.append(
                f"history consumer lag after Kafka cell (upstream {upstream_ms} ms, "
                f"c={concurrency}): {lag} events, drained in "
                f"{time.monotonic() - started:.1f} s"
                + ("" if remaining == 0 else f" ({remaining} left)")
            )

        measure(
            report,
            setup,
            loadgen,
            f"{deployment.gateway}/v1/chat/completions",
            workdir,
            simulator_url,
            args,
            deployment.key,
            after_cell=sample_lag,
        )
        report.rss[setup] = {
            name: process.peak_rss_mb() or 0 for name, process in processes.items()
        }


def render(report: Report, args: argparse.Namespace) -> str:
    direct = {
        (r.upstream_ms, r.concurrency, r.stream): r
        for r in report.rows
        if r.setup.startswith("direct")
    }
    for row in report.rows:
        base = direct.get((row.upstream_ms, row.concurrency, row.stream))
        if base is not None and not row.setup.startswith("direct"):
            row.added_p50_ms = row.p50_ms - base.p50_ms
    lines = [
        f"Machine: {machine()}; {args.seconds:g} s per cell after 1 s warm-up.",
        "",
    ]
    rows = []
    for r in report.rows:
        added = f"{r.added_p50_ms:+.2f}" if r.added_p50_ms is not None else ""
        ttft = f"{r.ttft_p50_ms:.2f}" if r.ttft_p50_ms is not None else ""
        concurrency = f"{r.concurrency} (stream)" if r.stream else str(r.concurrency)
        rows.append(
            [
                r.setup,
                f"{r.upstream_ms} ms",
                concurrency,
                f"{r.rps:,.0f}",
                f"{r.p50_ms:.2f}",
                f"{r.p99_ms:.2f}",
                added,
                ttft,
                str(r.errors),
            ]
        )
    header = "set-up,upstream,concurrency,requests/s,p50 ms,p99 ms,added p50 ms,TTFT p50 ms,errors"
    lines += markdown_table(header.split(","), rows)
    rss = [
        [setup, name, f"{mib:.0f}"]
        for setup, processes in report.rss.items()
        for name, mib in processes.items()
    ]
    lines += ["", *markdown_table(["set-up", "process", "peak RSS MiB"], rss, left=2)]
    lines += [f"- {note}" for note in report.notes]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per cell")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument(
        "--latencies", type=int, nargs="+", default=[0, 50], help="upstream latency, ms"
    )
    parser.add_argument(
        "--setups",
        nargs="+",
        default=["direct", "embedded", "kafka"],
        choices=["direct", "embedded", "kafka"],
    )
    args = parser.parse_args()

    report = Report()
    with tempfile.TemporaryDirectory(prefix="switchyard-bench-") as tmp:
        workdir = Path(tmp)
        loadgen = build_loadgen(workdir)
        if loadgen is None:
            sys.exit("the benchmark's load generator needs Go (go build); install golang")
        sim_port = free_port()
        simulator_url = f"http://127.0.0.1:{sim_port}"
        sim_group = ProcessGroup(
            env={**os.environ, "SWITCHYARD_LOG_LEVEL": "WARNING"}, workdir=workdir
        )
        try:
            simulator = start_simulator(sim_group, sim_port)
            (workdir / "routing.yaml").write_text(simulator_routing(simulator_url))
            if "direct" in args.setups:
                bench_direct(report, loadgen, workdir, simulator_url, args)
            if "embedded" in args.setups:
                bench_embedded(report, loadgen, workdir, simulator_url, args)
            if "kafka" in args.setups:
                bench_kafka(report, loadgen, workdir, simulator_url, args)
            report.rss["simulator"] = {"simulator": simulator.peak_rss_mb() or 0}
        finally:
            sim_group.stop_all()
    write_results("latest.md", render(report, args))


if __name__ == "__main__":
    main()
