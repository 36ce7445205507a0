"""Running Switchyard services as separate OS processes, as in production: used by the
e2e suite and the benchmark. Each process logs to its own file; readiness is polled."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import httpx

from switchyard.common.testing.infra import wait_until

SWITCHYARD = [sys.executable, "-m", "switchyard.common.cli"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it; another process may still take
    it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return cast(int, sock.getsockname()[1])


def _status_mib(pid: int, field: str) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def peak_rss_mb(pid: int) -> float | None:
    """Peak resident set size of a live process (VmHWM), in MiB."""
    return _status_mib(pid, "VmHWM")


def rss_mb(pid: int) -> float | None:
    """Resident set size of a live process now (VmRSS), in MiB."""
    return _status_mib(pid, "VmRSS")


@dataclass
class Process:
    """A `switchyard` subprocess started by a test: its name, process, log file and port."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    port: int | None = None

    def log(self) -> str:
        """Everything the process wrote to stdout and stderr so far ("" before it wrote
        anything)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def peak_rss_mb(self) -> float | None:
        """The process's peak resident memory in MiB, or None once it has exited."""
        return peak_rss_mb(self.popen.pid)

    def rss_mb(self) -> float | None:
        """The process's resident memory now in MiB, or None once it has exited."""
        return rss_mb(self.popen.pid)

    def stop(self, timeout: float = 15) -> None:
        """Send SIGTERM and wait up to `timeout` seconds for the process to exit, then kill it."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


@dataclass
class ProcessGroup:
    """Services started with a shared environment, stopped together (last first)."""

    env: dict[str, str]
    workdir: Path
    processes: list[Process] = field(default_factory=list)
    # (bootstrap servers, topic prefix) of every `switchyard topics create` run, so the
    # topics are deleted again by `stop_all` and a developer's broker does not pile up
    # thousands of partitions (which slows its start-up) over many test runs.
    created_topics: list[tuple[str, str]] = field(default_factory=list)

    def cli(self, *args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> str:
        """Run `switchyard *args` in the group's environment (plus `env`), with `stdin` as input,
        and return its stdout. Raises AssertionError with its output when it exits non-zero, and
        subprocess.TimeoutExpired after 120 s."""
        merged = {**self.env, **(env or {})}
        if args[:2] == ("topics", "create") and merged.get("KAFKA_BOOTSTRAP_SERVERS"):
            self.created_topics.append(
                (merged["KAFKA_BOOTSTRAP_SERVERS"], merged.get("SWITCHYARD_TOPIC_PREFIX", ""))
            )
        result = subprocess.run(
            [*SWITCHYARD, *args],
            env=merged,
            cwd=self.workdir,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise AssertionError(
                f"switchyard {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
            )
        return result.stdout

    def start(
        self,
        name: str,
        *args: str,
        port: int,
        env: dict[str, str] | None = None,
        ready_path: str = "/readyz",
        timeout: float = 90,
    ) -> Process:
        """Start `switchyard *args` as service `name` listening on `port` (its log in the work
        dir) and wait until GET `ready_path` answers 200. Raises AssertionError when the process
        exits first or is not ready within `timeout` seconds."""
        log_path = self.workdir / f"{name}.log"
        popen = subprocess.Popen(
            [*SWITCHYARD, *args],
            env={**self.env, **(env or {})},
            cwd=self.workdir,
            stdout=log_path.open("w"),
            stderr=subprocess.STDOUT,
        )
        process = Process(name, popen, log_path, port)
        self.processes.append(process)

        def ready() -> bool:
            if popen.poll() is not None:
                raise AssertionError(
                    f"{name} exited with {popen.returncode}:\n{process.log()[-4000:]}"
                )
            return httpx.get(f"http://127.0.0.1:{port}{ready_path}", timeout=2).status_code == 200

        wait_until(ready, timeout=timeout, interval=0.2, message=f"{name} to be ready")
        return process

    def logs(self) -> str:
        """The last 6000 characters of every process's log, each under its name."""
        return "\n".join(f"===== {p.name} =====\n{p.log()[-6000:]}" for p in self.processes)

    def stop_all(self) -> None:
        """Stops every process (last started first), then deletes the topics they used."""
        for process in reversed(self.processes):
            process.stop()
        for servers, prefix in dict.fromkeys(self.created_topics):
            if prefix:  # never the unprefixed topics of a real deployment
                _delete_prefixed_topics(servers, prefix)
        self.created_topics.clear()


def _delete_prefixed_topics(servers: str, prefix: str) -> None:
    """Best effort, bounded: a broker already stopped (fault tests) is not waited for."""
    from switchyard.common.kafka_admin import delete_topics
    from switchyard.common.topics import Topics

    names = [name for name, _ in Topics(prefix).all()]

    async def delete() -> None:
        async with asyncio.timeout(15):
            await delete_topics(servers, names)

    with contextlib.suppress(Exception):
        asyncio.run(delete())
