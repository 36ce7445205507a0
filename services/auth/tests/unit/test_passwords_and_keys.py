"""Password hashing and the API key format."""

from __future__ import annotations

import hashlib
import re
import subprocess

import argon2
import pytest
from argon2 import extract_parameters, profiles
from argon2.exceptions import VerifyMismatchError

from switchyard.auth.keys import generate_api_key, hash_api_key, visible_prefix
from switchyard.auth.passwords import PasswordHasher, decoy_hash


def test_passwords_are_stored_as_argon2id_and_verify_only_the_right_one() -> None:
    hasher = PasswordHasher(profiles.CHEAPEST)
    stored = hasher.hash("correct horse battery staple")
    assert stored.startswith("$argon2id$")
    assert "correct horse" not in stored
    assert hasher.verify(stored, "correct horse battery staple")
    assert not hasher.verify(stored, "Correct horse battery staple")
    assert not hasher.verify(None, "anything"), "a user without a password can never sign in"
    assert not hasher.verify("not-a-hash", "anything")
    assert hasher.hash("same") != hasher.hash("same"), "every hash is salted"


@pytest.mark.parametrize(
    "parameters", [profiles.CHEAPEST, profiles.RFC_9106_LOW_MEMORY], ids=["cheapest", "default"]
)
def test_the_decoy_for_unknown_users_costs_a_full_verify_and_matches_nothing(
    parameters: argon2.Parameters,
) -> None:
    decoy = decoy_hash(parameters)
    # The same parameters as a real hash: verifying against it is as slow as against one.
    assert extract_parameters(decoy) == parameters
    assert decoy != decoy_hash(parameters), "a random salt and digest each time"
    if parameters == profiles.CHEAPEST:
        # Well formed: argon2 computes the hash and compares it (a mismatch, not a
        # malformed-hash error that would answer at once).
        with pytest.raises(VerifyMismatchError):
            argon2.PasswordHasher.from_parameters(parameters).verify(decoy, "anything")


def test_a_hasher_is_made_without_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_hash(*_args: object) -> str:
        raise AssertionError("a hash at construction costs 100 ms and 64 MiB")

    monkeypatch.setattr(argon2.PasswordHasher, "hash", no_hash)
    assert not PasswordHasher().verify(None, "anything")


def test_the_start_up_password_check_runs_in_a_child_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Embedded mode checks the dev password at every start: in this process, the hash's
    # 64 MiB would be the server's high-water mark (196 against 152 MiB idle).
    hasher = PasswordHasher(profiles.CHEAPEST)
    stored = hasher.hash("dev password")

    def not_here(*_args: object) -> object:
        raise AssertionError("hashed in the serving process")

    monkeypatch.setattr(argon2.PasswordHasher, "hash", not_here)
    monkeypatch.setattr(argon2.PasswordHasher, "verify", not_here)
    assert hasher.hash_unless_matches(stored, "dev password") is None
    changed = hasher.hash_unless_matches(stored, "another password")
    first = hasher.hash_unless_matches(None, "dev password")
    monkeypatch.undo()
    assert changed is not None and first is not None
    for new_hash, password in ((changed, "another password"), (first, "dev password")):
        assert extract_parameters(new_hash) == profiles.CHEAPEST, "the hasher's parameters"
        assert hasher.verify(new_hash, password)


def test_the_password_check_runs_here_when_the_child_cannot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_child(*_args: object, **_kwargs: object) -> object:
        raise OSError("no processes left")

    monkeypatch.setattr(subprocess, "run", no_child)
    hasher = PasswordHasher(profiles.CHEAPEST)
    stored = hasher.hash_unless_matches(None, "pw")
    assert stored is not None and hasher.verify(stored, "pw")
    assert hasher.hash_unless_matches(stored, "pw") is None


def test_weaker_hashes_are_flagged_for_rehash() -> None:
    cheap = PasswordHasher(profiles.CHEAPEST).hash("pw")
    assert PasswordHasher().needs_rehash(cheap)


def test_api_keys_have_the_documented_format_and_are_unique() -> None:
    keys = {generate_api_key() for _ in range(200)}
    assert len(keys) == 200
    for key in keys:
        assert re.fullmatch(r"sk-sy-[A-Za-z0-9_-]{43}", key), key


def test_api_keys_are_stored_as_sha256_with_a_short_visible_prefix() -> None:
    key = generate_api_key()
    assert hash_api_key(key) == hashlib.sha256(key.encode()).hexdigest()
    assert visible_prefix(key) == key[:12] and visible_prefix(key).startswith("sk-sy-")


def test_scopes_are_the_shared_definition_the_gateway_enforces() -> None:
    from switchyard.auth import scopes as auth_scopes
    from switchyard.common import scopes as shared

    assert auth_scopes.API_KEY_SCOPES is shared.API_KEY_SCOPES
    assert auth_scopes.USER_TOKEN_SCOPES is shared.USER_TOKEN_SCOPES
    assert (auth_scopes.CHAT, auth_scopes.HISTORY_READ, auth_scopes.KEYS_WRITE) == (
        "chat",
        "history:read",
        "keys:write",
    )
