"""`switchyard usage|retention|tenant-settings ...`: operator commands working directly on
the history database named by the settings (`SWITCHYARD_HISTORY_DATABASE_URL` or
`DATABASE_URL`), the same one the service uses.

    switchyard usage report --since 2025-03-01 --group-by model --format csv
    switchyard usage report --since 7d --group-by day,tenant --tenant acme
    switchyard retention purge --older-than 30d [--tenant acme] [--dry-run]
    switchyard tenant-settings show --tenant acme
    switchyard tenant-settings set --tenant acme --metadata-only --retention-days 30
    switchyard tenant-settings set --tenant acme --cache --cache-ttl 3600
    switchyard tenant-settings set --tenant newco --new-tenant --metadata-only   (a new tenant)
    switchyard cache purge [--tenant acme] [--model m] [--expired]   (and tells the gateways)

Errors an operator can fix (bad dates, unreachable database, tables not migrated) print
one line to stderr and exit with status 1, without a traceback.

History knows a tenant by its stored settings or its recorded requests (those kept, or
counted in the usage rollup, which outlives retention purges). A tenant it knows nothing
of is most often a typo: `tenant-settings set` refuses it unless `--new-tenant` says it is
new, `tenant-settings show` refuses it (exit 1) rather than print the defaults as its
settings, and the reports and purges filtered by it say so on stderr.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import typer
from sqlalchemy import literal, select
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncEngine

from switchyard.common.bus import BusUnavailableError
from switchyard.common.db import (
    dispose_engine,
    missing_database,
    other_database_note,
    read_only,
)
from switchyard.common.plugins import lookup_principal_names
from switchyard.common.text import columns, terminal_safe
from switchyard.history.bootstrap import history_engine
from switchyard.history.config import DatabaseSettings
from switchyard.history.models import requests_table, tenant_settings_table, usage_hourly_table
from switchyard.history.queries import HistoryQueries, UsageQuery, UsageRow
from switchyard.history.sweeper import PurgeResult, purge, purge_by_retention
from switchyard.history.tenants import UNSET, TenantSettingsStore, TenantSettingsView
from switchyard.history.timeparse import TimeFormatError, parse_duration, parse_instant
from switchyard.history.usage import (
    NAME_COLUMNS,
    UsageParameterError,
    parse_group_by,
    report_csv,
    report_json,
    time_range,
)

T = TypeVar("T")

usage_app = typer.Typer(name="usage", help="Usage reports from the history.", no_args_is_help=True)
retention_app = typer.Typer(
    name="retention", help="Delete old history (retention).", no_args_is_help=True
)
cache_app = typer.Typer(
    name="cache", help="The gateways' response cache (shared store).", no_args_is_help=True
)
tenant_settings_app = typer.Typer(
    name="tenant-settings",
    help="Per-tenant history settings: metadata only, retention, webhook secret.",
    no_args_is_help=True,
)


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {terminal_safe(message)}", err=True)
    return typer.Exit(code=1)


def _run(action: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    database_url = DatabaseSettings().database_url
    missing = missing_database("history", database_url)
    if missing is not None:
        raise _fail(missing)
    if (note := other_database_note("history", database_url)) is not None:
        typer.echo(note, err=True)

    async def run() -> T:
        engine = history_engine(database_url)
        try:
            return await action(engine)
        finally:
            await dispose_engine(engine)

    try:
        return asyncio.run(run())
    except (OperationalError, ProgrammingError) as exc:
        reason = str(exc.orig).splitlines()[0] if exc.orig else type(exc).__name__
        raise _fail(
            f"database error ({reason}); is it reachable, and has `switchyard db upgrade` run?"
        ) from None


async def _tenant_known(engine: AsyncEngine, tenant: str) -> bool:
    """Whether history has settings of `tenant` stored or any request of it recorded (kept,
    or counted in the usage rollup, which outlives retention purges)."""
    async with read_only(engine).connect() as connection:
        for table in (tenant_settings_table, requests_table, usage_hourly_table):
            found = await connection.scalar(
                select(literal(1)).select_from(table).where(table.c.tenant == tenant).limit(1)
            )
            if found is not None:
                return True
    return False


def _unknown_tenant(tenant: str) -> str:
    """What the commands say of a tenant history knows nothing of."""
    return (
        f"History knows nothing of tenant {tenant!r} (a typo?): it has no settings stored "
        "and no request recorded; to configure a tenant before its first request, run "
        f"`switchyard tenant-settings set --tenant {tenant} --new-tenant ...`."
    )


def _note_unknown_tenant(tenant: str | None, known: bool) -> None:
    """Say on stderr that what was asked of `tenant` found nothing because history knows
    nothing of it: an empty answer is right for a tenant without traffic, but a typo should
    not read as one."""
    if tenant is not None and not known:
        typer.echo(f"note: {_unknown_tenant(tenant)}", err=True)


def _instant(value: str | None, option: str) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_instant(value)
    except TimeFormatError as exc:
        raise _fail(f"{option}: {exc}") from None


@usage_app.command("report")
def usage_report(
    since: Annotated[
        str | None, typer.Option(help="Start, ISO 8601 (2025-03-01) or relative (7d). Default 30d.")
    ] = None,
    until: Annotated[str | None, typer.Option(help="End (exclusive). Default: now.")] = None,
    group_by: Annotated[
        str,
        typer.Option(
            "--group-by",
            help="Comma-separated: day or hour, and any of model, user, api_key, team, tenant. "
            "Without day or hour: totals over the whole range.",
        ),
    ] = "day",
    tenant: Annotated[str | None, typer.Option(help="Only this tenant (default: all).")] = None,
    user: Annotated[str | None, typer.Option(help="Only this user id.")] = None,
    team: Annotated[str | None, typer.Option(help="Only this team id.")] = None,
    model: Annotated[str | None, typer.Option(help="Only this model.")] = None,
    output_format: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table",
) -> None:
    """Requests, errors, tokens and cost, grouped as asked (aggregated in SQL)."""
    if output_format not in ("table", "csv", "json"):
        raise _fail("--format must be table, csv or json")
    try:
        bucket, dimensions = parse_group_by(group_by, allow_tenant=True)
        since_at, until_at = time_range(
            _instant(since, "--since"), _instant(until, "--until"), bucket
        )
    except UsageParameterError as exc:
        # The API's parameters, named as this command's options.
        message = str(exc)
        for name in ("group_by", "since", "until"):
            message = message.replace(f"'{name}'", f"--{name.replace('_', '-')}")
        raise _fail(message) from None
    query = UsageQuery(
        since=since_at,
        until=until_at,
        bucket=bucket,  # type: ignore[arg-type]
        dimensions=dimensions,
        tenant=tenant,
        user_id=user,
        model=model,
        team_id=team,
    )

    async def report(engine: AsyncEngine) -> tuple[list[UsageRow], bool]:
        rows = await HistoryQueries(engine).usage(query)
        known = bool(rows) or tenant is None or await _tenant_known(engine, tenant)
        return rows, known

    rows, known = _run(report)
    _note_unknown_tenant(tenant, known)
    names = _names(rows, query)
    if output_format == "csv":
        sys.stdout.write(report_csv(rows, query, names))
    elif output_format == "json":
        typer.echo(json.dumps(report_json(rows, query, names), indent=2))
    else:
        _print_table(_readable(report_json(rows, query, names)))


def _names(rows: list[UsageRow], query: UsageQuery) -> dict[str, dict[str, str]] | None:
    """Emails, key names and team names of the users, API keys and teams in the report,
    from the installed auth service; None (ids only, with a warning) when they cannot be
    looked up."""
    wanted = {d: {v for row in rows if (v := row.groups.get(d))} for d in NAME_COLUMNS}
    if not any(d in query.dimensions for d in NAME_COLUMNS):
        return None
    try:
        found = asyncio.run(
            lookup_principal_names(wanted["user"], wanted["api_key"], wanted["team"])
        )
    except Exception as exc:  # noqa: BLE001 - the report is still useful with ids
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        typer.echo(f"warning: showing ids: names unavailable ({reason})", err=True)
        return None
    return {"user": found.emails, "api_key": found.key_names, "team": found.team_names}


# What the table shows for a dimension a request has none of.
NONE_LABELS = {"user": "(no user)", "api_key": "(no API key)", "team": "(no team)"}


def _readable(report: dict[str, Any]) -> dict[str, Any]:
    """The table shows who, not ids: email, key name and team name replace the ids
    (falling back to the id when unknown); every cell is printed terminal-safe (see
    `_fmt`)."""
    for item in report["data"]:
        for dimension, name_column in NAME_COLUMNS.items():
            if name_column in item:
                item[dimension] = item.pop(name_column) or item[dimension]
            if dimension in item and item[dimension] is None:
                # Requests of no team (or made with an access token: no key) are a row of
                # their own, which a blank cell would not say.
                item[dimension] = NONE_LABELS[dimension]
    return report


def _print_table(report: dict[str, Any]) -> None:
    data = report["data"] + [{**report["totals"], **_total_label(report)}]
    if not report["data"]:
        typer.echo(f"no requests between {report['since']} and {report['until']}")
        return
    names = list(report["data"][0])
    typer.echo(columns(names, [[_fmt(row.get(name)) for name in names] for row in data]))


def _total_label(report: dict[str, Any]) -> dict[str, str]:
    first = [c for c in report["data"][0] if c not in report["totals"]] if report["data"] else []
    return {first[0]: "TOTAL"} if first else {}


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6f}"
    return terminal_safe(value)


@retention_app.command("purge")
def retention_purge(
    older_than: Annotated[
        str | None,
        typer.Option(
            help="Delete requests (and their events) created longer ago than this, e.g. 30d. "
            "Without it: every tenant's own retention, else SWITCHYARD_HISTORY_RETENTION_DAYS."
        ),
    ] = None,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant.")] = None,
    dry_run: Annotated[bool, typer.Option(help="Count what would be deleted.")] = False,
) -> None:
    """Delete history older than its retention period."""
    if older_than is None and tenant is not None:
        raise _fail("--tenant needs --older-than")
    if older_than is not None:
        try:
            cutoff = datetime.now(UTC) - parse_duration(older_than)
        except TimeFormatError as exc:
            raise _fail(f"--older-than: {exc}") from None

        async def purge_tenant(engine: AsyncEngine) -> tuple[PurgeResult, bool]:
            result = await purge(engine, cutoff, tenant=tenant, dry_run=dry_run)
            known = result.requests > 0 or tenant is None or await _tenant_known(engine, tenant)
            return result, known

        result, known = _run(purge_tenant)
        _note_unknown_tenant(tenant, known)
    else:
        settings = DatabaseSettings()
        result = _run(
            lambda engine: purge_by_retention(
                engine, TenantSettingsStore(engine), settings.retention_days, dry_run=dry_run
            )
        )
    verb = "would delete" if dry_run else "deleted"
    typer.echo(
        f"{verb} {result.requests} request(s), {result.events} event(s) and "
        f"{result.cache_entries} cached answer(s)"
    )


@tenant_settings_app.command("show")
def tenant_settings_show(
    tenant: Annotated[str, typer.Option(help="Tenant name.")],
) -> None:
    """Print a tenant's settings (with its webhook signing secret) as JSON. A tenant
    history knows nothing of (no settings stored, no request recorded) is an error (exit
    1), not the defaults printed as its settings."""

    async def show(engine: AsyncEngine) -> TenantSettingsView | None:
        if not await _tenant_known(engine, tenant):
            return None
        return await TenantSettingsStore(engine).get(tenant)

    settings = _run(show)
    if settings is None:
        raise _fail(_unknown_tenant(tenant))
    typer.echo(json.dumps(settings.public(include_secret=True), default=str, indent=2))


@tenant_settings_app.command("set")
def tenant_settings_set(
    tenant: Annotated[str, typer.Option(help="Tenant name.")],
    metadata_only: Annotated[
        bool | None,
        typer.Option(
            "--metadata-only/--store-content",
            help="Keep no prompt or completion text (metadata only), or keep everything.",
        ),
    ] = None,
    retention_days: Annotated[
        int | None, typer.Option(min=1, help="Purge this tenant's requests after N days.")
    ] = None,
    default_retention: Annotated[
        bool, typer.Option(help="Use the service-wide retention again.")
    ] = False,
    rotate_webhook_secret: Annotated[bool, typer.Option(help="New webhook secret.")] = False,
    cache: Annotated[
        bool | None,
        typer.Option(
            "--cache/--no-cache",
            help="Answer repeated deterministic requests from the response cache.",
        ),
    ] = None,
    cache_ttl: Annotated[
        int | None, typer.Option(min=1, help="How long cached answers are reused (seconds).")
    ] = None,
    new_tenant: Annotated[
        bool,
        typer.Option(
            "--new-tenant",
            help="The tenant is new: configure it before its first request. Without it, a "
            "tenant with no settings and no recorded request is refused as a likely typo.",
        ),
    ] = False,
) -> None:
    """Change a tenant's settings; the others keep their values. The tenant must be one
    history knows (settings stored or a request recorded), or be declared with
    --new-tenant."""
    retention: Any = UNSET
    if default_retention and retention_days is not None:
        # Either would be dropped silently: the operator meant one of them.
        raise _fail("--default-retention and --retention-days contradict each other; give one")
    if default_retention:
        retention = None
    elif retention_days is not None:
        retention = retention_days

    async def update(engine: AsyncEngine) -> TenantSettingsView | None:
        if not new_tenant and not await _tenant_known(engine, tenant):
            return None
        return await TenantSettingsStore(engine).update(
            tenant,
            store_content=None if metadata_only is None else not metadata_only,
            retention_days=retention,
            rotate_webhook_secret=rotate_webhook_secret,
            cache_enabled=cache,
            cache_ttl_s=UNSET if cache_ttl is None else cache_ttl,
        )

    settings = _run(update)
    if settings is None:
        raise _fail(_unknown_tenant(tenant))
    typer.echo(json.dumps(settings.public(include_secret=True), default=str, indent=2))


@cache_app.command("purge")
def cache_purge(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's answers.")] = None,
    model: Annotated[str | None, typer.Option(help="Only answers of this model.")] = None,
    expired: Annotated[bool, typer.Option("--expired", help="Only expired answers.")] = False,
) -> None:
    """Delete cached answers from the shared store, then tell every gateway replica to drop
    them from memory (`cache.purged` on the cache events topic): none serves them after
    this returns. With Kafka unreachable the answers are still deleted, the command says
    so and exits 1, and the replicas stop serving them within
    SWITCHYARD_GATEWAY_CACHE_LOCAL_TTL_S; running it again tells them."""
    from switchyard.history.cache import CacheStore

    async def purge_cache(engine: AsyncEngine) -> tuple[int, bool]:
        count = await CacheStore(engine).purge(tenant=tenant, model=model, expired_only=expired)
        known = count > 0 or tenant is None or await _tenant_known(engine, tenant)
        return count, known

    count, known = _run(purge_cache)
    _note_unknown_tenant(tenant, known)
    typer.echo(f"deleted {count} cached answer(s)")
    try:
        told = asyncio.run(_announce_purge(tenant, model, expired))
    except BusUnavailableError as exc:
        raise _fail(
            f"the gateways could not be told ({exc}): they stop serving the deleted answers "
            "within SWITCHYARD_GATEWAY_CACHE_LOCAL_TTL_S; run the purge again to tell them"
        ) from None
    if told:
        typer.echo("every gateway replica dropped them from memory")
    else:
        typer.echo(
            "embedded mode (no Kafka): the gateway stops serving them within "
            "SWITCHYARD_GATEWAY_CACHE_LOCAL_TTL_S"
        )


async def _announce_purge(tenant: str | None, model: str | None, expired: bool) -> bool:
    """Publish `cache.purged` for this purge on the cache events topic, which every gateway
    replica reads; False without Kafka (SWITCHYARD_BUS=memory: no other process can hear
    it). Raises BusUnavailableError when Kafka does not take it."""
    from switchyard.common.bus import create_bus
    from switchyard.common.events import CachePurged, CachePurgedData, new_id
    from switchyard.common.settings import ServiceSettings
    from switchyard.common.topics import Topics

    settings = ServiceSettings()
    if settings.bus != "kafka":
        return False
    bus = create_bus(settings, client_id=f"history-cli-{new_id()[:8]}")
    event = CachePurged(
        source="history",
        tenant=tenant or "*",
        request_id=new_id(),
        data=CachePurgedData(tenant=tenant, model=model, expired_only=expired),
    )
    await bus.start()
    try:
        await bus.publish(Topics(settings.topic_prefix).cache_events, event, key=tenant or "*")
    finally:
        await bus.stop()
    return True
