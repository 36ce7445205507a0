"""The RSA key that signs access tokens: loading it, generating one for development, and
its public JWK with an RFC 7638 thumbprint as `kid`.

Outside development the key comes from `signing_key_file` (a mounted secret). In
development a key is generated once into `dev_key_file` (mode 600) so tokens issued
before a restart still verify after it.

Rotation without downtime uses `verification_key_files`: keys published in the JWKS and
accepted, but never used to sign. To rotate, (1) add the new key there and roll out, so
every verifier can learn it; (2) make it the signing key and move the old one there; (3)
once the old key's last tokens have expired (the access-token lifetime), drop it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from switchyard.auth.config import Settings
from switchyard.common.settings import Environment

SIGNING_ALGORITHM = "RS256"


class SigningKeyError(RuntimeError):
    """The signing key cannot be used; the message says why and what to set."""


def _b64url_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass(frozen=True)
class SigningKey:
    """The RSA private key that signs access tokens (RS256), with its `kid`: the RFC 7638
    thumbprint of its public key."""

    private_key: rsa.RSAPrivateKey
    kid: str

    @classmethod
    def from_private_key(cls, private_key: rsa.RSAPrivateKey) -> SigningKey:
        """The signing key of `private_key`, its `kid` computed from the public half."""
        return cls(private_key=private_key, kid=rsa_thumbprint(private_key.public_key()))

    @classmethod
    def from_pem(cls, pem: bytes, source: str = "signing key") -> SigningKey:
        """The signing key in `pem` (an unencrypted PEM private key). `source` names where it
        came from in error messages. Raises SigningKeyError unless it is an RSA key of at least
        2048 bits."""
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            raise SigningKeyError(f"{source} is not an unencrypted PEM private key: {exc}") from exc
        if not isinstance(key, rsa.RSAPrivateKey):
            raise SigningKeyError(f"{source} is not an RSA private key (RS256 needs RSA)")
        if key.key_size < 2048:
            raise SigningKeyError(f"{source} has {key.key_size} bits; RS256 needs at least 2048")
        return cls.from_private_key(key)

    def public_jwk(self) -> dict[str, Any]:
        """The public half as a JWK (RFC 7517: `kty`, `use`, `alg`, `kid`, `n`, `e`), for the
        JWKS."""
        return _public_jwk(self.private_key.public_key(), self.kid)

    def verification_key(self) -> VerificationKey:
        """The public half as a `VerificationKey` with the same `kid`."""
        return VerificationKey(public_key=self.private_key.public_key(), kid=self.kid)


@dataclass(frozen=True)
class VerificationKey:
    """A public key that verifies tokens (and is published in the JWKS) but never signs."""

    public_key: rsa.RSAPublicKey
    kid: str

    @classmethod
    def from_pem(cls, pem: bytes, source: str = "verification key") -> VerificationKey:
        """From a PEM public key, or a private key whose public half is taken."""
        try:
            if b"PRIVATE KEY" in pem:
                key: Any = serialization.load_pem_private_key(pem, password=None).public_key()
            else:
                key = serialization.load_pem_public_key(pem)
        except (ValueError, TypeError) as exc:
            raise SigningKeyError(f"{source} is not an unencrypted PEM RSA key: {exc}") from exc
        if not isinstance(key, rsa.RSAPublicKey):
            raise SigningKeyError(f"{source} is not an RSA key (RS256 needs RSA)")
        if key.key_size < 2048:
            raise SigningKeyError(f"{source} has {key.key_size} bits; RS256 needs at least 2048")
        return cls(public_key=key, kid=rsa_thumbprint(key))

    def public_jwk(self) -> dict[str, Any]:
        """The key as a JWK (RFC 7517: `kty`, `use`, `alg`, `kid`, `n`, `e`), for the JWKS."""
        return _public_jwk(self.public_key, self.kid)


def _public_jwk(public_key: rsa.RSAPublicKey, kid: str) -> dict[str, Any]:
    numbers = public_key.public_numbers()
    return {
        "kty": "RSA",
        "use": "sig",
        "alg": SIGNING_ALGORITHM,
        "kid": kid,
        "n": _b64url_uint(numbers.n),
        "e": _b64url_uint(numbers.e),
    }


def rsa_thumbprint(public_key: rsa.RSAPublicKey) -> str:
    """RFC 7638 JWK thumbprint: sha256 of the required members in lexicographic order."""
    numbers = public_key.public_numbers()
    members = {"e": _b64url_uint(numbers.e), "kty": "RSA", "n": _b64url_uint(numbers.n)}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()


def generate_private_key() -> rsa.RSAPrivateKey:
    """A new 2048-bit RSA private key (public exponent 65537)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def private_key_pem(key: rsa.RSAPrivateKey) -> bytes:
    """`key` as unencrypted PKCS#8 PEM bytes (what `SigningKey.from_pem` reads)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _create_dev_key_file(path: Path) -> None:
    """Write a new key to `path` unless it already exists, atomically.

    Several workers may start at once: each writes a private temporary file and links it
    into place, so exactly one key wins and nobody ever reads a half-written file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".signing-key-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(private_key_pem(generate_private_key()))
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass
    finally:
        os.unlink(temporary)


def load_signing_key(settings: Settings, *, generate_dev_key: bool = True) -> SigningKey:
    """The key from `signing_key_file`, or in development the dev key at `dev_key_file`,
    generated there first when missing unless `generate_dev_key` is False (an operator
    command: a key of its own would sign tokens no running service accepts). Raises
    SigningKeyError when the key cannot be read or, not generated, does not exist."""
    if settings.signing_key_file is not None:
        path = settings.signing_key_file
    elif settings.environment == Environment.DEVELOPMENT:
        path = settings.dev_key_file
        if not path.exists():
            if not generate_dev_key:
                raise SigningKeyError(
                    f"no development signing key at {path.absolute()} "
                    "(SWITCHYARD_AUTH_DEV_KEY_FILE): the auth service generates it when it "
                    "first starts (`make run`); run this from the directory it runs in, or "
                    "set the variable (or SWITCHYARD_AUTH_SIGNING_KEY_FILE) to its key"
                )
            _create_dev_key_file(path)
    else:  # Settings refuses this already; kept so the function is safe on its own.
        raise SigningKeyError("SWITCHYARD_AUTH_SIGNING_KEY_FILE is required outside development")
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"cannot read signing key file {path}: {exc.strerror}") from exc
    return SigningKey.from_pem(pem, source=f"signing key file {path}")


def load_verification_keys(settings: Settings) -> list[VerificationKey]:
    """The keys of `verification_key_files`, in order, without duplicates."""
    keys: dict[str, VerificationKey] = {}
    for path in settings.verification_key_files:
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise SigningKeyError(
                f"cannot read verification key file {path}: {exc.strerror}"
            ) from exc
        key = VerificationKey.from_pem(pem, source=f"verification key file {path}")
        keys.setdefault(key.kid, key)
    return list(keys.values())
