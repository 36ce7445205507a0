"""Teams, budgets and rate limits in the admin API, and the caller's own view of them.

- `/v1/admin/teams` (`GET`, `POST`), `/v1/admin/teams/{id}` (`GET`, `PATCH`, `DELETE`);
- `PATCH /v1/admin/users/{id}`: a user's team and limits;
- `POST /v1/admin/api-keys`: a key for any user of the tenant, with team and limits;
  `PATCH /v1/admin/api-keys/{id}`: a key's limits and response cache opt-in
  (`cache_enabled`, `cache_ttl_s`; teams take them on `PATCH /v1/admin/teams/{id}`);
- `GET /v1/admin/tenant`: the tenant's own limits and failure modes (set by operators
  with `switchyard tenants update`);
- `GET /v1/me`: the caller, their team and every limit that applies to them.

Admins act on their own tenant only (anything else is 404); limits are validated by
`switchyard.common.governance` and a limit above its parent's is a 400 naming the field.
Only admins set a key's cache opt-in: the self-service `PATCH /v1/api-keys/{id}` refuses it
(403). On that route a member may only tighten their key's limits and keep it in their team
(403 `admin_only` naming the field otherwise; see `Governance.update_api_key`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response, status
from pydantic import BaseModel, Field, field_validator

from switchyard.auth.api.api_keys import (
    ApiKeyOut,
    CreateApiKey,
    CreatedApiKey,
    KeysWriterClaims,
    created_key,
    is_member,
    not_permitted,
    too_many_keys,
)
from switchyard.auth.api.deps import AccessClaimsDep, AdminUser, CurrentUser, GovernanceDep
from switchyard.auth.api.limit_fields import CacheIn, CacheOut, LimitsIn, LimitsOut
from switchyard.auth.api.routing import StrictQueryRoute
from switchyard.auth.governance import (
    DuplicateTeam,
    NotPermitted,
    Policy,
    TeamNotEmpty,
    TeamNotFound,
)
from switchyard.auth.metrics import API_KEYS_CREATED
from switchyard.auth.models import Team, Tenant
from switchyard.auth.service import (
    ApiKeyNotFound,
    AuthError,
    ExceedsCredential,
    InvalidInput,
    KeyAlreadyRevoked,
    TooManyApiKeys,
    UserNotFound,
    credential_models,
    expiry_in_days,
)
from switchyard.common.errors import APIError

router = APIRouter(tags=["teams and limits"], route_class=StrictQueryRoute)


class CreateTeam(LimitsIn, CacheIn):
    """A new team of the caller's tenant: a name unique in the tenant, the models its members
    may use (null: any the tenant may), its limits and response cache opt-in."""

    name: str = Field(min_length=1, max_length=200)
    allowed_models: list[str] | None = None


class UpdateTeam(LimitsIn, CacheIn):
    """Changes to a team: only the fields sent change (null removes a limit or the model
    list)."""

    name: str | None = Field(default=None, min_length=1, max_length=200)
    allowed_models: list[str] | None = None

    @field_validator("name")
    @classmethod
    def _name_not_removed(cls, name: str | None) -> str:
        # Run only on a name sent: null would remove it, and a team must keep one.
        if name is None:
            raise ValueError("a team's name cannot be removed; send a new name or leave it out")
        return name


class TeamOut(BaseModel):
    """A team with its models, limits and response cache opt-in."""

    id: str
    tenant: str
    name: str
    allowed_models: list[str] | None
    limits: LimitsOut
    cache: CacheOut = Field(default_factory=CacheOut)
    created_at: datetime

    @classmethod
    def of(cls, team: Team) -> TeamOut:
        """The API's view of the team row `team`."""
        return cls(
            id=team.id,
            tenant=team.tenant,
            name=team.name,
            allowed_models=team.allowed_models,
            limits=LimitsOut.of(team),
            cache=CacheOut(cache_enabled=team.cache_enabled, cache_ttl_s=team.cache_ttl_s),
            created_at=team.created_at,
        )


