"""Database helpers for services that own tables (auth, history): async engines on
psycopg 3 (PostgreSQL) or aiosqlite (embedded mode), and Alembic migrations run as their
own step (`switchyard db upgrade`), never at application start-up."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.dialects.postgresql import Insert as PgInsert
    from sqlalchemy.dialects.sqlite import Insert as SqliteInsert


def async_url(url: str) -> str:
    """Normalise a database URL to the async driver SQLAlchemy should use."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg2", "postgresql+psycopg"):
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    if parsed.drivername in ("sqlite", "sqlite+pysqlite"):
        return parsed.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False)
    return url


# The databases services keep their tables in (by SQLAlchemy's backend name), and the
# advice every refusal of a database URL ends with.
DATABASE_KINDS = {"postgresql": "postgres", "sqlite": "sqlite"}
DATABASE_URL_ADVICE = (
    "use e.g. postgresql+psycopg://user:password@host:5432/db or "
    "sqlite+aiosqlite:///path/to/file.db"
)


def database_kind(url: str) -> str | None:
    """The kind of database `url` names, `postgres` or `sqlite`, whichever alias or driver
    it spells (`postgres://`, `postgresql://` and `postgresql+psycopg2://` are PostgreSQL,
    as `async_url` reads them); None for any other kind. Raises SQLAlchemy's
    ArgumentError for text that is not a database URL."""
    return DATABASE_KINDS.get(make_url(async_url(url)).get_backend_name())


def database_url_problem(url: str) -> str | None:
    """Why no service can use the database at `url`, as a phrase (not a URL, a kind of
    database other than PostgreSQL and SQLite, a driver not installed or not
    asynchronous), or None when `create_engine` can use it. Whether the database answers
    is not asked."""
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(async_url(url))
        # The dialect `create_async_engine` takes (psycopg's async one for psycopg).
        dialect = parsed.get_dialect().get_async_dialect_cls(parsed)
    except ArgumentError as exc:  # NoSuchModuleError too: no such dialect
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    except ValueError as exc:  # a port that is not a number
        return f"not a URL SQLAlchemy can parse: {exc}"
    backend = parsed.get_backend_name()
    if backend not in DATABASE_KINDS:
        return f"a {backend} database; Switchyard keeps its tables in PostgreSQL or SQLite"
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        return f"its driver {parsed.get_driver_name()} is not installed ({exc})"
    if not getattr(dialect, "is_async", False):
        return f"its driver {parsed.get_driver_name()} is not asynchronous"
    return None


# The one explicit way to give the embedded services (`switchyard dev`) another database
# than SQLite; `--database-url` sets it too.
DEV_DATABASE_URL_ENV = "SWITCHYARD_DEV_DATABASE_URL"
# Set by embedded mode: the services (comma-separated) whose database URL it chose, from
# DEV_DATABASE_URL_ENV or its own SQLite files, whatever their own variables said.
EMBEDDED_DATABASES_ENV = "SWITCHYARD_EMBEDDED_DATABASES"


def database_variables(service: str) -> str:
    """The variables `service`'s database URL is read from, as an error names them: the
    one set in the environment, else both (`SWITCHYARD_AUTH_DATABASE_URL or
    DATABASE_URL`). In embedded mode, what sets it there instead: SWITCHYARD_DEV_DATABASE_URL
    (`switchyard dev --database-url`), or the SQLite file it defaults to."""
    if service in os.environ.get(EMBEDDED_DATABASES_ENV, "").split(","):
        if os.environ.get(DEV_DATABASE_URL_ENV):
            return f"{DEV_DATABASE_URL_ENV} (`switchyard dev --database-url`)"
        return (
            f"embedded mode's database (SQLite in .switchyard/; {DEV_DATABASE_URL_ENV} or "
            "`switchyard dev --database-url` names another)"
        )
    own = f"SWITCHYARD_{service.upper()}_DATABASE_URL"
    if os.environ.get(own):
        return own
    if os.environ.get("DATABASE_URL"):
        return "DATABASE_URL"
    return f"{own} or DATABASE_URL"


def check_database_url(service: str, url: str) -> None:
    """Refuse a database URL `service` cannot use, as a settings validator does: raises
    ValueError of one line naming its variable, the cause and an example."""
    problem = database_url_problem(url)
    if problem is not None:
        raise ValueError(
            f"{database_variables(service)} is not a usable database URL ({problem}); "
            f"{DATABASE_URL_ADVICE}"
        )


