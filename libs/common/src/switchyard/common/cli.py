"""The `switchyard` command: the operator's front door.

Commands common to every deployment live here (embedded mode, migrations, topics, event
schema); each installed service adds `switchyard <service>` to run it, plus its own
commands (e.g. `switchyard users create` from auth), through `switchyard.common.plugins`.
"""

import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from switchyard.common.plugins import ServicePlugin, discover, discover_commands
from switchyard.common.text import columns, terminal_safe

if TYPE_CHECKING:
    from switchyard.common.settings import ServiceSettings

app = typer.Typer(
    name="switchyard",
    help="Switchyard, the event-driven LLM gateway: run services, manage users, keys and topics.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(
    name="db",
    help="Database migrations (Alembic) of every service that owns tables.",
    no_args_is_help=True,
)
topics_app = typer.Typer(
    name="topics",
    help="Kafka topics: create with explicit partition counts, list.",
    no_args_is_help=True,
)
events_app = typer.Typer(name="events", help="The published event contract.", no_args_is_help=True)
deadletter_app = typer.Typer(
    name="deadletter",
    help="Kafka's dead-letter topic: list the events no consumer could handle, and replay "
    "them to their topics once the cause is fixed.",
    no_args_is_help=True,
)
app.add_typer(db_app)
app.add_typer(topics_app)
app.add_typer(events_app)
app.add_typer(deadletter_app)


def version_text() -> str:
    """`switchyard <version>` and the version of every installed service distribution."""
    from importlib.metadata import PackageNotFoundError, version

    lines = []
    try:
        lines.append(f"switchyard {version('switchyard-common')}")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        lines.append("switchyard (not installed)")
    for plugin in discover():
        try:
            lines.append(f"  {plugin.name} {version(f'switchyard-{plugin.name}')}")
        except PackageNotFoundError:
            lines.append(f"  {plugin.name}")
    return "\n".join(lines)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(version_text())
        raise typer.Exit()


@app.callback()
def main_options(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the version of switchyard and of each installed service, and exit.",
        ),
    ] = False,
) -> None:
    """Switchyard, the event-driven LLM gateway: run services, manage users, keys and topics."""


@app.command()
def dev(
    host: Annotated[
        str,
        typer.Option(
            help="Interface the gateway (the one service clients call) binds to; auth, "
            "history, inference and the simulator stay on 127.0.0.1."
        ),
    ] = "127.0.0.1",
    database_url: Annotated[
        str | None,
        typer.Option(
            envvar="SWITCHYARD_DEV_DATABASE_URL",
            show_envvar=True,
            help="Keep the embedded services' tables in this database instead of SQLite under "
            ".switchyard/. DATABASE_URL is never used by embedded mode.",
        ),
    ] = None,
) -> None:
    """Run every service in one process (in-memory bus, SQLite, provider simulator)."""
    from switchyard.common.dev import run

    run(host, database_url)


def _run_service_command(plugin: ServicePlugin) -> Callable[..., None]:
    def run_service(
        host: Annotated[
            str | None, typer.Option(help="Interface to bind (default: settings).")
        ] = None,
        port: Annotated[
            int | None, typer.Option(help=f"Port (default: settings, or {plugin.default_port}).")
        ] = None,
        workers: Annotated[int, typer.Option(min=1, help="uvicorn worker processes.")] = 1,
    ) -> None:
        import os

        from switchyard.common.http import SERVICE_ENV, serve
        from switchyard.common.httpserver import configured_limits
        from switchyard.common.logging import configure_logging
        from switchyard.common.settings import check_internal_token_for

        settings = plugin.settings()
        check_internal_token_for(host or settings.host, settings.internal_token)
        configured_limits()  # SWITCHYARD_HTTP_*: refused here, not by every connection
        if plugin.preflight is not None:
            plugin.preflight()
        # The supervising process logs too (uvicorn's start-up lines), in the same format.
        configure_logging(
            plugin.name, settings.log_level, settings.log_format, secrets=[settings.internal_token]
        )
        os.environ[SERVICE_ENV] = plugin.name
        serve(
            "switchyard.common.http:service_app",
            host=host or settings.host,
            port=port or int(getattr(settings, "port", plugin.default_port)),
            workers=workers,
            factory=True,
            name=plugin.name,
            port_setting=f"SWITCHYARD_{plugin.name.upper()}_PORT (or pass --port)",
            host_setting="SWITCHYARD_HOST (or pass --host)",
        )

    run_service.__doc__ = f"Run the {plugin.name} service. {plugin.summary}"
    return run_service