class TeamList(BaseModel):
    """The teams of the caller's tenant, oldest first."""

    object: Literal["list"] = "list"
    data: list[TeamOut]


class UpdateUser(LimitsIn):
    """Changes to a user: their team (null: none) and limits; only the fields sent change,
    and limits must stay within the team's and tenant's."""

    team_id: str | None = Field(default=None, description="The user's team; null: none.")


class UserLimitsOut(BaseModel):
    """A user with their team and their own limits."""

    id: str
    email: str
    tenant: str
    role: str
    team_id: str | None
    limits: LimitsOut


class AdminCreateApiKey(CreateApiKey):
    """A new key for any user of the caller's tenant (`user_id`), with its team, scopes,
    models, expiry and limits."""

    user_id: str = Field(description="The user of the caller's tenant who owns the key.")


class UpdateApiKey(LimitsIn, CacheIn):
    """Changes to a key: its team, limits and response cache opt-in; only the fields sent
    change."""

    team_id: str | None = Field(
        default=None,
        description="The key's team (its user's team), or null for none (admins only: on "
        "PATCH /v1/api-keys/{key_id} a member's key stays in the member's team).",
    )


class TenantOut(BaseModel):
    """The caller's tenant: its own limits, and what gateways do when the limit store cannot
    answer (`open`: admit without counting, `closed`: refuse), for rate limits and budgets."""

    tenant: str
    limits: LimitsOut
    rate_limit_failure_mode: str
    budget_failure_mode: str


class LevelOut(BaseModel):
    """One level whose limits apply to the caller: its id and limits."""

    id: str
    limits: LimitsOut


class MeOut(BaseModel):
    """The caller and every level whose limits apply to their requests."""

    id: str
    email: str
    tenant: str
    role: str
    team_id: str | None
    levels: dict[str, LevelOut]


def _bad_request(exc: InvalidInput) -> APIError:
    return APIError(400, str(exc), param=exc.param, code="invalid_request")


def _levels(policy: Policy) -> dict[str, LevelOut]:
    levels = {}
    for name, level in policy.levels.items():
        limits = level.limits.model_dump()
        levels[name] = LevelOut(
            id=level.scope_id,
            limits=LimitsOut(**limits, budget_anchor_at=level.budget_anchor_at),
        )
    return levels


_TEAM_404: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such team in the caller's tenant."}
}


@router.get("/v1/admin/teams", response_model=TeamList)
async def list_teams(admin: AdminUser, governance: GovernanceDep) -> TeamList:
    """Every team of the caller's tenant."""
    return TeamList(data=[TeamOut.of(team) for team in await governance.list_teams(admin.tenant)])


@router.post("/v1/admin/teams", status_code=status.HTTP_201_CREATED, response_model=TeamOut)
async def create_team(body: CreateTeam, admin: AdminUser, governance: GovernanceDep) -> TeamOut:
    """Create a team with its budget and rate limits."""
    try:
        team = await governance.create_team(
            tenant=admin.tenant,
            name=body.name,
            limits=body.patch(),
            allowed_models=body.allowed_models,
            cache=body.cache_patch(),
        )
    except InvalidInput as exc:
        raise _bad_request(exc) from None
    except DuplicateTeam as exc:
        raise APIError(409, str(exc), param="name", code="team_exists") from None
    return TeamOut.of(team)


@router.get("/v1/admin/teams/{team_id}", response_model=TeamOut, responses=_TEAM_404)
async def get_team(team_id: str, admin: AdminUser, governance: GovernanceDep) -> TeamOut:
    """One team of the caller's tenant."""
    try:
        return TeamOut.of(await governance.team(team_id, admin.tenant))
    except TeamNotFound:
        raise APIError(404, "No such team.", code="team_not_found") from None


