"""Authentication cost on the gateway and revocation propagation time; prints a table.

Measured on the gateway's real `Authenticator`:

- JWT verification, uncached (a new token each call: RS256 signature and claims) and
  cached (the same token again: verified-token cache, expiry and revocation checks);
- API key check, cached (hash + cache + revocation sets) and uncached (a key never seen,
  so one lookup at auth): with auth mocked in-process (the gateway's own cost) and with
  the real auth service over HTTP on PostgreSQL (what a cache miss costs in production);
- revocation propagation on real Kafka: (a) an `auth.api_key_revoked` event published on
  the auth events topic -> the Authenticator refuses the key; (b) end to end, a
  `DELETE /v1/api-keys/{id}` at the real auth service (outbox -> Kafka) -> refused.

Needs KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL for the last three rows (skipped without
them). Usage: `uv run python tests/bench/bench_auth.py [--iterations N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import secrets
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from benchkit import free_port, markdown_table, timed

from switchyard.auth.signing import SigningKey, generate_private_key, private_key_pem
from switchyard.auth.tokens import TokenIssuer
from switchyard.common.events import ApiKeyRevoked, ApiKeyRevokedData, new_id
from switchyard.common.logging import configure_logging
from switchyard.common.testing.infra import temporary_database, unique_prefix
from switchyard.common.testing.processes import ProcessGroup
from switchyard.gateway.auth import AuthenticationError, Authenticator, Principal, _CachedKey
from switchyard.gateway.revocations import RevocationState, RevocationSync

ISSUER, AUDIENCE = "switchyard-auth", "switchyard"
EMPTY_SNAPSHOT = {
    "revoked_tokens": [],
    "revoked_sessions": [],
    "revoked_api_keys": [],
    "disabled_users": [],
}


@dataclass
class Row:
    name: str
    samples_us: list[float]
    unit: str = "µs"

    def cells(self) -> list[str]:
        values = sorted(self.samples_us)
        scale = 1000.0 if self.unit == "ms" else 1.0

        def fmt(value: float) -> str:
            return f"{value / scale:,.1f}"

        p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
        return [
            self.name,
            str(len(values)),
            fmt(statistics.fmean(values)),
            fmt(statistics.median(values)),
            fmt(p99),
            fmt(values[-1]),
            self.unit,
        ]


def print_table(rows: list[Row], skipped: list[str]) -> None:
    header = ["measurement", "n", "mean", "p50", "p99", "max", "unit"]
    for line in markdown_table(header, [row.cells() for row in rows], padded=True):
        print(line)
    for reason in skipped:
        print(f"skipped: {reason}")


def key_identity(key_id: str) -> dict:
    return {
        "key_id": key_id,
        "user_id": "bench-user",
        "tenant": "bench",
        "role": "member",
        "scopes": ["chat", "history:read"],
        "allowed_models": None,
        "expires_at": None,
    }


def authenticator(client: httpx.AsyncClient, auth_url: str, internal_token: str) -> Authenticator:
    state = RevocationState()
    return Authenticator(
        client,
        auth_url=auth_url,
        internal_token=internal_token,
        issuer=ISSUER,
        audience=AUDIENCE,
        key_ttl_s=300,
        negative_ttl_s=5,
        jwks_min_interval_s=30,
        leeway_s=10,
        revocations=state,
    )


async def in_process_rows(iterations: int) -> list[Row]:
    """The gateway's own cost: auth answered by an in-process mock."""
    signing_key = SigningKey.from_private_key(generate_private_key())
    issuer = TokenIssuer(signing_key, issuer=ISSUER, audience=AUDIENCE, ttl_s=900)

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/.well-known/jwks.json":
            return httpx.Response(200, json=issuer.jwks())
        return httpx.Response(200, json=key_identity("key-" + uuid.uuid4().hex[:8]))

    async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as client:
        auth = authenticator(client, "http://auth.local", "bench")
        auth.revocations.load_snapshot(EMPTY_SNAPSHOT)
        await auth.jwks.refresh()

        tokens = iter(
            [
                issuer.issue(user_id="u", tenant="t", role="member", scopes=["chat"]).token
                for _ in range(iterations + 200)
            ]
        )
        uncached_jwt = await timed(
            lambda: auth.authenticate(f"Bearer {next(tokens)}", None), iterations
        )
        token = issuer.issue(user_id="u", tenant="t", role="member", scopes=["chat"]).token
        cached_jwt = await timed(lambda: auth.authenticate(f"Bearer {token}", None), iterations)

        key = "sk-sy-" + secrets.token_urlsafe(32)
        cached_key = await timed(lambda: auth.authenticate(f"Bearer {key}", None), iterations)
        keys = iter("sk-sy-" + secrets.token_urlsafe(32) for _ in range(iterations + 200))
        uncached_key = await timed(
            lambda: auth.authenticate(f"Bearer {next(keys)}", None), iterations
        )
    return [
        Row("JWT verify, uncached (RS256 + claims)", uncached_jwt),
        Row("JWT, cached (same token again)", cached_jwt),
        Row("API key, cached", cached_key),
        Row("API key, uncached, auth mocked in-process", uncached_key),
    ]


