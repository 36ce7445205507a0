"""Locating the real infrastructure that integration and e2e tests run against."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from switchyard.common.db import sync_url

T = TypeVar("T")

# With SWITCHYARD_REQUIRE_INFRA=1 (set by `make test` and CI) a missing broker or database
# fails the run instead of skipping tests, so CI can never pass by testing nothing.
REQUIRE_INFRA = os.environ.get("SWITCHYARD_REQUIRE_INFRA") == "1"


def _missing(what: str) -> NoReturn:
    message = (
        f"{what} is not set; run `make infra-up` and export what `deploy/local/infra.sh env` prints"
    )
    if REQUIRE_INFRA:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def kafka_bootstrap_servers() -> str:
    """The broker of integration tests, from KAFKA_BOOTSTRAP_SERVERS; skips the test when
    unset (fails it with SWITCHYARD_REQUIRE_INFRA=1)."""
    servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not servers:
        _missing("KAFKA_BOOTSTRAP_SERVERS")
    return servers


def local_broker_state_dir(port: int, fallback: Path) -> Path:
    """The state dir (`deploy/local/kafka.sh`'s `$SWITCHYARD_STATE_DIR/kafka`) of the local
    broker listening on 127.0.0.1:`port`, found from its process (the `server.properties`
    its command line names, whose listeners include the port): `make infra-up` in one
    checkout reuses a broker another checkout started, whose certificates are in that
    checkout's state dir, not this one's. `fallback` when no such process is found (not
    Linux, or a broker started otherwise)."""
    listener = f"127.0.0.1:{port}"
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            arguments = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if b"kafka.Kafka" not in arguments:
            continue
        for argument in arguments:
            if not argument.endswith(b"server.properties"):
                continue
            config = Path(os.fsdecode(argument))
            try:
                lines = config.read_text().splitlines()
            except OSError:
                continue
            if any(line.startswith("listeners=") and listener in line for line in lines):
                return config.parent
    return fallback


def database_url() -> str:
    """The PostgreSQL server of integration tests, from DATABASE_URL; skips the test when unset
    (fails it with SWITCHYARD_REQUIRE_INFRA=1)."""
    url = os.environ.get("DATABASE_URL")
    if not url:
        _missing("DATABASE_URL")
    return url


@contextmanager
def temporary_database(server_url: str, prefix: str = "sytest") -> Iterator[str]:
    """Create an empty PostgreSQL database on the server of `server_url`; drop it afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin_url = make_url(sync_url(server_url))
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def unique_prefix(base: str = "sytest") -> str:
    """A topic or database prefix no other test run uses: `base` plus 10 random hex digits."""
    return f"{base}-{uuid.uuid4().hex[:10]}"


def wait_until(
    check: Callable[[], T],
    *,
    timeout: float = 30.0,
    interval: float = 0.1,
    message: str = "condition",
) -> T:
    """Poll `check` until it returns something truthy, failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last_error = exc
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {message}; last error: {last_error!r}"
    )


async def async_wait_until(
    check: Callable[[], Awaitable[T]],
    *,
    timeout: float = 30.0,
    interval: float = 0.1,
    message: str = "condition",
) -> T:
    """Await `check()` every `interval` seconds until it returns something truthy, and return
    that. Exceptions it raises are retried. Raises AssertionError naming `message` (and the
    last exception) after `timeout` seconds."""
    import asyncio

    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = await check()
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last_error = exc
        await asyncio.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {message}; last error: {last_error!r}"
    )


# A readiness probe's checks are each bounded (`switchyard.common.http`, 2 s): on a loaded
# machine one probe may fail for that moment, as a replica should. A test expecting a
# ready service asks again within this many seconds before it concludes otherwise.
READY_WITHIN_S = 20.0


def ready(probe: Callable[[], Any], *, timeout: float = READY_WITHIN_S) -> Any:
    """The first answer of `probe()` (a `GET /readyz` of a test client) that is a 200,
    asked every 0.1 s; AssertionError naming the last answer's checks after `timeout`
    seconds."""
    answers: list[Any] = []

    def answered() -> bool:
        answers.append(probe())
        return bool(answers[-1].status_code == 200)

    try:
        wait_until(answered, timeout=timeout, message="a ready service")
    except AssertionError:
        raise AssertionError(f"never ready: {answers[-1].text if answers else None}") from None
    return answers[-1]


async def async_ready(
    probe: Callable[[], Awaitable[Any]], *, timeout: float = READY_WITHIN_S
) -> Any:
    """`ready` for an async test client: the first 200 answer of `await probe()`."""
    answers: list[Any] = []

    async def answered() -> bool:
        answers.append(await probe())
        return bool(answers[-1].status_code == 200)

    try:
        await async_wait_until(answered, timeout=timeout, message="a ready service")
    except AssertionError:
        raise AssertionError(f"never ready: {answers[-1].text if answers else None}") from None
    return answers[-1]
