"""Embedded mode: every installed service in one process, on the in-memory bus, with
SQLite databases under `.switchyard/` and the provider simulator unless real providers
are configured. The same apps as in production, only the adapters differ.

Embedded mode never reaches for outside infrastructure on its own: `DATABASE_URL`,
`KAFKA_BOOTSTRAP_SERVERS` and `SWITCHYARD_BUS` in the environment (or `.env`) are for the
separate services and are ignored here. Only `--database-url` (or
`SWITCHYARD_DEV_DATABASE_URL`) puts the embedded services' tables in another database.

Start-up is quiet: every port is bound before anything starts, so a port already in use is
one line naming the setting that moves it; below WARNING nothing is logged unless
`SWITCHYARD_LOG_LEVEL` asks for it; what a person needs is the banner."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import uvicorn

from switchyard.common.bus import InMemoryBus
from switchyard.common.db import (
    DEV_DATABASE_URL_ENV,
    EMBEDDED_DATABASES_ENV,
    sqlite_file,
    upgrade,
)
from switchyard.common.heap import freeze_startup_heap, release_startup_heap
from switchyard.common.http import REPEATED_SIGNAL_S, server_config, warm_routes
from switchyard.common.httpserver import PortInUseError, bind
from switchyard.common.plugins import DevContribution, ServicePlugin, discover
from switchyard.common.stopping import stop_signalled
from switchyard.common.topics import Topics

log = structlog.get_logger("switchyard.dev")

# Embedded mode is for one machine: development defaults unless the caller set otherwise.
DEV_ENVIRONMENT = {
    "SWITCHYARD_ENVIRONMENT": "development",
    # A person reads these logs: readable lines unless JSON is asked for.
    "SWITCHYARD_LOG_FORMAT": "console",
    # History shares the one event loop with the answering path here, and on SQLite a
    # transaction costs about as much CPU whether it holds one request's events or a
    # hundred's (a thread hop per statement): a longer wait makes batches of many
    # requests, not one or two. An event is in the database at most this much later.
    "SWITCHYARD_HISTORY_MAX_BATCH_WAIT_MS": "200",
    # ...but not too long a batch: written on the answering loop, batches of 1,000 events
    # held the next requests after a burst for up to half a second (p99 2.1-2.3x the
    # steady one); of 200 (still about 65 requests each), 1.2-1.4x. On the recorder's
    # thread (below) a smaller batch still holds the interpreter for shorter stretches.
    "SWITCHYARD_HISTORY_MAX_BATCH": "200",
    # ...and written from a thread of its own (its own loop and SQLite connection): on the
    # one loop, batches got so few turns under load that the events history had not taken
    # piled up in memory (c=64: peak RSS 207 against 193-195 MiB with the thread).
    "SWITCHYARD_HISTORY_RECORDER_THREAD": "true",
    # The in-memory bus forgets the batch lane at every stop: history, which recorded each
    # job, publishes the unfinished ones again at the next start.
    "SWITCHYARD_HISTORY_RESUME_BATCH_LANE": "true",
    # ...which it can only do for the jobs it recorded: a job (or background response) is
    # answered 202 once history shows it, never while it is only in the bus's memory.
    "SWITCHYARD_GATEWAY_BATCH_ACCEPT_WHEN_RECORDED": "true",
    # Inference keeps recent outcomes to answer a redelivered request without running it
    # again. Kafka redelivers after a crash or a rebalance, up to the request timeout
    # later (hence 15 minutes and 64 MiB for the service); the in-memory bus only retries
    # a failing handler, so embedded mode keeps a request's records only until it is
    # handled (`LocalOutcomeLog.settled`). 8 MiB bounds what requests being retried hold.
    "SWITCHYARD_INFERENCE_REDELIVERY_INDEX_MAX_MB": "8",
    # Sign-ins reach auth through the gateway, which appends the caller's address to
    # X-Forwarded-For; auth listens on the loopback interface only (`service_host`), so
    # the last entry is the gateway's word. Without it every caller is 127.0.0.1 to the
    # login limits, and a few failures lock everyone out.
    "SWITCHYARD_AUTH_TRUST_FORWARDED_FOR": "true",
}
# The argument that makes `python -m switchyard.common.dev` migrate (`migrate_in_child`).
MIGRATE_ARGUMENT = "--migrate-only"
# Where embedded mode keeps its state (databases, keys), relative to the working directory.
STATE_DIR = ".switchyard"
# Logged below this only when SWITCHYARD_LOG_LEVEL asks: start-up chatter hides the banner.
DEV_LOG_LEVEL = "WARNING"


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the embedded runner, which stops
    the servers one after another (`stop_order`)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class EmbeddedService:
    """One HTTP server of embedded mode: its name, the ASGI app, the TCP port it
    listens on, and the setting that moves it to another port (named in port errors)."""

    name: str
    app: Any
    port: int
    # The setting (or option) that moves this service to another port.
    port_setting: str


def database_variable(plugin_name: str) -> str:
    """The variable naming a service's own database, e.g. SWITCHYARD_HISTORY_DATABASE_URL."""
    return f"SWITCHYARD_{plugin_name.upper()}_DATABASE_URL"


