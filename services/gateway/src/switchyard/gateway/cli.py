"""`switchyard spend`: spend against budget in the current budget period of every key,
user, team or tenant that has a budget, from the fleet's limit ledger (the database named
by `SWITCHYARD_GATEWAY_DATABASE_URL` or `DATABASE_URL`). Spend of any period and of
levels without a budget is in `switchyard usage report`."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from switchyard.gateway.config import DatabaseSettings

LEVEL_OPTIONS = {"key": "api_key", "user": "user", "team": "team", "tenant": "tenant"}


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


async def spend_rows(database_url: str, level: str) -> list[dict[str, Any]]:
    """The budget spend counters of `level` (`key`, `user`, `team` or `tenant`) in the fleet's
    ledger at `database_url`, one dict per counter (ids, USD amounts, period)."""
    from switchyard.gateway.governance.postgres import PostgresLedger

    ledger = PostgresLedger.connect(database_url, timeout_s=10.0)
    try:
        counters = await ledger.counters()
    finally:
        await ledger.close()
    rows = []
    for counter in counters:
        counter_level, _, scope_id = counter.scope.partition(":")
        if counter.kind != "spend" or counter_level != level:
            continue
        rows.append(
            {
                "level": counter_level,
                "id": scope_id,
                "spent_usd": round(counter.spent, 8),
                "reserved_usd": round(max(0.0, counter.committed - counter.spent), 8),
                "max_budget_usd": counter.limit,
                "period_start": _iso(counter.window_start) if counter.window_start else None,
                "resets_at": _iso(counter.window_end),
            }
        )
    return sorted(rows, key=lambda row: -row["spent_usd"])


def spend(
    group_by: Annotated[
        str, typer.Option("--group-by", help="key, user, team or tenant.")
    ] = "team",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """Spend against budget in the current period, by key, user, team or tenant."""
    if group_by not in LEVEL_OPTIONS:
        typer.echo(f"error: --group-by takes one of {', '.join(LEVEL_OPTIONS)}", err=True)
        raise typer.Exit(code=1)
    database_url = DatabaseSettings().database_url
    if not database_url.startswith("postgresql"):
        typer.echo(
            "error: the limit ledger lives in PostgreSQL (SWITCHYARD_GATEWAY_DATABASE_URL or "
            "DATABASE_URL); embedded mode keeps it in the gateway's memory",
            err=True,
        )
        raise typer.Exit(code=1)
    try:
        rows = asyncio.run(spend_rows(database_url, LEVEL_OPTIONS[group_by]))
    except Exception as exc:  # noqa: BLE001 - one line for the operator, no traceback
        typer.echo(f"error: cannot read the limit ledger ({exc})", err=True)
        raise typer.Exit(code=1) from None
    for row in rows:
        if as_json:
            typer.echo(json.dumps(row))
        else:
            resets = row["resets_at"] or "never"
            typer.echo(
                f"{row['level']}:{row['id']}  ${row['spent_usd']:.6f} of "
                f"${row['max_budget_usd']:g}  (reserved ${row['reserved_usd']:.6f}, "
                f"resets {resets})"
            )
