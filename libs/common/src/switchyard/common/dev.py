"""Embedded mode: every installed service in one process, on the in-memory bus, with
SQLite databases under `.switchyard/` and the provider simulator unless real providers
are configured. The same apps as in production, only the adapters differ."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from dataclasses import dataclass
from typing import Any

import structlog
import uvicorn

from switchyard.common.bus import InMemoryBus
from switchyard.common.db import upgrade
from switchyard.common.plugins import DevContribution, ServicePlugin, discover
from switchyard.common.topics import Topics

log = structlog.get_logger("switchyard.dev")

# Embedded mode is for one machine: development defaults unless the caller set otherwise.
DEV_ENVIRONMENT = {
    "SWITCHYARD_ENVIRONMENT": "development",
    "SWITCHYARD_BUS": "memory",
    # A person reads these logs: readable lines unless JSON is asked for.
    "SWITCHYARD_LOG_FORMAT": "console",
}


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the embedded runner, which stops
    every server together."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[override]
        yield


@dataclass
class EmbeddedService:
    name: str
    app: Any
    port: int


def apply_dev_environment() -> None:
    for key, value in DEV_ENVIRONMENT.items():
        os.environ.setdefault(key, value)


def migrate_all(plugins: list[ServicePlugin]) -> None:
    for plugin in plugins:
        if plugin.migrations is not None:
            upgrade(
                plugin.migrations.script_location,
                plugin.migrations.database_url(),
                plugin.migrations.version_table,
            )


def _port_of(plugin: ServicePlugin) -> int:
    return int(getattr(plugin.settings(), "port", plugin.default_port))


async def run_embedded(host: str = "127.0.0.1") -> None:
    plugins = discover()
    migrate_all(plugins)
    contributions: list[DevContribution] = [
        plugin.prepare_dev() for plugin in plugins if plugin.prepare_dev is not None
    ]

    topics = Topics(os.environ.get("SWITCHYARD_TOPIC_PREFIX", "switchyard"))
    bus = InMemoryBus(partitions={topics.replies: 1})
    await bus.start()

    services = [
        EmbeddedService(name, app, port)
        for contribution in contributions
        for name, app, port in contribution.extra_servers
    ]
    services += [
        EmbeddedService(plugin.name, plugin.create_app(bus=bus), _port_of(plugin))
        for plugin in plugins
    ]

    servers: list[_EmbeddedServer] = []
    tasks: list[asyncio.Task[None]] = []
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stopping.set)

    try:
        # Start in order (consumers before the gateway) and wait for each to listen.
        for service in services:
            config = uvicorn.Config(
                service.app,
                host=host,
                port=service.port,
                log_config=None,
                access_log=False,
                lifespan="on",
            )
            server = _EmbeddedServer(config)
            task = asyncio.create_task(server.serve(), name=f"serve-{service.name}")
            while not server.started:
                if task.done():
                    task.result()  # raises the start-up error
                    raise RuntimeError(f"{service.name} stopped during start-up")
                await asyncio.sleep(0.02)
            servers.append(server)
            tasks.append(task)
            log.info("service listening", name=service.name, url=f"http://{host}:{service.port}")

        gateway_port = next((s.port for s in services if s.name == "gateway"), None)
        lines = ["", "Switchyard is running in embedded mode (one process, in-memory bus, SQLite)."]
        if gateway_port is not None:
            lines += [
                f"  OpenAI base URL:  http://{host}:{gateway_port}/v1",
                f"  API docs:         http://{host}:{gateway_port}/docs",
                f"  Console:          http://{host}:{gateway_port}/ui/",
            ]
        for contribution in contributions:
            lines += [f"  {message}" for message in contribution.messages]
        lines.append("Press Ctrl+C to stop.")
        print("\n".join(lines), flush=True)

        done_or_stop = asyncio.create_task(stopping.wait())
        await asyncio.wait([done_or_stop, *tasks], return_when=asyncio.FIRST_COMPLETED)
    finally:
        # Stop the gateway first so no new work arrives, then the rest.
        for server in reversed(servers):
            server.should_exit = True
        for task in tasks:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task
        await bus.stop()