@router.patch("/v1/admin/teams/{team_id}", response_model=TeamOut, responses=_TEAM_404)
async def update_team(
    team_id: str, body: UpdateTeam, admin: AdminUser, governance: GovernanceDep
) -> TeamOut:
    """Rename a team or change its limits; every gateway applies them within a second."""
    try:
        team = await governance.update_team(
            team_id,
            tenant=admin.tenant,
            name=body.name,
            limits=body.patch(),
            allowed_models=body.allowed_models
            if "allowed_models" in body.model_fields_set
            else False,
            cache=body.cache_patch(),
        )
    except TeamNotFound:
        raise APIError(404, "No such team.", code="team_not_found") from None
    except InvalidInput as exc:
        raise _bad_request(exc) from None
    except DuplicateTeam as exc:
        raise APIError(409, str(exc), param="name", code="team_exists") from None
    return TeamOut.of(team)


@router.delete(
    "/v1/admin/teams/{team_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={
        **_TEAM_404,
        409: {"description": "The team has members or unrevoked keys, and `force` is not set."},
    },
)
async def delete_team(
    team_id: str,
    admin: AdminUser,
    governance: GovernanceDep,
    force: Annotated[
        bool,
        Query(
            description="Delete the team although it has members or unrevoked keys, which "
            "then have no team, and so none of its limits and model list."
        ),
    ] = False,
) -> Response:
    """Delete a team. One with members or unrevoked keys is refused (409 `team_not_empty`)
    unless `force=true`: they would stay, without a team's limits and model list."""
    try:
        await governance.delete_team(team_id, tenant=admin.tenant, force=force)
    except TeamNotFound:
        raise APIError(404, "No such team.", code="team_not_found") from None
    except TeamNotEmpty as exc:
        raise APIError(409, str(exc), param="force", code="team_not_empty") from None
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.patch(
    "/v1/admin/users/{user_id}",
    response_model=UserLimitsOut,
    responses={404: {"description": "No such user or team in the caller's tenant."}},
)
async def update_user(
    user_id: str, body: UpdateUser, admin: AdminUser, governance: GovernanceDep
) -> UserLimitsOut:
    """Move a user into a team (their keys follow) and change their limits."""
    try:
        user = await governance.update_user(
            user_id,
            tenant=admin.tenant,
            team_id=body.team_id if "team_id" in body.model_fields_set else False,
            limits=body.patch(),
        )
    except UserNotFound:
        raise APIError(404, "No such user.", code="user_not_found") from None
    except TeamNotFound:
        raise APIError(404, "No such team.", param="team_id", code="team_not_found") from None
    except InvalidInput as exc:
        raise _bad_request(exc) from None
    return UserLimitsOut(
        id=user.id,
        email=user.email,
        tenant=user.tenant,
        role=user.role,
        team_id=user.team_id,
        limits=LimitsOut.of(user),
    )


@router.post(
    "/v1/admin/api-keys",
    status_code=status.HTTP_201_CREATED,
    response_model=CreatedApiKey,
    responses={
        404: {"description": "No such user or team in the caller's tenant."},
        409: {"description": "The user holds the most live keys allowed."},
    },
)
async def admin_create_api_key(
    body: AdminCreateApiKey, admin: AdminUser, claims: AccessClaimsDep, governance: GovernanceDep
) -> CreatedApiKey:
    """Create a key for a user of the caller's tenant, with its team and limits; its
    scopes within what the user's role grants, and its scopes and models within the
    creating access token's (403 `insufficient_scope` otherwise): a key never holds more
    than the credential that made it."""
    try:
        user = await governance.user(body.user_id, admin.tenant)
        issued = await governance.create_api_key(
            user_id=user.id,
            limits=body.patch(),
            team_id=body.team_id if "team_id" in body.model_fields_set else False,
            name=body.name,
            scopes=body.scopes,
            allowed_models=body.allowed_models,
            expires_at=expiry_in_days(body.expires_in_days),
            creator_scopes=claims.scopes,
            creator_models=credential_models(claims.allowed_models, admin),
            creator_follows_team=claims.allowed_models is None,
        )
    except UserNotFound:
        raise APIError(404, "No such user.", param="user_id", code="user_not_found") from None
    except TeamNotFound:
        raise APIError(404, "No such team.", param="team_id", code="team_not_found") from None
    except InvalidInput as exc:
        raise _bad_request(exc) from None
    except ExceedsCredential as exc:
        raise APIError(403, str(exc), param=exc.param, code="insufficient_scope") from None
    except TooManyApiKeys as exc:
        raise too_many_keys(exc) from None
    API_KEYS_CREATED.inc()
    return created_key(issued)


