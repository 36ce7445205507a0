"""The upstream clients of every deployment: one per (public model, deployment), with its
SDK client and connection pool, created on first use inside the running event loop and
reused for every later call."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from switchyard.common.routing import Deployment
from switchyard.inference.upstream import Upstream, create_upstream

log = structlog.get_logger("switchyard.inference.providers")

ProviderFactory = Callable[[Deployment], Upstream]


@dataclass
class ProviderPool:
    """Keyed by the deployment's whole configuration: after a routing reload that changes a
    deployment, the next request gets a new client; `retire` closes clients no longer in
    the table once the calls they may still serve are over."""

    factory: ProviderFactory = create_upstream
    _providers: dict[tuple[str, Deployment], Upstream] = field(default_factory=dict)
    _closing: set[asyncio.Task[None]] = field(default_factory=set)

    def get(self, model: str, deployment: Deployment) -> Upstream:
        """The upstream client of `deployment` serving the public `model`, created on first use
        and reused after."""
        key = (model, deployment)
        provider = self._providers.get(key)
        if provider is None:
            provider = self._providers[key] = self.factory(deployment)
        return provider

    def retire(self, keep: set[tuple[str, Deployment]], grace_s: float = 600.0) -> None:
        """Close, after `grace_s`, the providers whose (model, deployment) is not in `keep`."""
        stale = [key for key in self._providers if key not in keep]
        for key in stale:
            provider = self._providers.pop(key)
            task = asyncio.get_running_loop().create_task(self._close_later(provider, grace_s))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _close_later(self, provider: Upstream, delay_s: float) -> None:
        try:
            await asyncio.sleep(delay_s)
        finally:
            await _close_quietly(provider)

    async def aclose(self) -> None:
        """Close every client now, those waiting out their grace period included."""
        providers, self._providers = list(self._providers.values()), {}
        for task in list(self._closing):
            task.cancel()  # closes its provider now
        closing: list[Awaitable[None]] = [_close_quietly(provider) for provider in providers]
        await asyncio.gather(*closing, *self._closing, return_exceptions=True)


async def _close_quietly(provider: Upstream) -> None:
    try:
        await provider.aclose()
    except Exception as exc:  # noqa: BLE001 - closing must not fail shutdown
        log.warning("provider did not close cleanly", error=repr(exc))
