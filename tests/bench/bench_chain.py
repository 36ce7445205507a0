"""How long a chained Responses turn takes in Kafka mode; prints one line per batch wait.

A chained turn names the `previous_response_id` of an answer given moments ago: the
gateway reads that conversation from history, whose batch consumer may not have written
it yet (`SWITCHYARD_HISTORY_MAX_BATCH_WAIT_MS`; a read ends the wait). For each batch wait
given, a fresh Kafka-mode deployment answers from the provider simulator: `--turns` times
`POST /v1/responses`, then at once a second one with its `previous_response_id`, timed
one at a time (concurrency 1). Needs KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL
(`make infra-up`). Usage:
`.venv/bin/python tests/bench/bench_chain.py [--waits 20 200] [--turns 30]`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import httpx
from benchkit import kafka_deployment, simulator_routing, start_simulator

from switchyard.common.testing.processes import ProcessGroup, free_port


def percentile(values: list[float], fraction: float) -> float:
    """The value at `fraction` (0 to 1) of the sorted `values`, in milliseconds."""
    return sorted(values)[int(fraction * (len(values) - 1))] * 1000


def chain(gateway: str, key: str, turns: int) -> tuple[list[float], list[float]]:
    """Seconds taken by each first turn and by each chained turn right after it."""
    first: list[float] = []
    chained: list[float] = []
    with httpx.Client(
        base_url=gateway, headers={"Authorization": f"Bearer {key}"}, timeout=30
    ) as client:
        for _ in range(3):  # warm-up
            client.post("/v1/responses", json={"model": "sim-small", "input": "hi"})
        for _ in range(turns):
            started = time.perf_counter()
            answer = client.post("/v1/responses", json={"model": "sim-small", "input": "hi"})
            first.append(time.perf_counter() - started)
            answer.raise_for_status()
            body = {
                "model": "sim-small",
                "input": "more",
                "previous_response_id": answer.json()["id"],
            }
            started = time.perf_counter()
            client.post("/v1/responses", json=body).raise_for_status()
            chained.append(time.perf_counter() - started)
    return first, chained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waits", type=int, nargs="+", default=[20, 200])
    parser.add_argument("--turns", type=int, default=30)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="switchyard-chain-"))
    simulator = ProcessGroup(env=dict(os.environ), workdir=work / "simulator")
    simulator.workdir.mkdir()
    port = free_port()
    start_simulator(simulator, port)
    routing = work / "routing.yaml"
    routing.write_text(simulator_routing(f"http://127.0.0.1:{port}"))
    try:
        for wait in args.waits:
            env = {"SWITCHYARD_HISTORY_MAX_BATCH_WAIT_MS": str(wait)}
            with kafka_deployment(work / f"wait-{wait}", routing, "sychain", env=env) as deployment:
                deployment.start_services()
                first, chained = chain(deployment.gateway, deployment.key, args.turns)
            print(
                f"batch wait {wait} ms: first turn p50 {percentile(first, 0.5):.1f} ms; "
                f"chained turn p50 {percentile(chained, 0.5):.1f} ms, "
                f"p90 {percentile(chained, 0.9):.1f} ms, max {max(chained) * 1000:.1f} ms"
            )
    finally:
        simulator.stop_all()


if __name__ == "__main__":
    main()
