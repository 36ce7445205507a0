"""`/internal/v1/cache`: the response cache's shared store, for the gateway replicas
(internal token and the caller's identity required; entries are scoped to the caller's
tenant). A tenant storing metadata only keeps no entry: `PUT` answers `stored: false`.

- `GET /internal/v1/cache/settings`: the tenant's cache settings (and whether it stores
  content), which each gateway keeps for a few seconds;
- `GET /internal/v1/cache/entries/{key}`: a live entry, or 404;
- `PUT /internal/v1/cache/entries/{key}`: store or replace one."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path
from pydantic import Field

from switchyard.common.errors import APIError
from switchyard.common.http import internal_token_dependency
from switchyard.common.jsonbody import BoundedJsonRoute
from switchyard.common.nulfree import NulFreeBody
from switchyard.history.api.dependencies import CacheDep, CallerDep, TenantsDep
from switchyard.history.api.internal import MAX_KEPT_HEADERS, HeaderName, HeaderValue

# Keys are SHA-256 digests in hex.
KEY_PATTERN = r"^[0-9a-f]{64}$"
KeyParam = Annotated[str, Path(pattern=KEY_PATTERN, description="SHA-256 of the request.")]
# An entry lives at most a week, whatever is asked.
MAX_TTL_S = 7 * 86_400


class CacheEntryBody(NulFreeBody):
    """A response to store in the tenant's response cache, as the gateway sends it.

    `api` is the client API the response is shaped in (`openai.chat_completions`, ...), `response`
    the non-streamed reply body, `stream_events` the SSE events of a streamed one, `ttl_s` how long
    the entry lives, in seconds (at most `MAX_TTL_S`)."""

    api: str = Field(min_length=1, max_length=32)
    model: str = Field(min_length=1, max_length=256)
    response: dict[str, Any]
    stream_events: list[dict[str, Any]] | None = None
    source_request_id: str = Field(min_length=1, max_length=64)
    ttl_s: float = Field(gt=0, le=MAX_TTL_S)
    headers: dict[HeaderName, HeaderValue] | None = Field(
        default=None,
        max_length=MAX_KEPT_HEADERS,
        description="Response headers describing the body (lower-case names), given back "
        "with it on a hit, e.g. `x-switchyard-token-count`.",
    )


def cache_router(internal_token: str) -> APIRouter:
    """The internal response cache API (`/internal/v1/cache`): the tenant's cache settings and its
    entries by key, for the gateway only (every route needs the internal token, else 401)."""
    router = APIRouter(
        prefix="/internal/v1/cache",
        tags=["internal"],
        route_class=BoundedJsonRoute,
        dependencies=[Depends(internal_token_dependency(internal_token))],
    )

    @router.get("/settings")
    async def cache_settings(caller: CallerDep, tenants: TenantsDep) -> dict[str, Any]:
        """The tenant's response cache settings."""
        settings = await tenants.get(caller.tenant)
        return {
            "cache_enabled": bool(settings.cache_enabled),
            "cache_ttl_s": settings.cache_ttl_s,
            "store_content": settings.store_content,
        }

    @router.get("/entries/{key}")
    async def get_entry(key: KeyParam, caller: CallerDep, store: CacheDep) -> dict[str, Any]:
        """The tenant's live entry for this key."""
        entry = await store.get(caller.tenant, key)
        if entry is None:
            raise APIError(404, "No cached answer for this key.", code="cache_miss")
        return entry.public()

    @router.put("/entries/{key}")
    async def put_entry(
        key: KeyParam, body: CacheEntryBody, caller: CallerDep, store: CacheDep, tenants: TenantsDep
    ) -> dict[str, Any]:
        """Store an answer (nothing for a tenant storing metadata only)."""
        if not (await tenants.get(caller.tenant)).store_content:
            return {"stored": False, "reason": "metadata_only"}
        expires_at = await store.put(
            caller.tenant,
            key,
            api=body.api,
            model=body.model,
            response=body.response,
            stream_events=body.stream_events,
            source_request_id=body.source_request_id,
            ttl_s=body.ttl_s,
            headers=dict(body.headers) if body.headers else None,
        )
        return {"stored": True, "expires_at": expires_at.isoformat()}

    return router
