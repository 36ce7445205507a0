"""Event-driven revocation at the gateway: auth events applied within a second, the
start-up snapshot (loaded after the listener starts, events in between replayed), JWTs
held back until the state is loaded, and signing key rotation."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import pytest

from switchyard.common.errorformat import error_type
from switchyard.common.events import (
    ApiKeyRevoked,
    ApiKeyRevokedData,
    ChatCancelRequested,
    ChatCompleted,
    ChatRequested,
    SigningKeyRotated,
    SigningKeyRotatedData,
    TokenFamilyRevoked,
    TokenFamilyRevokedData,
    TokenRevoked,
    TokenRevokedData,
    UserDisabled,
    UserEnabled,
    UserStatusData,
    new_id,
)
from switchyard.common.testing.infra import async_ready
from switchyard.gateway.config import Settings
from switchyard.gateway.revocations import SNAPSHOT_SKEW_S, RevocationState

from .auth_double import AuthDouble, gateway_with, new_rsa_key
from .conftest import anthropic_stream, chunk, completed_reply

BODY = {"model": "sim-small", "messages": [{"role": "user", "content": "Hello"}]}


def soon() -> datetime:
    """An expiry 15 minutes from now, taken when a test runs: one taken at import would
    already be past when the suite is slow to reach the test, and the revocation with it."""
    return datetime.now(UTC) + timedelta(minutes=15)


def event(cls, data, tenant: str = "acme"):
    return cls(source="auth", tenant=tenant, request_id=new_id(), data=data)


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


async def status_of(gw, credential: str) -> int:
    response = await gw.client.post("/v1/chat/completions", json=BODY, headers=bearer(credential))
    return response.status_code


async def refused_within(gw, credential: str, seconds: float = 1.0) -> float:
    """Seconds until the gateway answers 401 for `credential` (fails after `seconds`)."""
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        if await status_of(gw, credential) == 401:
            return time.perf_counter() - started
        await asyncio.sleep(0.01)
    raise AssertionError(f"still accepted {seconds}s after the event")


async def test_a_revoked_jti_is_refused_within_a_second() -> None:
    async with gateway_with() as gw:
        token, other = gw.auth.token(jti="jti-1"), gw.auth.token(jti="jti-2")
        assert await status_of(gw, token) == 200
        await gw.publish_auth_event(
            event(
                TokenRevoked, TokenRevokedData(jti="jti-1", user_id="user-jwt", expires_at=soon())
            )
        )
        assert await refused_within(gw, token) < 1.0
        assert await status_of(gw, other) == 200, "only that token is revoked"


async def test_a_revoked_sign_in_refuses_all_its_access_tokens() -> None:
    async with gateway_with() as gw:
        first, second = gw.auth.token(sid="family-a"), gw.auth.token(sid="family-a")
        unrelated = gw.auth.token(sid="family-b")
        assert await status_of(gw, first) == 200
        data = TokenFamilyRevokedData(
            family_id="family-a", user_id="user-jwt", reason="reuse_detected", expires_at=soon()
        )
        await gw.publish_auth_event(event(TokenFamilyRevoked, data))
        await refused_within(gw, first)
        assert await status_of(gw, second) == 401
        assert await status_of(gw, unrelated) == 200


async def test_a_revoked_api_key_is_refused_within_a_second_without_asking_auth() -> None:
    async with gateway_with() as gw:
        record = gw.auth.add_api_key(key_id="key-9", user_id="user-9")
        assert await status_of(gw, record.key) == 200  # now cached for 30 s
        lookups = gw.auth.count("/internal/v1/api-keys/lookup")
        data = ApiKeyRevokedData(key_id="key-9", user_id="user-9", reason="admin")
        await gw.publish_auth_event(event(ApiKeyRevoked, data))
        assert await refused_within(gw, record.key) < 1.0
        # The event alone did it; and the key is not looked up again on every request.
        assert gw.auth.count("/internal/v1/api-keys/lookup") == lookups
        assert await status_of(gw, record.key) == 401
        assert gw.auth.count("/internal/v1/api-keys/lookup") == lookups


async def test_a_disabled_user_is_refused_within_a_second_and_back_when_enabled() -> None:
    async with gateway_with() as gw:
        record = gw.auth.add_api_key(user_id="user-jwt")
        token = gw.auth.token(sub="user-jwt")
        assert await status_of(gw, token) == 200 and await status_of(gw, record.key) == 200
        await gw.publish_auth_event(event(UserDisabled, UserStatusData(user_id="user-jwt")))
        assert await refused_within(gw, token) < 1.0
        assert await refused_within(gw, record.key) < 1.0
        await gw.publish_auth_event(event(UserEnabled, UserStatusData(user_id="user-jwt")))
        await asyncio.sleep(0.05)
        assert await status_of(gw, token) == 200
        assert await status_of(gw, record.key) == 200


@pytest.mark.parametrize("revocation", ["api_key", "user", "token", "sign_in"])
async def test_a_revocation_ends_the_open_streams_of_its_credential_and_cancels_them(
    revocation: str,
) -> None:
    """A leaked key's streams stop spending when it is revoked, not when they end: each
    open stream of the revoked credential gets a 403 `credentials_revoked` (or
    `user_disabled`) error event
    after what it was given, and inference is asked to stop it; another caller's stream
    runs on."""
    cancelled: list[str] = []

    async def first_chunk_only(bus, topics, request: ChatRequested) -> None:
        await bus.publish(
            topics.replies,
            chunk(request, 0, "Hel"),
            key=request.request_id,
            partition=request.data.reply_to.partition,
        )

    async with gateway_with(inference=first_chunk_only) as gw:

        async def on_control(control) -> None:
            if isinstance(control, ChatCancelRequested):
                cancelled.append(control.data.reason)

        await gw.bus.subscribe([gw.topics.control], "cancel-watch", on_control)
        key = gw.auth.add_api_key(key_id="key-1", user_id="user-jwt")
        credential = {
            "api_key": key.key,
            "user": key.key,
            "token": gw.auth.token(jti="jti-1", sub="user-jwt"),
            "sign_in": gw.auth.token(sid="family-a", sub="user-jwt"),
        }[revocation]
        other = gw.auth.add_api_key(key_id="key-2", user_id="user-other")
        revoking = {
            "api_key": event(
                ApiKeyRevoked,
                ApiKeyRevokedData(key_id="key-1", user_id="user-jwt", reason="admin"),
            ),
            "user": event(UserDisabled, UserStatusData(user_id="user-jwt")),
            "token": event(
                TokenRevoked, TokenRevokedData(jti="jti-1", user_id="user-jwt", expires_at=soon())
            ),
            "sign_in": event(
                TokenFamilyRevoked,
                TokenFamilyRevokedData(
                    family_id="family-a",
                    user_id="user-jwt",
                    reason="reuse_detected",
                    expires_at=soon(),
                ),
            ),
        }[revocation]

        async def read(secret: str) -> list[str]:
            async with gw.client.stream(
                "POST",
                "/v1/chat/completions",
                json={**BODY, "stream": True},
                headers=bearer(secret),
            ) as response:
                assert response.status_code == 200
                return [line async for line in response.aiter_lines() if line]

        revoked = asyncio.ensure_future(read(credential))
        bystander = asyncio.ensure_future(read(other.key))
        pending = gw.app.state.gateway.pending
        deadline = time.monotonic() + 5
        # Both streams held, each with its first chunk received.
        while not (
            len(pending) == 2
            and all(queue.taken + queue.events >= 1 for queue in pending._waiting.values())
        ):
            assert time.monotonic() < deadline, "the streams never started"
            await asyncio.sleep(0.01)
        await gw.publish_auth_event(revoking)
        lines = await asyncio.wait_for(revoked, 5)

        assert orjson.loads(lines[0][6:])["choices"][0]["delta"]["content"] == "Hel"
        error = orjson.loads(lines[-1][6:])["error"]
        assert error["code"] == ("user_disabled" if revocation == "user" else "credentials_revoked")
        assert error["type"] == error_type("openai", 403)  # as the credential's jobs are
        assert len(pending) == 1 and not bystander.done()  # another caller's runs on
        deadline = time.monotonic() + 5
        while not cancelled:
            assert time.monotonic() < deadline, "inference was not asked to stop"
            await asyncio.sleep(0.01)
        # Its reason is its record's error (not a client that went away).
        assert cancelled == ["user_disabled" if revocation == "user" else "credentials_revoked"]
        bystander.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await bystander


async def test_a_revocation_leaves_a_stream_whose_last_event_was_relayed_whole() -> None:
    """A stream whose own last event (`message_stop`) reached its client, its outcome not
    yet arrived, has its whole answer: a revocation then appends no error to it and asks
    inference to stop nothing (the request is recorded as it ended, not as cancelled)."""
    cancelled: list[str] = []
    requests: list[ChatRequested] = []

    async def whole_stream_no_outcome(bus, topics, request: ChatRequested) -> None:
        requests.append(request)
        for record in anthropic_stream(request, ["Hel", "lo"]):
            await bus.publish(
                topics.replies,
                record,
                key=request.request_id,
                partition=request.data.reply_to.partition,
            )

    async with gateway_with(inference=whole_stream_no_outcome) as gw:

        async def on_control(control) -> None:
            if isinstance(control, ChatCancelRequested):
                cancelled.append(control.data.reason)

        await gw.bus.subscribe([gw.topics.control], "cancel-watch", on_control)
        key = gw.auth.add_api_key(key_id="key-1", user_id="user-jwt")

        async def read() -> list[str]:
            async with gw.client.stream(
                "POST",
                "/v1/messages",
                json={**BODY, "max_tokens": 16, "stream": True},
                headers={**bearer(key.key), "anthropic-version": "2023-06-01"},
            ) as response:
                assert response.status_code == 200
                return [line async for line in response.aiter_lines() if line]

        reading = asyncio.ensure_future(read())
        pending = gw.app.state.gateway.pending
        deadline = time.monotonic() + 5
        # Held, with every record of the stream taken by the relay (message_stop among them).
        while not (
            len(pending) == 1
            and all(queue.taken >= 7 and not queue.events for queue in pending._waiting.values())
        ):
            assert time.monotonic() < deadline, "the stream was never relayed"
            await asyncio.sleep(0.01)
        data = ApiKeyRevokedData(key_id="key-1", user_id="user-jwt", reason="admin")
        await gw.publish_auth_event(event(ApiKeyRevoked, data))
        await asyncio.sleep(0.2)
        assert len(pending) == 1 and not reading.done()  # not ended by the revocation
        (request,) = requests
        await gw.bus.publish(
            gw.topics.replies,
            completed_reply(request, "Hello"),
            key=request.request_id,
            partition=request.data.reply_to.partition,
        )
        lines = await asyncio.wait_for(reading, 5)
        await asyncio.sleep(0.2)

    assert lines[-2:] == ["event: message_stop", 'data: {"type":"message_stop"}']
    assert not any("error" in line for line in lines)
    assert cancelled == []


async def test_a_revocation_applied_while_a_request_is_admitted_refuses_it(monkeypatch) -> None:
    """A revocation that arrives while a request is being admitted (its body read, its
    limits checked) finds it nowhere to end: it is refused before it is published."""
    from switchyard.gateway import dispatch

    admitted = dispatch.admit
    published: list[ChatRequested] = []

    async def record(bus, topics, request: ChatRequested) -> None:
        published.append(request)

    async with gateway_with(inference=record) as gw:
        key = gw.auth.add_api_key(key_id="key-1", user_id="user-jwt")

        async def admit_then_revoke(*args, **kwargs):
            ticket = await admitted(*args, **kwargs)
            data = ApiKeyRevokedData(key_id="key-1", user_id="user-jwt", reason="admin")
            gw.app.state.gateway.authenticator.revocations.apply(event(ApiKeyRevoked, data))
            return ticket

        monkeypatch.setattr(dispatch, "admit", admit_then_revoke)
        answer = await gw.client.post("/v1/chat/completions", json=BODY, headers=bearer(key.key))
        await asyncio.sleep(0.1)

    assert answer.status_code == 403, answer.text
    assert answer.json()["error"]["code"] == "credentials_revoked"
    assert published == []


async def test_a_revocation_ends_a_waiting_json_request_in_its_apis_format() -> None:
    async def never_answers(bus, topics, request: ChatRequested) -> None:
        return None

    async with gateway_with(inference=never_answers) as gw:
        key = gw.auth.add_api_key(key_id="key-1", user_id="user-jwt")
        waiting = asyncio.ensure_future(
            gw.client.post(
                "/v1/messages",
                json={**BODY, "max_tokens": 16},
                headers={**bearer(key.key), "anthropic-version": "2023-06-01"},
            )
        )
        pending = gw.app.state.gateway.pending
        deadline = time.monotonic() + 5
        while len(pending) < 1:
            assert time.monotonic() < deadline, "the request was never held"
            await asyncio.sleep(0.01)
        data = ApiKeyRevokedData(key_id="key-1", user_id="user-jwt", reason="admin")
        await gw.publish_auth_event(event(ApiKeyRevoked, data))
        answer = await asyncio.wait_for(waiting, 5)

    assert answer.status_code == 403
    assert answer.json()["type"] == "error"
    assert answer.json()["error"]["type"] == error_type("anthropic", 403)
    assert "revoked" in answer.json()["error"]["message"]


async def test_an_expired_api_key_is_refused_even_from_the_cache() -> None:
    async with gateway_with() as gw:
        # Room for a loaded machine's first request (1 s was not always enough).
        expires = datetime.now(UTC) + timedelta(seconds=4)
        record = gw.auth.add_api_key(expires_at=expires.isoformat())
        assert await status_of(gw, record.key) == 200
        await asyncio.sleep((expires - datetime.now(UTC)).total_seconds() + 0.1)
        assert await status_of(gw, record.key) == 401
        gone = gw.auth.add_api_key(expires_at=(datetime.now(UTC) - timedelta(1)).isoformat())
        assert await status_of(gw, gone.key) == 401


async def test_concurrent_requests_with_a_new_key_share_one_lookup() -> None:
    async with gateway_with() as gw:
        record = gw.auth.add_api_key()
        authenticator = gw.gateway.authenticator
        results = await asyncio.gather(
            *(authenticator.authenticate(f"Bearer {record.key}", None) for _ in range(20))
        )
        assert {principal.api_key_id for principal in results} == {record.key_id}
        assert gw.auth.count("/internal/v1/api-keys/lookup") == 1


async def test_the_start_up_snapshot_is_applied() -> None:
    auth = AuthDouble()
    revoked_key = auth.add_api_key(key_id="key-old")
    disabled_key = auth.add_api_key(user_id="user-off")
    auth.snapshot.update(
        revoked_tokens=[{"jti": "jti-x", "expires_at": soon().isoformat()}],
        revoked_sessions=[{"sid": "family-x", "expires_at": soon().isoformat()}],
        revoked_api_keys=["key-old"],
        disabled_users=["user-off"],
    )
    async with gateway_with(auth) as gw:
        ready = await gw.client.get("/readyz")
        assert ready.json()["checks"]["revocations"] is True
        assert await status_of(gw, auth.token(jti="jti-x")) == 401
        assert await status_of(gw, auth.token(sid="family-x")) == 401
        assert await status_of(gw, auth.token(sub="user-off")) == 401
        assert await status_of(gw, revoked_key.key) == 401
        assert await status_of(gw, disabled_key.key) == 401
        assert await status_of(gw, auth.token()) == 200


async def test_until_the_state_is_loaded_jwts_get_503_and_readiness_fails() -> None:
    auth = AuthDouble(snapshot_failures=1_000_000)
    settings = Settings(topic_prefix="unit-wait", request_timeout_s=2.0)
    async with gateway_with(auth, settings) as gw:
        ready = await gw.client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["revocations"] is False
        response = await gw.client.post(
            "/v1/chat/completions", json=BODY, headers=bearer(auth.token())
        )
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "auth_unavailable"
        assert response.headers["retry-after"] == "1"
        # A forged token is still a plain 401: verification comes first.
        forged = await gw.client.post(
            "/v1/chat/completions", json=BODY, headers=bearer(auth.token()[:-4] + "AAAA")
        )
        assert forged.status_code == 401
        # API keys are looked up fresh, so they need no history and keep working.
        record = auth.add_api_key()
        assert await status_of(gw, record.key) == 200

        auth.snapshot_failures = 0  # auth answers now: the sync retries and completes
        deadline = time.monotonic() + 5
        while (await gw.client.get("/readyz")).status_code != 200:
            assert time.monotonic() < deadline, "state never loaded"
            await asyncio.sleep(0.05)
        assert await status_of(gw, auth.token()) == 200


def test_events_received_while_the_snapshot_loads_win_over_it() -> None:
    state = RevocationState()
    # Listening has started; these arrive before the snapshot request returns.
    state.apply(event(UserDisabled, UserStatusData(user_id="u1")))
    state.apply(event(UserEnabled, UserStatusData(user_id="u1")))
    state.apply(event(UserDisabled, UserStatusData(user_id="u2")))
    assert state.is_revoked(user_id="u2") and not state.loaded
    # The snapshot was read before the enable of u3 and the disable of u2 committed.
    state.load_snapshot(
        {
            "revoked_tokens": [{"jti": "j1", "expires_at": soon().isoformat()}],
            "revoked_sessions": [],
            "revoked_api_keys": ["k1"],
            "disabled_users": ["u1", "u3"],
        }
    )
    assert state.loaded
    assert not state.is_revoked(user_id="u1"), "the later enable event wins"
    assert state.is_revoked(user_id="u2"), "an event newer than the snapshot is kept"
    assert state.is_revoked(user_id="u3")
    assert state.is_revoked(user_id="x", jti="j1") and state.is_revoked(
        user_id="x", api_key_id="k1"
    )
    state.apply(event(UserEnabled, UserStatusData(user_id="u3")))
    assert not state.is_revoked(user_id="u3")


def test_entries_are_forgotten_once_their_tokens_have_expired() -> None:
    now = [1_000_000.0]
    state = RevocationState(clock=lambda: now[0])
    state.load_snapshot(
        {
            "revoked_tokens": [],
            "revoked_sessions": [],
            "revoked_api_keys": [],
            "disabled_users": [],
        }
    )
    expires = datetime.fromtimestamp(now[0] + 900, UTC)
    state.apply(event(TokenRevoked, TokenRevokedData(jti="j", user_id="u", expires_at=expires)))
    data = TokenFamilyRevokedData(family_id="f", user_id="u", reason="logout", expires_at=expires)
    state.apply(event(TokenFamilyRevoked, data))
    assert state.is_revoked(user_id="u", jti="j") and state.is_revoked(user_id="u", session_id="f")
    now[0] += 901
    state.prune()
    assert state.revoked_tokens == {} and state.revoked_sessions == {}


def test_a_revoked_token_is_remembered_while_the_leeway_would_still_accept_it() -> None:
    """The authenticator accepts a token `jwt_leeway_s` past its `exp`: a revoked one must
    stay refused that long, not valid again for the leeway's length."""
    now = [1_000_000.0]
    state = RevocationState(clock=lambda: now[0], grace_s=10)
    expires = datetime.fromtimestamp(now[0] + 60, UTC)
    state.apply(event(TokenRevoked, TokenRevokedData(jti="j", user_id="u", expires_at=expires)))
    data = TokenFamilyRevokedData(family_id="f", user_id="u", reason="logout", expires_at=expires)
    state.apply(event(TokenFamilyRevoked, data))
    state.load_snapshot(
        {"revoked_tokens": [], "revoked_sessions": [], "revoked_api_keys": [], "disabled_users": []}
    )
    now[0] += 65  # expired 5 s ago: inside the leeway
    state.prune()
    assert state.is_revoked(user_id="u", jti="j") and state.is_revoked(user_id="u", session_id="f")
    now[0] += 6
    state.prune()
    assert state.revoked_tokens == {} and state.revoked_sessions == {}