@db_app.command("upgrade")
def db_upgrade(
    service: Annotated[str | None, typer.Option(help="Only this service (default: all).")] = None,
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
) -> None:
    """Apply migrations up to REVISION (default: the latest)."""
    from switchyard.common.db import upgrade

    for plugin in _migrating_plugins(service):
        _migrate(plugin, upgrade, revision)
        typer.echo(f"{plugin.name}: database at {revision}")


@db_app.command("downgrade")
def db_downgrade(
    service: Annotated[str, typer.Option(help="Service whose tables to downgrade.")],
    revision: Annotated[str, typer.Option(help="Target revision, e.g. -1 or base.")],
) -> None:
    """Revert one service's migrations down to REVISION."""
    from switchyard.common.db import downgrade

    for plugin in _migrating_plugins(service):
        _migrate(plugin, downgrade, revision)
        typer.echo(f"{plugin.name}: database at {revision}")


def database_variables(service: str) -> str:
    """The variables a service's database URL is read from, as an error names them
    (`switchyard.common.db.database_variables`)."""
    from switchyard.common.db import database_variables as variables

    return variables(service)


def database_url_problem(url: str) -> str | None:
    """Why no service can use the database at `url` (not a URL, not PostgreSQL or SQLite,
    no such driver installed), or None when it can
    (`switchyard.common.db.database_url_problem`)."""
    from switchyard.common.db import database_url_problem as problem

    return problem(url)


def describe_database_error(exc: BaseException) -> str:
    """One line for a failure to reach or use a database: the driver's own message
    without SQLAlchemy's wrapping and background link, a refused connection as
    `connection refused at host:port`."""
    import re

    orig = getattr(exc, "orig", None) or exc
    text = " ".join(str(orig).split())
    refused = re.search(
        r'server at "([^"]+)"(?: \([^)]*\))?, port (\d+) failed: Connection refused', text
    )
    if refused:
        return f"connection refused at {refused.group(1)}:{refused.group(2)}"
    text = re.sub(r"\s*\(Background on this error at: [^)]*\)", "", text)
    return text or type(orig).__name__


_BAD_URL_ADVICE = (
    "use e.g. postgresql+psycopg://user:password@host:5432/db or "
    "sqlite+aiosqlite:///path/to/file.db"
)  # as `switchyard.common.db.DATABASE_URL_ADVICE`, without importing SQLAlchemy here


def _migrate(plugin: ServicePlugin, migrate: Callable[..., None], revision: str) -> None:
    """Run `migrate` (`db.upgrade` or `db.downgrade`) on `plugin`'s database to
    `revision`. An unusable URL, a database that cannot be reached or migrated, or a
    revision Alembic cannot find is one line on stderr (naming the service and its
    variable) and exit status 1."""
    from alembic.util import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    from switchyard.common.db import NoDatabaseError
    from switchyard.common.settings import ConfigurationError

    assert plugin.migrations is not None
    try:
        url = plugin.migrations.database_url()
    except ConfigurationError as exc:  # the service's own settings refuse it, in one line
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    variables = database_variables(plugin.name)
    problem = database_url_problem(url)
    if problem is not None:
        typer.echo(
            f"error: {variables} is not a usable database URL ({problem}); {_BAD_URL_ADVICE}",
            err=True,
        )
        raise typer.Exit(1)
    try:
        migrate(plugin.migrations.script_location, url, plugin.migrations.version_table, revision)
    except NoDatabaseError as exc:
        # Only a downgrade raises it: an upgrade creates the database.
        typer.echo(
            f"error: no {plugin.name} database to downgrade: the SQLite {exc} (from "
            f"{variables}; by default embedded mode's, under .switchyard/ of the current "
            "directory); run this in the directory where `switchyard dev` ran, or set the "
            "variable to the database's URL",
            err=True,
        )
        raise typer.Exit(1) from None
    except (SQLAlchemyError, OSError, CommandError) as exc:
        # CommandError: Alembic's own refusal, e.g. a --revision it cannot find.
        typer.echo(
            f"error: the {plugin.name} database ({variables}) could not be migrated: "
            f"{describe_database_error(exc)}",
            err=True,
        )
        raise typer.Exit(1) from None


