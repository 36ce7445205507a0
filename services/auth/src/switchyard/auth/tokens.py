"""RS256 access tokens (PyJWT) and the public JWK set that verifies them.

Claims: iss, aud, sub (user id), tenant, role, scopes, iat, nbf, exp, jti. The header
carries `kid` so verifiers pick the right key from `/.well-known/jwks.json`; `jti` is what
a later revocation list will refer to.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt

from switchyard.auth.signing import SIGNING_ALGORITHM, SigningKey

REQUIRED_CLAIMS = ["iss", "aud", "sub", "iat", "nbf", "exp", "jti"]


class InvalidToken(Exception):
    """The token is malformed, expired, not ours, or its signature does not verify."""


@dataclass(frozen=True)
class AccessToken:
    token: str
    expires_in: int
    jti: str


@dataclass(frozen=True)
class AccessClaims:
    user_id: str
    tenant: str
    role: str
    scopes: list[str]
    jti: str
    expires_at: datetime


class TokenIssuer:
    """Signs access tokens with the active key and verifies them with any published key."""

    def __init__(
        self,
        signing_key: SigningKey,
        *,
        issuer: str,
        audience: str,
        ttl_s: int,
        retired_keys: Sequence[SigningKey] = (),
    ) -> None:
        self._signing_key = signing_key
        # Keys still published (and accepted) after a rotation, until their tokens expire.
        self._verification_keys = {key.kid: key for key in (signing_key, *retired_keys)}
        self._issuer = issuer
        self._audience = audience
        self._ttl = timedelta(seconds=ttl_s)

    def issue(
        self,
        *,
        user_id: str,
        tenant: str,
        role: str,
        scopes: Sequence[str],
        now: datetime | None = None,
    ) -> AccessToken:
        issued_at = now or datetime.now(UTC)
        jti = uuid.uuid4().hex
        claims = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": user_id,
            "tenant": tenant,
            "role": role,
            "scopes": list(scopes),
            "iat": issued_at,
            "nbf": issued_at,
            "exp": issued_at + self._ttl,
            "jti": jti,
        }
        token = jwt.encode(
            claims,
            self._signing_key.private_key,
            algorithm=SIGNING_ALGORITHM,
            headers={"kid": self._signing_key.kid},
        )
        return AccessToken(token=token, expires_in=int(self._ttl.total_seconds()), jti=jti)

    def verify(self, token: str) -> AccessClaims:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = self._verification_keys.get(kid) if isinstance(kid, str) else None
            if key is None:
                raise InvalidToken("token was not signed by a known key")
            claims = jwt.decode(
                token,
                key.private_key.public_key(),
                algorithms=[SIGNING_ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                options={"require": REQUIRED_CLAIMS},
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(str(exc)) from exc
        scopes = claims.get("scopes")
        if not isinstance(scopes, list) or not all(isinstance(scope, str) for scope in scopes):
            raise InvalidToken("token has no valid scopes claim")
        return AccessClaims(
            user_id=claims["sub"],
            tenant=str(claims.get("tenant", "")),
            role=str(claims.get("role", "")),
            scopes=scopes,
            jti=claims["jti"],
            expires_at=datetime.fromtimestamp(claims["exp"], UTC),
        )

    def jwks(self) -> dict[str, Any]:
        return {"keys": [key.public_jwk() for key in self._verification_keys.values()]}