def test_a_revoked_key_is_remembered_for_its_retention_then_forgotten() -> None:
    """Auth refuses a revoked key at every lookup, so the set only has to outlive an answer
    cached just before the revocation; it does not grow for good. The retention is counted
    on the monotonic clock, as the key caches are: a step of the wall clock (NTP, a
    resumed VM) does not end it early."""
    wall, steady = [1_000_000.0], [50.0]
    state = RevocationState(
        clock=lambda: wall[0], grace_s=10, key_retention_s=3_700, monotonic=lambda: steady[0]
    )
    state.load_snapshot(
        {
            "revoked_tokens": [],
            "revoked_sessions": [],
            "revoked_api_keys": ["k-snapshot"],
            "disabled_users": [],
        }
    )
    revoked = event(ApiKeyRevoked, ApiKeyRevokedData(key_id="k-event", user_id="u"))
    # Published an hour ago and applied only now (a replica that fell behind): remembered
    # from now, since an answer cached before it may still be served.
    revoked = revoked.model_copy(update={"time": datetime.fromtimestamp(wall[0] - 3_600, UTC)})
    state.apply(revoked)
    # Auth's clock 100 s ahead of this replica's: remembered that much longer.
    ahead = event(ApiKeyRevoked, ApiKeyRevokedData(key_id="k-ahead", user_id="u"))
    state.apply(ahead.model_copy(update={"time": datetime.fromtimestamp(wall[0] + 100, UTC)}))

    wall[0] += 86_400  # the wall clock steps a day ahead: nothing is forgotten for it
    state.prune()
    assert set(state.revoked_keys) == {"k-snapshot", "k-event", "k-ahead"}
    steady[0] += 3_699
    state.prune()
    assert set(state.revoked_keys) == {"k-snapshot", "k-event", "k-ahead"}
    steady[0] += 1
    state.prune()
    assert set(state.revoked_keys) == {"k-ahead"}
    steady[0] += 100
    state.prune()
    assert state.revoked_keys == {}
    # Asked of auth: the retention, and ten minutes for auth's clock lagging this one's.
    assert state.api_keys_revoked_since() == datetime.fromtimestamp(
        wall[0] - 3_700 - SNAPSHOT_SKEW_S, UTC
    )