def _migrating_plugins(only: str | None) -> list[ServicePlugin]:
    plugins = [plugin for plugin in discover() if plugin.migrations is not None]
    if only is not None:
        plugins = [plugin for plugin in plugins if plugin.name == only]
        if not plugins:
            typer.echo(f"error: no installed service named {only!r} has migrations", err=True)
            raise typer.Exit(1)
    return plugins


@topics_app.command("create")
def topics_create(
    partitions: Annotated[
        int | None, typer.Option(min=1, help="Override every topic's partition count.")
    ] = None,
    replication_factor: Annotated[int, typer.Option(min=1)] = 1,
) -> None:
    """Create every Switchyard topic that does not exist yet."""
    from switchyard.common.kafka_admin import create_topics
    from switchyard.common.topics import Topics

    settings = _kafka_settings()
    _require_named_broker(settings, "topics create")
    with _kafka_errors(settings.kafka_bootstrap_servers, "cannot create topics"):
        created = asyncio.run(
            create_topics(
                settings.kafka_bootstrap_servers,
                Topics(settings.topic_prefix),
                replication_factor=replication_factor,
                partitions_override=partitions,
                max_message_bytes=settings.kafka_max_message_bytes,
            )
        )
    typer.echo(f"created {len(created)} topic(s): {', '.join(created) or 'none needed'}")


@topics_app.command("list")
def topics_list(
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per topic, one per line.")
    ] = False,
) -> None:
    """List Switchyard topics and their partition counts, under a header row."""
    from switchyard.common.kafka_admin import list_topics

    settings = _kafka_settings()
    _require_named_broker(settings, "topics list")
    with _kafka_errors(settings.kafka_bootstrap_servers, "cannot list topics"):
        counts = asyncio.run(list_topics(settings.kafka_bootstrap_servers, settings.topic_prefix))
    rows = sorted(counts.items())
    if as_json:
        for name, count in rows:
            typer.echo(json.dumps({"topic": name, "partitions": count}))
    else:  # the header row even when there is no topic: scripts read it
        typer.echo(columns(("topic", "partitions"), rows))


# The variables that name Kafka mode's broker (`ServiceSettings.kafka_bootstrap_servers`).
BROKER_VARIABLES = ("SWITCHYARD_KAFKA_BOOTSTRAP_SERVERS", "KAFKA_BOOTSTRAP_SERVERS")


def _require_named_broker(settings: Any, command: str) -> None:
    """Exit status 1 with one line unless a broker was chosen for the Kafka command
    `command`: `SWITCHYARD_BUS=kafka` (its default broker is then meant) or a variable of
    BROKER_VARIABLES. Otherwise the default, 127.0.0.1:9092, may be anybody's broker on
    a shared machine, and embedded mode, which has no topics, would create or read some
    there."""
    if settings.bus == "kafka" or any(os.environ.get(name) for name in BROKER_VARIABLES):
        return
    typer.echo(
        f"error: `switchyard {command}` works on Kafka mode's topics and no broker is named "
        '(embedded mode has none): set KAFKA_BOOTSTRAP_SERVERS (`eval "$(deploy/local/'
        'infra.sh env)"` for the local one), or SWITCHYARD_BUS=kafka to use '
        f"{settings.kafka_bootstrap_servers}",
        err=True,
    )
    raise typer.Exit(1)


@contextlib.contextmanager
def _kafka_errors(servers: str, what: str) -> Iterator[None]:
    """Turn Kafka failing (unreachable, timing out, refusing) inside the block into one
    line on stderr, `error: <what> on <servers>: <why>`, and exit status 1."""
    from aiokafka.errors import KafkaError

    # The one-line error says what failed; aiokafka's own connection lines would only
    # repeat it (without logging configured they reach stderr as bare text).
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        yield
    except (TimeoutError, KafkaError, OSError) as exc:
        typer.echo(f"error: {what} on {servers}: {exc or type(exc).__name__}", err=True)
        raise typer.Exit(1) from None


@events_app.command("schema")
def events_schema(
    output: Annotated[
        Path | None, typer.Option(help="Write to this file instead of stdout.")
    ] = None,
) -> None:
    """Print the JSON Schema of every event (the current schema version)."""
    from switchyard.common.events import event_json_schema

    _write_json(event_json_schema(), output)


