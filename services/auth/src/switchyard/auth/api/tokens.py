"""Sign-in, refresh and sign-out.

- `POST /v1/auth/token`: the OAuth2 password grant (JSON or form encoding) returns an
  access token and a refresh token; `grant_type=refresh_token` is accepted here too.
- `POST /v1/auth/refresh`: rotates a refresh token. The presented token is spent; a spent
  token presented again revokes the whole sign-in (reuse detection).
- `POST /v1/auth/logout`: revokes the sign-in of a refresh token and/or access token.

Sign-in attempts are limited per account and per client address (429 with Retry-After).
No error ever contains a password or token.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

import orjson
from fastapi import APIRouter, Depends, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from switchyard.auth.api.api_keys import KeysWriterClaims
from switchyard.auth.api.deps import (
    BearerCredentials,
    ClientAddress,
    CurrentUser,
    Service,
    get_context,
)
from switchyard.auth.api.routing import StrictQueryRoute
from switchyard.auth.bootstrap import AuthContext
from switchyard.auth.metrics import LOGINS_THROTTLED, REFRESH_REQUESTS, REVOCATIONS, TOKEN_REQUESTS
from switchyard.auth.models import User
from switchyard.auth.names import fold_email
from switchyard.auth.passwords import HashingBusy
from switchyard.auth.ratelimit import LoginRateLimiter
from switchyard.auth.service import AuthService, InvalidCredentials, InvalidGrant, TokenPair
from switchyard.auth.tokens import InvalidToken
from switchyard.common import jsonbody
from switchyard.common.errors import APIError, invalid_json

router = APIRouter(prefix="/v1/auth", tags=["tokens"])

_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
_BEARER_CHALLENGE = {"WWW-Authenticate": "Bearer"}
M = TypeVar("M", bound=BaseModel)


class PasswordGrant(BaseModel):
    """The OAuth 2.0 password grant (RFC 6749, section 4.3): the user's email as
    `username` and their password, as JSON or form fields."""

    # OAuth2 clients also send client_id, scope and the like; they are ignored.
    model_config = ConfigDict(extra="ignore")

    grant_type: Literal["password"] = Field(description="`password`.")
    username: str = Field(min_length=1, max_length=320, description="The user's email.")
    password: str = Field(min_length=1, max_length=1024)


class RefreshGrant(BaseModel):
    """A refresh token to exchange for a new access token and refresh token (RFC 6749, section
    6)."""

    model_config = ConfigDict(extra="ignore")

    grant_type: Literal["refresh_token"] = "refresh_token"
    refresh_token: str = Field(min_length=1, max_length=512)


class LogoutRequest(BaseModel):
    """The refresh token of the sign-in to end; optional when the request carries the access
    token instead."""

    model_config = ConfigDict(extra="ignore")

    refresh_token: str | None = Field(default=None, min_length=1, max_length=512)


class PasswordChange(BaseModel):
    """A signed-in user's new password (8 to 1024 characters), with their current one."""

    model_config = ConfigDict(extra="forbid", strict=True)

    current_password: str = Field(min_length=1, max_length=1024)
    new_password: str = Field(min_length=8, max_length=1024)


class TokenResponse(BaseModel):
    """A successful token response (RFC 6749, section 5.1): a bearer access token (a JWT),
    its lifetime, and the single-use refresh token that replaces it."""

    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="Seconds until the access token expires.")
    refresh_token: str = Field(description="Exchange at POST /v1/auth/refresh; single use.")
    refresh_expires_in: int = Field(description="Seconds until the refresh token expires.")


_GRANT_SCHEMA = PasswordGrant.model_json_schema()
_REFRESH_SCHEMA = RefreshGrant.model_json_schema()
_LOGOUT_SCHEMA = LogoutRequest.model_json_schema()


def _body_schema(schema: dict[str, Any], *, required: bool = True) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": required,
            "content": {
                "application/json": {"schema": schema},
                "application/x-www-form-urlencoded": {"schema": schema},
            },
        }
    }


async def _read_fields(request: Request, *, required: bool = True) -> Any:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in _FORM_TYPES:
        form = await request.form()
        return {name: value for name, value in form.items() if isinstance(value, str)}
    body = await request.body()
    if not body:
        if not required:
            return {}
        raise APIError(
            400,
            "The request body is empty; send the fields as JSON or form fields.",
            code="invalid_json",
        )
    try:
        return jsonbody.loads(body)
    except orjson.JSONDecodeError as exc:
        raise invalid_json(exc) from exc
    except jsonbody.JsonTooDeep as exc:
        raise APIError(400, str(exc), code="json_too_deep") from None
    except jsonbody.JsonTooManyValues as exc:
        raise APIError(400, str(exc), code="json_too_many_values") from None