def test_without_a_retention_revoked_keys_are_kept_and_all_asked_for() -> None:
    now = [1_000_000.0]
    state = RevocationState(clock=lambda: now[0])
    state.apply(event(ApiKeyRevoked, ApiKeyRevokedData(key_id="k", user_id="u")))
    now[0] += 10 * 365 * 86_400
    state.prune()
    assert state.is_revoked(user_id="u", api_key_id="k")
    assert state.api_keys_revoked_since() is None


async def test_the_snapshot_asks_only_for_keys_revoked_within_the_retention() -> None:
    auth = AuthDouble()
    settings = Settings(
        topic_prefix="unit-retention", api_key_cache_ttl_s=30, auth_stale_if_error_s=600
    )
    before = datetime.now(UTC)
    async with gateway_with(auth, settings) as gw:
        await async_ready(lambda: gw.client.get("/readyz"))
    since = datetime.fromisoformat(auth.snapshot_queries[-1]["api_keys_revoked_since"])
    # TTL, stale-if-error, the lookup's timeout, slack and the clock-skew allowance.
    expected = before - timedelta(seconds=30 + 600 + 2 + 60 + SNAPSHOT_SKEW_S)
    assert timedelta(0) <= since - expected < timedelta(seconds=5)


def test_other_events_are_ignored() -> None:
    state = RevocationState()
    state.apply(ChatCompleted.model_construct(type="chat.completed"))
    assert not state.revoked_keys and not state.disabled_users


