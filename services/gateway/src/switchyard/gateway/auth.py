"""Authenticating callers: JWTs verified locally against the auth service's JWKS, and
API keys looked up (by hash, never the key itself) in the auth service, with a short cache.

Every failure is the same AuthenticationError with a fixed message: nothing about the
token or key is echoed back.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import structlog
from jwt.algorithms import RSAAlgorithm

from switchyard.common.http import INTERNAL_TOKEN_HEADER

log = structlog.get_logger("switchyard.gateway.auth")

ALLOWED_ALGORITHMS = ["RS256"]
API_KEY_PREFIX = "sk-sy-"


class AuthenticationError(Exception):
    """No valid credentials were presented."""


class AuthUnavailableError(Exception):
    """The auth service could not be asked (for a key not in the cache)."""


@dataclass(frozen=True)
class Principal:
    """The authenticated caller."""

    user_id: str
    tenant: str
    role: str
    scopes: tuple[str, ...] = ()
    api_key_id: str | None = None
    allowed_models: tuple[str, ...] | None = None


class JwksCache:
    """Public keys by `kid`. Refreshed from auth when an unknown `kid` shows up, at most
    once per `min_interval_s`, so a flood of forged kids cannot flood auth."""

    def __init__(self, client: httpx.AsyncClient, auth_url: str, min_interval_s: float) -> None:
        self._client = client
        self._url = auth_url.rstrip("/") + "/.well-known/jwks.json"
        self._min_interval_s = min_interval_s
        self._keys: dict[str, Any] = {}
        self._fetched_at = float("-inf")

    async def refresh(self) -> None:
        # After a failed fetch, allow the next attempt a second later rather than after the
        # full interval, so a gateway started before auth does not refuse JWTs for long.
        self._fetched_at = time.monotonic() - self._min_interval_s + 1.0
        response = await self._client.get(self._url, timeout=2.0)
        response.raise_for_status()
        self._fetched_at = time.monotonic()
        keys = {}
        for jwk in response.json().get("keys", []):
            if jwk.get("kty") == "RSA" and "kid" in jwk:
                keys[jwk["kid"]] = RSAAlgorithm.from_jwk(jwk)
        self._keys = keys

    async def key(self, kid: str) -> Any | None:
        if kid not in self._keys and time.monotonic() - self._fetched_at >= self._min_interval_s:
            try:
                await self.refresh()
            except httpx.HTTPError as exc:
                log.warning("could not refresh JWKS", error=repr(exc))
        return self._keys.get(kid)


class Authenticator:
    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        auth_url: str,
        internal_token: str,
        issuer: str,
        audience: str,
        key_ttl_s: float,
        negative_ttl_s: float,
        jwks_min_interval_s: float,
    ) -> None:
        self._client = client
        self._lookup_url = auth_url.rstrip("/") + "/internal/v1/api-keys/lookup"
        self._internal_token = internal_token
        self._issuer = issuer
        self._audience = audience
        self._key_ttl_s = key_ttl_s
        self._negative_ttl_s = negative_ttl_s
        self.jwks = JwksCache(client, auth_url, jwks_min_interval_s)
        self._keys: dict[str, tuple[float, Principal | None]] = {}

    async def authenticate(self, authorization: str | None, x_api_key: str | None) -> Principal:
        credential = _bearer(authorization) or (x_api_key or "").strip()
        if not credential:
            raise AuthenticationError
        if credential.startswith(API_KEY_PREFIX):
            return await self._api_key(credential)
        if credential.count(".") == 2:
            return await self._jwt(credential)
        raise AuthenticationError

    async def _jwt(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthenticationError from exc
        kid = header.get("kid")
        # Only a kid that is a key of our JWKS is ever used: it is a dictionary lookup,
        # never a path, query or URL.
        if not isinstance(kid, str) or header.get("alg") not in ALLOWED_ALGORITHMS:
            raise AuthenticationError
        key = await self.jwks.key(kid)
        if key is None:
            raise AuthenticationError
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=ALLOWED_ALGORITHMS,
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]},
            )
        except jwt.PyJWTError as exc:
            raise AuthenticationError from exc
        tenant, role = claims.get("tenant"), claims.get("role")
        if not isinstance(tenant, str) or not isinstance(role, str):
            raise AuthenticationError
        scopes = claims.get("scopes") or []
        return Principal(
            user_id=str(claims["sub"]),
            tenant=tenant,
            role=role,
            scopes=tuple(str(scope) for scope in scopes),
        )

    async def _api_key(self, key: str) -> Principal:
        secret_hash = hashlib.sha256(key.encode()).hexdigest()
        now = time.monotonic()
        cached = self._keys.get(secret_hash)
        if cached is not None and cached[0] > now:
            if cached[1] is None:
                raise AuthenticationError
            return cached[1]
        principal = await self._lookup(secret_hash)
        ttl = self._key_ttl_s if principal is not None else self._negative_ttl_s
        if len(self._keys) > 100_000:  # bound memory under a flood of random keys
            self._keys.clear()
        self._keys[secret_hash] = (now + ttl, principal)
        if principal is None:
            raise AuthenticationError
        return principal

    async def _lookup(self, secret_hash: str) -> Principal | None:
        try:
            response = await self._client.post(
                self._lookup_url,
                json={"secret_hash": secret_hash},
                headers={INTERNAL_TOKEN_HEADER: self._internal_token},
                timeout=2.0,
            )
        except httpx.HTTPError as exc:
            raise AuthUnavailableError(repr(exc)) from exc
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise AuthUnavailableError(f"auth answered {response.status_code}")
        data = response.json()
        allowed = data.get("allowed_models")
        return Principal(
            user_id=data["user_id"],
            tenant=data["tenant"],
            role=data["role"],
            scopes=tuple(data.get("scopes") or ()),
            api_key_id=data["key_id"],
            allowed_models=tuple(allowed) if allowed is not None else None,
        )


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None
