"""RS256 access tokens (PyJWT), opaque refresh tokens, and the public JWK set.

Access-token claims: iss, aud, sub (user id), tenant, role, scopes, iat, nbf, exp, jti,
plus `sid` (the refresh-token family a password-grant token belongs to, so a logout or a
detected reuse revokes every access token of the sign-in) and optionally
`allowed_models`. The header carries `kid` so verifiers pick the right key from
`/.well-known/jwks.json`; `jti` is what the blocklist refers to.

Refresh tokens are opaque random strings (256 bits), stored only as their sha256: they
are only ever checked by auth itself, against the database, so they need no signature.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt

from switchyard.auth.signing import SIGNING_ALGORITHM, SigningKey, VerificationKey

REQUIRED_CLAIMS = ["iss", "aud", "sub", "iat", "nbf", "exp", "jti"]
TIME_CLAIMS = ("exp", "iat", "nbf")
# Latest instant a time claim may name (9999-12-31T23:59:59Z): later ones are not times.
MAX_TIMESTAMP = 253_402_300_799
REFRESH_TOKEN_PREFIX = "sy-rt-"


class InvalidToken(Exception):
    """The token is malformed, expired, not ours, or its signature does not verify."""


@dataclass(frozen=True)
class AccessToken:
    """A signed access token (a JWT, RS256) as issued: the token, its lifetime in seconds
    (`expires_in`, OAuth 2.0's field), its `jti`, and when it expires (UTC, whole seconds)."""

    token: str
    expires_in: int
    jti: str
    expires_at: datetime | None = None


@dataclass(frozen=True)
class AccessClaims:
    """The verified claims of an access token: `sub` as `user_id`, tenant, role, scopes,
    `jti`, `exp` as `expires_at` (UTC), `sid` as `session_id` (password-grant tokens only)
    and `allowed_models` (None: any model)."""

    user_id: str
    tenant: str
    role: str
    scopes: list[str]
    jti: str
    expires_at: datetime
    session_id: str | None = None
    allowed_models: list[str] | None = None


def generate_refresh_token() -> str:
    """A new opaque refresh token: `sy-rt-` and 256 random bits, URL-safe base64."""
    return REFRESH_TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_refresh_token(token: str) -> str:
    """The SHA-256 hex digest of a refresh token, the only form the database stores."""
    return hashlib.sha256(token.encode()).hexdigest()


def _string_list(value: Any) -> list[str] | None:
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    return None


class TokenIssuer:
    """Signs access tokens with the active key and verifies them with any published key."""

    def __init__(
        self,
        signing_key: SigningKey,
        *,
        issuer: str,
        audience: str,
        ttl_s: int,
        retired_keys: Sequence[SigningKey | VerificationKey] = (),
        leeway_s: float = 0.0,
    ) -> None:
        self._signing_key = signing_key
        self._leeway_s = leeway_s
        # Keys still published (and accepted) besides the signing key: the previous one
        # after a rotation until its tokens expire, or the next one before it signs.
        published = [signing_key.verification_key()]
        for key in retired_keys:
            published.append(key.verification_key() if isinstance(key, SigningKey) else key)
        self._verification_keys: dict[str, VerificationKey] = {}
        for key in published:
            self._verification_keys.setdefault(key.kid, key)
        self._issuer = issuer
        self._audience = audience
        self._ttl = timedelta(seconds=ttl_s)

    @property
    def ttl(self) -> timedelta:
        """The lifetime of the access tokens this issuer signs."""
        return self._ttl

    @property
    def signing_key(self) -> SigningKey:
        """The key that signs new access tokens (its `kid` goes in every token's header)."""
        return self._signing_key

    @property
    def published_kids(self) -> list[str]:
        """The `kid` of every key in the JWKS: the signing key first, then the retired and next
        keys still accepted."""
        return list(self._verification_keys)

    def issue(
        self,
        *,
        user_id: str,
        tenant: str,
        role: str,
        scopes: Sequence[str],
        session_id: str | None = None,
        allowed_models: Sequence[str] | None = None,
        now: datetime | None = None,
    ) -> AccessToken:
        """Sign an access token for `user_id` with the given claims (RFC 7519; claims listed in
        the module docstring), valid from `now` (default: the current time) for `ttl`.
        `session_id` becomes `sid`; `allowed_models` None leaves the claim out (any model)."""
        issued_at = now or datetime.now(UTC)
        expires_at = issued_at + self._ttl
        jti = uuid.uuid4().hex
        claims: dict[str, Any] = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": user_id,
            "tenant": tenant,
            "role": role,
            "scopes": list(scopes),
            "iat": issued_at,
            "nbf": issued_at,
            "exp": expires_at,
            "jti": jti,
        }
        if session_id is not None:
            claims["sid"] = session_id
        if allowed_models is not None:
            claims["allowed_models"] = list(allowed_models)
        token = jwt.encode(
            claims,
            self._signing_key.private_key,
            algorithm=SIGNING_ALGORITHM,
            headers={"kid": self._signing_key.kid},
        )
        return AccessToken(
            token=token,
            expires_in=int(self._ttl.total_seconds()),
            jti=jti,
            expires_at=expires_at.replace(microsecond=0),
        )

    def verify(self, token: str) -> AccessClaims:
        """The claims of `token` after checking its signature (by `kid`, with any published
        key), issuer, audience, time claims (with `leeway_s` seconds of clock skew on `exp`,
        `nbf` and `iat`) and claim types.

        Raises:
            InvalidToken: the token is malformed, expired or not yet valid, signed by an unknown
                key, or carries a claim of the wrong type."""
        try:
            header = jwt.get_unverified_header(token)
            kid = header.get("kid")
            key = self._verification_keys.get(kid) if isinstance(kid, str) else None
            if key is None:
                raise InvalidToken("token was not signed by a known key")
            claims = jwt.decode(
                token,
                key.public_key,
                algorithms=[SIGNING_ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                options={"require": REQUIRED_CLAIMS},
                leeway=self._leeway_s,
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(str(exc)) from exc
        for name in TIME_CLAIMS:
            # RFC 7519 NumericDate: a JSON number. PyJWT also accepts numeric strings.
            value = claims[name]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidToken(f"token has a non-numeric {name} claim")
            if not 0 <= value <= MAX_TIMESTAMP:
                raise InvalidToken(f"token has an out-of-range {name} claim")
        if not isinstance(claims["sub"], str) or not isinstance(claims["jti"], str):
            raise InvalidToken("token has an invalid sub or jti claim")
        scopes = _string_list(claims.get("scopes"))
        if scopes is None:
            raise InvalidToken("token has no valid scopes claim")
        allowed_models = claims.get("allowed_models")
        if allowed_models is not None and _string_list(allowed_models) is None:
            raise InvalidToken("token has an invalid allowed_models claim")
        session_id = claims.get("sid")
        if session_id is not None and not isinstance(session_id, str):
            raise InvalidToken("token has an invalid sid claim")
        return AccessClaims(
            user_id=claims["sub"],
            tenant=str(claims.get("tenant", "")),
            role=str(claims.get("role", "")),
            scopes=scopes,
            jti=claims["jti"],
            expires_at=datetime.fromtimestamp(claims["exp"], UTC),
            session_id=session_id,
            allowed_models=allowed_models,
        )

    def jwks(self) -> dict[str, Any]:
        """The public JWK Set served at `/.well-known/jwks.json` (RFC 7517): `{"keys": [...]}`
        with
        one RSA public JWK per published key."""
        return {"keys": [key.public_jwk() for key in self._verification_keys.values()]}
