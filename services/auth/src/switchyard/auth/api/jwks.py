"""Public signing keys, so other services verify access tokens without calling auth."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from switchyard.auth.api.deps import Service

router = APIRouter(tags=["keys"])


@router.get("/.well-known/jwks.json")
async def jwks(service: Service, response: Response) -> dict[str, Any]:
    """The JWK set of every key that signs (or recently signed) access tokens."""
    # Verifiers may cache briefly; a rotation publishes the new key before using it.
    response.headers["Cache-Control"] = "public, max-age=300"
    return service.tokens.jwks()