@events_app.command("asyncapi")
def events_asyncapi(
    output: Annotated[
        Path | None, typer.Option(help="Write to this file instead of stdout.")
    ] = None,
) -> None:
    """Print the AsyncAPI 3.0 document of every topic and event."""
    from switchyard.common.asyncapi import asyncapi_document

    _write_json(asyncapi_document(), output)


_TOPIC_HELP = "Only letters from this topic (its full name, or the name after the prefix)."
_GROUP_HELP = "Only letters this consumer group dead-lettered."


def _dead_letters(
    topic: str | None, group: str | None = None
) -> tuple[Any, Any, str | None, str | None]:
    """The settings, every dead letter on the deployment's dead-letter topic, and `topic`
    and `group` as full names (the prefix added to a name without it); exit status 1 with
    one line on stderr when Kafka cannot be read."""
    from aiokafka.errors import KafkaError

    from switchyard.common.deadletter import DeadLetterError, read_dead_letters
    from switchyard.common.logging import configure_logging
    from switchyard.common.topics import Topics

    # Standard output is the command's answer (`--json` is read by programs): the bus's
    # own lines go to standard error, warnings and errors only.
    configure_logging("deadletter", "WARNING", "console", stream=sys.stderr)
    # The one-line error below says what failed; aiokafka's own connection warnings
    # would only repeat it.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    settings = _kafka_settings()
    _require_named_broker(settings, "deadletter")
    topics = Topics(settings.topic_prefix)
    if topic is not None and not topic.startswith(f"{topics.prefix}."):
        topic = topics.name(topic)
    if group is not None and not group.startswith(f"{topics.prefix}."):
        group = topics.group(group)
    try:
        letters = asyncio.run(
            read_dead_letters(
                settings.kafka_bootstrap_servers,
                topics.deadletter,
                max_message_bytes=settings.kafka_max_message_bytes,
            )
        )
    except (TimeoutError, KafkaError, DeadLetterError) as exc:
        typer.echo(
            f"error: cannot read {topics.deadletter} on {settings.kafka_bootstrap_servers}: "
            f"{exc or type(exc).__name__}",
            err=True,
        )
        raise typer.Exit(1) from None
    return settings, letters, topic, group


def _kafka_settings() -> "ServiceSettings":
    """The settings of a command that talks to Kafka, its connection security applied to
    every client it makes. Raises ConfigurationError for unusable security settings."""
    from switchyard.common import kafka_security as security
    from switchyard.common.settings import ServiceSettings, kafka_security

    settings = ServiceSettings()
    security.use(kafka_security(settings))
    return settings


def _one_line(reason: str, width: int = 200) -> str:
    """`reason` (a reason, an id) on one line, at most `width` characters: its start and
    its end, where a validation error says what was wrong."""
    text = " ".join(reason.split())
    if len(text) <= width:
        return text
    return f"{text[: width // 3]} … {text[-(width - width // 3 - 3) :]}"


# `deadletter list`'s header row.
DEAD_LETTER_COLUMNS = ("id", "at", "from", "group", "type", "request_id", "replayed", "reason")


@deadletter_app.command("list")
def deadletter_list(
    topic: Annotated[str | None, typer.Option(help=_TOPIC_HELP)] = None,
    group: Annotated[str | None, typer.Option(help=_GROUP_HELP)] = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many, the newest.")] = 100,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per letter, one per line.")
    ] = False,
) -> None:
    """List dead letters: id (dead-letter partition:offset, what `replay` takes), when, the
    original topic, partition and offset, the group that gave up, the event type and
    request id, whether it was replayed, and why it was dead-lettered."""
    from switchyard.common.deadletter import select

    _, letters, topic, group = _dead_letters(topic, group)
    chosen = sorted(select(letters, topic=topic, group=group), key=lambda letter: letter.at)
    shown = chosen[-limit:]
    if as_json:
        for letter in shown:
            typer.echo(json.dumps(letter.summary(), sort_keys=True))
        return
    rows = []
    for letter in shown:
        where = f"{letter.topic or '?'}[{letter.source_partition}]@{letter.source_offset}"
        replayed = f"replayed {len(letter.replays)}x" if letter.replays else "-"
        if letter.left_out is not None:
            replayed = "stub"
        # Every field but the id and time comes from a header any producer could write:
        # `columns` escapes each cell, so that none can add lines or drive the terminal.
        rows.append(
            (
                letter.id,
                letter.at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                where,
                letter.group or "?",
                _one_line(letter.named("type") or "?", 40),
                _one_line(letter.named("request_id") or "?", 40),
                replayed,
                _one_line(letter.reason),
            )
        )
    # The header row even when there is no letter: scripts read it.
    typer.echo(columns(DEAD_LETTER_COLUMNS, rows))
    typer.echo(f"{len(shown)} of {len(chosen)} dead letter(s)", err=True)


