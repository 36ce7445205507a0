"""Every classic JWT attack against the gateway is refused with 401 in the OpenAI error
format, never echoing the token, and a malicious `kid` causes no lookup of any kind."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from jwt.algorithms import RSAAlgorithm

from switchyard.gateway.config import Settings

from .auth_double import AUDIENCE, ISSUER, AuthDouble, gateway_with, new_rsa_key

BODY = {"model": "sim-small", "messages": [{"role": "user", "content": "Hello"}]}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**overrides) -> dict:
    now = int(time.time())
    base = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-jwt",
        "tenant": "acme",
        "role": "member",
        "scopes": ["chat"],
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": uuid.uuid4().hex,
    }
    base.update(overrides)
    return {key: value for key, value in base.items() if value is not None}


def unsigned(header: dict, payload: dict, signature: bytes = b"") -> str:
    return ".".join(
        (
            b64(json.dumps(header).encode()),
            b64(json.dumps(payload).encode()),
            b64(signature),
        )
    )


def hs256_with_public_key(auth: AuthDouble) -> str:
    """The algorithm-confusion attack: HMAC keyed with the (public) RSA key's PEM."""
    public_pem = (
        auth.keys["kid-1"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "kid-1"}).encode())
    payload = b64(json.dumps(claims(role="admin")).encode())
    signing_input = f"{header}.{payload}".encode()
    return f"{header}.{payload}.{b64(hmac.new(public_pem, signing_input, hashlib.sha256).digest())}"


def rs256_raw(header: dict, auth: AuthDouble) -> str:
    """A correctly signed RS256 token with a header PyJWT would refuse to produce."""
    signing_input = (
        f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims()).encode())}".encode()
    )
    signature = auth.keys["kid-1"].sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input.decode()}.{b64(signature)}"


def tamper_payload(token: str) -> str:
    header, payload, signature = token.split(".")
    data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    data["tenant"] = "globex"
    return f"{header}.{b64(json.dumps(data).encode())}.{signature}"


def tamper_signature(token: str) -> str:
    header, payload, signature = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[10] ^= 0x01
    return f"{header}.{payload}.{b64(bytes(raw))}"


def embedded_jwk(auth: AuthDouble) -> str:
    """The attacker's own key shipped in the header (`jwk`) and a `jku` pointing at theirs."""
    attacker = new_rsa_key()
    jwk = RSAAlgorithm.to_jwk(attacker.public_key(), as_dict=True)
    return jwt.encode(
        claims(role="admin"),
        attacker,
        algorithm="RS256",
        headers={"kid": "kid-1", "jwk": jwk, "jku": "https://evil.example/jwks.json"},
    )


ATTACKS = {
    "alg-none": lambda auth: unsigned({"alg": "none", "kid": "kid-1"}, claims()),
    "alg-None": lambda auth: unsigned({"alg": "None", "kid": "kid-1"}, claims()),
    "alg-none-with-signature": lambda auth: unsigned(
        {"alg": "none", "kid": "kid-1"}, claims(), b"sig"
    ),
    "hs256-with-public-key-as-secret": hs256_with_public_key,
    "rs512-outside-allow-list": lambda auth: jwt.encode(
        claims(), auth.keys["kid-1"], algorithm="RS512", headers={"kid": "kid-1"}
    ),
    "ps256-outside-allow-list": lambda auth: jwt.encode(
        claims(), auth.keys["kid-1"], algorithm="PS256", headers={"kid": "kid-1"}
    ),
    "es256-outside-allow-list": lambda auth: jwt.encode(
        claims(),
        ec.generate_private_key(ec.SECP256R1()),
        algorithm="ES256",
        headers={"kid": "kid-1"},
    ),
    "unknown-kid": lambda auth: jwt.encode(
        claims(), new_rsa_key(), algorithm="RS256", headers={"kid": "kid-unknown"}
    ),
    "missing-kid": lambda auth: jwt.encode(claims(), auth.keys["kid-1"], algorithm="RS256"),
    "kid-not-a-string": lambda auth: rs256_raw({"alg": "RS256", "kid": 1}, auth),
    "kid-an-object": lambda auth: rs256_raw({"alg": "RS256", "kid": {"$ne": ""}}, auth),
    "embedded-jwk-and-jku": embedded_jwk,
    "expired": lambda auth: auth.token(exp=int(time.time()) - 120, iat=int(time.time()) - 600),
    "nbf-in-the-future": lambda auth: auth.token(nbf=int(time.time()) + 600),
    "missing-exp": lambda auth: auth.token(exp=None),
    "missing-iat": lambda auth: auth.token(iat=None),
    "missing-jti": lambda auth: auth.token(jti=None),
    "missing-sub": lambda auth: auth.token(sub=None),
    "wrong-iss": lambda auth: auth.token(iss="https://evil.example"),
    "wrong-aud": lambda auth: auth.token(aud="someone-else"),
    "missing-aud": lambda auth: auth.token(aud=None),
    "scopes-not-a-list": lambda auth: auth.token(scopes="chat"),
    "tenant-not-a-string": lambda auth: auth.token(tenant=["acme", "globex"]),
    "tampered-payload": lambda auth: tamper_payload(auth.token()),
    "tampered-signature": lambda auth: tamper_signature(auth.token()),
    "signature-stripped": lambda auth: auth.token().rsplit(".", 1)[0] + ".",
    "garbage": lambda auth: "eyJhbGciOi.not-base64!.###",
}