def _validate(model: type[M], fields: Any) -> M:
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        # `input` is dropped so a password or token can never travel back in an error.
        errors = [
            {**error, "loc": ("body", *error["loc"]), "input": None} for error in exc.errors()
        ]
        raise RequestValidationError(errors) from None


async def _password_checked(
    service: AuthService,
    limits: LoginRateLimiter,
    email: str,
    password: str,
    address: str,
    refused: Callable[[InvalidCredentials], APIError],
    throttled_message: str,
) -> User:
    """The user whose `email` and `password` these are, checked under the sign-in limits
    of the account (the email as sign-in reads it: `fold_email`) and of the client
    `address`. Raises APIError: 429 (`too_many_attempts`, `throttled_message`, with
    Retry-After) over a limit, 429 `passwords_busy` (`busy_hashing`) while too many
    hashes wait, `refused(...)` for wrong
    credentials (a failure of the account)."""
    account = fold_email(email)
    throttled = limits.check(account, address)
    if throttled is not None:
        LOGINS_THROTTLED.labels(throttled.limit).inc()
        raise APIError(
            429,
            throttled_message,
            code="too_many_attempts",
            headers={"Retry-After": str(throttled.retry_after_s)},
        )
    # The attempt counts as a failure of the account from here (`check`) unless it
    # succeeds or ends without the password being checked.
    verdict = False
    try:
        user = await service.authenticate(email, password)
        verdict = True
    except InvalidCredentials as exc:
        verdict = True
        raise refused(exc) from None
    except HashingBusy:
        LOGINS_THROTTLED.labels("hashing").inc()
        raise busy_hashing() from None
    finally:
        if not verdict:
            limits.abandoned(account, address)
    limits.succeeded(account, address)
    return user


def busy_hashing() -> APIError:
    """The 429 error (code `passwords_busy`, Retry-After 1 s) for a request refused because
    too many password hashes are already waiting: auth's load, not the account's or the
    address's attempts (`too_many_attempts`), so a client can say which."""
    return APIError(
        429,
        "Too many passwords are being checked right now; retry shortly.",
        code="passwords_busy",
        headers={"Retry-After": "1"},
    )


def _token_response(pair: TokenPair) -> TokenResponse:
    return TokenResponse(
        access_token=pair.access.token,
        expires_in=pair.access.expires_in,
        refresh_token=pair.refresh_token,
        refresh_expires_in=pair.refresh_expires_in,
    )


async def _refresh(service: AuthService, refresh_token: str) -> TokenResponse:
    try:
        pair = await service.refresh(refresh_token)
    except InvalidGrant as exc:
        REFRESH_REQUESTS.labels("reuse_detected" if exc.reused else "invalid").inc()
        raise APIError(
            401, str(exc), code="invalid_grant", param="refresh_token", headers=_BEARER_CHALLENGE
        ) from None
    REFRESH_REQUESTS.labels("rotated").inc()
    return _token_response(pair)


@router.post(
    "/token",
    response_model=TokenResponse,
    openapi_extra=_body_schema(_GRANT_SCHEMA),
    responses={
        429: {
            "description": "Too many sign-in attempts (`too_many_attempts`), or too many "
            "passwords waiting to be checked (`passwords_busy`); see Retry-After."
        }
    },
)
async def issue_token(
    request: Request,
    service: Service,
    address: ClientAddress,
    context: Annotated[AuthContext, Depends(get_context)],
) -> TokenResponse:
    """Exchange an email and password for an access token and a refresh token."""
    fields = await _read_fields(request)
    grant_type = fields.get("grant_type") if isinstance(fields, dict) else None
    if isinstance(fields, dict) and "email" in fields and "username" not in fields:
        # The password grant's own field names (RFC 6749): a newcomer's `email` is refused
        # by name, not as one of several missing fields.
        TOKEN_REQUESTS.labels("invalid_request").inc()
        raise APIError(
            400,
            "The password grant takes the email as 'username': send grant_type=password, "
            "username=<your email> and password.",
            param="username",
            code="invalid_request",
        )
    if isinstance(fields, dict) and grant_type is None:
        TOKEN_REQUESTS.labels("invalid_request").inc()
        raise APIError(
            400,
            "Missing 'grant_type': 'password' to sign in with 'username' (your email) and "
            "'password', or 'refresh_token' with 'refresh_token'.",
            param="grant_type",
            code="invalid_request",
        )
    if grant_type == "refresh_token":
        return await _refresh(service, _validate(RefreshGrant, fields).refresh_token)
    if grant_type is not None and grant_type != "password":
        TOKEN_REQUESTS.labels("invalid_request").inc()
        raise APIError(
            400,
            "Unsupported grant_type; this endpoint supports 'password' and 'refresh_token'.",
            param="grant_type",
            code="unsupported_grant_type",
        )
    try:
        grant = _validate(PasswordGrant, fields)
    except RequestValidationError:
        TOKEN_REQUESTS.labels("invalid_request").inc()
        raise

    def refused(exc: InvalidCredentials) -> APIError:
        TOKEN_REQUESTS.labels("invalid_credentials").inc()
        return APIError(401, str(exc), code="invalid_credentials", headers=_BEARER_CHALLENGE)

    user = await _password_checked(
        service,
        context.login_limits,
        grant.username,
        grant.password,
        address,
        refused,
        "Too many sign-in attempts; retry later.",
    )
    pair = await service.sign_in(user)
    TOKEN_REQUESTS.labels("issued").inc()
    return _token_response(pair)