def sync_url(url: str) -> str:
    """The same database through a synchronous driver (for Alembic)."""
    parsed = make_url(async_url(url))
    if parsed.drivername == "sqlite+aiosqlite":
        return parsed.set(drivername="sqlite").render_as_string(hide_password=False)
    return parsed.render_as_string(hide_password=False)


def ensure_sqlite_dir(url: str) -> None:
    """Create the directory of a file-based SQLite database `url` (readable by its owner
    only, mode 0700, when it is made here) and the database file itself (mode 0600: it
    holds prompts, replies and credential hashes; SQLite gives its journal and WAL files
    the database's mode); an existing file or directory, and other databases, are left
    alone."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        path = Path(parsed.database)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if parsed.query.get("uri"):  # a `file:` URI names the file in its own way
            return
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


# Prepared statements each SQLite connection keeps (Python's default is 128). A batch
# insert's SQL differs with its row count, so a long-running service fills the cache with
# multi-row INSERTs of some 100 KiB of compiled program each, outside Python's heap: with
# 128, embedded mode's memory grew by 4 to 5 KiB per request for tens of thousands of
# requests; with 16 it levels off. Re-preparing an evicted short statement costs
# microseconds.
SQLITE_CACHED_STATEMENTS = 16
# Connections an SQLite engine keeps open, and how many more it opens for a moment when
# they are all in use. Every transaction takes the write lock at BEGIN (below), so more
# connections never write at once: they only wait in SQLite's busy handler instead of
# the pool's queue. Each kept one costs its page cache and prepared statements (embedded
# mode's memory levelled off 14 to 17 MiB lower with two than with SQLAlchemy's five,
# c=64 bursts answered as fast).
SQLITE_POOL_SIZE = 2
SQLITE_MAX_OVERFLOW = 4
# How long terminating a connection waits for its worker thread to close it: longer than
# SQLite's busy timeout (15 s, below), which a statement queued before the close may use.
SQLITE_CLOSE_TIMEOUT_S = 20.0


async def _stop_sqlite_connection(self: Any) -> None:
    """SQLAlchemy's graceful close of an aiosqlite connection it terminates (an invalidated
    connection: its task was cancelled, it was disconnected, or the pool recycled it), made
    safe to cancel.

    SQLAlchemy runs the graceful close as a shielded task and, when its caller is cancelled,
    force-closes at once: `aiosqlite.Connection.stop()` queues the worker thread's last job.
    aiosqlite's own `close()` (0.22.1), cancelled before its worker answered, then waits in
    a `finally` for a second stop the stopped thread never runs: the task outlives every
    cancellation, and `asyncio.run`'s shutdown (which cancels each task once and waits for
    it) waits for ever. Here the close is one stop (the same job: close the sqlite3
    connection on its thread, then end the thread) whose wait ends when cancelled, and
    after `SQLITE_CLOSE_TIMEOUT_S` at most (the stop still runs after that).
    """
    connection = self._connection  # aiosqlite.Connection
    # Already stopped (the force close ran first): its thread takes no more jobs.
    if not getattr(connection, "_running", True):
        return
    stopped = connection.stop()
    if stopped is not None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SQLITE_CLOSE_TIMEOUT_S):
                await stopped


# Attempts at `PRAGMA journal_mode=WAL` when SQLite answers "database is locked" at once.
SQLITE_WAL_ATTEMPTS = 20
# How long a statement waits for another connection's lock before "database is locked".
SQLITE_BUSY_TIMEOUT_S = 15


def _set_wal(cursor: Any) -> None:
    """Put the connection's database in WAL mode. A connection opened at the moment another
    one closes the database (the last connection out checkpoints the WAL under an exclusive
    lock) can be refused at once with "database is locked", without SQLite's busy handler
    being asked; the pragma is then tried again after a pause that yields to the event loop
    (up to `SQLITE_WAL_ATTEMPTS` times, 10 ms apart and growing)."""
    from sqlalchemy.util.concurrency import await_

    for attempt in range(1, SQLITE_WAL_ATTEMPTS + 1):
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except Exception as exc:  # sqlite3.OperationalError, as the adapter raises it
            if "database is locked" not in str(exc) or attempt == SQLITE_WAL_ATTEMPTS:
                raise
            await_(asyncio.sleep(0.01 * attempt))


def _install_sqlite_close() -> None:
    from sqlalchemy.dialects.sqlite.aiosqlite import AsyncAdapt_aiosqlite_connection

    AsyncAdapt_aiosqlite_connection._terminate_graceful_close = _stop_sqlite_connection  # type: ignore[method-assign]


# How long `dispose_engine` waits for the worker threads of an SQLite engine's
# connections to end once the engine is disposed: a connection whose opening was
# cancelled closes itself on its thread after the open finishes (milliseconds).
SQLITE_THREADS_WAIT_S = 2.0


class _WorkerThreads:
    """The worker threads of one SQLite engine's connections (aiosqlite runs one per
    connection) and how many opens have not reached theirs yet: `dispose_engine` waits for
    both. `opening` is counted up on the event loop when SQLAlchemy starts an open and down
    on the worker thread when the open runs, hence the condition's lock."""

    def __init__(self) -> None:
        self.threads: weakref.WeakSet[threading.Thread] = weakref.WeakSet()
        self.opening = 0
        self.changed = threading.Condition()

    def wait(self, timeout_s: float) -> None:
        """Block until no open is on its way to its thread and every thread has ended, or
        `timeout_s` seconds have passed (run off the event loop: it blocks)."""
        deadline = time.monotonic() + timeout_s
        with self.changed:
            self.changed.wait_for(lambda: self.opening == 0, timeout_s)
        for thread in list(self.threads):
            thread.join(max(0.0, deadline - time.monotonic()))

    def connection_class(self) -> type:
        """A `sqlite3.Connection` class (`sqlite3.connect`'s `factory`) recording the thread
        that opens it, aiosqlite's worker thread for that connection. The open runs on that
        thread even when the task awaiting it was cancelled, so a connection that never
        reached the pool is counted too."""
        workers = self

        class ThreadRecordingConnection(sqlite3.Connection):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                with workers.changed:
                    workers.threads.add(threading.current_thread())
                    workers.opening = max(0, workers.opening - 1)
                    workers.changed.notify_all()
                super().__init__(*args, **kwargs)
                self._cursors: weakref.WeakSet[sqlite3.Cursor] = weakref.WeakSet()

            def cursor(self, *args: Any, **kwargs: Any) -> Any:
                cursor = super().cursor(*args, **kwargs)
                self._cursors.add(cursor)
                return cursor

            def close(self) -> None:
                # A statement still under way (its task cancelled before the rows were
                # fetched) would keep the database open, holding its lock and its
                # transaction's, until its cursor is garbage-collected: sqlite3 closes a
                # connection with unfinished statements only when they are finalized.
                for cursor in list(self._cursors):
                    with contextlib.suppress(sqlite3.Error):
                        cursor.close()
                super().close()

        return ThreadRecordingConnection