@deadletter_app.command("replay")
def deadletter_replay(
    ids: Annotated[
        list[str] | None,
        typer.Argument(help="Letters to replay, as `list` prints them: <partition>:<offset>."),
    ] = None,
    replay_all: Annotated[
        bool,
        typer.Option("--all", help="Every letter not replayed yet (with --topic and --group)."),
    ] = False,
    topic: Annotated[str | None, typer.Option(help=_TOPIC_HELP)] = None,
    group: Annotated[str | None, typer.Option(help=_GROUP_HELP)] = None,
    again: Annotated[
        bool, typer.Option("--again", help="Replay letters that were replayed before too.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would be replayed; publish nothing.")
    ] = False,
) -> None:
    """Publish dead letters again to the topics (and partitions) they came from, as they
    were, once what made them fail is fixed. Every consumer takes an event twice without
    harm, so a letter handled elsewhere meanwhile is not run again. Exit status 1 if any
    chosen letter could not be replayed."""
    from switchyard.common.bus.kafka import KafkaBus
    from switchyard.common.deadletter import (
        DeadLetterError,
        MarkerNotWrittenError,
        by_record,
        refused,
        replay,
        select,
    )
    from switchyard.common.logging import flush_logs
    from switchyard.common.topics import Topics

    if bool(ids) == replay_all:
        typer.echo(
            "error: name the letters to replay (<partition>:<offset>) or pass --all", err=True
        )
        raise typer.Exit(2)
    settings, letters, topic, group = _dead_letters(topic, group)
    try:
        chosen = select(letters, ids or (), topic=topic, group=group)
    except DeadLetterError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    if replay_all:
        # Every letter that can be replayed: stubs never, replayed ones with --again only.
        candidates = chosen
        chosen = [
            letter
            for letter in sorted(chosen, key=lambda letter: letter.at)
            if letter.replayable() is None and (again or not letter.replays)
        ]
        if len(chosen) < len(candidates):
            typer.echo(
                f"{len(candidates) - len(chosen)} letter(s) passed over: stubs, letters "
                "naming no topic of this deployment"
                + ("" if again else ", and letters replayed before (--again replays those)"),
                err=True,
            )
    deadletter_topic = Topics(settings.topic_prefix).deadletter

    async def run() -> tuple[int, int]:
        bus = KafkaBus(
            settings.kafka_bootstrap_servers,
            client_id="switchyard-deadletter",
            deadletter_topic=deadletter_topic,
            max_message_bytes=settings.kafka_max_message_bytes,
        )
        failures = unmarked = 0
        if not dry_run:
            await bus.start()
        try:
            replayable = []
            for letter in chosen:
                refusal = refused(letter, again=again)
                if refusal is None:
                    replayable.append(letter)
                else:
                    failures += 1
                    # What a letter says of itself is header text: escaped.
                    typer.echo(f"error: {terminal_safe(refusal)}", err=True)
            # Several groups' letters of one record: the record is sent once (every group
            # gets it), and each of its letters is marked replayed, chosen or not.
            record_of = {id(one): group for group in by_record(letters) for one in group}
            for letter, *chosen_too in by_record(replayable):
                others = [
                    one
                    for one in record_of.get(id(letter), [letter])
                    if one is not letter and one.replayable() is None
                ]
                if dry_run:
                    typer.echo(f"{letter.id}\twould go to {terminal_safe(letter.topic)}")
                    for other in others:
                        typer.echo(f"{other.id}\tthe same record as {letter.id}: sent once")
                    continue
                try:
                    to = await replay(
                        bus, letter, deadletter_topic, again=again, same_record=others
                    )
                except MarkerNotWrittenError as exc:
                    # The record went: replayed, but the exit status says a marker is owed.
                    unmarked += 1
                    typer.echo(f"error: {terminal_safe(exc)}", err=True)
                    continue
                except DeadLetterError as exc:
                    failures += 1 + len(chosen_too)
                    typer.echo(f"error: {terminal_safe(exc)}", err=True)
                    continue
                except Exception as exc:  # noqa: BLE001 - the bus's refusal, said plainly
                    failures += 1 + len(chosen_too)
                    typer.echo(f"error: {letter.id} was not replayed: {exc!r}", err=True)
                    continue
                typer.echo(f"{letter.id}\treplayed to {terminal_safe(to)}")
                for other in others:
                    typer.echo(f"{other.id}\tthe same record as {letter.id}: marked replayed")
        finally:
            if not dry_run:
                await bus.stop()
            flush_logs()
        return failures, unmarked

    failures, unmarked = asyncio.run(run())
    typer.echo(
        f"{len(chosen) - failures} of {len(chosen)} dead letter(s) "
        + ("would be replayed" if dry_run else "replayed")
        + (f" ({unmarked} record(s) without every marker: see above)" if unmarked else ""),
        err=True,
    )
    if failures or unmarked:
        raise typer.Exit(1)


