"""Burst-stall check: does a gateway keep answering right after a burst of load?

Against a running gateway (embedded mode in ``make bench-peers``):

1. steady state: ``steady_requests`` chat completions one at a time (c=1), their p99;
2. a burst: ``burst_seconds`` at concurrency 64 (wrk, which closes its 64 connections at
   the end, as load balancers and impatient clients do);
3. right after it: 100 chat completions one at a time, their p99 against the steady p99;
4. throughout, a separate connection asks ``/livez`` every 50 ms (2 s timeout) and records
   every answer, failure and the longest time without an answer;
5. finally SIGTERM: how long the process takes to exit.

The one-at-a-time requests use one keep-alive ``http.client`` connection, the same for
steady and after-burst, so the client's own cost cancels out in the ratio.
"""

from __future__ import annotations

import http.client
import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

BODY = json.dumps(
    {
        "model": "bench-model",
        "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
        "max_tokens": 16,
    }
).encode()


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))
    return ordered[rank]


@dataclass
class BurstResult:
    steady_p50_ms: float
    steady_p99_ms: float
    burst_rps: float
    burst_errors: int
    after_p50_ms: float
    after_p99_ms: float
    after_max_ms: float
    after_failures: int
    livez_polls: int
    livez_failures: int
    livez_max_ms: float
    livez_longest_gap_ms: float
    sigterm_exit_s: float | None

    @property
    def ratio(self) -> float:
        return self.after_p99_ms / self.steady_p99_ms if self.steady_p99_ms else float("inf")

    def render(self) -> str:
        verdict = "within" if self.ratio <= 2 else "NOT within"
        live = (
            "answered every poll"
            if self.livez_failures == 0
            else f"FAILED {self.livez_failures} of {self.livez_polls} polls"
        )
        stop = (
            f"{self.sigterm_exit_s:.1f} s"
            if self.sigterm_exit_s is not None
            else "did not exit in 30 s (killed)"
        )
        return (
            "Burst stall (embedded, default logging): steady c=1 p50 "
            f"{self.steady_p50_ms:.2f} ms, p99 {self.steady_p99_ms:.2f} ms; burst at c=64 "
            f"{self.burst_rps:,.0f} req/s ({self.burst_errors} errors); the next 100 requests "
            f"at c=1: p50 {self.after_p50_ms:.2f} ms, p99 {self.after_p99_ms:.2f} ms, max "
            f"{self.after_max_ms:.2f} ms, {self.after_failures} failed: p99 "
            f"{self.ratio:.2f}× steady ({verdict} 2×). /livez {live} ({self.livez_polls} polls, "
            f"slowest {self.livez_max_ms:.1f} ms, longest gap {self.livez_longest_gap_ms:.0f} "
            f"ms). SIGTERM to exit: {stop}."
        )


class _Client:
    """One keep-alive connection; reconnects after a failure."""

    def __init__(self, base: str, timeout: float) -> None:
        parts = urlsplit(base)
        self.host, self.port, self.timeout = parts.hostname, parts.port, timeout
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None, headers: dict) -> int:
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            self.conn.request(method, path, body=body, headers=headers)
            response = self.conn.getresponse()
            response.read()
            return response.status
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = None
            raise


def _one_at_a_time(base: str, key: str, count: int) -> tuple[list[float], int]:
    client = _Client(base, timeout=10)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    latencies, failures = [], 0
    for _ in range(count):
        began = time.perf_counter()
        try:
            status = client.request("POST", "/v1/chat/completions", BODY, headers)
        except (OSError, http.client.HTTPException):
            failures += 1
            continue
        elapsed = (time.perf_counter() - began) * 1000
        if status == 200:
            latencies.append(elapsed)
        else:
            failures += 1
    return latencies, failures


class _LivezPoller(threading.Thread):
    def __init__(self, base: str, interval_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.client = _Client(base, timeout=2)
        self.interval_s = interval_s
        self.stopping = threading.Event()
        self.polls = self.failures = 0
        self.max_ms = 0.0
        self.longest_gap_ms = 0.0

    def run(self) -> None:
        last_answer = time.perf_counter()
        while not self.stopping.is_set():
            began = time.perf_counter()
            self.polls += 1
            try:
                ok = self.client.request("GET", "/livez", None, {}) == 200
            except (OSError, http.client.HTTPException):
                ok = False
            now = time.perf_counter()
            self.max_ms = max(self.max_ms, (now - began) * 1000)
            if ok:
                self.longest_gap_ms = max(self.longest_gap_ms, (now - last_answer) * 1000)
                last_answer = now
            else:
                self.failures += 1
            self.stopping.wait(self.interval_s)
        # A gateway that never answered again counts until the end.
        self.longest_gap_ms = max(self.longest_gap_ms, (time.perf_counter() - last_answer) * 1000)


def burst_stall(
    base: str,
    key: str,
    load: Callable[[float, int], dict[str, float]],
    *,
    burst_seconds: float = 10.0,
    steady_requests: int = 300,
    stop: Callable[[], float | None] | None = None,
) -> BurstResult:
    """Run the check against `base` (http://host:port); `load(seconds, concurrency)` runs
    the burst (wrk) and returns its figures; `stop()` stops the gateway and returns the
    seconds it took (None if it had to be killed)."""
    load(2, 1)  # warm-up
    steady, _ = _one_at_a_time(base, key, steady_requests)
    poller = _LivezPoller(base)
    poller.start()
    burst = load(burst_seconds, 64)
    after, after_failures = _one_at_a_time(base, key, 100)
    time.sleep(1)
    poller.stopping.set()
    poller.join(timeout=5)
    sigterm = stop() if stop is not None else None
    return BurstResult(
        steady_p50_ms=percentile(steady, 50),
        steady_p99_ms=percentile(steady, 99),
        burst_rps=burst.get("rps", 0),
        burst_errors=int(burst.get("errors", 0)),
        after_p50_ms=percentile(after, 50) if after else float("inf"),
        after_p99_ms=percentile(after, 99) if after else float("inf"),
        after_max_ms=max(after) if after else float("inf"),
        after_failures=after_failures,
        livez_polls=poller.polls,
        livez_failures=poller.failures,
        livez_max_ms=poller.max_ms,
        livez_longest_gap_ms=poller.longest_gap_ms,
        sigterm_exit_s=sigterm,
    )