@router.post("/refresh", response_model=TokenResponse, openapi_extra=_body_schema(_REFRESH_SCHEMA))
async def refresh_token(request: Request, service: Service) -> TokenResponse:
    """Exchange a refresh token for a new access token and a new refresh token. Each
    refresh token works once; presenting a used one again signs the session out."""
    fields = await _read_fields(request)
    return await _refresh(service, _validate(RefreshGrant, fields).refresh_token)


@router.post(
    "/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    openapi_extra=_body_schema(_LOGOUT_SCHEMA, required=False),
)
async def logout(
    request: Request,
    service: Service,
    credentials: BearerCredentials,
) -> Response:
    """Sign out: the refresh token's session and the access token's session end, and the
    access token is refused from now on, here and at every gateway."""
    claims = None
    # A presented access token is judged before the body: a bad one is a 401 whatever the
    # body holds. Without one the body is the credential (the refresh token).
    if credentials is not None:
        try:
            claims = service.tokens.verify(credentials.credentials)
        except InvalidToken:
            raise APIError(
                401,
                "The access token is invalid or expired.",
                code="invalid_token",
                headers=_BEARER_CHALLENGE,
            ) from None
    body = _validate(LogoutRequest, await _read_fields(request, required=False))
    if claims is None and body.refresh_token is None:
        raise APIError(
            400,
            "Send the refresh token in the body, an access token as Authorization: Bearer, "
            "or both.",
            param="refresh_token",
            code="invalid_request",
        )
    await service.logout(refresh_token=body.refresh_token, claims=claims)
    REVOCATIONS.labels("logout").inc()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# Routes of a signed-in caller: the access token is judged before the body.
account_router = APIRouter(prefix="/v1/auth", tags=["tokens"], route_class=StrictQueryRoute)


@account_router.post(
    "/password",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={
        403: {"description": "The current password is wrong (`incorrect_password`)."},
        429: {
            "description": "Too many attempts (`too_many_attempts`), or too many passwords "
            "waiting to be checked (`passwords_busy`); see Retry-After."
        },
    },
)
async def change_password(
    body: PasswordChange,
    user: CurrentUser,
    claims: KeysWriterClaims,
    service: Service,
    address: ClientAddress,
    context: Annotated[AuthContext, Depends(get_context)],
) -> Response:
    """Change the caller's own password, given the current one, with an access token that
    may manage the caller's credentials (the `keys:write` scope, which a sign-in's tokens
    carry: 403 `insufficient_scope` for a token narrowed to other scopes). Every other
    sign-in of theirs ends (this one stays), as it would were the password leaked; their
    API keys stay valid. Wrong current passwords count towards the sign-in limits of the
    account, so a stolen access token cannot be used to guess it."""

    def refused(exc: InvalidCredentials) -> APIError:
        return APIError(
            403,
            "The current password is incorrect.",
            param="current_password",
            code="incorrect_password",
        )

    await _password_checked(
        service,
        context.login_limits,
        user.email,
        body.current_password,
        address,
        refused,
        "Too many attempts; retry later.",
    )
    try:
        await service.set_password(
            user.id, body.new_password, keep_session=claims.session_id, reason="logout"
        )
    except HashingBusy:
        raise busy_hashing() from None
    REVOCATIONS.labels("password_changed").inc()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
