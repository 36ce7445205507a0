"""`POST /v1/api-keys`: a signed-in user creates an API key for themselves."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, status
from pydantic import BaseModel, Field

from switchyard.auth import scopes as known_scopes
from switchyard.auth.api.deps import AccessClaimsDep, CurrentUser, Service
from switchyard.auth.metrics import API_KEYS_CREATED
from switchyard.auth.service import InvalidInput, expiry_in_days
from switchyard.common.errors import APIError

router = APIRouter(prefix="/v1/api-keys", tags=["api-keys"])


class CreateApiKey(BaseModel):
    name: str = Field(default="default", min_length=1, max_length=200)
    scopes: list[str] | None = Field(
        default=None,
        description=f"Subset of {list(known_scopes.API_KEY_SCOPES)}; all of them when omitted.",
    )
    allowed_models: list[str] | None = Field(
        default=None, description="Models this key may call; any model when omitted."
    )
    expires_in_days: int | None = Field(default=None, gt=0, le=3650)


class CreatedApiKey(BaseModel):
    key: str = Field(description="The secret. It is shown only in this response; store it now.")
    key_id: str
    name: str
    prefix: str
    tenant: str
    scopes: list[str]
    allowed_models: list[str] | None
    expires_at: datetime | None
    created_at: datetime


@router.post("", status_code=status.HTTP_201_CREATED, response_model=CreatedApiKey)
async def create_api_key(
    body: CreateApiKey, user: CurrentUser, claims: AccessClaimsDep, service: Service
) -> CreatedApiKey:
    """Create an API key for the caller; the response holds the secret, once."""
    if known_scopes.KEYS_WRITE not in claims.scopes:
        raise APIError(
            403,
            f"The access token lacks the '{known_scopes.KEYS_WRITE}' scope.",
            code="insufficient_scope",
        )
    try:
        issued = await service.create_api_key(
            user_id=user.id,
            name=body.name,
            scopes=body.scopes,
            allowed_models=body.allowed_models,
            expires_at=expiry_in_days(body.expires_in_days),
        )
    except InvalidInput as exc:
        raise APIError(400, str(exc), param=exc.param, code="invalid_request") from None
    API_KEYS_CREATED.inc()
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
    )
