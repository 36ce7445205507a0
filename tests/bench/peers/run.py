"""`make bench-peers`: Switchyard side by side with LiteLLM's proxy, in one run.

Every set-up answers the same requests from the same fixed-reply upstream (nginx with the
echo module: instant, after 50 ms, or a short SSE stream), loaded by the same wrk script,
on the same machine, in the same run, so that the ratios mean something even on a noisy
machine:

- ``direct``: wrk against the nginx upstream itself (the floor);
- ``litellm``: LiteLLM's proxy (pinned by setup.sh), one worker;
- ``embedded``: ``switchyard dev``, one process, in-memory bus, SQLite history;
- ``kafka``: auth, history, inference and gateway as four processes on the Kafka broker
  and PostgreSQL server named by KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL (a temporary
  database and a unique topic prefix, so runs never collide);
- ``burst``: the burst-stall check on a fresh embedded process (see ``burst.py``).

Cells: an instant upstream at concurrency 1, 16 and 64; the 50 ms upstream at 64; and
streaming time to first token (the first SSE ``data:`` line carrying generated text; an
opening chunk with only the role is not a token) at concurrency 1, measured with
tests/bench/loadgen because wrk cannot see inside a response (skipped without Go).

Prints ONE Markdown table (requests/s, p50 and p99 per cell, latency added over direct,
requests/s as a multiple of LiteLLM's) and writes it to bench-results/peers.md.
Everything listens on 127.0.0.1 only, every run is bounded in time, and every process this
script starts is stopped when it ends (also on Ctrl-C or an error).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from switchyard.common.testing.processes import free_port, peak_rss_mb, rss_mb

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # burst.py here, benchkit.py one up
from benchkit import (  # noqa: E402 - after the path tweak
    DEV_KEY,
    START_TIMEOUT_S,
    OwnedProcesses,
    build_loadgen,
    embedded_group,
    kafka_deployment,
    load,
    machine,
    markdown_table,
    wait_http,
    write_results,
)
from burst import BurstResult, burst_stall  # noqa: E402 - after the path tweak

CACHE = Path(
    os.environ.get("SWITCHYARD_BENCH_CACHE", Path.home() / ".cache/switchyard/bench-peers")
)
LITELLM = CACHE / "litellm-venv" / "bin" / "litellm"
LITELLM_KEY = "sk-bench-master"
PROFILE_EXTENSIONS = {"flamegraph": "svg", "raw": "txt", "speedscope": "json"}
MODES = ["direct", "litellm", "embedded", "kafka", "burst"]
SETUP_NAMES = {
    "direct": "upstream direct (nginx)",
    "litellm": "LiteLLM 1.100.5, 1 worker",
    "embedded": "Switchyard embedded (1 process)",
    "kafka": "Switchyard on Kafka + PostgreSQL (4 processes)",
}


@dataclass(frozen=True)
class Cell:
    label: str
    model: str
    concurrency: int
    stream: bool = False


CELLS = [
    Cell("c=1", "bench-model", 1),
    Cell("c=16", "bench-model", 16),
    Cell("c=64", "bench-model", 64),
    Cell("c=64, 50 ms upstream", "bench-model-50ms", 64),
    Cell("stream c=1: time to first token", "bench-model-sse", 1, stream=True),
]


@dataclass
class Result:
    setup: str
    cell: Cell
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


@dataclass
class Report:
    results: list[Result] = field(default_factory=list)
    # Per set-up: (peak RSS, RSS at the end of the run), MiB.
    rss_mib: dict[str, tuple[float, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    burst: BurstResult | None = None


@dataclass
class Upstream:
    instant: int
    slow: int
    sse: int

    def base_url(self, model: str) -> str:
        port = {"bench-model": self.instant, "bench-model-50ms": self.slow}.get(model, self.sse)
        return f"http://127.0.0.1:{port}/v1"


# -- processes this script owns --------------------------------------------------------


def tree_rss_mib(pid: int) -> tuple[float, float]:
    """(Peak RSS, RSS now) of a process plus the current children it forked (uvicorn
    workers), MiB."""
    pids = [pid]
    with contextlib.suppress(OSError):
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(child) for child in children]
    return sum(peak_rss_mb(p) or 0 for p in pids), sum(rss_mb(p) or 0 for p in pids)


def start_upstream(owned: OwnedProcesses, state: Path) -> Upstream:
    upstream = Upstream(free_port(), free_port(), free_port())
    for sub in ("body", "proxy", "fcgi", "uwsgi", "scgi"):
        (state / sub).mkdir(parents=True, exist_ok=True)
    conf = (
        (HERE / "upstream.nginx.conf")
        .read_text()
        .replace("@STATE@", str(state))
        .replace("@PORT_INSTANT@", str(upstream.instant))
        .replace("@PORT_SLOW@", str(upstream.slow))
        .replace("@PORT_SSE@", str(upstream.sse))
    )
    conf_path = state / "nginx.conf"
    conf_path.write_text(conf)
    owned.start(
        [
            "nginx",
            "-p",
            str(state),
            "-e",
            str(state / "nginx-error.log"),
            "-c",
            str(conf_path),
        ],
        state / "nginx.log",
        dict(os.environ),
        state,
    )
    wait_http(f"http://127.0.0.1:{upstream.instant}/v1/models", timeout=20)
    return upstream


def routing_yaml(upstream: Upstream) -> str:
    lines = ["models:"]
    for model in ("bench-model", "bench-model-50ms", "bench-model-sse"):
        lines += [
            f"  {model}:",
            "    deployments:",
            f"      - {{name: nginx-{model}, provider: openai, model: bench-model, "
            f'base_url: "{upstream.base_url(model)}"}}',
        ]
    return "\n".join(lines) + "\n"


# -- load -----------------------------------------------------------------------------


def wrk(url: str, token: str, model: str, concurrency: int, seconds: float) -> dict[str, float]:
    """One wrk run (one thread, keep-alive connections); the RESULT line as numbers."""
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{concurrency}",
            f"-d{seconds:g}s",
            "--timeout",
            "10s",
            "-s",
            str(HERE / "chat.lua"),
            url,
        ],
        env={**os.environ, "TOKEN": token, "MODEL": model},
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{out.stdout}\n{out.stderr}")
    return {k: float(v) for k, v in (pair.split("=") for pair in line.split()[1:])}


def stream_ttft(
    loadgen: Path, url: str, token: str, model: str, seconds: float, workdir: Path
) -> dict[str, float]:
    body = workdir / f"stream-{model}.json"
    body.write_text(
        json.dumps(
            {
                "model": model,
                "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
                "max_tokens": 16,
                "stream": True,
            }
        )
    )
    return load(loadgen, url, body, concurrency=1, seconds=seconds, stream=True, api_key=token)


def prime(url: str, token: str) -> None:
    """One request per model, waited for: the first call of a gateway imports and connects
    lazily (LiteLLM's takes several seconds), which must not land in a measured cell."""
    for cell in CELLS:
        body = {
            "model": cell.model,
            "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
            "max_tokens": 16,
            "stream": cell.stream,
        }
        response = httpx.post(
            url, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=120
        )
        if response.status_code != 200:
            raise RuntimeError(f"{url} {cell.model}: {response.status_code} {response.text[:500]}")


# Seconds a set-up is left alone after it answers before its idle CPU is measured.
IDLE_SETTLE_S = 10.0


def measure(
    report: Report,
    mode: str,
    base: str,
    token: str,
    args: argparse.Namespace,
    loadgen: Path | None,
    workdir: Path,
    pids: dict[str, int] | None = None,
    infra: dict[str, Callable[[], float]] | None = None,
) -> None:
    """Every cell against one set-up; `base` is its URL up to (not including) /v1; `pids`
    are the set-up's processes, profiled (--profile) while the cells run; `infra` names
    the CPU seconds used so far by what the set-up runs on (broker, database), reported
    per request beside the processes'."""
    url = f"{base}/v1/chat/completions"
    if pids and args.idle_seconds:
        # CPU the set-up burns with no traffic at all (pollers, sweeps, outboxes), once
        # its start-up work is over (the tokenizer's vocabulary loads in a thread).
        time.sleep(IDLE_SETTLE_S)
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        time.sleep(args.idle_seconds)
        report.notes.append(
            f"{SETUP_NAMES[mode]}, idle: CPU "
            + ", ".join(
                f"{name} {100 * (cpu_seconds(pid) - before[name]) / args.idle_seconds:.1f}%"
                for name, pid in pids.items()
            )
            + " of a core"
        )
    # Warm-up, not measured: connection pools, caches, first-call imports.
    prime(url, token)
    wrk(url, token, "bench-model", 16, args.warmup)
    broker_cpu = (infra or {}).get("broker")
    if broker_cpu is not None and args.broker_warmup:
        # The broker is a JVM that `make infra-up` may have started a minute ago: until its
        # just-in-time compiler has compiled the request paths, it spends several times
        # the CPU per request it does once warm, on the two cores the services share. A
        # broker in service runs warm, so that is what the cells measure.
        used = broker_cpu()
        out = wrk(url, token, "bench-model", 16, args.broker_warmup)
        report.notes.append(
            f"{SETUP_NAMES[mode]}: the broker warmed up first, {args.broker_warmup:g} s at c=16"
            f" ({out['requests']:,.0f} requests, broker CPU"
            f" {1000 * (broker_cpu() - used) / max(out['requests'], 1):.2f} ms per request)"
        )
    with profiling(args, mode, pids or {}):
        measure_cells(report, mode, url, token, args, loadgen, workdir, pids, infra)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (/proc/<pid>/stat), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_cpu(match: Callable[[str, str], bool]) -> Callable[[], float]:
    """A function giving the CPU seconds (user + system) used so far by every process
    whose (name, command line) `match` accepts, those running when it is called: one that
    exited in between is no longer counted (PostgreSQL keeps its backends while a
    connection pool holds them)."""

    def total() -> float:
        seconds = 0.0
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                name = (entry / "comm").read_text().strip()
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if match(name, command):
                seconds += cpu_seconds(int(entry.name))
        return seconds

    return total


# What Kafka mode runs on, besides its four processes: the broker and the database server
# (all of PostgreSQL, other databases' work included).
KAFKA_INFRA = {
    "broker": process_cpu(lambda name, command: name == "java" and "kafka.Kafka" in command),
    "postgres": process_cpu(lambda name, command: name == "postgres"),
}


def measure_cells(report, mode, url, token, args, loadgen, workdir, pids=None, infra=None) -> None:
    """Every selected cell against one set-up: `url` is its chat completions URL, or a
    function giving it for a cell (the direct upstream has one port per cell)."""
    setup = SETUP_NAMES[mode]
    for cell in selected_cells(args):
        cell_url = url(cell) if callable(url) else url
        cpu_before = {name: cpu_seconds(pid) for name, pid in (pids or {}).items()}
        infra_before = {name: used() for name, used in (infra or {}).items()}
        if cell.stream:
            if loadgen is None:
                report.notes.append("streaming cells skipped: tests/bench/loadgen needs Go")
                continue
            out = stream_ttft(loadgen, cell_url, token, cell.model, args.seconds, workdir)
            # The token, not the first data line: the upstream's first line is an opening
            # chunk with only the role, which Switchyard sends together with the first
            # content (so that a failover before any content stays invisible to the client).
            result = Result(
                setup,
                cell,
                out["rps"],
                out.get("first_token_p50_ms", 0.0),
                out.get("first_token_p99_ms", 0.0),
                out["errors"],
            )
            report.notes.append(
                f"{setup}, {cell.label}: first SSE data line p50 {out['ttft_p50_ms']:.2f} ms,"
                f" p99 {out['ttft_p99_ms']:.2f} ms"
            )
        else:
            out = wrk(cell_url, token, cell.model, cell.concurrency, args.seconds)
            result = Result(setup, cell, out["rps"], out["p50_ms"], out["p99_ms"], out["errors"])
        report.results.append(result)
        served = result.rps * args.seconds
        if cpu_before and served and not cell.stream:
            report.notes.append(
                f"{setup}, {cell.label}: CPU per request "
                + ", ".join(
                    [
                        f"{name} {1000 * (cpu_seconds(pid) - cpu_before[name]) / served:.2f} ms"
                        for name, pid in (pids or {}).items()
                    ]
                    + [
                        f"{name} {1000 * (used() - infra_before[name]) / served:.2f} ms"
                        for name, used in (infra or {}).items()
                    ]
                )
            )
        print(
            f"  {mode:<9} {cell.label:<32} {result.rps:>9,.0f} req/s  p50 {result.p50_ms:7.2f} ms"
            f"  p99 {result.p99_ms:7.2f} ms  errors {result.errors:.0f}"
            # Resident memory after the cell: which load makes a process grow.
            + "".join(f"  {name} {rss_mb(pid) or 0:.0f} MiB" for name, pid in (pids or {}).items()),
            flush=True,
        )


@contextlib.contextmanager
def profiling(args: argparse.Namespace, mode: str, pids: dict[str, int]):
    """With --profile DIR: py-spy records every process of the set-up while its cells run
    (flame graphs DIR/<mode>-<process>.svg); py-spy is a development tool, not a dependency:
    PY_SPY names its binary, else it is looked up on PATH."""
    if not args.profile:
        yield
        return
    py_spy = os.environ.get("PY_SPY") or shutil.which("py-spy")
    if py_spy is None:
        sys.exit("--profile needs py-spy (pip install py-spy into any venv; PY_SPY=<its path>)")
    out = Path(args.profile)
    out.mkdir(parents=True, exist_ok=True)
    recorders = [
        subprocess.Popen(
            [
                py_spy,
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(args.profile_rate),
                "--nonblocking",
                "--full-filenames",
                "--format",
                args.profile_format,
                "--output",
                str(out / f"{mode}-{name}.{PROFILE_EXTENSIONS[args.profile_format]}"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=(out / f"{mode}-{name}.py-spy.log").open("w"),
        )
        for name, pid in pids.items()
        if not args.profile_only or name in args.profile_only
    ]
    try:
        yield
    finally:
        for recorder in recorders:
            recorder.send_signal(signal.SIGINT)
        for recorder in recorders:
            try:
                recorder.wait(timeout=60)
            except subprocess.TimeoutExpired:
                recorder.kill()


def selected_cells(args: argparse.Namespace) -> list[Cell]:
    return [cell for cell in CELLS if not args.cells or cell.label in args.cells]


# -- set-ups --------------------------------------------------------------------------


def run_direct(report, upstream: Upstream, args, loadgen, workdir) -> None:
    # nginx ignores the path and the model: one base URL per cell's upstream.
    wrk(upstream.base_url("bench-model") + "/chat/completions", "x", "bench-model", 16, 1)
    measure_cells(
        report,
        "direct",
        lambda cell: upstream.base_url(cell.model) + "/chat/completions",
        "x",
        args,
        loadgen,
        workdir,
    )


def run_litellm(report, owned: OwnedProcesses, upstream: Upstream, args, loadgen, workdir) -> None:
    if not LITELLM.exists():
        sys.exit(f"LiteLLM is not installed at {LITELLM}: run tests/bench/peers/setup.sh")
    config = workdir / "litellm.yaml"
    entries = []
    for model in ("bench-model", "bench-model-50ms", "bench-model-sse"):
        entries.append(
            f"  - model_name: {model}\n    litellm_params:\n      model: openai/bench-model\n"
            f"      api_base: {upstream.base_url(model)}\n      api_key: sk-upstream\n"
        )
    config.write_text(
        "model_list:\n"
        + "".join(entries)
        + f"general_settings:\n  master_key: {LITELLM_KEY}\n"
        + "litellm_settings:\n  drop_params: true\n"
    )
    port = free_port()
    # Never hand LiteLLM our database (it would migrate it) nor any provider credentials;
    # the cost map ships with the package (no network at start-up).
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "OPENAI_API_KEY", "ANTHROPIC_API_KEY")
    }
    env |= {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
    popen = owned.start(
        [
            str(LITELLM),
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            "1",
        ],
        workdir / "litellm.log",
        env,
        workdir,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/health/liveliness", timeout=120)
        measure(
            report,
            "litellm",
            f"http://127.0.0.1:{port}",
            LITELLM_KEY,
            args,
            loadgen,
            workdir,
            {"litellm": popen.pid},
        )
        report.rss_mib[SETUP_NAMES["litellm"]] = tree_rss_mib(popen.pid)
    finally:
        OwnedProcesses.stop(popen)


def run_embedded(report, routing: Path, args, loadgen, workdir) -> None:
    group = embedded_group(workdir, routing, "embedded")
    port = int(group.env["SWITCHYARD_GATEWAY_PORT"])
    try:
        process = group.start("embedded", "dev", port=port, timeout=START_TIMEOUT_S)
        base = f"http://127.0.0.1:{port}"
        pids = {"embedded": process.popen.pid}
        measure(report, "embedded", base, DEV_KEY, args, loadgen, workdir, pids)
        report.rss_mib[SETUP_NAMES["embedded"]] = tree_rss_mib(process.popen.pid)
    finally:
        group.stop_all()


def run_burst(report, routing: Path, args, workdir) -> None:
    # As users run it: default log level and format.
    group = embedded_group(workdir, routing, "burst", quiet=False)
    port = int(group.env["SWITCHYARD_GATEWAY_PORT"])
    try:
        process = group.start("burst", "dev", port=port, timeout=START_TIMEOUT_S)
        report.burst = burst_stall(
            f"http://127.0.0.1:{port}",
            DEV_KEY,
            lambda seconds, concurrency: wrk(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                DEV_KEY,
                "bench-model",
                concurrency,
                seconds,
            ),
            burst_seconds=args.burst_seconds,
            stop=lambda: _timed_stop(process.popen),
        )
    finally:
        group.stop_all()


def _timed_stop(popen: subprocess.Popen) -> float | None:
    """SIGTERM and wait up to 30 s; seconds it took to exit, or None if it had to be killed."""
    started = time.monotonic()
    popen.terminate()
    try:
        popen.wait(timeout=30)
    except subprocess.TimeoutExpired:
        popen.kill()
        popen.wait()
        return None
    return time.monotonic() - started


def run_kafka(report, routing: Path, args, loadgen, workdir) -> None:
    with kafka_deployment(workdir / "kafka", routing, "sypeers") as deployment:
        processes = deployment.start_services()
        # Let every consumer group settle before measuring.
        time.sleep(args.settle)
        pids = {p.name: p.popen.pid for p in processes}
        measure(
            report,
            "kafka",
            deployment.gateway,
            deployment.key,
            args,
            loadgen,
            workdir,
            pids,
            KAFKA_INFRA,
        )
        report.rss_mib[SETUP_NAMES["kafka"]] = (
            sum(p.peak_rss_mb() or 0 for p in processes),
            sum(p.rss_mb() or 0 for p in processes),
        )


# -- report ---------------------------------------------------------------------------


def render(report: Report, args: argparse.Namespace, header: str) -> str:
    by = {(r.setup, r.cell.label): r for r in report.results}
    lines = [
        f"Machine: {header}; {args.seconds:g} s per cell after a {args.warmup:g} s warm-up; "
        "wrk -t1 (streaming: tests/bench/loadgen, p50/p99 are of time to first token: the first "
        "data line with generated text; the upstream sends it 10 ms after its opening chunk).",
        "",
    ]
    rows = []
    for cell in CELLS:
        direct = by.get((SETUP_NAMES["direct"], cell.label))
        peer = by.get((SETUP_NAMES["litellm"], cell.label))
        for mode in ("direct", "litellm", "embedded", "kafka"):
            r = by.get((SETUP_NAMES[mode], cell.label))
            if r is None:
                continue
            added = "" if mode == "direct" or direct is None else f"{r.p50_ms - direct.p50_ms:+.2f}"
            ratio = (
                ""
                if mode == "direct" or peer is None or peer.rps == 0
                else f"{r.rps / peer.rps:.2f}×"
            )
            rows.append(
                [
                    cell.label,
                    r.setup,
                    f"{r.rps:,.0f}",
                    f"{r.p50_ms:.2f}",
                    f"{r.p99_ms:.2f}",
                    added,
                    ratio,
                    f"{r.errors:.0f}",
                ]
            )
    header = ["cell", "set-up", "req/s", "p50 ms", "p99 ms", "added p50 ms", "req/s ÷ LiteLLM"]
    lines += markdown_table([*header, "errors"], rows, left=2)
    if report.rss_mib:
        lines.append("")
        lines.append(
            "Peak RSS of the run (RSS at its end): "
            + "; ".join(
                f"{name} {peak:.0f} MiB ({now:.0f} MiB)"
                for name, (peak, now) in report.rss_mib.items()
            )
            + "."
        )
    if report.burst is not None:
        lines += ["", report.burst.render()]
    lines += [f"- {note}" for note in dict.fromkeys(report.notes)]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per set-up")
    parser.add_argument("--settle", type=float, default=3.0, help="Kafka mode: s before load")
    parser.add_argument(
        "--broker-warmup",
        type=float,
        default=30.0,
        help="Kafka mode: seconds at c=16 before the cells, for the broker's JIT (0: none)",
    )
    parser.add_argument("--burst-seconds", type=float, default=10.0)
    parser.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    parser.add_argument(
        "--cells", nargs="+", choices=[c.label for c in CELLS], help="only these cells"
    )
    parser.add_argument(
        "--idle-seconds", type=float, default=0, help="measure idle CPU this long first"
    )
    parser.add_argument("--keep", help="keep logs and configs in this directory")
    parser.add_argument("--profile", help="py-spy flame graphs of each process, into this dir")
    parser.add_argument(
        "--profile-format",
        default="flamegraph",
        choices=["flamegraph", "raw", "speedscope"],
    )
    parser.add_argument(
        "--profile-only",
        nargs="+",
        help="profile only these processes (gateway, inference, history, auth, embedded):"
        " each profiler takes CPU from the set-up it measures",
    )
    parser.add_argument("--profile-rate", type=int, default=200, help="samples per second")
    args = parser.parse_args()
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing: run tests/bench/peers/setup.sh")

    header = machine(load_average=True)
    report = Report()
    owned = OwnedProcesses()
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        with tempfile.TemporaryDirectory(prefix="switchyard-peers-") as tmp:
            workdir = Path(args.keep or tmp).resolve()
            workdir.mkdir(parents=True, exist_ok=True)
            loadgen = build_loadgen(workdir) if set(args.modes) - {"burst"} else None
            upstream = start_upstream(owned, workdir / "nginx")
            routing = workdir / "routing.yaml"
            routing.write_text(routing_yaml(upstream))
            os.environ["SWITCHYARD_ROUTING_FILE"] = str(routing)
            for mode in args.modes:
                print(f"{mode}:", flush=True)
                if mode == "direct":
                    run_direct(report, upstream, args, loadgen, workdir)
                elif mode == "litellm":
                    run_litellm(report, owned, upstream, args, loadgen, workdir)
                elif mode == "embedded":
                    run_embedded(report, routing, args, loadgen, workdir)
                elif mode == "kafka":
                    run_kafka(report, routing, args, loadgen, workdir)
                elif mode == "burst":
                    run_burst(report, routing, args, workdir)
    finally:
        owned.stop_all()
        signal.signal(signal.SIGTERM, previous)
    write_results("peers.md", render(report, args, header))


if __name__ == "__main__":
    main()