def port_setting(plugin_name: str) -> str:
    """The environment variable that sets a service's port, e.g. SWITCHYARD_AUTH_PORT."""
    return f"SWITCHYARD_{plugin_name.upper()}_PORT"


def _in_dotenv(name: str) -> bool:
    """Whether `.env` of the working directory (which every service's settings read) sets
    `name`."""
    from dotenv import dotenv_values

    return bool(dotenv_values(".env").get(name))


def private_state_dir() -> None:
    """Make STATE_DIR (created if missing) readable by its owner only, mode 0700: it holds
    the databases (every tenant's prompts and replies, password and key hashes) and the
    development secrets. A directory this process cannot change is left as it is; what
    then fails to be written there says so itself."""
    path = Path(STATE_DIR)
    with contextlib.suppress(OSError):
        path.mkdir(mode=0o700, exist_ok=True)
        if path.stat().st_uid == os.getuid():
            path.chmod(0o700)


# The file in STATE_DIR a running `switchyard dev` holds an exclusive flock on (the
# kernel releases it however the process ends, `kill -9` too), holding that process's pid.
DEV_LOCK_FILE = "dev.lock"
_held_state_dir: int | None = None  # the lock file's descriptor, open for good once held


class StateDirInUseError(Exception):
    """Another `switchyard dev` runs on this directory's state (its `.switchyard/`); the
    message names that process's pid and what to do."""


def hold_state_dir() -> None:
    """Take STATE_DIR for this process until it ends: two embedded instances on one
    directory (on other ports) would share its SQLite databases, jobs and signing key,
    each running the other's jobs and sweeps. Call after `private_state_dir`. Raises
    StateDirInUseError when another process holds it. A directory where the lock file
    cannot be made, or a file system without locks, is not locked (what fails to be
    written there says so itself)."""
    global _held_state_dir
    if _held_state_dir is not None:
        return
    path = Path(STATE_DIR) / DEV_LOCK_FILE
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = ""
        with contextlib.suppress(OSError, UnicodeDecodeError):
            holder = os.read(descriptor, 32).decode("ascii").strip()
        os.close(descriptor)
        which = f" (pid {holder})" if holder.isdigit() else ""
        raise StateDirInUseError(
            f"another switchyard dev{which} is running on this directory's state "
            f"({path.parent.resolve()}): stop it, or start this one from another directory"
        ) from None
    except OSError:
        os.close(descriptor)
        return
    os.ftruncate(descriptor, 0)
    os.write(descriptor, f"{os.getpid()}\n".encode("ascii"))
    _held_state_dir = descriptor


def apply_dev_environment(
    plugins: list[ServicePlugin] | None = None, database_url: str | None = None
) -> str | None:
    """Point every embedded service at the in-memory bus and its SQLite database (or at
    `database_url` / SWITCHYARD_DEV_DATABASE_URL when given), whatever DATABASE_URL,
    KAFKA_BOOTSTRAP_SERVERS, SWITCHYARD_BUS or `.env` say. Returns the database URL asked
    for explicitly, or None for SQLite."""
    for key, value in DEV_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    # The services' calls to one another carry a secret made for this run, never the
    # built-in development default anyone can read in the source (one set in the
    # environment or in `.env`, which the services read too, is kept).
    if "SWITCHYARD_INTERNAL_TOKEN" not in os.environ and not _in_dotenv(
        "SWITCHYARD_INTERNAL_TOKEN"
    ):
        os.environ["SWITCHYARD_INTERNAL_TOKEN"] = secrets.token_urlsafe(32)
    # Environment variables win over `.env`, so these also override a `.env` file.
    os.environ["SWITCHYARD_BUS"] = "memory"
    explicit = database_url or os.environ.get(DEV_DATABASE_URL_ENV) or None
    chosen = []
    for plugin in plugins if plugins is not None else discover():
        if plugin.migrations is not None:
            os.environ[database_variable(plugin.name)] = (
                explicit or f"sqlite+aiosqlite:///{STATE_DIR}/{plugin.name}.db"
            )
            chosen.append(plugin.name)
    # An error about one of these databases names what sets it here, not the service's own
    # variable (`database_variables`), which embedded mode overrides.
    os.environ[EMBEDDED_DATABASES_ENV] = ",".join(chosen)
    if explicit is not None:
        os.environ[DEV_DATABASE_URL_ENV] = explicit
    return explicit


