"""A signed-in user's own API keys: create (the secret is in that response only), list,
revoke. Revocation reaches every gateway through the auth events topic within a second.

A member's key belongs to the member's team, and a member may only tighten its limits
(`Governance`): naming no team or another one, or loosening a limit, is a 403 `admin_only`
naming the field. Admins may do either on the admin routes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Response, status
from pydantic import BaseModel, Field

from switchyard.auth import scopes as known_scopes
from switchyard.auth.api.deps import AccessClaimsDep, CurrentUser, GovernanceDep, Service
from switchyard.auth.api.limit_fields import CacheOut, LimitsIn, LimitsOut
from switchyard.auth.api.routing import StrictQueryRoute
from switchyard.auth.governance import NotPermitted, TeamNotFound
from switchyard.auth.metrics import API_KEYS_CREATED, REVOCATIONS
from switchyard.auth.models import ApiKey, User
from switchyard.auth.service import (
    MAX_EXPIRY_DAYS,
    ApiKeyNotFound,
    ExceedsCredential,
    InvalidInput,
    IssuedApiKey,
    TooManyApiKeys,
    credential_models,
    expiry_in_days,
)
from switchyard.auth.tokens import AccessClaims
from switchyard.common.errors import APIError

router = APIRouter(prefix="/v1/api-keys", tags=["api-keys"], route_class=StrictQueryRoute)


class CreateApiKey(LimitsIn):
    """A new key; its limits must be within its user's, team's and tenant's."""

    team_id: str | None = Field(
        default=None,
        description="The key's team: its user's team when omitted. Members may only name "
        "their own team; admins may also give null (the key counts against no team).",
    )
    name: str = Field(default="default", min_length=1, max_length=200)
    scopes: list[str] | None = Field(
        default=None,
        description=f"Subset of {list(known_scopes.API_KEY_SCOPES)} within the access "
        f"token's own scopes; when omitted, {list(known_scopes.DEFAULT_API_KEY_SCOPES)} "
        "(those the token holds).",
    )
    allowed_models: list[str] | None = Field(
        default=None,
        description="Models this key may call, within the access token's own models; when "
        "omitted, the token's models (any model for an unrestricted token).",
    )
    expires_in_days: int | None = Field(default=None, gt=0, le=MAX_EXPIRY_DAYS)


class CreatedApiKey(BaseModel):
    """A key just created: the secret itself (shown in this response only), its id, visible
    prefix, scopes, models, expiry, team and limits."""

    key: str = Field(description="The secret. It is shown only in this response; store it now.")
    key_id: str
    name: str
    prefix: str
    tenant: str
    scopes: list[str]
    allowed_models: list[str] | None
    expires_at: datetime | None
    created_at: datetime
    team_id: str | None = None
    limits: LimitsOut | None = None


class ApiKeyOut(BaseModel):
    """A key as lists show it: never the secret or its hash, only the visible prefix."""

    key_id: str
    name: str
    prefix: str
    user_id: str
    tenant: str
    scopes: list[str]
    allowed_models: list[str] | None
    status: Literal["active", "revoked", "expired"]
    expires_at: datetime | None
    revoked_at: datetime | None
    created_at: datetime
    team_id: str | None = None
    limits: LimitsOut | None = None
    # The key's response cache opt-in (admins set it; null fields: as the team or tenant).
    cache: CacheOut | None = None

    @classmethod
    def of(cls, record: ApiKey, now: datetime | None = None) -> ApiKeyOut:
        """The list view of `record`; its `status` is `revoked`, `expired` (at `now`, default:
        the current time) or `active`."""
        now = now or datetime.now(UTC)
        if record.revoked_at is not None:
            state: Literal["active", "revoked", "expired"] = "revoked"
        elif record.expires_at is not None and record.expires_at <= now:
            state = "expired"
        else:
            state = "active"
        return cls(
            key_id=record.id,
            name=record.name,
            prefix=record.prefix,
            user_id=record.user_id,
            tenant=record.tenant,
            scopes=list(record.scopes),
            allowed_models=record.allowed_models,
            status=state,
            expires_at=record.expires_at,
            revoked_at=record.revoked_at,
            created_at=record.created_at,
            team_id=record.team_id,
            limits=LimitsOut.of(record),
            cache=CacheOut(cache_enabled=record.cache_enabled, cache_ttl_s=record.cache_ttl_s),
        )


class ApiKeyList(BaseModel):
    """API keys, oldest first."""

    object: Literal["list"] = "list"
    data: list[ApiKeyOut]


