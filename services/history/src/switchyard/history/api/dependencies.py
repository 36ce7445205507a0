"""Dependencies of the history routes: the caller's identity and the components."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Header, Request

from switchyard.common.errors import APIError
from switchyard.common.headers import (
    API_KEY_ONLY_HEADER,
    ROLE_HEADER,
    TENANT_HEADER,
    USER_ID_HEADER,
)
from switchyard.history.bootstrap import HistoryComponents
from switchyard.history.cache import CacheStore
from switchyard.history.idempotency import IdempotencyStore
from switchyard.history.queries import Caller, HistoryQueries
from switchyard.history.replays import ReplayStore
from switchyard.history.tenants import TenantSettingsStore


async def caller_identity(
    tenant: Annotated[str | None, Header(alias=TENANT_HEADER)] = None,
    user_id: Annotated[str | None, Header(alias=USER_ID_HEADER)] = None,
    role: Annotated[str | None, Header(alias=ROLE_HEADER)] = None,
    api_key_only: Annotated[str | None, Header(alias=API_KEY_ONLY_HEADER)] = None,
) -> Caller:
    """The identity the gateway verified; without it nobody's history can be scoped. With
    `x-switchyard-api-key-only`, only what that API key made is the caller's."""
    missing = [
        name
        for name, value in (
            (TENANT_HEADER, tenant),
            (USER_ID_HEADER, user_id),
            (ROLE_HEADER, role),
        )
        if not value
    ]
    if missing:
        raise APIError(
            401,
            f"caller identity required: missing header {', '.join(missing)}",
            code="missing_identity",
        )
    return Caller(
        tenant=tenant,  # type: ignore[arg-type]
        user_id=user_id,  # type: ignore[arg-type]
        role=role,  # type: ignore[arg-type]
        api_key_id=api_key_only or None,
    )


def user_filter(caller: Caller, user_id: str | None) -> str | None:
    """The `user_id` filter `caller` reads with: what they asked for if they see the whole
    tenant (admins; None is everyone), else their own id. Raises `APIError` 403
    `admin_only` when anyone else names another user: answering with their own figures
    under the name they asked for would mislead."""
    if caller.sees_whole_tenant:
        return user_id
    if user_id is not None and user_id != caller.user_id:
        raise APIError(
            403,
            "Only an admin of the tenant can select another user's requests: 'user_id' "
            "must be your own or left out.",
            param="user_id",
            code="admin_only",
        )
    return caller.user_id


def components(request: Request) -> HistoryComponents:
    """The service's components, set on `app.state.history` by the app factory."""
    return cast(HistoryComponents, request.app.state.history)


async def history_queries(request: Request) -> HistoryQueries:
    """The queries, once this process's recorder has written what was published before the
    request (embedded mode: a reply just delivered is already `completed` when read)."""
    barrier = getattr(request.app.state, "read_barrier", None)
    if barrier is not None:
        await barrier()
    return components(request).queries


def tenant_settings(request: Request) -> TenantSettingsStore:
    """The per-tenant settings store (content storage, retention, webhook secret, cache)."""
    return components(request).tenants


def idempotency_store(request: Request) -> IdempotencyStore:
    """The store of `Idempotency-Key` claims and their recorded responses."""
    return components(request).idempotency


def cache_store(request: Request) -> CacheStore:
    """Where cached answers are read and written, per tenant and key."""
    return components(request).cache


def replay_store(request: Request) -> ReplayStore:
    """The replay store (create, list, stop and resume replays)."""
    return components(request).replays


CallerDep = Annotated[Caller, Depends(caller_identity)]
QueriesDep = Annotated[HistoryQueries, Depends(history_queries)]
TenantsDep = Annotated[TenantSettingsStore, Depends(tenant_settings)]
IdempotencyDep = Annotated[IdempotencyStore, Depends(idempotency_store)]
CacheDep = Annotated[CacheStore, Depends(cache_store)]
ComponentsDep = Annotated[HistoryComponents, Depends(components)]
