"""How services plug into the `switchyard` command and embedded mode.

Each service distribution declares an entry point in the group `switchyard.services`
pointing at a `ServicePlugin`. The shared CLI discovers them, so `libs/common` never
imports a service and services never import each other: `switchyard gateway` runs the
gateway, `switchyard db upgrade` migrates every service that owns tables, and
`switchyard dev` runs every installed service in one process.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from importlib import import_module
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import typer
    from fastapi import FastAPI

    from switchyard.common.settings import ServiceSettings

ENTRY_POINT_GROUP = "switchyard.services"
# Commands of distributions that are not services (the provider simulator): each entry
# point is a plain function (a Typer command) or a `typer.Typer` group.
COMMANDS_ENTRY_POINT_GROUP = "switchyard.commands"


@dataclass(frozen=True)
class Migrations:
    """Where a service's Alembic scripts live and which database they migrate."""

    script_location: str
    version_table: str
    database_url: Callable[[], str]


@dataclass(frozen=True)
class PrincipalNames:
    """Readable names of users (email), API keys and teams (name), by id; ids not found
    are absent."""

    emails: dict[str, str] = field(default_factory=dict)
    key_names: dict[str, str] = field(default_factory=dict)
    team_names: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ServicePlugin:
    """How a service plugs into the `switchyard` CLI and embedded mode: its name, default
    TCP port, one-line summary, settings, app factory, migrations and extra CLI commands.
    Services register one under the `switchyard.services` entry-point group."""

    name: str
    default_port: int
    summary: str
    settings: Callable[[], ServiceSettings]
    # "module:function" building the service's FastAPI app; uvicorn imports it by this path
    # when it runs several workers. Called with `bus=` in embedded mode (one shared
    # in-memory bus); otherwise the app creates the bus its settings ask for.
    factory: str
    migrations: Migrations | None = None
    # Extra CLI commands: Typer groups (added under their name) or plain functions.
    commands: Callable[[], list[typer.Typer | Callable[..., Any]]] = field(default=lambda: [])
    # Called by `switchyard dev` after migrations and before the apps start.
    prepare_dev: Callable[[], DevContribution] | None = None
    # Checks the service's configuration files (routing, prices) before it starts, raising
    # a ConfigurationError the CLI prints as one line; without it, the error would come
    # from the app's start-up, inside the server's own traceback.
    preflight: Callable[[], None] | None = None
    # Order in which embedded mode starts services (consumers before producers).
    start_order: int = 50
    # (user ids, API key ids, team ids) -> their emails and names, from the service that
    # owns them (auth), so reports of other services show people instead of ids.
    principal_names: Callable[[set[str], set[str], set[str]], Awaitable[PrincipalNames]] | None = (
        None
    )

    def create_app(self, **kwargs: Any) -> FastAPI:
        """Import and call the service's app factory (`factory`, "module:function") with
        `kwargs` (e.g. `bus=`); returns the FastAPI app."""
        module_name, _, attribute = self.factory.partition(":")
        return cast("FastAPI", getattr(import_module(module_name), attribute)(**kwargs))


@dataclass
class DevContribution:
    """What a service adds to embedded mode: lines to print, extra servers to run."""

    messages: list[str] = field(default_factory=list)
    # (name, ASGI app, port) of extra servers, e.g. the provider simulator.
    extra_servers: list[tuple[str, Any, int]] = field(default_factory=list)
    # Extra server name -> the setting that moves it to another port (named on a conflict).
    port_settings: dict[str, str] = field(default_factory=dict)


def discover() -> list[ServicePlugin]:
    """Every installed service plugin (entry-point group `switchyard.services`), in start order,
    then by name."""
    plugins = [entry.load() for entry in entry_points(group=ENTRY_POINT_GROUP)]
    return sorted(plugins, key=lambda plugin: (plugin.start_order, plugin.name))


def discover_commands() -> list[typer.Typer | Callable[..., Any]]:
    """The commands installed distributions add to the CLI beside the services' (group
    `switchyard.commands`), in the order of their entry point names."""
    found = sorted(entry_points(group=COMMANDS_ENTRY_POINT_GROUP), key=lambda entry: entry.name)
    return [entry.load() for entry in found]


async def lookup_principal_names(
    user_ids: Iterable[str], api_key_ids: Iterable[str], team_ids: Iterable[str] = ()
) -> PrincipalNames:
    """Emails, key names and team names from the installed service that knows them (empty
    if none is installed). Raises what that service's lookup raises (e.g. its database is
    down)."""
    for plugin in discover():
        if plugin.principal_names is not None:
            return await plugin.principal_names(set(user_ids), set(api_key_ids), set(team_ids))
    return PrincipalNames()


def by_name(name: str) -> ServicePlugin:
    """The installed service plugin called `name`. Raises KeyError when there is none."""
    for plugin in discover():
        if plugin.name == name:
            return plugin
    raise KeyError(name)
