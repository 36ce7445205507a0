"""The admin API of a tenant: create, list, disable and enable users and set their
passwords; list and revoke any key of the tenant. Only the admin role may call it (403 for
members), and only on its own tenant: anything of another tenant is answered 404, exactly
like something that does not exist. One thing is shared by every tenant: emails, since
signing in names the email alone. Creating a user with an email any tenant uses is
refused with 409 `user_exists`, which tells the admin that the email is taken (not by
whom)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Response, status
from pydantic import BaseModel, Field

from switchyard.auth.api.api_keys import ApiKeyList, ApiKeyOut
from switchyard.auth.api.deps import AdminUser, Service
from switchyard.auth.api.limit_fields import STRICT
from switchyard.auth.api.routing import StrictQueryRoute
from switchyard.auth.api.tokens import busy_hashing
from switchyard.auth.metrics import REVOCATIONS
from switchyard.auth.models import User
from switchyard.auth.passwords import HashingBusy
from switchyard.auth.service import (
    ApiKeyNotFound,
    DuplicateEmail,
    InvalidInput,
    UserNotFound,
)
from switchyard.common.errors import APIError

router = APIRouter(prefix="/v1/admin", tags=["admin"], route_class=StrictQueryRoute)

_USER_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such user in the caller's tenant."}
}


class CreateUser(BaseModel):
    """A new user of the caller's tenant: email, role (`admin` or `member`, default
    `member`) and an optional initial password of 8 to 1024 characters."""

    model_config = STRICT

    email: str = Field(min_length=3, max_length=320)
    role: Literal["admin", "member"] = "member"
    password: str | None = Field(
        default=None,
        min_length=8,
        max_length=1024,
        description="Initial password; omit for a user who only uses API keys.",
    )


class SetPassword(BaseModel):
    """A user's new password, 8 to 1024 characters."""

    model_config = STRICT

    password: str = Field(min_length=8, max_length=1024)


class UserOut(BaseModel):
    """A user as the admin API shows it (never the password hash)."""

    id: str
    email: str
    tenant: str
    role: str
    disabled: bool
    has_password: bool
    created_at: datetime

    @classmethod
    def of(cls, user: User) -> UserOut:
        """The admin API's view of `user`: `has_password` instead of the hash."""
        return cls(
            id=user.id,
            email=user.email,
            tenant=user.tenant,
            role=user.role,
            disabled=user.disabled,
            has_password=user.password_hash is not None,
            created_at=user.created_at,
        )


class UserList(BaseModel):
    """Users of the caller's tenant, oldest first."""

    object: Literal["list"] = "list"
    data: list[UserOut]


def _not_found(what: str, code: str) -> APIError:
    return APIError(404, f"No such {what}.", code=code)


@router.get("/users", response_model=UserList)
async def list_users(admin: AdminUser, service: Service) -> UserList:
    """Every user of the caller's tenant."""
    return UserList(data=[UserOut.of(user) for user in await service.list_users(admin.tenant)])


@router.post("/users", status_code=status.HTTP_201_CREATED, response_model=UserOut)
async def create_user(body: CreateUser, admin: AdminUser, service: Service) -> UserOut:
    """Create a user in the caller's tenant."""
    try:
        user = await service.create_user(
            email=body.email, tenant=admin.tenant, role=body.role, password=body.password
        )
    except InvalidInput as exc:
        raise APIError(400, str(exc), param=exc.param, code="invalid_request") from None
    except DuplicateEmail as exc:
        raise APIError(409, str(exc), param="email", code="user_exists") from None
    except HashingBusy:
        raise busy_hashing() from None
    return UserOut.of(user)


async def _set_disabled(user_id: str, disabled: bool, admin: User, service: Service) -> UserOut:
    if disabled and user_id == admin.id:
        raise APIError(
            400, "Admins cannot disable themselves.", param="user_id", code="invalid_request"
        )
    try:
        user = await service.set_disabled(user_id, disabled, tenant=admin.tenant)
    except UserNotFound:
        raise _not_found("user", "user_not_found") from None
    if disabled:
        REVOCATIONS.labels("user_disabled").inc()
    return UserOut.of(user)


@router.post("/users/{user_id}/password", response_model=UserOut, responses=_USER_NOT_FOUND)
async def set_user_password(
    user_id: str,
    body: SetPassword,
    admin: AdminUser,
    service: Service,
) -> UserOut:
    """Set another user's password (a forgotten or leaked one): every sign-in of theirs
    ends; their API keys stay valid. An admin's own is changed with the current one
    (`POST /v1/auth/password`, 400 here): a stolen access token must not be enough to
    take the account over."""
    if user_id == admin.id:
        raise APIError(
            400,
            "Change your own password with POST /v1/auth/password, giving the current one.",
            param="user_id",
            code="invalid_request",
        )
    try:
        user = await service.set_password(user_id, body.password, tenant=admin.tenant)
    except UserNotFound:
        raise _not_found("user", "user_not_found") from None
    except HashingBusy:
        raise busy_hashing() from None
    REVOCATIONS.labels("password_changed").inc()
    return UserOut.of(user)


@router.post("/users/{user_id}/disable", response_model=UserOut, responses=_USER_NOT_FOUND)
async def disable_user(user_id: str, admin: AdminUser, service: Service) -> UserOut:
    """Disable a user: their sign-ins end, and their tokens and keys are refused by every
    gateway within a second."""
    return await _set_disabled(user_id, True, admin, service)


@router.post("/users/{user_id}/enable", response_model=UserOut, responses=_USER_NOT_FOUND)
async def enable_user(user_id: str, admin: AdminUser, service: Service) -> UserOut:
    """Enable a disabled user again (their old sign-ins stay ended)."""
    return await _set_disabled(user_id, False, admin, service)


@router.get("/api-keys", response_model=ApiKeyList)
async def list_api_keys(
    admin: AdminUser, service: Service, user_id: str | None = None
) -> ApiKeyList:
    """Every key of the caller's tenant (or of one of its users), never their secrets."""
    keys = await service.list_api_keys(tenant=admin.tenant, user_id=user_id)
    return ApiKeyList(data=[ApiKeyOut.of(key) for key in keys])


@router.delete(
    "/api-keys/{key_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={404: {"description": "No such key in the caller's tenant."}},
)
async def revoke_api_key(key_id: str, admin: AdminUser, service: Service) -> Response:
    """Revoke any key of the caller's tenant; every gateway refuses it within a second."""
    try:
        await service.revoke_api_key(key_id, tenant=admin.tenant, reason="admin")
    except ApiKeyNotFound:
        raise _not_found("API key", "api_key_not_found") from None
    REVOCATIONS.labels("api_key").inc()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
