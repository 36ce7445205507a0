"""What every benchmark under tests/bench shares: starting and stopping the processes it
measures (Switchyard embedded or on Kafka, the simulator, third-party servers), free
ports, waiting for a server to answer, the Go load generator (tests/bench/loadgen), the
machine line and the tables they print, and where results are written
(bench-results/).

Every process listens on 127.0.0.1 only and is stopped when its block ends, also on an
error. Imported by the scripts in this folder as `benchkit` (a script's own folder is
first on `sys.path`; tests/bench/peers/ adds this one).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from switchyard.common.testing.infra import temporary_database, unique_prefix, wait_until
from switchyard.common.testing.processes import Process, ProcessGroup, free_port

__all__ = [
    "DEV_KEY",
    "START_TIMEOUT_S",
    "RESULTS",
    "KafkaDeployment",
    "OwnedProcesses",
    "build_loadgen",
    "embedded_group",
    "free_port",
    "kafka_deployment",
    "load",
    "machine",
    "markdown_table",
    "simulator_routing",
    "start_simulator",
    "timed",
    "wait_http",
    "write_results",
]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RESULTS = ROOT / "bench-results"
# The API key `switchyard dev` accepts in the embedded set-ups.
DEV_KEY = "sk-sy-bench" + "0" * 38
KAFKA_DEFAULT = "127.0.0.1:9092"
DATABASE_DEFAULT = "postgresql+psycopg://switchyard:switchyard@127.0.0.1:5432/switchyard"
SERVICES = ("auth", "history", "inference", "gateway")
# Seconds a Switchyard process may take to be ready: `switchyard dev` imports every
# service and both provider SDKs, which takes over a minute on a loaded 2-core machine,
# and the services of the Kafka set-up start side by side.
START_TIMEOUT_S = 180


# -- processes ------------------------------------------------------------------------


class OwnedProcesses:
    """Processes that are not Switchyard's (nginx, LiteLLM), each started in its own
    session and stopped with its whole session (SIGTERM, then SIGKILL after `timeout`
    seconds), the last started first."""

    def __init__(self) -> None:
        self.popens: list[subprocess.Popen[bytes]] = []

    def start(
        self, command: list[str], log: Path, env: dict[str, str], cwd: Path
    ) -> subprocess.Popen[bytes]:
        popen = subprocess.Popen(
            command,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        self.popens.append(popen)
        return popen

    @staticmethod
    def stop(popen: subprocess.Popen[bytes], timeout: float = 15) -> None:
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGTERM)
            try:
                popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(popen.pid, signal.SIGKILL)
                popen.wait()

    def stop_all(self) -> None:
        for popen in reversed(self.popens):
            self.stop(popen)
        self.popens.clear()


def wait_http(url: str, timeout: float = 90) -> None:
    """Wait until `url` answers with a status below 500; AssertionError after `timeout` s."""

    def answers() -> bool:
        try:
            return httpx.get(url, timeout=2).status_code < 500
        except httpx.HTTPError:
            return False

    wait_until(answers, timeout=timeout, interval=0.25, message=f"{url} to answer")


def simulator_routing(simulator_url: str) -> str:
    """A routing file serving `sim-small` from the simulator at `simulator_url` (its root,
    no /v1)."""
    return (
        f"models:\n  sim-small:\n    deployments:\n      - name: simulator\n"
        f"        provider: openai\n        model: sim-small\n"
        f"        base_url: {simulator_url}/v1\n"
    )


def start_simulator(group: ProcessGroup, port: int) -> Process:
    """`switchyard simulator` on 127.0.0.1:`port` in `group`, once it answers."""
    return group.start(
        "simulator", "simulator", "--port", str(port), port=port, ready_path="/v1/models"
    )


def embedded_group(workdir: Path, routing: Path, name: str, quiet: bool = True) -> ProcessGroup:
    """The environment of one `switchyard dev` (every service in one process, in-memory
    bus, SQLite) on free ports, routed by `routing`, logging into `workdir/name`; its
    gateway port is `env["SWITCHYARD_GATEWAY_PORT"]` and its key `DEV_KEY`. `quiet`: only
    warnings are logged. Start it with `group.start(name, "dev", port=...)`."""
    env = {
        **os.environ,
        "SWITCHYARD_DEV_API_KEY": DEV_KEY,
        "SWITCHYARD_ROUTING_FILE": str(routing),
        "SWITCHYARD_GATEWAY_PORT": str(free_port()),
        "SWITCHYARD_AUTH_PORT": str(free_port()),
        "SWITCHYARD_HISTORY_PORT": str(free_port()),
        "SWITCHYARD_INFERENCE_PORT": str(free_port()),
    }
    # Embedded mode never uses Kafka or PostgreSQL, even when they are exported.
    for variable in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "SWITCHYARD_BUS"):
        env.pop(variable, None)
    if quiet:
        env["SWITCHYARD_LOG_LEVEL"] = "WARNING"
    # The dev runner derives nothing: auth and history are called at these URLs.
    env["SWITCHYARD_AUTH_URL"] = f"http://127.0.0.1:{env['SWITCHYARD_AUTH_PORT']}"
    env["SWITCHYARD_HISTORY_URL"] = f"http://127.0.0.1:{env['SWITCHYARD_HISTORY_PORT']}"
    group = ProcessGroup(env=env, workdir=workdir / name)
    group.workdir.mkdir()
    return group


@dataclass
class KafkaDeployment:
    """Switchyard as in production, every service its own process, on the Kafka broker and
    PostgreSQL server named by KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL (a temporary
    database and a unique topic prefix): `group` runs them, `ports` are theirs by
    service name, `key` is an API key of the user bench@example.com."""

    group: ProcessGroup
    servers: str
    ports: dict[str, int]
    key: str
    processes: list[Process] = field(default_factory=list)

    @property
    def gateway(self) -> str:
        return f"http://127.0.0.1:{self.ports['gateway']}"

    def start_services(self) -> list[Process]:
        """Start auth, history and inference side by side, then the gateway (which asks
        auth for its keys at start-up); each is ready when this returns."""

        def start(name: str) -> Process:
            port = self.ports[name]
            return self.group.start(
                name, name, "--port", str(port), port=port, timeout=START_TIMEOUT_S
            )

        with ThreadPoolExecutor(3) as pool:
            self.processes += list(pool.map(start, SERVICES[:-1]))
        self.processes.append(start("gateway"))
        return self.processes


@contextlib.contextmanager
def kafka_deployment(
    workdir: Path,
    routing: Path,
    prefix: str,
    *,
    tenant: str | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[KafkaDeployment]:
    """A `KafkaDeployment` provisioned (topics, migrations, the user bench@example.com in
    `tenant` and its key) but not started (`start_services()`), in a temporary database
    and topics named after `prefix`; `env` adds to the services' environment. Logs are in
    `workdir`; on an error the tail of every log is printed to stderr. Every process is
    stopped and the topics and database removed when the block ends."""
    servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", KAFKA_DEFAULT)
    database = os.environ.get("DATABASE_URL", DATABASE_DEFAULT)
    with temporary_database(database, prefix=prefix) as db_url:
        ports = {name: free_port() for name in SERVICES}
        group = ProcessGroup(
            env={
                **os.environ,
                "SWITCHYARD_ENVIRONMENT": "development",
                "SWITCHYARD_BUS": "kafka",
                "KAFKA_BOOTSTRAP_SERVERS": servers,
                "SWITCHYARD_TOPIC_PREFIX": unique_prefix(prefix),
                "SWITCHYARD_INTERNAL_TOKEN": secrets.token_urlsafe(24),
                "DATABASE_URL": db_url,
                "SWITCHYARD_ROUTING_FILE": str(routing),
                "SWITCHYARD_AUTH_URL": f"http://127.0.0.1:{ports['auth']}",
                "SWITCHYARD_HISTORY_URL": f"http://127.0.0.1:{ports['history']}",
                "SWITCHYARD_GATEWAY_URL": f"http://127.0.0.1:{ports['gateway']}",
                "SWITCHYARD_LOG_LEVEL": "WARNING",
                **(env or {}),
            },
            workdir=workdir,
        )
        group.workdir.mkdir(parents=True, exist_ok=True)
        try:
            group.cli("topics", "create")
            group.cli("db", "upgrade")
            user = ["users", "create", "--email", "bench@example.com", "--no-password"]
            group.cli(*user, *(["--tenant", tenant] if tenant else []))
            created = group.cli("keys", "create", "--email", "bench@example.com", "--json")
            yield KafkaDeployment(group, servers, ports, json.loads(created)["key"])
        except Exception:
            print(group.logs()[-8000:], file=sys.stderr)
            raise
        finally:
            group.stop_all()


# -- load -----------------------------------------------------------------------------


def build_loadgen(workdir: Path) -> Path | None:
    """tests/bench/loadgen built into `workdir`; None when Go is not installed."""
    if shutil.which("go") is None:
        return None
    binary = workdir / "loadgen"
    subprocess.run(
        ["go", "build", "-o", str(binary), "."],
        cwd=HERE / "loadgen",
        check=True,
        env={**os.environ, "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0"},
        timeout=300,
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
    headers: Sequence[str] = (),
) -> dict[str, Any]:
    """One loadgen run: POST `body_file` to `url` from `concurrency` clients for `seconds`
    after a 1 s warm-up. Returns loadgen's JSON: rps, p50_ms, p99_ms, errors and, with
    `stream`, ttft_p50_ms and ttft_p99_ms (time to the first SSE data line) and
    first_token_p50_ms and first_token_p99_ms (to the first data line with generated output)."""
    command = [str(loadgen), "-url", url, "-body", str(body_file), "-c", str(concurrency)]
    command += ["-d", f"{seconds:g}s", "-warmup", "1s"]
    if stream:
        command.append("-stream")
    if api_key:
        command += ["-H", f"Authorization: Bearer {api_key}"]
    for header in headers:
        command += ["-H", header]
    result = subprocess.run(
        command, capture_output=True, text=True, check=True, timeout=seconds + 60
    )
    return dict(json.loads(result.stdout))


async def timed(
    call: Callable[[], Awaitable[object]],
    iterations: int,
    *,
    warmup: int = 200,
    yield_between: bool = False,
) -> list[float]:
    """Microseconds each of `iterations` sequential awaits of `call` took, after
    `warmup` unmeasured ones; `yield_between` lets other tasks run between calls (as
    they would between requests)."""
    import asyncio

    for _ in range(min(warmup, iterations)):
        await call()
    samples = []
    for _ in range(iterations):
        started = time.perf_counter_ns()
        await call()
        samples.append((time.perf_counter_ns() - started) / 1000)
        if yield_between:
            await asyncio.sleep(0)
    return samples


# -- report ---------------------------------------------------------------------------


def machine(load_average: bool = False) -> str:
    """Cores, CPU model, Python version and the UTC time (with `load_average`, the
    machine's load averages too), for the first line of a report."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    line = (
        f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    if load_average:
        load = os.getloadavg()
        line += f", load average before the run {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}"
    return line


def markdown_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], *, left: int = 1, padded: bool = False
) -> list[str]:
    """The lines of a Markdown table: the first `left` columns left-aligned, the others
    right; `padded` pads every cell to its column's width, to be read as plain text too."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        if padded:
            cells = [
                cell.ljust(width) if i < left else cell.rjust(width)
                for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
            ]
        return "| " + " | ".join(cells) + " |"

    if padded:
        rule = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    else:
        rule = "|" + "|".join("---" if i < left else "---:" for i in range(len(header))) + "|"
    return [line(header), rule, *(line(row) for row in rows)]


def write_results(name: str, report: str) -> Path:
    """Write `report` to bench-results/`name` and print it; returns the file's path."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / name
    path.write_text(report)
    print()
    print(report)
    return path
