"""Typed dependencies shared by the gateway's routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from switchyard.common.errors import APIError
from switchyard.gateway.auth import AuthenticationError, AuthUnavailableError, Principal
from switchyard.gateway.bootstrap import Gateway


async def get_gateway(request: Request) -> Gateway:
    return request.app.state.gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


async def authenticate(
    gateway: GatewayDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    x_api_key: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Principal:
    try:
        return await gateway.authenticator.authenticate(authorization, x_api_key)
    except AuthenticationError:
        raise APIError(
            401,
            "Invalid or missing credentials. Send an API key or access token as "
            "'Authorization: Bearer <credential>'.",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        ) from None
    except AuthUnavailableError:
        raise APIError(
            503,
            "Authentication is temporarily unavailable; retry shortly.",
            code="auth_unavailable",
            headers={"Retry-After": "1"},
        ) from None


CurrentPrincipal = Annotated[Principal, Depends(authenticate)]
