"""`/internal/v1/idempotency`: Idempotency-Key claims for the gateway replicas (internal
token and the caller's identity required; keys are scoped to the caller's tenant).

Privacy settings apply here too: for a tenant storing metadata only, a completed claim
keeps its status, content type and request id but no response body (a replay then gets
`body_b64: null`, and the gateway says the response was not kept), unless the gateway
says the response holds no content (`holds_content: false`: a replay's id and state)."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import Field, StringConstraints

from switchyard.common.errors import APIError
from switchyard.common.http import internal_token_dependency
from switchyard.common.jsonbody import BoundedJsonRoute
from switchyard.common.nulfree import NulFreeBody
from switchyard.history.api.dependencies import CallerDep, IdempotencyDep, TenantsDep
from switchyard.history.idempotency import ClaimRequest

KEY = Field(min_length=1, max_length=255)


class ClaimBody(NulFreeBody):
    """A claim on an `Idempotency-Key`: the endpoint and body fingerprint it is for, and how long
    the claim is held, in seconds (`lease_s`, at most a day) before another request may take it."""

    key: Annotated[str, KEY]
    endpoint: str = Field(min_length=1, max_length=128)
    fingerprint: str = Field(min_length=16, max_length=64)
    lease_s: float = Field(gt=0, le=86_400)


# Response headers a completed key keeps (names and values as HTTP carries them).
MAX_KEPT_HEADERS = 8
HeaderName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9-]{1,64}$")]
HeaderValue = Annotated[str, StringConstraints(pattern=r"^[\x20-\x7e]{0,256}$")]


class CompleteBody(NulFreeBody):
    """The response to record for a claimed key: HTTP status, content type and the body, base64. The
    `claim_token` returned by the claim proves the caller still holds it."""

    key: Annotated[str, KEY]
    claim_token: str = Field(min_length=1, max_length=64)
    request_id: str | None = Field(default=None, max_length=64)
    status_code: int = Field(ge=100, le=599)
    content_type: str = Field(max_length=128)
    body_b64: str
    headers: dict[HeaderName, HeaderValue] = Field(
        default_factory=dict,
        max_length=MAX_KEPT_HEADERS,
        description="Response headers describing the body (lower-case names), replayed "
        "with it, e.g. `x-switchyard-token-count`.",
    )
    holds_content: bool = Field(
        default=True,
        description="Whether the response holds request or model content (false: an object "
        "Switchyard created, e.g. a replay's id and state), which a metadata-only tenant "
        "does not keep.",
    )


class ReleaseBody(NulFreeBody):
    """Give up a claim without a response (the request failed before one existed), so a retry with
    the same key can claim it again."""

    key: Annotated[str, KEY]
    claim_token: str = Field(min_length=1, max_length=64)


class AwaitOutcomeBody(NulFreeBody):
    """Tie a claim to its published request, whose outcome the gateway stopped waiting
    for: a retry with the key answers from that outcome (`IdempotencyStore.await_outcome`),
    for `lease_s` seconds at most while it is unknown."""

    key: Annotated[str, KEY]
    claim_token: str = Field(min_length=1, max_length=64)
    request_id: str = Field(min_length=1, max_length=64)
    lease_s: float = Field(gt=0, le=86_400)


def idempotency_router(internal_token: str, max_body_bytes: int) -> APIRouter:
    """The internal idempotency API (`/internal/v1/idempotency`): claim a key, record its response,
    release it. For the gateway only (internal token, else 401); bodies are capped at
    `max_body_bytes` bytes."""
    router = APIRouter(
        prefix="/internal/v1/idempotency",
        tags=["internal"],
        route_class=BoundedJsonRoute,
        dependencies=[Depends(internal_token_dependency(internal_token))],
    )

    @router.post("/claim")
    async def claim(body: ClaimBody, caller: CallerDep, store: IdempotencyDep) -> dict[str, Any]:
        """Claims an Idempotency-Key for the caller's tenant, or says who holds it
        (`in_progress`), what it already answered (`completed`, the response base64-encoded) or
        that it was used for a different request (`mismatch`). For the gateway only: 401 without
        the internal token or the caller's identity headers."""
        result = await store.claim(
            ClaimRequest(
                tenant=caller.tenant,
                key=body.key,
                user_id=caller.user_id,
                endpoint=body.endpoint,
                fingerprint=body.fingerprint,
                lease_s=body.lease_s,
            )
        )
        return {
            "outcome": result.outcome,
            "claim_token": result.claim_token,
            "request_id": result.request_id,
            "status_code": result.status_code,
            "content_type": result.content_type,
            "body_b64": base64.b64encode(result.body).decode() if result.body is not None else None,
            "headers": result.headers if result.body is not None else None,
            "reason": result.reason,
        }

    @router.post("/complete")
    async def complete(
        body: CompleteBody, caller: CallerDep, store: IdempotencyDep, tenants: TenantsDep
    ) -> dict[str, Any]:
        """Records the response a claimed key answered, so retries with the key get it back. A
        tenant that keeps metadata only gets no body stored, unless it holds no content.
        400 when `body_b64` is not base64, 413 when the response is larger than the service
        keeps."""
        content: bytes | None
        try:
            content = base64.b64decode(body.body_b64, validate=True)
        except (binascii.Error, ValueError):
            raise APIError(400, "body_b64 is not base64", param="body_b64") from None
        if len(content) > max_body_bytes:
            raise APIError(413, f"responses over {max_body_bytes} bytes are not stored")
        if body.holds_content and not (await tenants.get(caller.tenant)).store_content:
            content = None
        stored = await store.complete(
            caller.tenant,
            body.key,
            body.claim_token,
            request_id=body.request_id,
            status_code=body.status_code,
            content_type=body.content_type,
            body=content,
            headers=dict(body.headers) if content is not None else None,
        )
        return {"stored": stored}

    @router.post("/await-outcome")
    async def await_outcome(
        body: AwaitOutcomeBody, caller: CallerDep, store: IdempotencyDep
    ) -> dict[str, Any]:
        """Ties a claim to the request the gateway published and stopped waiting for (its
        deadline passed): a retry with the key is answered from that request's recorded
        outcome instead of running it again. `held` is false when the claim was no longer
        held."""
        held = await store.await_outcome(
            caller.tenant,
            body.key,
            body.claim_token,
            request_id=body.request_id,
            lease_s=body.lease_s,
        )
        return {"held": held}

    @router.post("/release")
    async def release(
        body: ReleaseBody, caller: CallerDep, store: IdempotencyDep
    ) -> dict[str, Any]:
        """Releases a claim that produced no response, so a retry with the key runs again.
        `released` is false when the claim was no longer held."""
        return {"released": await store.release(caller.tenant, body.key, body.claim_token)}

    return router
