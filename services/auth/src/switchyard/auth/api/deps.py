"""Typed dependencies shared by the routers: the service and the authenticated caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from switchyard.auth.bootstrap import AuthContext
from switchyard.auth.models import User
from switchyard.auth.service import AuthService
from switchyard.auth.tokens import AccessClaims, InvalidToken
from switchyard.common.errors import APIError

_BEARER_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def get_context(request: Request) -> AuthContext:
    return request.app.state.auth


def get_service(context: Annotated[AuthContext, Depends(get_context)]) -> AuthService:
    return context.service


Service = Annotated[AuthService, Depends(get_service)]

# auto_error=False: a missing header is answered below in the common error format.
_bearer = HTTPBearer(auto_error=False, description="An access token from POST /v1/auth/token.")


async def get_access_claims(
    service: Service,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> AccessClaims:
    if credentials is None:
        raise APIError(
            401,
            "An access token is required (Authorization: Bearer <token>).",
            code="missing_token",
            headers=_BEARER_CHALLENGE,
        )
    try:
        return service.tokens.verify(credentials.credentials)
    except InvalidToken as exc:
        raise APIError(
            401,
            "The access token is invalid or expired.",
            code="invalid_token",
            headers=_BEARER_CHALLENGE,
        ) from exc


AccessClaimsDep = Annotated[AccessClaims, Depends(get_access_claims)]


async def get_current_user(service: Service, claims: AccessClaimsDep) -> User:
    # A token can outlive its user or the user's access; check the database every time.
    user = await service.active_user(claims.user_id)
    if user is None:
        raise APIError(
            401,
            "The access token's user no longer exists or is disabled.",
            code="invalid_token",
            headers=_BEARER_CHALLENGE,
        )
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]
