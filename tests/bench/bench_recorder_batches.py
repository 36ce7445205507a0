"""History's recorder on SQLite (embedded mode) as its consumer feeds it: CPU per request
for batches of 1, 2 and 20 requests' events, with the pause between batches the batch wait
leaves (10, 20 and 200 ms), so the event loop is idle between batches as in a service.

    uv run python tests/bench/bench_recorder_batches.py [--requests 300]

A request is three events (requested, completed, usage). Prints one Markdown table: CPU
ms per request of the whole process and of the event loop's thread alone (the rest is
aiosqlite's thread running SQLite). Needs nothing but a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import bench_history  # noqa: E402 - a sibling script, not a package

from switchyard.common.db import upgrade  # noqa: E402
from switchyard.common.logging import configure_logging  # noqa: E402
from switchyard.history.bootstrap import history_engine  # noqa: E402
from switchyard.history.handlers import EventRecorder  # noqa: E402

# (requests per batch, ms between batches): the batch wait at about 100 requests/s.
SHAPES = ((1, 10), (2, 20), (20, 200))


async def cpu_per_request(
    url: str, per_batch: int, gap_ms: int, requests: int
) -> tuple[float, float]:
    """(process CPU ms, event-loop thread CPU ms) per request over `requests` requests."""
    upgrade(bench_history.MIGRATIONS_DIR, url, bench_history.VERSION_TABLE)
    engine = history_engine(url)
    try:
        recorder = EventRecorder(engine)
        size = per_batch * 3
        stream = bench_history.interleaved(requests + per_batch, size)
        await recorder.record(stream[:size])  # warm up connections and statement caches
        stream = stream[size:]
        process = thread = 0.0
        for start in range(0, len(stream), size):
            await asyncio.sleep(gap_ms / 1000)
            p, t = time.process_time(), time.thread_time()
            await recorder.record(stream[start : start + size])
            process += time.process_time() - p
            thread += time.thread_time() - t
        done = len(stream) / 3
        return process / done * 1000, thread / done * 1000
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    configure_logging("bench", "WARNING", "json")
    print("| requests per batch | ms between batches | CPU ms per request | of which event loop |")
    print("|---:|---:|---:|---:|")
    for per_batch, gap_ms in SHAPES:
        with tempfile.TemporaryDirectory() as tmp:
            process, thread = asyncio.run(
                cpu_per_request(
                    f"sqlite+aiosqlite:///{tmp}/history.db", per_batch, gap_ms, args.requests
                )
            )
        print(f"| {per_batch} | {gap_ms} | {process:.2f} | {thread:.2f} |", flush=True)


if __name__ == "__main__":
    main()
