"""Access tokens, the JWKS that verifies them, and where the signing key comes from."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from switchyard.auth.config import Settings
from switchyard.auth.signing import (
    SigningKey,
    SigningKeyError,
    generate_private_key,
    load_signing_key,
    private_key_pem,
    rsa_thumbprint,
)
from switchyard.auth.tokens import InvalidToken, TokenIssuer
from switchyard.common.settings import SettingsError

# RFC 7638 section 3.1: this RSA key's thumbprint is the `kid` below.
RFC7638_N = (
    "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECP"
    "ebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY"
    "368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0f"
    "M4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
)
RFC7638_KID = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


@pytest.fixture(scope="module")
def signing_key() -> SigningKey:
    return SigningKey.from_private_key(generate_private_key())


def make_issuer(key: SigningKey, ttl_s: int = 900) -> TokenIssuer:
    return TokenIssuer(key, issuer="switchyard-auth", audience="switchyard", ttl_s=ttl_s)


def test_kid_is_the_rfc7638_thumbprint() -> None:
    import base64

    n = int.from_bytes(base64.urlsafe_b64decode(RFC7638_N + "=" * (-len(RFC7638_N) % 4)), "big")
    public_key = rsa.RSAPublicNumbers(e=65537, n=n).public_key()
    assert rsa_thumbprint(public_key) == RFC7638_KID


def test_token_carries_the_documented_claims_and_kid(signing_key: SigningKey) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    issued = make_issuer(signing_key).issue(
        user_id="u1", tenant="acme", role="admin", scopes=["chat"], now=now
    )
    header = jwt.get_unverified_header(issued.token)
    assert header["alg"] == "RS256"
    assert header["kid"] == signing_key.kid
    claims = jwt.decode(issued.token, options={"verify_signature": False})
    assert claims["iss"] == "switchyard-auth"
    assert claims["aud"] == "switchyard"
    assert claims["sub"] == "u1"
    assert claims["tenant"] == "acme"
    assert claims["role"] == "admin"
    assert claims["scopes"] == ["chat"]
    assert claims["iat"] == claims["nbf"] == int(now.timestamp())
    assert claims["exp"] - claims["iat"] == 900 == issued.expires_in
    assert claims["jti"] == issued.jti and len(issued.jti) == 32


def test_jwks_verifies_issued_tokens(signing_key: SigningKey) -> None:
    issuer = make_issuer(signing_key)
    token = issuer.issue(user_id="u1", tenant="t", role="member", scopes=[]).token
    (jwk,) = issuer.jwks()["keys"]
    assert jwk["kid"] == signing_key.kid and jwk["alg"] == "RS256" and jwk["use"] == "sig"
    assert "d" not in jwk and "p" not in jwk, "the JWKS must never publish private parts"
    public_key = jwt.PyJWK(jwk).key
    claims = jwt.decode(token, public_key, algorithms=["RS256"], audience="switchyard")
    assert claims["sub"] == "u1"


def test_verify_refuses_expired_foreign_and_tampered_tokens(signing_key: SigningKey) -> None:
    issuer = make_issuer(signing_key)
    expired = issuer.issue(
        user_id="u",
        tenant="t",
        role="member",
        scopes=[],
        now=datetime.now(UTC) - timedelta(hours=1),
    ).token
    with pytest.raises(InvalidToken):
        issuer.verify(expired)

    stranger = make_issuer(SigningKey.from_private_key(generate_private_key()))
    with pytest.raises(InvalidToken, match="known key"):
        issuer.verify(stranger.issue(user_id="u", tenant="t", role="member", scopes=[]).token)

    good = issuer.issue(user_id="u", tenant="t", role="member", scopes=["chat"]).token
    assert issuer.verify(good).scopes == ["chat"]
    header, payload, signature = good.split(".")
    forged_payload = jwt.utils.base64url_encode(
        jwt.utils.base64url_decode(payload).replace(b'"member"', b'"admin"')
    ).decode()
    with pytest.raises(InvalidToken):
        issuer.verify(f"{header}.{forged_payload}.{signature}")

    other_audience = TokenIssuer(signing_key, issuer="switchyard-auth", audience="other", ttl_s=60)
    with pytest.raises(InvalidToken):
        issuer.verify(other_audience.issue(user_id="u", tenant="t", role="m", scopes=[]).token)


def test_verify_allows_the_clock_skew_the_gateway_allows(signing_key: SigningKey) -> None:
    # The gateway accepts a token up to SWITCHYARD_GATEWAY_JWT_LEEWAY_S past its expiry;
    # auth, behind it on /v1/admin/* and /v1/api-keys, must not refuse it meanwhile.
    lenient = TokenIssuer(
        signing_key, issuer="switchyard-auth", audience="switchyard", ttl_s=60, leeway_s=10
    )
    just_expired = lenient.issue(
        user_id="u",
        tenant="t",
        role="member",
        scopes=["chat"],
        now=datetime.now(UTC) - timedelta(seconds=65),
    ).token
    assert lenient.verify(just_expired).user_id == "u"
    with pytest.raises(InvalidToken, match="expired"):
        make_issuer(signing_key).verify(just_expired)
    long_expired = lenient.issue(
        user_id="u",
        tenant="t",
        role="member",
        scopes=[],
        now=datetime.now(UTC) - timedelta(seconds=75),
    ).token
    with pytest.raises(InvalidToken, match="expired"):
        lenient.verify(long_expired)
    assert Settings(environment="development").jwt_leeway_s == 10.0


def test_settings_refuse_a_missing_signing_key_outside_development(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="SWITCHYARD_AUTH_SIGNING_KEY_FILE"):
        Settings(environment="production", internal_token="prod-secret", signing_key_file=None)
    with pytest.raises(SettingsError, match="does not exist"):
        Settings(
            environment="production",
            internal_token="prod-secret",
            signing_key_file=tmp_path / "missing.pem",
        )
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(private_key_pem(generate_private_key()))
    settings = Settings(
        environment="production", internal_token="prod-secret", signing_key_file=key_file
    )
    assert load_signing_key(settings).kid


def test_refused_settings_do_not_print_secrets() -> None:
    with pytest.raises(SettingsError) as refused:
        Settings(environment="production", internal_token="very-secret-value")
    assert "very-secret-value" not in str(refused.value)


def test_development_generates_one_key_and_keeps_it(tmp_path: Path) -> None:
    settings = Settings(environment="development", dev_key_file=tmp_path / "dev" / "key.pem")
    first = load_signing_key(settings)
    assert stat.S_IMODE(os.stat(settings.dev_key_file).st_mode) == 0o600
    second = load_signing_key(settings)
    assert first.kid == second.kid, "a restart must keep the key so old tokens still verify"
    assert [p.name for p in settings.dev_key_file.parent.iterdir()] == ["key.pem"]


def test_unusable_key_files_are_refused_with_a_reason(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a key")
    with pytest.raises(SigningKeyError, match="not an unencrypted PEM private key"):
        load_signing_key(Settings(environment="development", signing_key_file=garbage))

    ec_key = tmp_path / "ec.pem"
    ec_key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(SigningKeyError, match="not an RSA private key"):
        load_signing_key(Settings(environment="development", signing_key_file=ec_key))


def test_a_chosen_dev_api_key_must_be_an_api_key() -> None:
    """The gateway reads a credential without the key prefix as an access token: such a
    dev key would be stored and printed, then refused on every request."""
    with pytest.raises(SettingsError, match="SWITCHYARD_DEV_API_KEY"):
        Settings(dev_api_key="my-own-dev-key-123")
    assert Settings(dev_api_key="sk-sy-my-own-dev-key").dev_api_key == "sk-sy-my-own-dev-key"
