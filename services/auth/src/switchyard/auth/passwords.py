"""Password hashing with Argon2id (argon2-cffi). Only hashes are ever stored."""

from __future__ import annotations

from argon2 import Parameters, profiles
from argon2 import PasswordHasher as _Argon2Hasher
from argon2.exceptions import InvalidHashError, VerificationError


class PasswordHasher:
    """Hashes and checks passwords; `verify` never raises for a wrong password."""

    def __init__(self, parameters: Parameters = profiles.RFC_9106_LOW_MEMORY) -> None:
        self._argon2 = _Argon2Hasher.from_parameters(parameters)
        # Checked when the user does not exist, so a wrong email costs as much time as a
        # wrong password and response times do not reveal which emails are registered.
        self._decoy_hash = self._argon2.hash("decoy password that matches nothing")

    def hash(self, password: str) -> str:
        return self._argon2.hash(password)

    def verify(self, password_hash: str | None, password: str) -> bool:
        try:
            return self._argon2.verify(password_hash or self._decoy_hash, password) and bool(
                password_hash
            )
        except (VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, password_hash: str) -> bool:
        return self._argon2.check_needs_rehash(password_hash)
