"""What budgets and rate limits add to a request at the gateway; prints a table.

Measured on the gateway's real `Admission` at concurrency 1 (one request at a time), per
request: `admit` (policy from the cache, token and cost estimate, local leases) then
`attach` and the settlement its usage event triggers:

- without limits: the caller's policy has none (the cost every request pays);
- with limits at three levels (key, team, tenant: requests and tokens per minute,
  requests in progress, a budget), on the in-memory ledger and on the PostgreSQL ledger
  (the fleet's; its round trips are amortised by leases, and settlements are written in
  the background).

The target: limits add at most 0.3 ms at p50 over no limits. Needs DATABASE_URL for the
PostgreSQL rows (skipped without it). Usage:
`uv run python tests/bench/bench_governance.py [--iterations N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
from collections.abc import Awaitable, Callable

from bench_auth import Row, print_table
from benchkit import timed

from switchyard.common.db import upgrade
from switchyard.common.events import UsageRecorded, new_id
from switchyard.common.governance import FailureMode, Limits
from switchyard.common.logging import configure_logging
from switchyard.common.pricing import PriceTable
from switchyard.common.testing.events import usage_recorded
from switchyard.common.testing.infra import temporary_database
from switchyard.gateway.governance.admission import Admission
from switchyard.gateway.governance.ledger import Ledger, MemoryLedger
from switchyard.gateway.governance.policy import NO_LIMITS, LevelLimits, Policy, PolicySource
from switchyard.gateway.governance.postgres import PostgresLedger
from switchyard.gateway.plugin import MIGRATIONS_DIR

TARGET_MS = 0.3
BODY = {
    "model": "sim-small",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France? Answer in one word."},
    ],
    "max_tokens": 64,
}
LIMITS = Limits(
    rpm_limit=1_000_000,
    tpm_limit=1_000_000_000,
    max_parallel_requests=1_000,
    max_budget_usd=1_000_000.0,
    budget_period="30d",
)


class Caller:
    user_id, api_key_id, tenant = "bench-user", "bench-key", "bench"


class FixedPolicies(PolicySource):
    """The policy as cached after its first fetch (what every later request sees)."""

    def __init__(self, policy: Policy) -> None:
        super().__init__(lambda: None, auth_url="http://auth", internal_token="t")  # type: ignore[arg-type]
        self.policy = policy

    async def get(self, user_id, api_key_id) -> Policy:
        return self.policy


LIMITED = Policy(
    tenant="bench",
    team_id="bench-team",
    levels=(
        LevelLimits("api_key", "bench-key", LIMITS, 0.0),
        LevelLimits("team", "bench-team", LIMITS, 0.0),
        LevelLimits("tenant", "bench", LIMITS, 0.0),
    ),
    rate_limit_failure_mode=FailureMode.OPEN,
    budget_failure_mode=FailureMode.CLOSED,
)


def usage(request_id: str) -> UsageRecorded:
    return usage_recorded(
        request_id,
        0.00002,
        tenant="bench",
        user_id="bench-user",
        api_key_id="bench-key",
        model="sim-small",
        input_tokens=30,
        output_tokens=5,
        source="bench",
    )


def one_request(admission: Admission) -> Callable[[], Awaitable[None]]:
    async def call() -> None:
        ticket = await admission.admit(Caller(), "sim-small", BODY)
        request_id = new_id()
        ticket.attach(request_id)
        admission.on_usage(usage(request_id))

    return call


async def measure(name: str, ledger: Ledger, policy: Policy, iterations: int) -> Row:
    admission = Admission(
        ledger=ledger, policies=FixedPolicies(policy), prices=PriceTable(), replica="bench"
    )
    await admission.start()
    try:
        # Warm-up: tokenizer, leases, caches; yielding lets the background flush run, as
        # it would between requests.
        samples = await timed(one_request(admission), iterations, warmup=500, yield_between=True)
        return Row(name, samples)
    finally:
        await admission.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=5_000)
    args = parser.parse_args()
    configure_logging("bench-governance", level="WARNING", fmt="console")
    rows = [
        await measure("admit + settle, no limits", MemoryLedger(), NO_LIMITS, args.iterations),
        await measure(
            "admit + settle, 3 levels x 4 limits, memory ledger",
            MemoryLedger(),
            LIMITED,
            args.iterations,
        ),
    ]
    skipped = []
    database = os.environ.get("DATABASE_URL", "")
    if database.startswith("postgresql"):
        with temporary_database(database, prefix="sybench") as url:
            upgrade(str(MIGRATIONS_DIR), url, "alembic_version_gateway")
            ledger = PostgresLedger.connect(url)
            try:
                rows.append(
                    await measure(
                        "admit + settle, 3 levels x 4 limits, PostgreSQL ledger",
                        ledger,
                        LIMITED,
                        args.iterations,
                    )
                )
            finally:
                await ledger.close()
    else:
        skipped.append("PostgreSQL ledger (set DATABASE_URL to a PostgreSQL server)")
    print(f"Budgets and rate limits at admission ({os.cpu_count()} CPUs, concurrency 1)")
    print_table(rows, skipped)
    base = statistics.median(rows[0].samples_us)
    for row in rows[1:]:
        added_ms = (statistics.median(row.samples_us) - base) / 1000
        verdict = "within" if added_ms <= TARGET_MS else "OVER"
        print(f"{row.name}: +{added_ms:.3f} ms at p50 over no limits ({verdict} {TARGET_MS} ms)")


if __name__ == "__main__":
    asyncio.run(main())