async def test_a_signing_key_rotation_is_picked_up_at_once() -> None:
    auth = AuthDouble()
    auth.keys["kid-2"] = new_rsa_key()
    # Unknown kids refresh the JWKS at most every 5 minutes here.
    settings = Settings(topic_prefix="unit-rotate", jwks_refresh_min_interval_s=300)
    async with gateway_with(auth, settings) as gw:
        new_token = auth.token(kid="kid-2")
        assert await status_of(gw, new_token) == 401  # kid-2 is not published yet
        auth.published.append("kid-2")
        assert await status_of(gw, new_token) == 401  # still cached: no refresh per request
        data = SigningKeyRotatedData(
            kid="kid-2", previous_kid="kid-1", published_kids=["kid-1", "kid-2"]
        )
        await gw.publish_auth_event(event(SigningKeyRotated, data, tenant="*"))
        started = time.perf_counter()
        while await status_of(gw, new_token) != 200:
            assert time.perf_counter() - started < 1.0, "rotation not applied within a second"
            await asyncio.sleep(0.01)
        # The old key keeps verifying until its tokens expire.
        assert await status_of(gw, auth.token(kid="kid-1")) == 200


async def test_a_key_removed_from_the_jwks_stops_verifying_cached_tokens() -> None:
    auth = AuthDouble()
    auth.keys["kid-2"] = new_rsa_key()
    auth.published.append("kid-2")
    async with gateway_with(auth) as gw:
        old_token = auth.token(kid="kid-1")
        assert await status_of(gw, old_token) == 200  # verified and cached
        auth.published.remove("kid-1")  # e.g. a compromised key withdrawn
        await gw.gateway.authenticator.jwks.refresh()
        assert await status_of(gw, old_token) == 401


