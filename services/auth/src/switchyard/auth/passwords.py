"""Password hashing with Argon2id (argon2-cffi). Only hashes are ever stored.

A hash takes about 100 ms of CPU by design, so it never runs on the event loop: the
`*_async` methods run it on a small thread pool (argon2-cffi releases the GIL while it
hashes, so the threads hash in parallel while the loop keeps serving). The pool's queue
is bounded: when `max_pending` hashes are already waiting or running, the next caller
gets `HashingBusy` at once (answered 429), so a burst of sign-ins sheds load instead of
delaying everything the service serves.

A hash or check holds `memory_cost` KiB (64 MiB by default) while it runs. Where a process
checks one password at start-up and then serves (embedded mode makes sure of the dev
user's password at every start), `hash_unless_matches` does that in a short-lived child
process (`python -m switchyard.auth.passwords`), so the server's high-water mark never
includes it.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from argon2 import Parameters, Type, profiles
from argon2 import PasswordHasher as _Argon2Hasher
from argon2.exceptions import InvalidHashError, VerificationError
from argon2.low_level import ARGON2_VERSION

T = TypeVar("T")

# The argument that makes `python -m switchyard.auth.passwords` answer one
# `hash_unless_matches` request (read from stdin, answered on stdout).
CHILD_ARGUMENT = "--hash-unless-matches"
# How long the child may take: a Python start and one Argon2 check and hash.
CHILD_TIMEOUT_S = 60.0


class HashingBusy(Exception):
    """Too many password hashes are waiting; the caller should retry shortly."""


def decoy_hash(parameters: Parameters) -> str:
    """A well-formed Argon2 hash with `parameters` (a PHC string, as argon2-cffi writes
    it) whose salt and digest are random bytes: verifying any password against it costs
    exactly what verifying against a real hash with those parameters costs, and matches
    nothing (a 2^-256 chance per guess). Made without hashing, so a hasher is created
    without the hash's 100 ms of CPU and its `memory_cost` KiB of memory (64 MiB for the
    default parameters)."""

    def b64(raw: bytes) -> str:
        # PHC strings use standard base64 without its padding.
        return base64.b64encode(raw).rstrip(b"=").decode("ascii")

    cost = f"m={parameters.memory_cost},t={parameters.time_cost},p={parameters.parallelism}"
    salt, digest = os.urandom(parameters.salt_len), os.urandom(parameters.hash_len)
    variant = parameters.type.name.lower()
    # argon2-cffi hashes with the library's version whatever `parameters.version` says.
    return f"$argon2{variant}$v={ARGON2_VERSION}${cost}${b64(salt)}${b64(digest)}"


class PasswordHasher:
    """Hashes and checks passwords; `verify` never raises for a wrong password.

    `workers` threads hash at once (default: the CPU count, at most 4) and at most
    `max_pending` hashes wait or run before `HashingBusy`."""

    def __init__(
        self,
        parameters: Parameters = profiles.RFC_9106_LOW_MEMORY,
        *,
        workers: int | None = None,
        max_pending: int = 64,
    ) -> None:
        self._parameters = parameters
        self._argon2 = _Argon2Hasher.from_parameters(parameters)
        # Checked when the user does not exist, so a wrong email costs as much time as a
        # wrong password and response times do not reveal which emails are registered.
        self._decoy_hash = decoy_hash(parameters)
        self._workers = workers or min(4, os.cpu_count() or 1)
        self._max_pending = max_pending
        self._pending = 0
        self._pool: ThreadPoolExecutor | None = None

    def hash(self, password: str) -> str:
        """The Argon2id hash of `password` (a PHC string with its salt and parameters); blocks
        for the hash's duration."""
        return self._argon2.hash(password)

    def verify(self, password_hash: str | None, password: str) -> bool:
        """Whether `password` matches `password_hash`. With no hash (unknown user, or a user
        without a password) a decoy hash is checked anyway, so the call takes as long, and the
        answer is False. Never raises for a wrong or malformed hash."""
        try:
            return self._argon2.verify(password_hash or self._decoy_hash, password) and bool(
                password_hash
            )
        except (VerificationError, InvalidHashError):
            return False

    def hash_unless_matches(self, password_hash: str | None, password: str) -> str | None:
        """None when `password_hash` is a hash of `password`, else a new hash of `password`.
        Computed in a child process (`CHILD_ARGUMENT`) with this hasher's parameters, so
        this process never holds the hash's memory; in this process when the child cannot
        run or answer (the same result, only the memory differs). Blocks until done."""
        request = {
            "parameters": _parameters_json(self._parameters),
            "hash": password_hash,
            "password": password,
        }
        try:
            # The password goes through a pipe, never the command line others can read;
            # -P: no module of the working directory is imported in its stead.
            done = subprocess.run(
                [sys.executable, "-P", "-m", "switchyard.auth.passwords", CHILD_ARGUMENT],
                input=json.dumps(request).encode(),
                capture_output=True,
                timeout=CHILD_TIMEOUT_S,
                check=True,
            )
            answer = json.loads(done.stdout)["hash"]
            if answer is None or isinstance(answer, str):
                return answer
            raise ValueError("the answer is not a hash")
        except (OSError, ValueError, KeyError, TypeError, subprocess.SubprocessError) as exc:
            # Imported here: the child imports this module, and starts faster without it.
            import structlog

            structlog.get_logger("switchyard.auth.passwords").warning(
                "password check run in this process", reason=type(exc).__name__
            )
        return self._hash_unless_matches_here(password_hash, password)

    def _hash_unless_matches_here(self, password_hash: str | None, password: str) -> str | None:
        if password_hash and self.verify(password_hash, password):
            return None
        return self.hash(password)

    def needs_rehash(self, password_hash: str) -> bool:
        """Whether `password_hash` was made with other parameters than this hasher's (then rehash
        on the next sign-in)."""
        return self._argon2.check_needs_rehash(password_hash)

    @property
    def pending(self) -> int:
        """Hashes waiting or running on the pool right now."""
        return self._pending

    async def _off_loop(self, function: Callable[..., T], *args: object) -> T:
        if self._pending >= self._max_pending:
            raise HashingBusy
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="argon2")
        self._pending += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, function, *args)
        finally:
            self._pending -= 1

    async def hash_async(self, password: str) -> str:
        """`hash` on the hashing pool; raises HashingBusy when the pool is full."""
        return await self._off_loop(self.hash, password)

    async def verify_async(self, password_hash: str | None, password: str) -> bool:
        """`verify` on the hashing pool; raises HashingBusy when the pool is full."""
        return await self._off_loop(self.verify, password_hash, password)

    def close(self) -> None:
        """Stop the hashing threads without waiting; pending hashes are cancelled."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


def _parameters_json(parameters: Parameters) -> dict[str, Any]:
    fields = dataclasses.asdict(parameters)
    fields["type"] = parameters.type.value
    return fields


def _child_main() -> None:
    """`python -m switchyard.auth.passwords --hash-unless-matches` (`hash_unless_matches`):
    read {"parameters", "hash", "password"} from stdin, write {"hash": new hash or null}."""
    request = json.loads(sys.stdin.buffer.read())
    fields = dict(request["parameters"])
    fields["type"] = Type(fields["type"])
    hasher = PasswordHasher(Parameters(**fields), workers=1)
    answer = hasher._hash_unless_matches_here(request["hash"], request["password"])
    sys.stdout.write(json.dumps({"hash": answer}))


if __name__ == "__main__" and sys.argv[1:] == [CHILD_ARGUMENT]:
    _child_main()