def assert_refused(response, token: str, status: int = 401) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_api_key"
    assert response.headers["www-authenticate"] == "Bearer"
    for part in token.split("."):
        if len(part) > 8:
            assert part not in response.text, "the token must never be echoed"
            assert all(part not in value for value in response.headers.values())


@pytest.mark.parametrize("attack", sorted(ATTACKS))
async def test_jwt_attack_is_refused(attack: str) -> None:
    async with gateway_with() as gw:
        # The real token works, so a refusal below is the attack's doing.
        good = await gw.client.post(
            "/v1/chat/completions",
            json=BODY,
            headers={"Authorization": f"Bearer {gw.auth.token()}"},
        )
        assert good.status_code == 200, good.text
        token = ATTACKS[attack](gw.auth)
        for headers in ({"Authorization": f"Bearer {token}"}, {"x-api-key": token}):
            response = await gw.client.post("/v1/chat/completions", json=BODY, headers=headers)
            assert_refused(response, token)


MALICIOUS_KIDS = [
    "../../dev/null",
    "../../../../etc/passwd",
    "' OR 1=1--",
    "kid-1' UNION SELECT key FROM keys--",
    "https://evil.example/jwks.json",
    "file:///etc/passwd",
    "/dev/null",
    "kid-1\x00",
    "",
    "a" * 500,
]


@pytest.mark.parametrize("kid", MALICIOUS_KIDS, ids=lambda kid: repr(kid)[:30])
async def test_malicious_kid_is_refused_without_any_lookup(kid: str) -> None:
    # No minimum interval: a well-formed unknown kid would refresh the JWKS at once, so
    # the absence of any call proves these kids never reach a lookup.
    settings = Settings(topic_prefix="unit-kid", jwks_refresh_min_interval_s=0)
    async with gateway_with(settings=settings) as gw:
        calls_before = list(gw.auth.calls)
        token = jwt.encode(claims(), gw.auth.keys["kid-1"], algorithm="RS256", headers={"kid": kid})
        response = await gw.client.post(
            "/v1/chat/completions", json=BODY, headers={"Authorization": f"Bearer {token}"}
        )
        assert_refused(response, token)
        assert gw.auth.calls == calls_before, "a malicious kid must cause no request at all"


async def test_unknown_well_formed_kid_refreshes_the_jwks_at_most_once_per_interval() -> None:
    settings = Settings(topic_prefix="unit-kid", jwks_refresh_min_interval_s=30)
    async with gateway_with(settings=settings) as gw:
        fetched = gw.auth.count("/.well-known/jwks.json")
        for _ in range(20):
            token = jwt.encode(
                claims(), new_rsa_key(), algorithm="RS256", headers={"kid": uuid.uuid4().hex}
            )
            response = await gw.client.post(
                "/v1/chat/completions", json=BODY, headers={"Authorization": f"Bearer {token}"}
            )
            assert response.status_code == 401
        # The first unknown kid may fetch once (a key could be new); the flood does not.
        assert gw.auth.count("/.well-known/jwks.json") <= fetched + 1, "flood reached auth"


async def test_a_valid_token_is_verified_once_then_served_from_the_cache() -> None:
    async with gateway_with() as gw:
        token = gw.auth.token()
        authenticator = gw.gateway.authenticator
        first = await authenticator.authenticate(f"Bearer {token}", None)
        second = await authenticator.authenticate(f"Bearer {token}", None)
        assert first is second and first.tenant == "acme" and first.session_id == "session-1"


async def test_an_expired_cached_token_is_refused(monkeypatch) -> None:
    settings = Settings(topic_prefix="unit-exp", jwt_leeway_s=0)
    async with gateway_with(settings=settings) as gw:
        token = gw.auth.token(exp=int(time.time()) + 2)
        authenticator = gw.gateway.authenticator
        assert (await authenticator.authenticate(f"Bearer {token}", None)).user_id == "user-jwt"
        later = time.time() + 5
        monkeypatch.setattr("switchyard.gateway.auth.time.time", lambda: later)
        response = await gw.client.post(
            "/v1/chat/completions", json=BODY, headers={"Authorization": f"Bearer {token}"}
        )
        assert_refused(response, token)


async def test_leeway_tolerates_small_clock_skew_only() -> None:
    settings = Settings(topic_prefix="unit-skew", jwt_leeway_s=10)
    async with gateway_with(settings=settings) as gw:
        now = int(time.time())
        skewed = gw.auth.token(iat=now + 3, nbf=now + 3)  # auth's clock is 3 s ahead
        response = await gw.client.post(
            "/v1/chat/completions", json=BODY, headers={"Authorization": f"Bearer {skewed}"}
        )
        assert response.status_code == 200, response.text
        future = gw.auth.token(nbf=now + 60)
        response = await gw.client.post(
            "/v1/chat/completions", json=BODY, headers={"Authorization": f"Bearer {future}"}
        )
        assert_refused(response, future)


async def test_oversized_and_malformed_credentials_are_refused() -> None:
    async with gateway_with() as gw:
        for value in ("Bearer " + "a" * 10_000, "Bearer sk-sy-", "Token abc", "Bearer a.b"):
            response = await gw.client.post(
                "/v1/chat/completions", json=BODY, headers={"Authorization": value}
            )
            assert response.status_code == 401
            assert "aaaaaaaaaa" not in response.text
