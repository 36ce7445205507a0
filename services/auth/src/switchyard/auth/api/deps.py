"""Typed dependencies shared by the routers: the service and the authenticated caller."""

from __future__ import annotations

from typing import Annotated, cast

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from switchyard.auth import scopes as known_scopes
from switchyard.auth.bootstrap import AuthContext
from switchyard.auth.governance import Governance
from switchyard.auth.keys import API_KEY_PREFIX
from switchyard.auth.models import User
from switchyard.auth.service import AuthService
from switchyard.auth.tokens import AccessClaims, InvalidToken
from switchyard.common.errors import APIError
from switchyard.common.sliding_window import client_key

_BEARER_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def get_context(request: Request) -> AuthContext:
    """The auth service's wiring (`AuthContext`) that the app factory put on `app.state.auth`."""
    return cast(AuthContext, request.app.state.auth)


def get_service(context: Annotated[AuthContext, Depends(get_context)]) -> AuthService:
    """The app's `AuthService`."""
    return context.service


Service = Annotated[AuthService, Depends(get_service)]


def get_governance(context: Annotated[AuthContext, Depends(get_context)]) -> Governance:
    """The app's `Governance` (teams and limits)."""
    return context.governance


GovernanceDep = Annotated[Governance, Depends(get_governance)]

# auto_error=False: a missing header is answered below in the common error format.
_bearer = HTTPBearer(auto_error=False, description="An access token from POST /v1/auth/token.")


BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


async def get_access_claims(
    service: Service,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> AccessClaims:
    """The verified claims of the request's bearer access token. Raises APIError 401
    (`missing_token` or `invalid_token`, with a `WWW-Authenticate: Bearer` challenge) when the
    header is missing or the token does not verify."""
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
        message = "The access token is invalid or expired."
        if credentials.credentials.startswith(API_KEY_PREFIX):
            # An API key where an access token is needed: say so, not that it is invalid.
            message = "This route takes an access token (POST /v1/auth/token), not an API key."
        raise APIError(401, message, code="invalid_token", headers=_BEARER_CHALLENGE) from exc


AccessClaimsDep = Annotated[AccessClaims, Depends(get_access_claims)]


async def get_current_user(service: Service, claims: AccessClaimsDep) -> User:
    """The user of the request's access token, checked against the database. Raises
    APIError 401 (`invalid_token`) when the user no longer exists, is disabled, or the token or
    its sign-in was revoked."""
    # A token can outlive its user, the user's access or its sign-in (logout, reuse
    # detected): auth checks the database every time, it is the source of truth.
    user = await service.active_user(claims.user_id)
    if user is None:
        raise APIError(
            401,
            "The access token's user no longer exists or is disabled.",
            code="invalid_token",
            headers=_BEARER_CHALLENGE,
        )
    if await service.is_access_token_revoked(claims):
        raise APIError(
            401,
            "The access token has been revoked.",
            code="invalid_token",
            headers=_BEARER_CHALLENGE,
        )
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]


async def get_admin_user(user: CurrentUser, claims: AccessClaimsDep) -> User:
    """The caller, who must be an admin of their tenant (the role is read from the
    database, so a demotion applies at once: 403 `admin_required`) signed in with a token
    that holds the `admin` scope: a token narrowed to other scopes (`switchyard tokens
    create --scopes chat`) does not carry the admin's powers (403 `insufficient_scope`)."""
    if user.role != "admin":
        raise APIError(403, "This operation needs the admin role.", code="admin_required")
    if known_scopes.ADMIN not in claims.scopes:
        raise APIError(
            403,
            f"The access token lacks the '{known_scopes.ADMIN}' scope.",
            code="insufficient_scope",
        )
    return user


AdminUser = Annotated[User, Depends(get_admin_user)]


def client_address(request: Request, context: Annotated[AuthContext, Depends(get_context)]) -> str:
    """The caller's address for the login limits: the peer, or behind a trusted proxy the
    last X-Forwarded-For entry (the one that proxy appended), across every such header
    line: a proxy may add its own line instead of extending the client's (RFC 9110:
    repeated fields are one comma-separated list). An IPv6 address is given as its /64
    (`client_key`)."""
    if context.settings.trust_forwarded_for:
        forwarded = ",".join(request.headers.getlist("x-forwarded-for"))
        entries = [entry.strip() for entry in forwarded.split(",") if entry.strip()]
        if entries:
            return client_key(entries[-1])
    return client_key(request.client.host) if request.client is not None else "unknown"


ClientAddress = Annotated[str, Depends(client_address)]