def migrate_all(plugins: list[ServicePlugin]) -> None:
    """Apply every plugin's database migrations to their latest revision, in plugin order."""
    for plugin in plugins:
        if plugin.migrations is not None:
            upgrade(
                plugin.migrations.script_location,
                plugin.migrations.database_url(),
                plugin.migrations.version_table,
            )


def migrate_in_child(database_url: str | None) -> subprocess.Popen[bytes]:
    """Start this module as a child process that applies every installed plugin's
    migrations to the databases `switchyard dev` uses (`apply_dev_environment`; an explicit
    `database_url` reaches it as SWITCHYARD_DEV_DATABASE_URL), beside the rest of
    start-up; `wait_for_migrations` waits for it. Alembic, its Mako templates and the
    migration scripts take some 15 MiB that the serving process would otherwise keep for
    its whole life, for work done once."""
    environment = dict(os.environ)
    if database_url:
        # Through the environment, never the command line other users can read.
        environment[DEV_DATABASE_URL_ENV] = database_url
    return subprocess.Popen(
        [sys.executable, "-m", "switchyard.common.dev", MIGRATE_ARGUMENT],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def wait_for_migrations(child: subprocess.Popen[bytes]) -> None:
    """Wait for the `migrate_in_child` process. Raises MigrationError with the error it
    wrote on stderr (`failure_line`) when it fails."""
    _, stderr = child.communicate()
    if child.returncode != 0:
        raise MigrationError(
            failure_line(stderr.decode(errors="replace")) or f"exit status {child.returncode}"
        )


def failure_line(stderr: str) -> str | None:
    """The line of a failed process's `stderr` that says what went wrong: the last one
    that is neither a traceback's frame or source (indented), a continuation of a
    message (indented too), nor SQLAlchemy's "(Background on this error at: ...)" link,
    which names no cause; None when there is none."""
    for line in reversed(stderr.splitlines()):
        if not line.strip() or line[:1].isspace():
            continue
        if line.startswith("(Background on this error at:"):
            continue
        return line.strip()
    return None


class MigrationError(RuntimeError):
    """The databases could not be migrated; the message is the migration's own error."""


def _port_of(plugin: ServicePlugin) -> int:
    return int(getattr(plugin.settings(), "port", plugin.default_port))


# The one service clients call; the others are called by it (and by each other) only.
PUBLIC_SERVICE = "gateway"


def service_host(name: str, host: str) -> str:
    """Where the embedded service `name` listens when `switchyard dev` is asked for `host`:
    the gateway on `host`; every other service (auth, history, inference, the simulator)
    on the loopback interface whatever `host` is, so `--host 0.0.0.0` exposes the
    gateway, not the services behind it."""
    if name == PUBLIC_SERVICE or host in ("127.0.0.1", "localhost", "::1"):
        return host
    return "127.0.0.1"


def bind_all(host: str, services: list[EmbeddedService], *, also: str = "") -> list[socket.socket]:
    """One bound (not yet listening) socket per service, in order, on `service_host`.
    Raises PortInUseError for two services set to one port (both sockets would bind, as
    neither listens yet, and one service would silently be missing), and for the ports
    that are taken, all of them in one message (several taken at once are most often
    another `switchyard dev`, which it says; the gateway's first, then `also`: what else
    such an instance may hold); no socket is left open then."""
    first: dict[int, EmbeddedService] = {}
    for service in services:
        other = first.setdefault(service.port, service)
        if other is not service:
            raise PortInUseError(
                f"{other.name} and {service.name} are both set to port {service.port}: set "
                f"{service.port_setting} (or {other.port_setting}) to another port"
            )
    sockets: list[socket.socket] = []
    taken: list[tuple[EmbeddedService, PortInUseError]] = []
    for service in services:
        where = service_host(service.name, host)
        try:
            sockets.append(bind(where, service.port, service.name, service.port_setting, "--host"))
        except PortInUseError as exc:
            taken.append((service, exc))
    if not taken:
        return sockets
    for sock in sockets:
        sock.close()
    in_use = [service for service, exc in taken if "already in use" in str(exc)]
    if len(in_use) < 2 or len(in_use) < len(taken):
        # One port taken, or something else at fault (the address): its own message.
        raise taken[0][1]
    in_use.sort(key=lambda service: service.name != PUBLIC_SERVICE)
    ports = ", ".join(f"{service.port} ({service.name})" for service in in_use)
    settings = ", ".join(service.port_setting for service in in_use)
    raise PortInUseError(
        f"ports {ports} are already in use: another Switchyard (`make run`) is probably "
        f"running; stop it, or set {settings} to free ports{also}"
    )


def _planned_ports(plugins: list[ServicePlugin]) -> list[EmbeddedService]:
    """Each service's port, known before anything starts (the apps come later)."""
    return [
        EmbeddedService(plugin.name, None, _port_of(plugin), port_setting(plugin.name))
        for plugin in plugins
    ]


def wire_service_urls(plugins: list[ServicePlugin], host: str) -> None:
    """Point every embedded service at the others where they really listen (their
    `SWITCHYARD_<SERVICE>_URL`, and the inference `/metrics` the console reads circuit
    breakers from), whatever a URL meant for separate services says: SWITCHYARD_AUTH_PORT
    moves auth, and the gateway follows."""
    for service in _planned_ports(plugins):
        where = service_host(service.name, host)
        where = "127.0.0.1" if where in ("0.0.0.0", "::", "") else where
        where = f"[{where}]" if ":" in where else where
        url = f"http://{where}:{service.port}"
        os.environ[f"SWITCHYARD_{service.name.upper()}_URL"] = url
        if service.name == "inference":
            os.environ["SWITCHYARD_GATEWAY_CONSOLE_INFERENCE_METRICS_URLS"] = f"{url}/metrics"


def _check_settings(plugins: list[ServicePlugin], host: str, database_url: str | None) -> None:
    """Point the environment at the embedded services (`apply_dev_environment`,
    `wire_service_urls`) and read every service's settings, before anything is made or
    started: a setting no service can start with raises SettingsError (one line from
    the `switchyard` command), and an explicit database URL no service can use is one
    line naming the option, and exit status 1."""
    from switchyard.common.db import database_url_problem
    from switchyard.common.settings import check_internal_token_for

    explicit = apply_dev_environment(plugins, database_url)
    if explicit is not None:
        problem = database_url_problem(explicit)
        if problem is not None:
            print(
                f"error: --database-url ({DEV_DATABASE_URL_ENV}) is not a usable database "
                f"URL ({problem})",
                file=sys.stderr,
                flush=True,
            )
            raise SystemExit(1)
    wire_service_urls(plugins, host)
    for plugin in plugins:
        check_internal_token_for(host, plugin.settings().internal_token)


def run(host: str = "127.0.0.1", database_url: str | None = None) -> None:
    """`switchyard dev`: prepare the environment and run every service until Ctrl+C.
    Exits with status 1 and one line on stderr when a port cannot be bound or the
    databases cannot be migrated; raises SettingsError (`ConfigurationError`, one line
    from the `switchyard` command) for settings it cannot start with."""
    from switchyard.common.httpserver import configured_limits
    from switchyard.common.logging import configure_logging
    from switchyard.common.settings import ServiceSettings
    from switchyard.common.tracing import configure_tracing

    # Every server reads these per connection: a bad value stops start-up instead
    # (SettingsError, which the `switchyard` command prints as one line).
    configured_limits()
    plugins = discover()
    _check_settings(plugins, host, database_url)
    private_state_dir()
    try:
        hold_state_dir()
    except StateDirInUseError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    # Migrations run beside the rest of start-up, in a process of their own.
    migrating = migrate_in_child(database_url)
    try:
        for plugin in plugins:
            if plugin.preflight is not None:
                plugin.preflight()
        settings = ServiceSettings()
        asked = "log_level" in settings.model_fields_set
        configure_logging(
            "dev",
            settings.log_level if asked else DEV_LOG_LEVEL,
            settings.log_format,
            secrets=[settings.internal_token, os.environ.get("SWITCHYARD_DEV_API_KEY")],
        )
        configure_tracing("dev")
        # The plugins' own ports first: the commonest conflict shows before any work.
        # The provider simulator's port is known only once the services are prepared.
        simulator = " (and SWITCHYARD_SIMULATOR_URL to another port, if it serves the simulator)"
        for sock in bind_all(host, _planned_ports(plugins), also=simulator):
            sock.close()
        wait_for_migrations(migrating)
        if not _run_loop(run_embedded(host, plugins, migrate=False)):
            raise SystemExit(130)  # as Ctrl+C before the services run ends every command
    except PortInUseError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    except MigrationError as exc:
        print(f"error: the databases could not be migrated: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    finally:
        if migrating.poll() is None:
            migrating.kill()
            migrating.wait()


def _run_loop(coroutine: Coroutine[Any, Any, bool]) -> bool:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


async def run_embedded(
    host: str = "127.0.0.1", plugins: list[ServicePlugin] | None = None, migrate: bool = True
) -> bool:
    """Run every service plugin (default: all installed) in this event loop on `host`, on an
    in-memory bus, until SIGINT or SIGTERM or a server stops. Migrates the databases first
    unless `migrate` is False (they are already); raises the start-up error of a service
    that fails to start. Returns False when a signal stopped it before every service was
    up (nothing is printed then), True otherwise.

    The signals are taken from the first moment, so Ctrl+C while the apps are made or the
    servers start stops what started, quietly, instead of raising KeyboardInterrupt in the
    middle of a start-up. Once running, the servers stop one after another (`stop_order`):
    the gateway first, once the requests it holds are answered by the services still
    running behind it; a second signal ends those requests at once instead."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    # Set by a second signal: the requests still in flight are ended, not waited for.
    cut_short = asyncio.Event()
    first_signal_at: float | None = None

    def on_signal() -> None:
        nonlocal first_signal_at
        now = loop.time()
        if first_signal_at is None:
            first_signal_at = now
            # The gateway bounds its wait for the requests it holds from now on.
            stop_signalled()
        elif now - first_signal_at >= REPEATED_SIGNAL_S:
            cut_short.set()
        stopping.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, on_signal)
    plugins = plugins if plugins is not None else discover()
    if migrate:
        migrate_all(plugins)
    contributions: list[DevContribution] = [
        targeting_embedded(plugin, plugin.prepare_dev())
        for plugin in plugins
        if plugin.prepare_dev is not None
    ]

    topics = Topics(os.environ.get("SWITCHYARD_TOPIC_PREFIX", "switchyard"))
    # New requests wait (then get 503) while history is far behind; the backlog it has not
    # taken yet waits in the state directory beyond a few batches, not in memory.
    bus = InMemoryBus(
        partitions={topics.replies: 1},
        admission_topics=(topics.requests_interactive, topics.requests_batch),
        # A second signal ends the handlers still draining at once, as it ends the requests.
        cut_short=cut_short,
        spill_dir=STATE_DIR,
    )
    await bus.start()

    extras = sum(len(contribution.extra_servers) for contribution in contributions)
    services: list[EmbeddedService] = []
    servers: list[_EmbeddedServer] = []
    sockets: list[socket.socket] = []
    frozen = False
    tasks: list[asyncio.Task[None]] = []
    try:
        services = [
            EmbeddedService(
                name, app, port, contribution.port_settings.get(name, "its port setting")
            )
            for contribution in contributions
            for name, app, port in contribution.extra_servers
        ]
        for plugin in plugins:
            if await _signalled(stopping):
                return False
            app = plugin.create_app(bus=bus)
            services.append(
                EmbeddedService(plugin.name, app, _port_of(plugin), port_setting(plugin.name))
            )
        sockets = bind_all(host, services)

        # Start in order (consumers before the gateway) and wait for each to listen.
        for service, sock in zip(services, sockets, strict=True):
            if stopping.is_set():
                return False
            where = service_host(service.name, host)
            server = _EmbeddedServer(server_config(service.app, host=where, port=service.port))
            task = asyncio.create_task(server.serve(sockets=[sock]), name=f"serve-{service.name}")
            servers.append(server)
            tasks.append(task)
            while not server.started:
                if task.done():
                    task.result()  # raises the start-up error
                    raise RuntimeError(f"{service.name} stopped during start-up")
                if stopping.is_set():
                    return False
                await asyncio.sleep(0.02)
            log.info("service listening", name=service.name, url=f"http://{where}:{service.port}")

        # Every service has started: their routes prepared before the first request, then
        # their start-up objects out of later full collections.
        for service in services:
            await warm_routes(service.app)
        if stopping.is_set():
            return False
        print(banner(host, services, contributions), flush=True)
        freeze_startup_heap()
        frozen = True

        done_or_stop = asyncio.create_task(stopping.wait())
        try:
            await asyncio.wait([done_or_stop, *tasks], return_when=asyncio.FIRST_COMPLETED)
        finally:
            done_or_stop.cancel()  # a service ended first: its wait goes too
        return True
    finally:
        if frozen:
            release_startup_heap()
        for index in stop_order(len(servers), extras):
            # An extra server's callers have stopped by its turn: what it still holds
            # (a simulated reply inference gave up on) is nobody's.
            wait = index >= extras
            await _stop_server(
                services[index].name, servers[index], tasks[index], cut_short, wait=wait
            )
        for sock in sockets:
            sock.close()
        await bus.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(sig)


def stop_order(started: int, extras: int) -> list[int]:
    """The order in which embedded mode stops the first `started` of its servers (indexes
    into the start order: `extras` extra servers, then the services by `start_order`).

    The last started (the gateway, the front door) stops first and waits for the requests
    it holds, while the services answering them still run; then the services in the
    order they started, so each consumer stops before the services that record what it
    publishes (inference before history); the extra servers (the provider simulator the
    consumers call) last."""
    if started == 0:
        return []
    front = started - 1
    return [front, *range(extras, front), *range(min(extras, front))]


async def _stop_server(
    name: str,
    server: uvicorn.Server,
    task: asyncio.Task[None],
    cut_short: asyncio.Event,
    *,
    wait: bool = True,
) -> None:
    """Stop one embedded server: it stops accepting connections, lets the requests it
    holds finish (their own deadlines bound them), then runs its app's shutdown. Once
    `cut_short` is set (a second Ctrl+C), the requests it still holds are ended at once
    (their connections closed, their tasks cancelled) and the shutdown goes on, so the
    services after it still stop cleanly; `wait` False ends them at once. Never raises: a
    server that failed has nothing left to stop."""
    server.should_exit = True
    if not wait:
        _end_requests(server)
    cut = asyncio.create_task(cut_short.wait())
    try:
        # uvicorn closes idle connections at once: a server with none left in a moment
        # stops without a word.
        done, _ = await asyncio.wait([task, cut], timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
        if not done and server.server_state.connections:
            log.warning(
                "waiting for the requests in flight to finish; Ctrl+C again ends them",
                service=name,
                connections=len(server.server_state.connections),
            )
        await asyncio.wait([task, cut], return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            _end_requests(server)
    finally:
        cut.cancel()
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await task


def _end_requests(server: uvicorn.Server) -> None:
    """Close every connection `server` holds (aborted: a client that reads nothing does
    not hold the close up) and cancel the tasks of its requests. uvicorn's own forced
    exit would skip the app's shutdown instead."""
    from switchyard.common.logging import requests_being_ended

    requests_being_ended()  # their cancellations are no faults of the apps: not logged
    for connection in list(server.server_state.connections):
        transport = getattr(connection, "transport", None)
        if transport is not None:
            transport.abort()
    for request in list(server.server_state.tasks):
        request.cancel()


async def _signalled(stopping: asyncio.Event) -> bool:
    """Whether `stopping` is set, after the event loop has run the handler of a signal
    that came while it was busy (read from its wakeup pipe in one turn of the loop, the
    handler run in the next)."""
    for _ in range(3):
        await asyncio.sleep(0)
    return stopping.is_set()


# How a contribution's banner lines suggest a command (`uv run switchyard tokens create`).
CLI_COMMAND = "uv run switchyard "


def cli_command() -> str:
    """How to run `switchyard` from any directory, ending in a space: the absolute path of
    the `switchyard` executable this process was started as (so neither `uv` on PATH nor
    the repository as the current directory is needed), else `CLI_COMMAND`."""
    import shlex

    started_as = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if started_as is not None and started_as.name == "switchyard" and started_as.is_file():
        return shlex.quote(str(started_as.absolute())) + " "
    return CLI_COMMAND


def embedded_database_prefix(plugin: ServicePlugin) -> str:
    """`SWITCHYARD_<SERVICE>_DATABASE_URL=<url> `: what makes a `switchyard` command act on
    the database embedded mode gives `plugin` (`apply_dev_environment`) whatever
    DATABASE_URL or `.env` say (the service's own variable comes first, and these commands
    read no other). Empty for a service without a database. A URL with a password is not
    printed: `<your --database-url>` stands for it."""
    import shlex

    from sqlalchemy.engine import make_url

    if plugin.migrations is None:
        return ""
    variable = database_variable(plugin.name)
    url = os.environ.get(variable) or f"sqlite+aiosqlite:///{STATE_DIR}/{plugin.name}.db"
    try:
        parsed = make_url(url)
        secret = parsed.password is not None
        path = sqlite_file(url)
        if path is not None and not path.is_absolute():
            # The command may be run from another directory than this instance's.
            url = parsed.set(database=str(path.absolute())).render_as_string()
    except Exception:  # noqa: BLE001 - not for SQLAlchemy to judge here; never print it
        secret = True
    value = "'<your --database-url>'" if secret else shlex.quote(url)
    return f"{variable}={value} "


def targeting_embedded(plugin: ServicePlugin, contribution: DevContribution) -> DevContribution:
    """`contribution` with every `switchyard` command its banner lines suggest
    (`CLI_COMMAND`) prefixed by `embedded_database_prefix(plugin)`: run as printed, it
    acts on this instance's database, not on the one DATABASE_URL names (which embedded
    mode ignores, and the command alone would read)."""
    prefix = embedded_database_prefix(plugin)
    if not prefix:
        return contribution
    command = prefix + cli_command()
    messages = [message.replace(CLI_COMMAND, command) for message in contribution.messages]
    return dataclasses.replace(contribution, messages=messages)


def banner(host: str, services: list[EmbeddedService], contributions: list[DevContribution]) -> str:
    """What a person starting embedded mode reads: where to point a client, the key."""
    gateway_port = next((s.port for s in services if s.name == "gateway"), None)
    lines = ["", "Switchyard is running in embedded mode (one process, in-memory bus, SQLite)."]
    if gateway_port is not None:
        lines += [
            f"  OpenAI base URL:  http://{host}:{gateway_port}/v1",
            f"  Anthropic URL:    http://{host}:{gateway_port}",
            f"  API docs:         http://{host}:{gateway_port}/docs",
            f"  Console:          http://{host}:{gateway_port}/ui/",
        ]
    ports = ", ".join(f"{s.name} {s.port}" for s in services)
    lines.append(f"  Ports:            {ports}")
    for contribution in contributions:
        lines += [f"  {message}" for message in contribution.messages]
    lines.append("Press Ctrl+C to stop.")
    return "\n".join(lines)


def _migrate_main() -> None:
    """`python -m switchyard.common.dev --migrate-only` (`migrate_in_child`): migrate,
    and on failure write the cause as the last line of stderr, for `wait_for_migrations`
    (a URL SQLAlchemy cannot use, naming the option; a database that cannot be reached
    or migrated, as its driver says it), and exit with status 1."""
    from sqlalchemy.exc import SQLAlchemyError

    from switchyard.common.cli import database_url_problem, describe_database_error

    plugins = discover()
    explicit = apply_dev_environment(plugins)
    if explicit is not None:
        problem = database_url_problem(explicit)
        if problem is not None:
            print(
                f"--database-url ({DEV_DATABASE_URL_ENV}) is not a usable database URL ({problem})",
                file=sys.stderr,
                flush=True,
            )
            raise SystemExit(1)
    try:
        migrate_all(plugins)
    except (SQLAlchemyError, OSError) as exc:
        print(describe_database_error(exc), file=sys.stderr, flush=True)
        raise SystemExit(1) from None


if __name__ == "__main__" and sys.argv[1:] == [MIGRATE_ARGUMENT]:
    _migrate_main()
