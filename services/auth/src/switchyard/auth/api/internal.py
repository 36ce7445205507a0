"""Endpoints only other Switchyard services call, behind the internal token."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import AwareDatetime, BaseModel, Field

from switchyard.auth.api.deps import GovernanceDep, Service
from switchyard.auth.api.routing import CredentialsFirstRoute
from switchyard.auth.metrics import API_KEY_LOOKUPS
from switchyard.auth.service import AuthError
from switchyard.common.errors import APIError
from switchyard.common.governance import Limits
from switchyard.common.http import internal_token_dependency


class ApiKeyLookup(BaseModel):
    """The hash of an API key a gateway was shown."""

    secret_hash: str = Field(
        pattern=r"^[0-9a-fA-F]{64}$", description="sha256 hex digest of the presented API key."
    )


class RevokedTokenOut(BaseModel):
    """An access token (`jti`) refused until it expires (`expires_at`)."""

    jti: str
    expires_at: datetime


class RevokedSessionOut(BaseModel):
    """A sign-in session whose access tokens are all refused until `expires_at`."""

    sid: str = Field(description="Token family id, the `sid` claim of its access tokens.")
    expires_at: datetime = Field(description="No access token of it is valid after this.")


class RevocationsOut(BaseModel):
    """Everything a gateway must refuse right now; with the auth events that follow, its
    complete revocation state."""

    generated_at: datetime
    revoked_tokens: list[RevokedTokenOut]
    revoked_sessions: list[RevokedSessionOut]
    revoked_api_keys: list[str]
    disabled_users: list[str]


class UserStatusOut(BaseModel):
    """Whether a user may currently use their tokens and API keys, and the models their
    team allows, which bound every access token of theirs (tokens do not carry them)."""

    user_id: str
    tenant: str
    active: bool = Field(description="False while the user is disabled.")
    team_id: str | None = Field(default=None, description="The user's team; null: none.")
    team_models: list[str] | None = Field(
        default=None,
        description="The models the user's team allows; null: no team, or a team without a "
        "list (any model).",
    )


class ApiKeyIdentityOut(BaseModel):
    """Who an API key belongs to and what it may do: owner, tenant, role, scopes, models
    (null: any), expiry and team."""

    key_id: str
    user_id: str
    tenant: str
    role: str
    scopes: list[str]
    allowed_models: list[str] | None
    expires_at: datetime | None
    team_id: str | None = None


class ApiKeyStateOut(ApiKeyIdentityOut):
    """An API key found by its id, in whatever state: its identity, whether it is revoked
    and whether its user is enabled."""

    revoked: bool = Field(description="True once the key has been revoked.")
    user_active: bool = Field(description="False while the key's user is disabled.")


class LevelPolicyOut(BaseModel):
    """One level (tenant, team, user or API key) of a caller's policy: its id, limits and
    budget anchor, and for teams and keys their response cache opt-in."""

    id: str
    limits: Limits
    budget_anchor_at: datetime | None
    # Team and key levels: their response cache opt-in (null: not set at this level).
    cache_enabled: bool | None = None
    cache_ttl_s: int | None = None


class PolicyOut(BaseModel):
    """The limits of every level above one caller: what a gateway enforces."""

    tenant: str
    team_id: str | None
    levels: dict[str, LevelPolicyOut] = Field(
        description="By level: api_key (if the caller used one), user, team (if any), tenant."
    )
    rate_limit_failure_mode: str
    budget_failure_mode: str


def internal_router(internal_token: str) -> APIRouter:
    """The service-to-service API under `/internal/v1` (API key lookup by hash or id, user status,
    policies, revocations), for gateways only: every route answers 401 unless the request's
    `x-switchyard-internal-token` header carries `internal_token`."""
    router = APIRouter(
        prefix="/internal/v1",
        tags=["internal"],
        route_class=CredentialsFirstRoute,
        dependencies=[Depends(internal_token_dependency(internal_token))],
    )

    @router.post("/api-keys/lookup", response_model=ApiKeyIdentityOut)
    async def lookup_api_key(body: ApiKeyLookup, service: Service) -> ApiKeyIdentityOut:
        """Resolve a key hash to its owner; 404 if unknown, revoked, expired or user disabled."""
        identity = await service.lookup_api_key(body.secret_hash)
        if identity is None:
            API_KEY_LOOKUPS.labels("not_found").inc()
            # One answer for every reason, so the gateway never learns more than "no".
            raise APIError(404, "API key not found.", code="api_key_not_found")
        API_KEY_LOOKUPS.labels("found").inc()
        return ApiKeyIdentityOut(**identity.__dict__)

    @router.get("/api-keys/{key_id}", response_model=ApiKeyStateOut)
    async def api_key_state(key_id: str, service: Service) -> ApiKeyStateOut:
        """A key by its id, whatever its state (its `expires_at` tells whether it expired):
        a gateway checks the key a replayed request is billed to (its tenant, user, models,
        expiry) before admitting it. 404 if there is no such key. Reads only."""
        state = await service.api_key_state(key_id)
        if state is None:
            raise APIError(404, "API key not found.", code="api_key_not_found")
        return ApiKeyStateOut(
            **state.identity.__dict__, revoked=state.revoked, user_active=state.user_active
        )

    @router.get("/users/{user_id}", response_model=UserStatusOut)
    async def user_status(user_id: str, service: Service) -> UserStatusOut:
        """Whether a user exists and is enabled, and the models their team allows: a
        gateway asks once per user it has not seen lately (tokens of deleted users are
        refused; disabled ones also arrive as events) and bounds the user's access tokens
        by those models. 404 if there is no such user."""
        user = await service.user_by_id(user_id)
        if user is None:
            raise APIError(404, "No such user.", code="user_not_found")
        team = user.team if user.team_id is not None else None
        return UserStatusOut(
            user_id=user.id,
            tenant=user.tenant,
            active=not user.disabled,
            team_id=user.team_id,
            team_models=team.allowed_models if team is not None else None,
        )

    @router.get("/policy", response_model=PolicyOut)
    async def policy(
        governance: GovernanceDep, user_id: str, key_id: str | None = None
    ) -> PolicyOut:
        """The limits of a user (through one of their keys) at every level; 404 if unknown."""
        try:
            found = await governance.policy(user_id, key_id)
        except AuthError:
            raise APIError(404, "No such user or API key.", code="not_found") from None
        return PolicyOut(
            tenant=found.tenant,
            team_id=found.team_id,
            levels={
                name: LevelPolicyOut(
                    id=level.scope_id,
                    limits=level.limits,
                    budget_anchor_at=level.budget_anchor_at,
                    cache_enabled=level.cache_enabled,
                    cache_ttl_s=level.cache_ttl_s,
                )
                for name, level in found.levels.items()
            },
            rate_limit_failure_mode=found.rate_limit_failure_mode,
            budget_failure_mode=found.budget_failure_mode,
        )

    @router.get("/revocations", response_model=RevocationsOut)
    async def revocations(
        service: Service,
        api_keys_revoked_since: Annotated[
            AwareDatetime | None,
            Query(
                description="Only API keys revoked at or after this instant (with its time "
                "zone); all revoked keys not yet expired when absent."
            ),
        ] = None,
    ) -> RevocationsOut:
        """Current revocations: a gateway loads them at start-up, after it has started
        listening to the auth events topic, so nothing falls between the two. It names how
        far back it needs revoked API keys: only as far as an answer about a key it may
        still hold from before a revocation, so the list does not grow for good."""
        snapshot = await service.revocations(api_keys_revoked_since=api_keys_revoked_since)
        return RevocationsOut(
            generated_at=snapshot.generated_at,
            revoked_tokens=[
                RevokedTokenOut(jti=jti, expires_at=expires_at)
                for jti, expires_at in snapshot.revoked_tokens
            ],
            revoked_sessions=[
                RevokedSessionOut(sid=sid, expires_at=expires_at)
                for sid, expires_at in snapshot.revoked_sessions
            ],
            revoked_api_keys=snapshot.revoked_api_keys,
            disabled_users=snapshot.disabled_users,
        )

    return router