async def test_a_key_auth_stops_publishing_is_dropped_without_any_event() -> None:
    """Auth announces a new signing key, but nothing when an old one is removed (after a
    leak): the gateways went on accepting tokens it signed until they restarted."""
    auth = AuthDouble()
    auth.keys["kid-2"] = new_rsa_key()
    auth.published.append("kid-2")
    settings = Settings(topic_prefix="unit-removed", jwks_refresh_interval_s=0.05)
    async with gateway_with(auth, settings) as gw:
        leaked = auth.token(kid="kid-1")
        assert await status_of(gw, leaked) == 200
        auth.published.remove("kid-1")
        started = time.perf_counter()
        while await status_of(gw, leaked) != 401:
            assert time.perf_counter() - started < 5.0, "the removed key still verifies"
            await asyncio.sleep(0.02)
        assert await status_of(gw, auth.token(kid="kid-2")) == 200


async def test_an_answer_that_is_no_jwk_set_keeps_the_keys_and_the_refreshing() -> None:
    """A proxy's page answered with 200 killed the periodic refresh for good (its error
    was not an HTTP one), and counted as a current fetch."""
    from switchyard.gateway.auth import AuthUnavailableError, JwksCache

    auth = AuthDouble()
    answers = [httpx.Response(200, json=auth.jwks()), httpx.Response(200, text="<html>oops")]

    def handle(request: httpx.Request) -> httpx.Response:
        return answers.pop(0) if answers else httpx.Response(200, json=auth.jwks())

    async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as client:
        jwks = JwksCache(client, "http://auth", min_interval_s=30)
        await jwks.refresh()
        assert await jwks.key("kid-1") is not None
        auth.published.remove("kid-1")  # withdrawn after a leak
        # The first periodic fetch gets the proxy's page, the next the JWK Set.
        refreshing = asyncio.create_task(jwks.keep_fresh(0.01))
        try:
            started = time.perf_counter()
            while await jwks.key("kid-1") is not None:
                assert not refreshing.done(), refreshing
                assert time.perf_counter() - started < 5.0, "the refresh stopped"
                await asyncio.sleep(0.02)
        finally:
            refreshing.cancel()
        answers.append(httpx.Response(200, text="<html>oops"))
        with pytest.raises(ValueError):
            await jwks.refresh()
        with pytest.raises(AuthUnavailableError):  # not current: an unknown kid is 503
            await jwks.key("kid-9")


