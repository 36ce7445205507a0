"""A service's lifespan owns the bus it made and only that one: a bus made from the
settings is started and, on the way out, stopped before the components built on it are
closed; a bus the caller gave is neither started nor stopped."""

from __future__ import annotations

from contextlib import AsyncExitStack

import pytest

from switchyard.common import bus as bus_module
from switchyard.common.bus import InMemoryBus, enter_bus
from switchyard.common.settings import ServiceSettings


class RecordingBus(InMemoryBus):
    """An in-memory bus writing its start and stop into a shared journal."""

    def __init__(self, journal: list[str]) -> None:
        super().__init__()
        self.journal = journal

    async def start(self) -> None:
        self.journal.append("bus started")
        await super().start()

    async def stop(self) -> None:
        self.journal.append("bus stopped")
        await super().stop()


class Components:
    """What a composition root builds: closed once, after everything on it stopped."""

    def __init__(self, bus: InMemoryBus, journal: list[str]) -> None:
        self.bus = bus
        self.journal = journal

    async def close(self) -> None:
        self.journal.append("components closed")


async def test_a_bus_made_from_the_settings_is_started_then_stopped_before_closing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    journal: list[str] = []
    made: list[str] = []

    def create_bus(settings: ServiceSettings, client_id: str) -> RecordingBus:
        made.append(client_id)
        return RecordingBus(journal)

    monkeypatch.setattr(bus_module, "create_bus", create_bus)
    async with AsyncExitStack() as stack:
        bus, components = await enter_bus(
            stack,
            ServiceSettings(),
            None,
            client_id="svc-1",
            build=lambda bus: Components(bus, journal),
        )
        assert components.bus is bus and made == ["svc-1"]
        assert journal == ["bus started"]

    assert journal == ["bus started", "bus stopped", "components closed"]


async def test_a_given_bus_is_the_callers_to_start_and_stop() -> None:
    journal: list[str] = []
    given = RecordingBus(journal)
    async with AsyncExitStack() as stack:
        bus, components = await enter_bus(
            stack,
            ServiceSettings(),
            given,
            client_id="svc-1",
            build=lambda bus: Components(bus, journal),
        )
        assert bus is given and components.bus is given

    assert journal == ["components closed"]