def _write_json(document: dict[str, Any], output: Path | None) -> None:
    """Write `document` as indented JSON to `output` (None: stdout). A file that cannot be
    written is one line on stderr naming it, and exit status 1."""
    text = json.dumps(document, indent=2, sort_keys=True) + "\n"
    if output is None:
        sys.stdout.write(text)
        return
    try:
        output.write_text(text)
    except OSError as exc:
        typer.echo(
            f"error: cannot write --output {output}: {exc.strerror or exc}; "
            "name a file in a directory that exists and is writable",
            err=True,
        )
        raise typer.Exit(1) from None


def build() -> typer.Typer:
    """Add every installed service's commands, and those of the `switchyard.commands`
    entry point group (e.g. `switchyard simulator`), to the root app."""
    commands = []
    for plugin in discover():
        app.command(name=plugin.name, help=f"Run the {plugin.name} service. {plugin.summary}")(
            _run_service_command(plugin)
        )
        commands += plugin.commands()
    for command in commands + discover_commands():
        if isinstance(command, typer.Typer):
            app.add_typer(command)
        else:
            app.command(name=command.__name__.replace("_", "-"))(command)
    _plain_help(app)
    return app


def _plain_help(group: typer.Typer) -> None:
    """Render the `--help` of `group` and of every group under it with Click's formatter:
    Typer's Rich one labels on/off flags with a value (`--json <bool>`, `--help <bool>`)
    that the flag does not take."""
    group.rich_markup_mode = None
    for info in group.registered_groups:
        if info.typer_instance is not None:
            _plain_help(info.typer_instance)


def main() -> None:
    """Entry point of the `switchyard` command: parse `sys.argv` and run the chosen subcommand.
    Ctrl+C before the command handles it (while the plugins load) exits with 130, quietly;
    configuration a command cannot start with (a setting, the routing or price file:
    `ConfigurationError`) is one line on stderr and exit status 1, and so is a database
    URL SQLAlchemy cannot use, whichever command reads it."""
    try:
        build()()
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except Exception as exc:
        problem = _one_line_error(exc)
        if problem is None:
            raise
        print(f"error: {problem}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def _one_line_error(exc: Exception) -> str | None:
    """`exc` as one line when it says a database URL cannot be used (SQLAlchemy cannot
    parse it, or has no driver for it) or the configuration is refused
    (`ConfigurationError`); None for anything else."""
    # Imported here, not above: Ctrl+C during that import is a KeyboardInterrupt too.
    from switchyard.common.settings import ConfigurationError

    if isinstance(exc, ConfigurationError):
        return str(exc)
    if type(exc).__module__ != "sqlalchemy.exc":
        return None
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, NoSuchModuleError) or (
        isinstance(exc, ArgumentError) and "SQLAlchemy URL" in text
    ):
        return (
            f"a database URL (DATABASE_URL, or the service's SWITCHYARD_<SERVICE>_DATABASE_URL) "
            f"is not usable ({text}); {_BAD_URL_ADVICE}"
        )
    return None


if __name__ == "__main__":
    main()