# Each SQLite engine's worker threads, by the engine (`create_engine` registers them).
_engine_threads: weakref.WeakKeyDictionary[Any, _WorkerThreads] = weakref.WeakKeyDictionary()


async def dispose_engine(engine: AsyncEngine, wait_s: float = SQLITE_THREADS_WAIT_S) -> None:
    """Close every pooled connection of `engine` (`AsyncEngine.dispose`) and, for an SQLite
    engine from `create_engine`, wait up to `wait_s` seconds for its connections' worker
    threads to end, keeping the event loop running meanwhile.

    Why: aiosqlite opens and closes a connection on its own thread and hands the result to
    the event loop that asked. A task cancelled while a connection opens (a service
    stopping during its first statement) leaves that thread opening, then closing, the
    connection; if the loop is closed before it finishes, the thread dies with "Event loop
    is closed" at exit. Connections still checked out elsewhere keep their threads: the
    wait then ends at `wait_s`. Raises what `AsyncEngine.dispose` raises."""
    await engine.dispose()
    workers = _engine_threads.get(engine.sync_engine)
    if workers is not None:
        # Off the loop: the threads hand their last results to this loop, which must run.
        await asyncio.to_thread(workers.wait, wait_s)


def create_engine(url: str, **options: Any) -> AsyncEngine:
    """An async SQLAlchemy engine for database `url` (a sync URL is turned into its async
    driver). SQLite gets WAL, a 15 s busy timeout, `BEGIN IMMEDIATE` transactions, a
    statement cache of `SQLITE_CACHED_STATEMENTS` and a pool of `SQLITE_POOL_SIZE` (+
    `SQLITE_MAX_OVERFLOW`) connections to a database file; other databases a pool of 10 (+10
    overflow) with pre-ping. `options` are passed to `create_async_engine` and override
    those defaults."""
    url = async_url(url)
    ensure_sqlite_dir(url)
    if make_url(url).get_backend_name() == "sqlite":
        _install_sqlite_close()
        workers = _WorkerThreads()
        connect_args = {
            "cached_statements": SQLITE_CACHED_STATEMENTS,
            "factory": workers.connection_class(),
        }
        options["connect_args"] = connect_args | options.get("connect_args", {})
        parsed = make_url(url)
        in_memory = (
            parsed.database in (None, "", ":memory:") or parsed.query.get("mode") == "memory"
        )
        if not in_memory and "poolclass" not in options:
            # (An in-memory database is one per connection: SQLAlchemy keeps one, pooled
            # its own way; a pool class of the caller's may take no size.)
            options.setdefault("pool_size", SQLITE_POOL_SIZE)
            options.setdefault("max_overflow", SQLITE_MAX_OVERFLOW)
        engine = create_async_engine(url, **options)
        _engine_threads[engine.sync_engine] = workers

        @event.listens_for(engine.sync_engine, "do_connect")
        def _count_open(*_: Any) -> None:  # pragma: no cover - trivial
            with workers.changed:
                workers.opening += 1

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:  # pragma: no cover
            cursor = dbapi_connection.cursor()
            # First, so that the statements below wait for a lock like any other.
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
            # WAL lets the embedded services read while another writes.
            _set_wal(cursor)
            cursor.close()
            # Transactions are begun below, not by the driver on the first write.
            dbapi_connection.isolation_level = None

        @event.listens_for(engine.sync_engine, "begin")
        def _begin_immediate(connection: Connection) -> None:  # pragma: no cover - trivial
            # A deferred transaction that reads, then writes after another connection
            # committed, fails at once with "database is locked" (its snapshot is stale;
            # the busy timeout cannot help). Taking the write lock at BEGIN makes every
            # transaction wait its turn instead, within the busy timeout. A connection
            # that only reads (`read_only`) begins deferred: under WAL it reads the last
            # commit without waiting for a writer, and holds none up.
            if connection.get_execution_options().get(READ_ONLY_OPTION):
                connection.exec_driver_sql("BEGIN")
            else:
                connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    options.setdefault("pool_size", 10)
    options.setdefault("max_overflow", 10)
    options.setdefault("pool_pre_ping", True)
    return create_async_engine(url, **options)