def require_keys_scope(claims: AccessClaims) -> None:
    """Raise APIError 403 (`insufficient_scope`) unless the access token holds the `keys:write`
    scope."""
    if known_scopes.KEYS_WRITE not in claims.scopes:
        raise APIError(
            403,
            f"The access token lacks the '{known_scopes.KEYS_WRITE}' scope.",
            code="insufficient_scope",
        )


async def keys_writer(claims: AccessClaimsDep) -> AccessClaims:
    """The request's verified access token claims, which must hold the `keys:write` scope.
    Raises APIError 401 as `get_access_claims` does, 403 (`insufficient_scope`) without the
    scope. A dependency, so the scope is judged before the request body is."""
    require_keys_scope(claims)
    return claims


KeysWriterClaims = Annotated[AccessClaims, Depends(keys_writer)]


def is_member(user: User, claims: AccessClaims) -> bool:
    """Whether `user` is bound as a member on their own keys: any role but `admin`, and an
    admin whose access token lacks the `admin` scope (a narrowed token carries no admin
    powers)."""
    return user.role != "admin" or known_scopes.ADMIN not in claims.scopes


def not_permitted(exc: NotPermitted) -> APIError:
    """The 403 (`admin_only`, naming the field) of a change only an admin may make."""
    return APIError(403, str(exc), param=exc.param, code="admin_only")


def too_many_keys(exc: TooManyApiKeys) -> APIError:
    """The 409 (`too_many_api_keys`) of a key its user has no room for."""
    return APIError(409, str(exc), code="too_many_api_keys")


def created_key(issued: IssuedApiKey) -> CreatedApiKey:
    """The create response of a newly issued key: its secret and its record's fields."""
    record = issued.record
    return CreatedApiKey(
        key=issued.key,
        key_id=record.id,
        name=record.name,
        prefix=record.prefix,
        tenant=record.tenant,
        scopes=record.scopes,
        allowed_models=record.allowed_models,
        expires_at=record.expires_at,
        created_at=record.created_at,
        team_id=record.team_id,
        limits=LimitsOut.of(record),
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=CreatedApiKey,
    responses={409: {"description": "The caller holds the most live keys allowed."}},
)
async def create_api_key(
    body: CreateApiKey, user: CurrentUser, claims: KeysWriterClaims, governance: GovernanceDep
) -> CreatedApiKey:
    """Create an API key for the caller, with limits within their team's and their own;
    the response holds the secret, once. The key never holds more scopes or models than
    the access token creating it (403 `insufficient_scope`), and a member's key is in the
    member's team (another team or null: 403 `admin_only`)."""
    try:
        issued = await governance.create_api_key(
            user_id=user.id,
            limits=body.patch(),
            team_id=body.team_id if "team_id" in body.model_fields_set else False,
            name=body.name,
            scopes=body.scopes,
            allowed_models=body.allowed_models,
            expires_at=expiry_in_days(body.expires_in_days),
            creator_scopes=claims.scopes,
            creator_models=credential_models(claims.allowed_models, user),
            creator_follows_team=claims.allowed_models is None,
            member=is_member(user, claims),
        )
    except NotPermitted as exc:
        raise not_permitted(exc) from None
    except TeamNotFound:
        raise APIError(404, "No such team.", param="team_id", code="team_not_found") from None
    except InvalidInput as exc:
        raise APIError(400, str(exc), param=exc.param, code="invalid_request") from None
    except ExceedsCredential as exc:
        raise APIError(403, str(exc), param=exc.param, code="insufficient_scope") from None
    except TooManyApiKeys as exc:
        raise too_many_keys(exc) from None
    API_KEYS_CREATED.inc()
    return created_key(issued)


@router.get("", response_model=ApiKeyList)
async def list_api_keys(user: CurrentUser, service: Service) -> ApiKeyList:
    """The caller's keys, oldest first, with their state (never their secrets)."""
    keys = await service.list_api_keys(user_id=user.id)
    return ApiKeyList(data=[ApiKeyOut.of(key) for key in keys])


@router.delete(
    "/{key_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={404: {"description": "No such key among the caller's keys."}},
)
async def revoke_api_key(
    key_id: str, user: CurrentUser, claims: KeysWriterClaims, service: Service
) -> Response:
    """Revoke one of the caller's keys; every gateway refuses it within a second."""
    try:
        await service.revoke_api_key(key_id, user_id=user.id, reason="owner")
    except ApiKeyNotFound:
        raise APIError(404, "No such API key.", code="api_key_not_found") from None
    REVOCATIONS.labels("api_key").inc()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
