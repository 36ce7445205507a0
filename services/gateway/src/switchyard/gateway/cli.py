"""`switchyard spend`: spend against budget in the current budget period of every key,
user, team or tenant that has a budget, from the gateway's limit ledger where the gateway
keeps it (`SWITCHYARD_GATEWAY_GOVERNANCE_STORE`, `auto` by default: PostgreSQL or the
SQLite file named by `SWITCHYARD_GATEWAY_DATABASE_URL` or `DATABASE_URL`; without either,
embedded mode's `.switchyard/gateway.db`). Spend of any period and of levels without a
budget is in `switchyard usage report`."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import typer
from pydantic import Field

from switchyard.common.db import other_database_note, sqlite_file
from switchyard.common.text import fixed_point
from switchyard.gateway.config import DatabaseSettings

LEVEL_OPTIONS = {"key": "api_key", "user": "user", "team": "team", "tenant": "tenant"}


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


class LedgerSettings(DatabaseSettings):
    """Where the gateway keeps its limit ledger: its database URL and
    `SWITCHYARD_GATEWAY_GOVERNANCE_STORE` (no secrets)."""

    governance_store: Literal["auto", "postgres", "sqlite", "memory"] = Field(default="auto")


def ledger_store(store: str, database_url: str) -> str:
    """The kind of ledger (`postgres`, `sqlite` or `memory`) the gateway keeps with
    `governance_store` = `store` and `database_url`, as `bootstrap.build_ledger` picks it
    (`config.ledger_kind`). Raises ValueError of one line, as the gateway refuses to
    start, for a URL the ledger cannot use."""
    from switchyard.gateway.config import ledger_kind

    return ledger_kind(store, database_url)


def store_name(store: str) -> str:
    """How errors name the ledger of kind `store`."""
    return {"postgres": "PostgreSQL", "sqlite": "SQLite"}.get(store, store)


async def spend_rows(
    database_url: str, level: str, store: str | None = None
) -> list[dict[str, Any]]:
    """The budget spend counters of `level` (`key`, `user`, `team` or `tenant`) in the
    ledger at `database_url` (`store`: `postgres`, the fleet's, or `sqlite`, one
    machine's; by default the kind of the URL), one dict per counter (ids, USD amounts,
    period), of periods not over yet: a counter whose period ended says nothing of the
    current one, which has no spend until its first request. `max_budget_usd` is the
    budget as the gateway last charged the counter (a change takes effect, and shows
    here, at the next request charged to it; `GET /v1/spend` reads the current one)."""
    from sqlalchemy.engine import make_url

    from switchyard.gateway.governance.ledger import Ledger

    if store is None:
        store = "sqlite" if make_url(database_url).get_backend_name() == "sqlite" else "postgres"
    ledger: Ledger
    if store == "sqlite":
        from switchyard.gateway.governance.sqlite import SQLiteLedger

        ledger = SQLiteLedger.connect(database_url, timeout_s=10.0)
    else:
        from switchyard.gateway.governance.postgres import PostgresLedger

        ledger = PostgresLedger.connect(database_url, timeout_s=10.0)
    try:
        counters = await ledger.counters()
    finally:
        await ledger.close()
    rows = []
    now = time.time()
    for counter in counters:
        counter_level, _, scope_id = counter.scope.partition(":")
        if counter.kind != "spend" or counter_level != level:
            continue
        if counter.window_end is not None and counter.window_end <= now:
            continue  # a period over: its budget has started again
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
    """Spend against budget in the current period, by key, user, team or tenant, from the
    ledger the gateway keeps (PostgreSQL, or the SQLite file of embedded mode and of a
    gateway on SQLite). The budget shown is the one the last request was charged
    against: a changed or removed budget shows at the next request (GET /v1/spend and the
    console read the current ones)."""
    if group_by not in LEVEL_OPTIONS:
        typer.echo(f"error: --group-by takes one of {', '.join(LEVEL_OPTIONS)}", err=True)
        raise typer.Exit(code=1)
    settings = LedgerSettings()
    database_url = settings.database_url
    if (note := other_database_note("gateway", database_url)) is not None:
        typer.echo(note, err=True)
    try:
        store = ledger_store(settings.governance_store, database_url)
    except ValueError as exc:  # what stops the gateway from starting stops this too
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(code=1) from None
    if store == "memory":
        typer.echo(
            "error: the gateway keeps its limit ledger in its own memory "
            "(SWITCHYARD_GATEWAY_GOVERNANCE_STORE is memory), where no other process can "
            "read it; see spend in the console or at GET /v1/spend",
            err=True,
        )
        raise typer.Exit(code=1)
    if store == "sqlite":
        path = sqlite_file(database_url)
        # Opening a missing file would create an empty one, and then fail on its tables.
        if path is not None and not path.is_file():
            typer.echo(
                f"error: no limit ledger at {path} (SWITCHYARD_GATEWAY_DATABASE_URL or "
                "DATABASE_URL, default: embedded mode's); run this where the gateway runs "
                "(`make run`: the repository root), or set the variable to its database",
                err=True,
            )
            raise typer.Exit(code=1)
    try:
        rows = asyncio.run(spend_rows(database_url, LEVEL_OPTIONS[group_by], store))
    except Exception as exc:  # noqa: BLE001 - one line for the operator, no traceback
        from switchyard.common.cli import describe_database_error

        # The ledger wraps the database's failure (LedgerUnavailable): say the cause.
        reason = describe_database_error(exc.__cause__ or exc)
        typer.echo(
            f"error: cannot read the limit ledger at {store_name(store)} ({reason})", err=True
        )
        raise typer.Exit(code=1) from None
    if not rows:
        # Nothing printed would read as "no spend": say what is counted here.
        typer.echo(
            f"No {group_by} has a budget with spend in its current period: spend is counted "
            "here only against budgets (--max-budget-usd of keys, users, teams and "
            "tenants). The usage of every request: `switchyard usage report`.",
            err=True,
        )
    for row in rows:
        if as_json:
            typer.echo(json.dumps(row))
        else:
            resets = row["resets_at"] or "never"
            # Fixed-point, as the budget was given: never `$1e-05`.
            limit = fixed_point(row["max_budget_usd"])
            typer.echo(
                f"{row['level']}:{row['id']}  ${row['spent_usd']:.6f} of "
                f"${limit}  (reserved ${row['reserved_usd']:.6f}, "
                f"resets {resets})"
            )
