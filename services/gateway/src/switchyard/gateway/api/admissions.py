"""`POST /internal/v1/admissions`: credentials, budgets and rate limits for requests the
gateway does not publish itself (history's replay runner sends replayed requests on the
batch lane).

Internal (the shared internal token, `X-Internal-Token`), not in the public API. Body:
`{"request_id": str, "tenant": str, "user_id": str, "api_key_id": str | null, "api":
<contract API value>, "model": str, "body": {...}, "timeout_s": float}`. The request is
admitted only if the user and key it is billed to could send it themselves right now
(`billed_identity.py`: key not revoked or expired, of that user and tenant, allowing the
model; user not disabled), whether or not budgets and limits are configured; then against
every limit above the user and key, like a request made to this gateway; its usage event
(which every replica listens to) settles it here.

Answers: 200 `{"team_id": str | null}` (put it on the request); 403 when the credentials
may not send it (`credentials_revoked`, `user_disabled`, `credentials_expired`,
`insufficient_scope`, `model_not_allowed`) and 404 when the key or user is not in that
tenant (`api_key_not_found`, `user_not_found`): both final, the message says why; 429 in
OpenAI's error format, `rate_limit_exceeded` (with `Retry-After`: send it later) or
`insufficient_quota` (a budget is used up); 503 `auth_unavailable` or `limits_unavailable`
(ask again later); 400 for a body that is not one of these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from switchyard.common.events import ClientAPI
from switchyard.common.http import internal_token_dependency
from switchyard.gateway.api.billed_identity import BilledIdentityCheck
from switchyard.gateway.api.deps import GatewayDep
from switchyard.gateway.bootstrap import Gateway
from switchyard.gateway.governance.admission import INPUT_ONLY_APIS, UNBILLED_APIS


class AdmissionIn(BaseModel):
    """A request another service (history's replays) asks the gateway to admit: who sends it, in
    which client API, the body (the API's own request shape) and its timeout in seconds."""

    request_id: str = Field(min_length=1, max_length=64)
    tenant: str = Field(min_length=1, max_length=128)
    user_id: str = Field(min_length=1, max_length=128)
    api_key_id: str | None = Field(default=None, max_length=128)
    api: ClientAPI
    model: str = Field(min_length=1, max_length=256)
    body: dict[str, Any]
    timeout_s: float = Field(default=3600.0, gt=0, le=7 * 86400)


class AdmissionOut(BaseModel):
    """Admitted: the team the request is counted against (None without one)."""

    team_id: str | None


@dataclass(frozen=True)
class _Caller:
    """What admission needs of a caller (the user and key whose limits apply)."""

    tenant: str
    user_id: str
    api_key_id: str | None


def admissions_router(internal_token: str) -> APIRouter:
    """The internal admission API (`POST /internal/v1/admissions`, hidden from the OpenAPI
    document): the request path's budget and rate limit checks for requests other services
    publish, after checking the credentials it is billed to. Needs the internal token (else
    401)."""
    router = APIRouter(
        prefix="/internal/v1",
        dependencies=[Depends(internal_token_dependency(internal_token))],
        include_in_schema=False,
    )

    # One per gateway (an app serves one), made at its first admission: it hooks into
    # that gateway's revocation state.
    checks: dict[int, BilledIdentityCheck] = {}

    def identity_check(gateway: Gateway) -> BilledIdentityCheck:
        check = checks.get(id(gateway))
        if check is None:
            settings = gateway.settings
            check = BilledIdentityCheck(
                # Read at each call, so a test that swaps `gateway.http` swaps this one too.
                lambda: gateway.http,
                auth_url=settings.auth_url,
                internal_token=settings.internal_token,
                revocations=gateway.authenticator.revocations,
                ttl_s=settings.api_key_cache_ttl_s,
            )
            checks[id(gateway)] = check
        return check

    @router.post("/admissions", response_model=AdmissionOut)
    async def admit(payload: AdmissionIn, gateway: GatewayDep) -> AdmissionOut:
        """Admit one request sent by another service; raises APIError (403, 404, 503) when
        its credentials may not send it or cannot be checked, then Refused (429) or APIError
        (503) like the request path does."""
        await identity_check(gateway).check(
            tenant=payload.tenant,
            user_id=payload.user_id,
            api_key_id=payload.api_key_id,
            model=payload.model,
        )
        if gateway.admission is None:
            return AdmissionOut(team_id=None)
        caller = _Caller(payload.tenant, payload.user_id, payload.api_key_id)
        ticket = await gateway.admission.admit(
            caller,
            payload.model,
            payload.body,
            embeddings=payload.api in INPUT_ONLY_APIS,
            billed=payload.api not in UNBILLED_APIS,
        )
        ticket.attach(payload.request_id, payload.timeout_s)
        return AdmissionOut(team_id=ticket.team_id)

    return router
