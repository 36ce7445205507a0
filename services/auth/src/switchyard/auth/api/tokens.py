"""`POST /v1/auth/token`: the OAuth2 password grant, as JSON or form encoding."""

from __future__ import annotations

from typing import Any, Literal

import orjson
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from switchyard.auth.api.deps import Service
from switchyard.auth.metrics import TOKEN_REQUESTS
from switchyard.auth.service import InvalidCredentials
from switchyard.common.errors import APIError

router = APIRouter(prefix="/v1/auth", tags=["tokens"])

_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


class PasswordGrant(BaseModel):
    # OAuth2 clients also send client_id, scope and the like; they are ignored.
    model_config = ConfigDict(extra="ignore")

    grant_type: Literal["password"] = Field(description="Always `password`.")
    username: str = Field(min_length=1, max_length=320, description="The user's email.")
    password: str = Field(min_length=1, max_length=1024)


class TokenResponse(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="Seconds until the token expires.")


_GRANT_SCHEMA = PasswordGrant.model_json_schema()


async def _read_grant_fields(request: Request) -> Any:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in _FORM_TYPES:
        form = await request.form()
        return {name: value for name, value in form.items() if isinstance(value, str)}
    body = await request.body()
    if not body:
        raise APIError(
            400,
            "The request body is empty; send the grant as JSON or form fields.",
            code="invalid_request",
        )
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise APIError(400, "The request body is not valid JSON.", code="invalid_request") from exc


@router.post(
    "/token",
    response_model=TokenResponse,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": _GRANT_SCHEMA},
                "application/x-www-form-urlencoded": {"schema": _GRANT_SCHEMA},
            },
        }
    },
)
async def issue_token(request: Request, service: Service) -> TokenResponse:
    """Exchange an email and password for a short-lived access token."""
    fields = await _read_grant_fields(request)
    if isinstance(fields, dict) and "grant_type" in fields and fields["grant_type"] != "password":
        TOKEN_REQUESTS.labels("invalid_request").inc()
        raise APIError(
            400,
            "Unsupported grant_type; this endpoint supports 'password'.",
            param="grant_type",
            code="unsupported_grant_type",
        )
    try:
        grant = PasswordGrant.model_validate(fields)
    except ValidationError as exc:
        TOKEN_REQUESTS.labels("invalid_request").inc()
        # `input` is dropped so a password can never travel back in an error.
        errors = [
            {**error, "loc": ("body", *error["loc"]), "input": None} for error in exc.errors()
        ]
        raise RequestValidationError(errors) from None
    try:
        user = await service.authenticate(grant.username, grant.password)
    except InvalidCredentials as exc:
        TOKEN_REQUESTS.labels("invalid_credentials").inc()
        raise APIError(
            401, str(exc), code="invalid_credentials", headers={"WWW-Authenticate": "Bearer"}
        ) from None
    token = service.issue_access_token(user)
    TOKEN_REQUESTS.labels("issued").inc()
    return TokenResponse(access_token=token.token, expires_in=token.expires_in)