@pytest.mark.parametrize("path", ["/readyz"])
async def test_readiness_reports_revocation_state(path: str) -> None:
    async with gateway_with() as gw:
        response = await gw.client.get(path)
        assert response.status_code == 200
        assert response.json()["checks"]["revocations"] is True


def _authenticator(handler, state: RevocationState):
    from switchyard.gateway.auth import Authenticator

    return Authenticator(
        httpx.AsyncClient(transport=httpx.MockTransport(handler)),
        auth_url="http://auth.test",
        internal_token="t" * 32,
        issuer="switchyard-auth",
        audience="switchyard",
        key_ttl_s=30,
        negative_ttl_s=5,
        jwks_min_interval_s=30,
        revocations=state,
        stale_if_error_s=3_600,
    )


EMPTY_SNAPSHOT = {
    "revoked_tokens": [],
    "revoked_sessions": [],
    "revoked_api_keys": [],
    "disabled_users": [],
}
KEY = "sk-sy-" + "a" * 43
IDENTITY = {
    "key_id": "key-1",
    "user_id": "user-1",
    "tenant": "acme",
    "role": "member",
    "scopes": ["chat"],
    "allowed_models": None,
    "expires_at": None,
}


async def test_an_answer_fetched_across_a_revocation_is_cached_as_the_refusal_it_is() -> None:
    """Auth read the key as valid, the key was revoked, then the answer arrived, with no
    request left to refuse it (its client went away): it is cached as refused, so once the
    revocation is forgotten the key is still refused, and auth is not asked again."""
    from switchyard.gateway.auth import AuthenticationError

    release, lookups = asyncio.Event(), []

    async def handler(request: httpx.Request) -> httpx.Response:
        lookups.append(request.url.path)
        await release.wait()
        return httpx.Response(200, json=IDENTITY)

    state = RevocationState(key_retention_s=100)
    state.load_snapshot(EMPTY_SNAPSHOT)
    authenticator = _authenticator(handler, state)
    waiting = asyncio.create_task(authenticator.authenticate(f"Bearer {KEY}", None))
    await asyncio.sleep(0.05)
    waiting.cancel()  # the client goes away; the shared lookup goes on
    state.apply(event(ApiKeyRevoked, ApiKeyRevokedData(key_id="key-1", user_id="user-1")))
    release.set()
    await asyncio.sleep(0.05)

    state.revoked_keys.clear()  # the retention ended (or was cut short)
    with pytest.raises(AuthenticationError):
        await authenticator.authenticate(f"Bearer {KEY}", None)
    assert len(lookups) == 1