async def real_auth_rows(iterations: int, database: str, kafka: str) -> list[Row]:
    """A real auth process on PostgreSQL and Kafka: uncached key lookups over HTTP, and
    revocation propagation through Kafka to an in-process gateway Authenticator."""
    from switchyard.common.bus.kafka import KafkaBus
    from switchyard.common.kafka_admin import create_topics, delete_topics
    from switchyard.common.topics import Topics

    workdir = Path(tempfile.mkdtemp(prefix="bench-auth-"))
    key_file = workdir / "signing-key.pem"
    key_file.write_bytes(private_key_pem(generate_private_key()))
    prefix = unique_prefix("bench-auth")
    topics = Topics(prefix)
    internal_token = secrets.token_urlsafe(24)
    port = free_port()
    env = {
        **os.environ,
        "SWITCHYARD_ENVIRONMENT": "test",
        "SWITCHYARD_BUS": "kafka",
        "KAFKA_BOOTSTRAP_SERVERS": kafka,
        "SWITCHYARD_TOPIC_PREFIX": prefix,
        "SWITCHYARD_INTERNAL_TOKEN": internal_token,
        "DATABASE_URL": database,
        "SWITCHYARD_AUTH_SIGNING_KEY_FILE": str(key_file),
        "SWITCHYARD_LOG_LEVEL": "WARNING",
    }
    group = ProcessGroup(env=env, workdir=workdir)
    await create_topics(kafka, topics, partitions_override=1)
    publisher = KafkaBus(kafka, client_id="bench-publisher")
    gateway_bus = KafkaBus(kafka, client_id="bench-gateway")
    sync: RevocationSync | None = None
    try:
        group.cli("db", "upgrade")
        password = secrets.token_urlsafe(12)
        group.cli(
            "users",
            "create",
            "--email",
            "bench@example.com",
            "--password-stdin",
            stdin=password + "\n",
        )
        group.start("auth", "auth", "--port", str(port), port=port)
        auth_url = f"http://127.0.0.1:{port}"
        await publisher.start()
        await gateway_bus.start()
        async with httpx.AsyncClient(
            limits=httpx.Limits(max_connections=50, max_keepalive_connections=50)
        ) as client:
            auth = authenticator(client, auth_url, internal_token)
            sync = RevocationSync(
                gateway_bus, topics.auth_events, auth.revocations, auth.fetch_revocations
            )
            await sync.run()

            sign_in = await client.post(
                auth_url + "/v1/auth/token",
                json={
                    "grant_type": "password",
                    "username": "bench@example.com",
                    "password": password,
                },
            )
            sign_in.raise_for_status()
            user_headers = {"Authorization": f"Bearer {sign_in.json()['access_token']}"}

            async def new_key() -> dict:
                response = await client.post(
                    auth_url + "/v1/api-keys", json={"name": "bench"}, headers=user_headers
                )
                response.raise_for_status()
                return response.json()

            lookups = min(iterations, 500)
            keys = [await new_key() for _ in range(lookups + 200)]
            pending = iter(keys)
            uncached = await timed(
                lambda: auth.authenticate(f"Bearer {next(pending)['key']}", None), lookups
            )

            async def refused_after(key: str, revoke: Callable[[], Awaitable[object]]) -> float:
                await auth.authenticate(f"Bearer {key}", None)  # cached now
                started = time.perf_counter_ns()
                await revoke()
                while True:
                    try:
                        await auth.authenticate(f"Bearer {key}", None)
                    except AuthenticationError:
                        return (time.perf_counter_ns() - started) / 1000
                    await asyncio.sleep(0.0002)

            rounds = min(iterations, 50)
            via_event = []
            for _ in range(rounds):
                key = "sk-sy-" + secrets.token_urlsafe(32)
                key_id = "bench-" + hashlib.sha256(key.encode()).hexdigest()[:12]
                # Seed the cache as a lookup would have, without asking auth.
                auth._keys[hashlib.sha256(key.encode()).hexdigest()] = _CachedKey(
                    time.monotonic() + 300,
                    Principal("bench-user", "bench", "member", ("chat",), api_key_id=key_id),
                )
                event = ApiKeyRevoked(
                    source="bench",
                    tenant="bench",
                    request_id=new_id(),
                    data=ApiKeyRevokedData(key_id=key_id, user_id="bench-user"),
                )
                via_event.append(
                    await refused_after(
                        key, lambda event=event: publisher.publish(topics.auth_events, event)
                    )
                )

            end_to_end = []
            for _ in range(rounds):
                created = await new_key()

                async def revoke(key_id: str = created["key_id"]) -> None:
                    response = await client.delete(
                        f"{auth_url}/v1/api-keys/{key_id}", headers=user_headers
                    )
                    response.raise_for_status()

                end_to_end.append(await refused_after(created["key"], revoke))
    finally:
        if sync is not None:
            await sync.stop()
        await gateway_bus.stop()
        await publisher.stop()
        group.stop_all()
        await delete_topics(kafka, [name for name, _ in topics.all()])
    return [
        Row("API key, uncached, real auth over HTTP (PostgreSQL)", uncached),
        Row("revocation: event on Kafka -> refused", via_event, unit="ms"),
        Row("revocation: DELETE at auth -> outbox -> Kafka -> refused", end_to_end, unit="ms"),
    ]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=5000)
    args = parser.parse_args()
    configure_logging("bench-auth", level="WARNING", fmt="console")

    rows = await in_process_rows(args.iterations)
    skipped = []
    kafka, database = os.environ.get("KAFKA_BOOTSTRAP_SERVERS"), os.environ.get("DATABASE_URL")
    if kafka and database and database.startswith("postgres"):
        with temporary_database(database, prefix="sybenchauth") as url:
            rows += await real_auth_rows(args.iterations, url, kafka)
    else:
        skipped.append("real auth and Kafka rows (set KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL)")
    print(f"Gateway authentication cost ({os.cpu_count()} CPUs, one event loop)")
    print_table(rows, skipped)


if __name__ == "__main__":
    asyncio.run(main())
