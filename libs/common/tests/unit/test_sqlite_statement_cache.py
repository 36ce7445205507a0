"""SQLite connections from `db.create_engine` keep few prepared statements: a batch
insert's SQL differs with its row count, and each cached multi-row INSERT holds some
100 KiB outside Python's heap, so with Python's default cache (128 per connection) a
long-running embedded process grew by kilobytes per request."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# Run in a fresh interpreter: the growth of resident memory is only meaningful there.
SCENARIO = """
import asyncio, json, sys
from switchyard.common.db import create_engine

def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

async def main(path, cached):
    options = {} if cached is None else {"connect_args": {"cached_statements": cached}}
    engine = create_engine(f"sqlite:///{path}", **options)
    async with engine.begin() as connection:
        await connection.exec_driver_sql("CREATE TABLE t (a, b, c, d, e, f, g, h)")
    before = rss_mib()
    async with engine.begin() as connection:
        # 200 batch inserts of 50 to 249 rows: 200 different statements.
        for rows in range(50, 250):
            values = ",".join(["(?,?,?,?,?,?,?,?)"] * rows)
            await connection.exec_driver_sql(
                f"INSERT INTO t VALUES {values}", tuple(range(rows * 8))
            )
    print(json.dumps(rss_mib() - before))
    await engine.dispose()

asyncio.run(main(sys.argv[1], None if sys.argv[2] == "default" else int(sys.argv[2])))
"""


def growth_mib(tmp_path: Path, cached: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", SCENARIO, str(tmp_path / f"{cached}.db"), cached],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return float(done.stdout.strip())


def test_batch_inserts_of_many_sizes_do_not_pile_up_prepared_statements(tmp_path: Path):
    ours = growth_mib(tmp_path, "default")
    pythons_default = growth_mib(tmp_path, "128")
    # Measured: about 4 MiB against about 19 MiB.
    assert ours < 10, f"resident memory grew {ours:.1f} MiB"
    assert ours < pythons_default / 2, (ours, pythons_default)