# The execution option `read_only` sets.
READ_ONLY_OPTION = "switchyard_read_only"


def read_only(engine: AsyncEngine) -> AsyncEngine:
    """`engine` (sharing its pool) for connections that only read, such as a readiness
    probe's. On SQLite their transactions begin deferred rather than with the write lock
    (`create_engine`), so a probe neither waits behind a write in progress (up to the 15 s
    busy timeout, when its probe gives up after 2 s) nor holds up the writes that come
    while it reads every table. Other databases are unaffected. A write made through it on
    SQLite may fail with "database is locked" where the engine itself would have waited."""
    return engine.execution_options(**{READ_ONLY_OPTION: True})


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions on `engine` whose objects stay readable after commit (`expire_on_commit=False`)."""
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config(script_location: str, url: str, version_table: str) -> Config:
    """An Alembic config for one service's migrations against `url`."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", script_location)
    config.set_main_option("sqlalchemy.url", sync_url(url).replace("%", "%%"))
    config.attributes["version_table"] = version_table
    return config


def upgrade(script_location: str, url: str, version_table: str, revision: str = "head") -> None:
    """Run one service's Alembic migrations (in `script_location`, recorded in table
    `version_table`) on database `url` up to `revision` (default: the latest)."""
    from alembic import command

    ensure_sqlite_dir(sync_url(url))
    _persist_wal(url)
    command.upgrade(alembic_config(script_location, url, version_table), revision)