@router.patch(
    "/v1/admin/api-keys/{key_id}",
    response_model=ApiKeyOut,
    responses={
        404: {"description": "No such key in the caller's tenant."},
        409: {"description": "The key is revoked."},
    },
)
async def admin_update_api_key(
    key_id: str, body: UpdateApiKey, admin: AdminUser, governance: GovernanceDep
) -> ApiKeyOut:
    """Change any key's limits (within its user's, team's and tenant's) and its response
    cache opt-in."""
    return await _update_key(key_id, body, governance, tenant=admin.tenant)


async def _update_key(
    key_id: str,
    body: UpdateApiKey,
    governance: GovernanceDep,
    *,
    tenant: str | None = None,
    user_id: str | None = None,
    member: bool = False,
) -> ApiKeyOut:
    try:
        key = await governance.update_api_key(
            key_id,
            tenant=tenant,
            user_id=user_id,
            limits=body.patch(),
            team_id=body.team_id if "team_id" in body.model_fields_set else False,
            cache=body.cache_patch(),
            member=member,
        )
    except NotPermitted as exc:
        raise not_permitted(exc) from None
    except ApiKeyNotFound:
        raise APIError(404, "No such API key.", code="api_key_not_found") from None
    except KeyAlreadyRevoked:
        raise APIError(
            409, "This API key is revoked: it cannot be changed.", code="api_key_revoked"
        ) from None
    except TeamNotFound:
        raise APIError(404, "No such team.", param="team_id", code="team_not_found") from None
    except InvalidInput as exc:
        raise _bad_request(exc) from None
    return ApiKeyOut.of(key)


@router.patch(
    "/v1/api-keys/{key_id}",
    response_model=ApiKeyOut,
    tags=["api-keys"],
    responses={
        404: {"description": "No such key among the caller's keys."},
        409: {"description": "The key is revoked."},
    },
)
async def update_own_api_key(
    key_id: str,
    body: UpdateApiKey,
    user: CurrentUser,
    claims: KeysWriterClaims,
    governance: GovernanceDep,
) -> ApiKeyOut:
    """Change the limits of one of the caller's keys, within their team's and their own. A
    member may only tighten them (lower a limit, or add one where none is set) and keep the
    key in their team: raising or removing a limit, changing a budget's period or naming
    another team (or null) is 403 `admin_only` naming the field."""
    if body.cache_patch():
        raise APIError(
            403,
            "Only an admin of the tenant can change a key's response cache settings "
            "(PATCH /v1/admin/api-keys/{key_id}).",
            param=next(iter(body.cache_patch())),
            code="admin_only",
        )
    return await _update_key(
        key_id, body, governance, user_id=user.id, member=is_member(user, claims)
    )


@router.get("/v1/admin/tenant", response_model=TenantOut)
async def get_tenant(admin: AdminUser, governance: GovernanceDep) -> TenantOut:
    """The caller's tenant: its limits and what gateways do when their store is down."""
    return tenant_out(await governance.tenant(admin.tenant))


def tenant_out(row: Tenant) -> TenantOut:
    """The API's view of the tenant row `row`."""
    return TenantOut(
        tenant=row.tenant,
        limits=LimitsOut.of(row),
        rate_limit_failure_mode=row.rate_limit_failure_mode,
        budget_failure_mode=row.budget_failure_mode,
    )


@router.get("/v1/me", response_model=MeOut, tags=["me"])
async def me(user: CurrentUser, governance: GovernanceDep) -> MeOut:
    """The caller, their team, and the limits of every level above them."""
    try:
        policy = await governance.policy(user.id)
    except AuthError:
        raise APIError(404, "No such user.", code="user_not_found") from None
    return MeOut(
        id=user.id,
        email=user.email,
        tenant=user.tenant,
        role=user.role,
        team_id=policy.team_id,
        levels=_levels(policy),
    )