async def test_keys_vouched_for_before_the_state_loaded_are_asked_about_again() -> None:
    """A key revoked while this replica could not hear of it (the events topic unreachable
    at start-up) and left out of the snapshot: the answer cached before the state loaded
    is dropped, and auth's refusal is what counts."""
    from switchyard.gateway.auth import AuthenticationError

    revoked = []

    async def handler(request: httpx.Request) -> httpx.Response:
        if revoked:
            return httpx.Response(404)
        return httpx.Response(200, json=IDENTITY)

    state = RevocationState(key_retention_s=100)
    authenticator = _authenticator(handler, state)
    principal = await authenticator.authenticate(f"Bearer {KEY}", None)  # looked up fresh
    assert principal.api_key_id == "key-1"
    revoked.append(True)  # revoked at auth; the event never reached this replica
    state.load_snapshot(EMPTY_SNAPSHOT)  # nor did the snapshot name it

    with pytest.raises(AuthenticationError):
        await authenticator.authenticate(f"Bearer {KEY}", None)


async def test_a_burst_of_rotations_makes_one_more_fetch_not_one_each() -> None:
    # A producer on the auth topic (or a key rotated many times over) must not make the
    # gateway call auth once per event: one fetch at a time, and one more after it for
    # the rotations that came during it.
    from switchyard.gateway.revocations import RevocationSync

    fetches: list[int] = []
    release = asyncio.Event()

    async def fetch_jwks() -> None:
        fetches.append(len(fetches))
        if len(fetches) == 1:
            await release.wait()

    async def no_snapshot():
        raise AssertionError("not asked")

    sync = RevocationSync(
        None,  # type: ignore[arg-type]  # handle() publishes nothing
        "auth.events",
        RevocationState(),
        no_snapshot,
        on_signing_key_rotated=fetch_jwks,
    )

    def rotated(n: int) -> SigningKeyRotated:
        data = SigningKeyRotatedData(kid=f"kid-{n}", previous_kid="kid-1", published_kids=[])
        return event(SigningKeyRotated, data, tenant="*")

    await sync.handle(rotated(0))
    await asyncio.sleep(0)
    for n in range(1, 200):
        await sync.handle(rotated(n))
    release.set()
    for _ in range(20):
        await asyncio.sleep(0)

    assert fetches == [0, 1]
    await sync.handle(rotated(500))  # a later rotation fetches again
    for _ in range(20):
        await asyncio.sleep(0)
    assert fetches == [0, 1, 2]
