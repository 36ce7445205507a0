"""Composition root: wires the bus, the auth client and the routing table into the
objects the routes use. Tests build a `Gateway` with fakes instead."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx

from switchyard.common.bus import EventBus, Subscription
from switchyard.common.routing import RoutingTable, load_routing
from switchyard.common.topics import Topics
from switchyard.gateway.auth import Authenticator
from switchyard.gateway.config import Settings
from switchyard.gateway.replies import PendingReplies


@dataclass
class Gateway:
    settings: Settings
    bus: EventBus
    topics: Topics
    authenticator: Authenticator
    routing: RoutingTable
    http: httpx.AsyncClient
    pending: PendingReplies = field(default_factory=PendingReplies)
    reply_partition: int = 0
    replies_listener: Subscription | None = None
    in_flight: int = 0

    async def listening_for_replies(self) -> bool:
        return self.replies_listener is not None


def build_gateway(settings: Settings, bus: EventBus) -> Gateway:
    # One pooled client for every call to auth and history, closed with the app.
    http = httpx.AsyncClient(limits=httpx.Limits(max_connections=200, max_keepalive_connections=50))
    authenticator = Authenticator(
        http,
        auth_url=settings.auth_url,
        internal_token=settings.internal_token,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        key_ttl_s=settings.api_key_cache_ttl_s,
        negative_ttl_s=settings.api_key_negative_cache_ttl_s,
        jwks_min_interval_s=settings.jwks_refresh_min_interval_s,
    )
    return Gateway(
        settings=settings,
        bus=bus,
        topics=Topics(settings.topic_prefix),
        authenticator=authenticator,
        routing=load_routing(settings.routing_file, settings.simulator_url),
        http=http,
    )