def _persist_wal(url: str) -> None:
    """Put the SQLite file of `url` in WAL mode before its migrations run. The mode is kept
    in the file, so the services' connections find it set: the first of them no longer
    switches a rollback-journal database over, which takes an exclusive lock and could
    meet another connection opening it (`_set_wal` retries that). In-memory databases,
    `file:` URIs and other kinds of database are left alone."""
    path = sqlite_file(url)
    if path is None:
        return
    with contextlib.closing(sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S)) as connection:
        connection.execute("PRAGMA journal_mode=WAL")


class NoDatabaseError(FileNotFoundError):
    """The SQLite file a migration would revert does not exist: `path` is that file, or
    the first directory on the way to it that is missing (`directory` True)."""

    def __init__(self, path: Path, *, directory: bool) -> None:
        super().__init__(f"{'directory' if directory else 'file'} {path} does not exist")
        self.path = path
        self.directory = directory


def sqlite_file(url: str) -> Path | None:
    """The file of a file-based SQLite database `url`; None for an in-memory one, one named
    by a `file:` URI, or another kind of database."""
    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    if parsed.query.get("uri") or database.startswith("file:"):
        return None
    return Path(database)


def other_database_note(service: str, url: str) -> str | None:
    """A one-line note for an operator command of `service` about to act on the database
    at `url` while the directory it runs in holds embedded mode's own (`.switchyard/` of
    `make run`) and the service's own variable does not name one: most often DATABASE_URL
    is exported for other work, and the user means the instance they are looking at. None
    when there is nothing to tell apart."""
    here = Path(".switchyard") / f"{service}.db"
    if os.environ.get(f"SWITCHYARD_{service.upper()}_DATABASE_URL") or not here.is_file():
        return None
    try:
        path = sqlite_file(url)
    except Exception:  # noqa: BLE001 - an unusable URL is refused by its own check
        return None
    if path is not None and path.absolute() == here.absolute():
        return None
    return (
        f"note: acting on the {service} database of {database_variables(service)}, not on "
        f"the one `make run` keeps here ({here}); to act on that one, run the command with "
        f"SWITCHYARD_{service.upper()}_DATABASE_URL=sqlite+aiosqlite:///{here.absolute()}"
    )


def missing_database(service: str, url: str) -> str | None:
    """A one-line error for an operator command of `service` whose database `url` names a
    SQLite file that does not exist (opening it would create an empty file wherever the
    command ran, then fail on its missing tables); None when the file exists or `url` names
    another kind of database."""
    path = sqlite_file(url)
    if path is None or path.exists():
        return None
    return (
        f"no {service} database at {path.absolute()} ({database_variables(service)}): run "
        "this from the directory `make run` (`switchyard dev`) keeps its `.switchyard/` in, "
        f"or set the variable to the database (`switchyard db upgrade --service {service}` "
        "creates a new one)"
    )


def downgrade(script_location: str, url: str, version_table: str, revision: str) -> None:
    """Revert one service's Alembic migrations (in `script_location`, recorded in table
    `version_table`) on database `url` down to `revision`. Raises NoDatabaseError for a
    SQLite file that does not exist (opening it would make an empty one to revert)."""
    from alembic import command

    path = sqlite_file(url)
    if path is not None and not path.is_file():
        missing = path
        while not missing.parent.is_dir() and missing.parent != missing:
            missing = missing.parent
        raise NoDatabaseError(missing, directory=missing != path)
    command.downgrade(alembic_config(script_location, url, version_table), revision)


async def probe_schema(connection: Any, metadata: Any) -> None:
    """Read no row, but every column, of every table of `metadata` (SQLAlchemy's
    `MetaData`) on `connection` (an async connection). Raises what the database raises when
    one is missing: a database migrated by an older version than the code's, whose
    `switchyard db upgrade` has not run."""
    from sqlalchemy import select

    for table in metadata.sorted_tables:
        await connection.execute(select(*table.columns).limit(0))


# What a service logs while its database's schema is behind its code.
SCHEMA_BEHIND = "the database schema is behind this version: run `switchyard db upgrade`"


def dialect_insert(table: Any, dialect_name: str) -> PgInsert | SqliteInsert:
    """The dialect's INSERT, which has `on_conflict_do_nothing` / `on_conflict_do_update`
    on both PostgreSQL and SQLite."""
    if dialect_name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)
