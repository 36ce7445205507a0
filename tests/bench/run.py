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
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from switchyard.common.testing.infra import temporary_database, unique_prefix
from switchyard.common.testing.processes import ProcessGroup, free_port

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).parent))  # bench_history's lag helper
RESULTS = ROOT / "bench-results"
DEV_KEY = "sk-sy-bench" + "0" * 38
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


def build_loadgen(workdir: Path) -> Path:
    binary = workdir / "loadgen"
    subprocess.run(
        ["go", "build", "-o", str(binary), "."],
        cwd=Path(__file__).parent / "loadgen",
        check=True,
        env={**os.environ, "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0"},
    )
    return binary


def load(
    loadgen: Path,
    url: str,
    body_file: Path,
    *,
    concurrency: int,
    seconds: float,
    stream: bool = False,
    api_key: str | None = None,
    headers: tuple[str, ...] = (),
) -> dict:
    command = [
        str(loadgen),
        "-url",
        url,
        "-body",
        str(body_file),
        "-c",
        str(concurrency),
        "-d",
        f"{seconds}s",
        "-warmup",
        "1s",
    ]
    if stream:
        command.append("-stream")
    if api_key:
        command += ["-H", f"Authorization: Bearer {api_key}"]
    for header in headers:
        command += ["-H", header]
    result = subprocess.run(
        command, capture_output=True, text=True, check=True, timeout=seconds + 60
    )
    return json.loads(result.stdout)


def set_latency(simulator_url: str, latency_ms: int) -> None:
    httpx.put(
        f"{simulator_url}/_sim/latency", json={"latency_ms": latency_ms}, timeout=5
    ).raise_for_status()


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
    for upstream_ms in args.latencies:
        set_latency(simulator_url, upstream_ms)
        for concurrency in args.concurrency:
            out = load(
                loadgen, url, body, concurrency=concurrency, seconds=args.seconds, api_key=api_key
            )
            report.rows.append(
                Row(
                    setup,
                    upstream_ms,
                    concurrency,
                    False,
                    out["rps"],
                    out["p50_ms"],
                    out["p99_ms"],
                    None,
                    out["errors"],
                )
            )
            print(
                f"  {setup:<28} upstream {upstream_ms:>3} ms  c={concurrency:<3} "
                f"{out['rps']:>8.0f} req/s  p50 {out['p50_ms']:.2f} ms  p99 {out['p99_ms']:.2f} ms"
                f"  errors {out['errors']}",
                flush=True,
            )
            if after_cell is not None:
                after_cell(upstream_ms, concurrency)
        out = load(
            loadgen,
            url,
            stream_body,
            concurrency=1,
            seconds=args.seconds,
            stream=True,
            api_key=api_key,
        )
        report.rows.append(
            Row(
                setup,
                upstream_ms,
                1,
                True,
                out["rps"],
                out["p50_ms"],
                out["p99_ms"],
                out["ttft_p50_ms"],
                out["errors"],
            )
        )
        print(
            f"  {setup:<28} upstream {upstream_ms:>3} ms  c=1   streaming: TTFT p50 "
            f"{out['ttft_p50_ms']:.2f} ms, total p50 {out['p50_ms']:.2f} ms",
            flush=True,
        )
    set_latency(simulator_url, 0)


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
    routing = workdir / "routing.yaml"
    routing.write_text(
        f"models:\n  sim-small:\n    deployments:\n      - name: simulator\n"
        f"        provider: openai\n        model: sim-small\n"
        f"        base_url: {simulator_url}/v1\n"
    )
    port = free_port()
    group = ProcessGroup(
        env={
            **os.environ,
            "SWITCHYARD_DEV_API_KEY": DEV_KEY,
            "SWITCHYARD_ROUTING_FILE": str(routing),
            "SWITCHYARD_GATEWAY_PORT": str(port),
            "SWITCHYARD_AUTH_PORT": str(free_port()),
            "SWITCHYARD_HISTORY_PORT": str(free_port()),
            "SWITCHYARD_INFERENCE_PORT": str(free_port()),
            "SWITCHYARD_AUTH_URL": "",
            "SWITCHYARD_HISTORY_URL": "",
            "SWITCHYARD_LOG_LEVEL": "WARNING",
        },
        workdir=workdir / "embedded",
    )
    group.workdir.mkdir()
    # The dev runner derives auth/history URLs from their ports.
    group.env["SWITCHYARD_AUTH_URL"] = f"http://127.0.0.1:{group.env['SWITCHYARD_AUTH_PORT']}"
    group.env["SWITCHYARD_HISTORY_URL"] = f"http://127.0.0.1:{group.env['SWITCHYARD_HISTORY_PORT']}"
    try:
        process = group.start("embedded", "dev", port=port)
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
    servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    database = os.environ.get(
        "DATABASE_URL", "postgresql+psycopg://switchyard:switchyard@127.0.0.1:5432/switchyard"
    )
    routing = workdir / "routing.yaml"
    with temporary_database(database, prefix="sybench") as db_url:
        ports = {name: free_port() for name in ("auth", "history", "inference", "gateway")}
        group = ProcessGroup(
            env={
                **os.environ,
                "SWITCHYARD_ENVIRONMENT": "development",
                "SWITCHYARD_BUS": "kafka",
                "KAFKA_BOOTSTRAP_SERVERS": servers,
                "SWITCHYARD_TOPIC_PREFIX": unique_prefix("sybench"),
                "SWITCHYARD_INTERNAL_TOKEN": secrets.token_urlsafe(24),
                "DATABASE_URL": db_url,
                "SWITCHYARD_ROUTING_FILE": str(routing),
                "SWITCHYARD_AUTH_URL": f"http://127.0.0.1:{ports['auth']}",
                "SWITCHYARD_HISTORY_URL": f"http://127.0.0.1:{ports['history']}",
                "SWITCHYARD_LOG_LEVEL": "WARNING",
            },
            workdir=workdir / "kafka",
        )
        group.workdir.mkdir()
        try:
            group.cli("topics", "create")
            group.cli("db", "upgrade")
            group.cli("users", "create", "--email", "bench@example.com", "--no-password")
            key = json.loads(group.cli("keys", "create", "--email", "bench@example.com", "--json"))[
                "key"
            ]
            processes = {
                name: group.start(name, name, "--port", str(port), port=port)
                for name, port in ports.items()
            }
            setup = "Kafka + Postgres (4 processes)"

            def sample_lag(upstream_ms: int, concurrency: int) -> None:
                # History's backlog right after the load stops, and how long it takes to drain.
                import asyncio

                from bench_history import history_lag

                prefix = group.env["SWITCHYARD_TOPIC_PREFIX"]
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
                f"http://127.0.0.1:{ports['gateway']}/v1/chat/completions",
                workdir,
                simulator_url,
                args,
                key,
                after_cell=sample_lag,
            )
            report.rss[setup] = {
                name: process.peak_rss_mb() or 0 for name, process in processes.items()
            }
        except Exception:
            print(group.logs()[-8000:], file=sys.stderr)
            raise
        finally:
            group.stop_all()


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
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    lines = [
        f"Machine: {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d', time.gmtime())}; "
        f"{args.seconds:g} s per cell after 1 s warm-up.",
        "",
        "| set-up | upstream | concurrency | requests/s | p50 ms | p99 ms | added p50 ms "
        "| TTFT p50 ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report.rows:
        added = f"{r.added_p50_ms:+.2f}" if r.added_p50_ms is not None else ""
        ttft = f"{r.ttft_p50_ms:.2f}" if r.ttft_p50_ms is not None else ""
        concurrency = f"{r.concurrency} (stream)" if r.stream else str(r.concurrency)
        lines.append(
            f"| {r.setup} | {r.upstream_ms} ms | {concurrency} | {r.rps:,.0f} | {r.p50_ms:.2f} | "
            f"{r.p99_ms:.2f} | {added} | {ttft} | {r.errors} |"
        )
    lines += ["", "| set-up | process | peak RSS MiB |", "|---|---|---:|"]
    for setup, processes in report.rss.items():
        for name, rss in processes.items():
            lines.append(f"| {setup} | {name} | {rss:.0f} |")
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
    if shutil.which("go") is None:
        sys.exit("the benchmark's load generator needs Go (go build); install golang")

    report = Report()
    with tempfile.TemporaryDirectory(prefix="switchyard-bench-") as tmp:
        workdir = Path(tmp)
        loadgen = build_loadgen(workdir)
        sim_port = free_port()
        simulator_url = f"http://127.0.0.1:{sim_port}"
        sim_group = ProcessGroup(
            env={**os.environ, "SWITCHYARD_LOG_LEVEL": "WARNING"}, workdir=workdir
        )
        try:
            simulator = sim_group.start(
                "simulator",
                "simulator",
                "--port",
                str(sim_port),
                port=sim_port,
                ready_path="/v1/models",
            )
            (workdir / "routing.yaml").write_text(
                f"models:\n  sim-small:\n    deployments:\n      - name: simulator\n"
                f"        provider: openai\n        model: sim-small\n"
                f"        base_url: {simulator_url}/v1\n"
            )
            if "direct" in args.setups:
                bench_direct(report, loadgen, workdir, simulator_url, args)
            if "embedded" in args.setups:
                bench_embedded(report, loadgen, workdir, simulator_url, args)
            if "kafka" in args.setups:
                bench_kafka(report, loadgen, workdir, simulator_url, args)
            report.rss["simulator"] = {"simulator": simulator.peak_rss_mb() or 0}
        finally:
            sim_group.stop_all()
    table = render(report, args)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.md").write_text(table)
    print()
    print(table)


if __name__ == "__main__":
    main()
