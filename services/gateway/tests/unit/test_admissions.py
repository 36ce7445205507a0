"""`POST /internal/v1/admissions` as history's replay runner sees it: a replayed request is
admitted only if the key and user it is billed to could send it themselves right now,
whether or not budgets and limits are configured."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from switchyard.common.events import (
    ApiKeyRevoked,
    ApiKeyRevokedData,
    LimitsChanged,
    LimitsChangedData,
    UserDisabled,
    UserEnabled,
    UserStatusData,
    new_id,
)
from switchyard.common.testing.bodies import WatchedBody

from .auth_double import ApiKeyRecord, AuthDouble, GatewayUnderTest, gateway_with

KEY_PATH = "/internal/v1/api-keys/"


@dataclass
class KeyAuth(AuthDouble):
    """The auth double, also answering a key's state by its id and a user's status."""

    revoked: set[str] = field(default_factory=set)
    disabled: set[str] = field(default_factory=set)
    user_tenants: dict[str, str] = field(default_factory=dict)
    down: bool = False
    # An auth without these routes (before an upgrade): a bare 404 for both.
    without_routes: bool = False
    # Called with each user path answered, after the answer is made.
    after_user_answer: Any = None

    def by_id(self, key_id: str) -> ApiKeyRecord | None:
        return next((r for r in self.api_keys.values() if r.key_id == key_id), None)

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if self.down and path.startswith(("/internal/v1/api-keys/", "/internal/v1/users/")):
            self.calls.append(path)
            raise httpx.ConnectError("auth is down", request=request)
        if self.without_routes and path.startswith((KEY_PATH, "/internal/v1/users/")):
            return httpx.Response(404, json={"detail": "Not Found"})
        if path.startswith("/internal/v1/users/") and self.after_user_answer is not None:
            answer = self.user_answer(path)
            self.after_user_answer(path)
            return answer
        if path.startswith(KEY_PATH) and request.method == "GET":
            self.calls.append(path)
            record = self.by_id(path.removeprefix(KEY_PATH))
            if record is None:
                return httpx.Response(
                    404,
                    json={"error": {"message": "API key not found.", "code": "api_key_not_found"}},
                )
            return httpx.Response(
                200,
                json={
                    **record.identity(),
                    "revoked": record.key_id in self.revoked,
                    "user_active": record.user_id not in self.disabled,
                },
            )
        if path.startswith("/internal/v1/users/"):
            return self.user_answer(path)
        return super().handle(request)

    def user_answer(self, path: str) -> httpx.Response:
        self.calls.append(path)
        user_id = path.rsplit("/", 1)[1]
        if user_id in self.missing_users:
            return httpx.Response(
                404, json={"error": {"message": "No such user.", "code": "user_not_found"}}
            )
        status = {
            "user_id": user_id,
            "tenant": self.user_tenants.get(user_id, "acme"),
            "active": user_id not in self.disabled,
        }
        if user_id in self.user_teams:
            status["team_id"], status["team_models"] = self.user_teams[user_id]
        return httpx.Response(200, json=status)


@dataclass
class FakeTicket:
    team_id: str | None = "team-1"
    attached: list[str] = field(default_factory=list)

    def attach(self, request_id: str, deadline_s: float = 120.0) -> None:
        self.attached.append(request_id)


class FakeAdmission:
    """Budgets and limits that admit everything (and count what they were asked)."""

    def __init__(self) -> None:
        self.admitted: list[tuple[Any, str]] = []
        self.input_only: list[bool] = []  # per admit: whether no output was reserved
        self.billed: list[bool] = []  # per admit: whether budgets and TPM apply

    async def admit(
        self, caller: Any, model: str, body: dict, *, embeddings: bool, billed: bool
    ) -> FakeTicket:
        self.admitted.append((caller, model))
        self.input_only.append(embeddings)
        self.billed.append(billed)
        return FakeTicket()


@pytest.fixture(params=["governance_on", "governance_off"])
async def gw(request: pytest.FixtureRequest) -> AsyncIterator[GatewayUnderTest]:
    async with gateway_with(KeyAuth()) as gw:
        gw.gateway.admission = FakeAdmission() if request.param == "governance_on" else None
        deadline = time.monotonic() + 5
        while not gw.gateway.authenticator.revocations.loaded:
            assert time.monotonic() < deadline, "revocation state never loaded"
            await asyncio.sleep(0.01)
        yield gw


def key_auth(gw: GatewayUnderTest) -> KeyAuth:
    assert isinstance(gw.auth, KeyAuth)
    return gw.auth


def payload(record: ApiKeyRecord | None = None, **fields: Any) -> dict[str, Any]:
    body = {
        "request_id": new_id(),
        "tenant": record.tenant if record else "acme",
        "user_id": record.user_id if record else "user-1",
        "api_key_id": record.key_id if record else None,
        "api": "openai.chat_completions",
        "model": "sim-large",
        "body": {"model": "sim-large", "messages": [{"role": "user", "content": "Hi"}]},
        "timeout_s": 60.0,
    }
    body.update(fields)
    return body


async def admit(gw: GatewayUnderTest, body: dict[str, Any]) -> httpx.Response:
    headers = {"x-switchyard-internal-token": gw.settings.internal_token}
    return await gw.client.post("/internal/v1/admissions", json=body, headers=headers)


def assert_refused(response: httpx.Response, status: int, code: str, *words: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    for word in words:
        assert word in error["message"]


def admitted_nothing(gw: GatewayUnderTest) -> bool:
    admission = gw.gateway.admission
    return admission is None or admission.admitted == []


async def apply(gw: GatewayUnderTest, event_type: Any, data: Any) -> None:
    """Apply an auth event as this replica's listener does."""
    event = event_type(source="auth", tenant="acme", request_id=new_id(), data=data)
    revocations = gw.gateway.revocations
    assert revocations is not None
    await revocations.handle(event)


async def test_a_live_key_allowing_the_model_is_admitted(gw: GatewayUnderTest) -> None:
    record = gw.auth.add_api_key(allowed_models=["sim-small", "sim-large"])
    response = await admit(gw, payload(record))
    assert response.status_code == 200, response.text
    keyless = await admit(gw, payload(None, user_id=record.user_id))
    assert keyless.status_code == 200, keyless.text


async def test_a_recorded_request_beyond_a_mebibyte_may_be_admitted(gw: GatewayUnderTest) -> None:
    # History's replays send recorded requests of up to the API's own limit (50 MiB for
    # chat); the default limit of 1 MiB refused them with 413, and the replay stalled.
    record = gw.auth.add_api_key(allowed_models=["sim-small", "sim-large"])
    body = payload(record)
    body["body"]["messages"][0]["content"] = "x" * 3_000_000
    response = await admit(gw, body)
    assert response.status_code == 200, response.text


async def test_a_keyless_user_is_refused_a_model_their_team_does_not_allow(
    gw: GatewayUnderTest,
) -> None:
    # A replay of requests made with an access token is billed to the user alone: their
    # team's models bound it, as they bound the token.
    key_auth(gw).user_teams["user-1"] = ("team-1", ["sim-small"])
    refused = await admit(gw, payload(None, user_id="user-1", model="sim-large"))
    assert_refused(refused, 403, "model_not_allowed", "sim-large")
    assert admitted_nothing(gw)
    allowed = await admit(gw, payload(None, user_id="user-1", model="sim-small"))
    assert allowed.status_code == 200, allowed.text


async def test_a_change_of_the_team_reaches_the_next_admission(gw: GatewayUnderTest) -> None:
    key_auth(gw).user_teams["user-1"] = ("team-1", ["sim-small"])
    record = gw.auth.add_api_key(user_id="user-2", allowed_models=["sim-small"])
    assert (await admit(gw, payload(None, user_id="user-1"))).status_code == 403  # now cached
    assert (await admit(gw, payload(record))).status_code == 403

    key_auth(gw).user_teams["user-1"] = ("team-1", ["sim-small", "sim-large"])
    record.allowed_models = ["sim-small", "sim-large"]
    await apply(gw, LimitsChanged, LimitsChangedData(scope="team", scope_id="team-1"))

    assert (await admit(gw, payload(None, user_id="user-1"))).status_code == 200
    assert (await admit(gw, payload(record))).status_code == 200


async def test_another_tenants_team_change_asks_nothing_about_this_tenants_keys(
    gw: GatewayUnderTest,
) -> None:
    record = gw.auth.add_api_key(allowed_models=["sim-large"])
    assert (await admit(gw, payload(record))).status_code == 200  # now cached
    asked = gw.auth.count(KEY_PATH + record.key_id)
    other = LimitsChanged(
        source="auth",
        tenant="globex",
        request_id=new_id(),
        data=LimitsChangedData(scope="team", scope_id="globex-team"),
    )
    await gw.gateway.revocations.handle(other)

    assert (await admit(gw, payload(record))).status_code == 200
    assert gw.auth.count(KEY_PATH + record.key_id) == asked


async def test_a_key_revoked_while_cached_is_refused_at_once(gw: GatewayUnderTest) -> None:
    record = gw.auth.add_api_key()
    assert (await admit(gw, payload(record))).status_code == 200  # now cached
    key_auth(gw).revoked.add(record.key_id)
    data = ApiKeyRevokedData(key_id=record.key_id, user_id=record.user_id, reason="owner")
    await apply(gw, ApiKeyRevoked, data)
    if gw.gateway.admission is not None:
        gw.gateway.admission.admitted.clear()
    assert_refused(await admit(gw, payload(record)), 403, "credentials_revoked", record.key_id)
    assert admitted_nothing(gw)


async def test_a_key_auth_says_is_revoked_is_refused(gw: GatewayUnderTest) -> None:
    # Revoked before this replica listened, and not in its snapshot: auth's answer decides.
    record = gw.auth.add_api_key()
    key_auth(gw).revoked.add(record.key_id)
    assert_refused(await admit(gw, payload(record)), 403, "credentials_revoked", record.key_id)
    assert admitted_nothing(gw)


async def test_a_disabled_user_is_refused_with_or_without_a_key(gw: GatewayUnderTest) -> None:
    record = gw.auth.add_api_key()
    assert (await admit(gw, payload(record))).status_code == 200
    assert (await admit(gw, payload(None, user_id=record.user_id))).status_code == 200
    key_auth(gw).disabled.add(record.user_id)
    await apply(gw, UserDisabled, UserStatusData(user_id=record.user_id))
    if gw.gateway.admission is not None:
        gw.gateway.admission.admitted.clear()
    assert_refused(await admit(gw, payload(record)), 403, "user_disabled", record.user_id)
    keyless = await admit(gw, payload(None, user_id=record.user_id))
    assert_refused(keyless, 403, "user_disabled", record.user_id)
    assert admitted_nothing(gw)

    # Enabled again: auth is asked afresh, not its cached "disabled".
    key_auth(gw).disabled.discard(record.user_id)
    await apply(gw, UserEnabled, UserStatusData(user_id=record.user_id))
    assert (await admit(gw, payload(record))).status_code == 200
    assert (await admit(gw, payload(None, user_id=record.user_id))).status_code == 200


async def test_a_user_disabled_before_this_replica_started_is_refused(
    gw: GatewayUnderTest,
) -> None:
    record = gw.auth.add_api_key()
    key_auth(gw).disabled.add(record.user_id)
    assert_refused(await admit(gw, payload(record)), 403, "user_disabled")
    keyless = await admit(gw, payload(None, user_id=record.user_id))
    assert_refused(keyless, 403, "user_disabled")
    assert admitted_nothing(gw)


async def test_a_key_not_allowing_the_model_is_refused(gw: GatewayUnderTest) -> None:
    record = gw.auth.add_api_key(allowed_models=["sim-small"])
    assert (await admit(gw, payload(record, model="sim-small"))).status_code == 200
    if gw.gateway.admission is not None:
        gw.gateway.admission.admitted.clear()
    response = await admit(gw, payload(record, model="sim-large"))
    assert_refused(response, 403, "model_not_allowed", "sim-large", record.key_id)
    assert admitted_nothing(gw)


async def test_an_expired_key_or_one_without_the_chat_scope_is_refused(
    gw: GatewayUnderTest,
) -> None:
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    expired = gw.auth.add_api_key(expires_at=past)
    assert_refused(await admit(gw, payload(expired)), 403, "credentials_expired")
    reader = gw.auth.add_api_key(scopes=["history:read"])
    assert_refused(await admit(gw, payload(reader)), 403, "insufficient_scope", "chat")
    assert admitted_nothing(gw)


async def test_a_key_of_another_tenant_or_user_or_an_unknown_one_is_not_found(
    gw: GatewayUnderTest,
) -> None:
    theirs = gw.auth.add_api_key(tenant="globex")
    response = await admit(gw, payload(theirs, tenant="acme"))
    assert_refused(response, 404, "api_key_not_found", theirs.key_id)
    ours = gw.auth.add_api_key()
    response = await admit(gw, payload(ours, user_id="someone-else"))
    assert_refused(response, 404, "api_key_not_found")
    response = await admit(gw, payload(ours, api_key_id="key-unknown"))
    assert_refused(response, 404, "api_key_not_found", "key-unknown")
    # A keyless user of another tenant, or one auth does not know.
    key_auth(gw).user_tenants["user-g"] = "globex"
    assert_refused(await admit(gw, payload(None, user_id="user-g")), 404, "user_not_found")
    gw.auth.missing_users.add("user-gone")
    assert_refused(await admit(gw, payload(None, user_id="user-gone")), 404, "user_not_found")
    assert admitted_nothing(gw)


async def test_auth_unreachable_is_503_never_admitted_blind(gw: GatewayUnderTest) -> None:
    record = gw.auth.add_api_key()
    key_auth(gw).down = True
    response = await admit(gw, payload(record))
    assert_refused(response, 503, "auth_unavailable")
    assert response.headers["retry-after"] == "1"
    assert_refused(await admit(gw, payload(None, user_id="user-1")), 503, "auth_unavailable")
    assert admitted_nothing(gw)
    # Back: admitted, and auth's answer is then kept (not asked for every request).
    key_auth(gw).down = False
    assert (await admit(gw, payload(record))).status_code == 200
    asked = gw.auth.count(KEY_PATH + record.key_id)
    assert (await admit(gw, payload(record))).status_code == 200
    assert gw.auth.count(KEY_PATH + record.key_id) == asked


async def test_until_the_revocation_state_is_loaded_admissions_get_503() -> None:
    auth = KeyAuth(snapshot_failures=1_000_000)
    async with gateway_with(auth) as gw:
        gw.gateway.admission = None
        record = auth.add_api_key()
        assert_refused(await admit(gw, payload(record)), 503, "auth_unavailable")


async def test_admissions_need_the_internal_token(gw: GatewayUnderTest) -> None:
    record = gw.auth.add_api_key()
    response = await gw.client.post("/internal/v1/admissions", json=payload(record))
    assert response.status_code == 401


async def test_a_body_without_the_internal_token_is_refused_before_it_is_read(
    gw: GatewayUnderTest,
) -> None:
    # On the gateway's public port: a caller without the token must not make it decode
    # JSON first (as FastAPI does before a route's dependencies).
    body = WatchedBody()

    response = await gw.client.post("/internal/v1/admissions", content=body.stream())
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "internal token required"
    assert response.headers["x-request-id"]
    assert not body.read


async def test_a_404_that_does_not_say_what_is_missing_is_503_not_a_refusal(
    gw: GatewayUnderTest,
) -> None:
    # An auth without the key-state route (a rolling upgrade) answers a bare 404: that
    # says nothing about the key, so the replay waits instead of stopping for good.
    record = gw.auth.add_api_key()
    key_auth(gw).without_routes = True
    for body in (payload(record), payload(None, user_id=record.user_id)):
        assert_refused(await admit(gw, body), 503, "auth_unavailable")
    assert admitted_nothing(gw)


async def test_an_answer_fetched_across_an_auth_event_is_not_kept(gw: GatewayUnderTest) -> None:
    # A "disabled" fetched just before the user was enabled again must not be kept for
    # the cache's 30 s: the next admission asks again.
    auth = key_auth(gw)
    auth.disabled.add("user-2")
    state = gw.gateway.authenticator.revocations

    def enabled_meanwhile(path: str) -> None:
        auth.disabled.discard("user-2")  # enabled while the answer was on its way
        enabled = UserEnabled(
            source="auth", tenant="acme", request_id=new_id(), data=UserStatusData(user_id="user-2")
        )
        state.apply(enabled)  # as this replica's listener does, hooks included
        auth.after_user_answer = None

    auth.after_user_answer = enabled_meanwhile
    assert_refused(await admit(gw, payload(None, user_id="user-2")), 403, "user_disabled")
    assert (await admit(gw, payload(None, user_id="user-2"))).status_code == 200


@pytest.mark.parametrize(
    ("api", "input_only", "billed"),
    [
        ("openai.chat_completions", False, True),
        ("anthropic.messages", False, True),
        ("openai.embeddings", True, True),
        ("anthropic.count_tokens", True, False),
        ("openai.responses.input_tokens", True, False),
    ],
)
async def test_a_job_reserves_output_only_for_apis_that_generate_it(
    gw: GatewayUnderTest, api: str, input_only: bool, billed: bool
) -> None:
    admission = gw.gateway.admission = FakeAdmission()
    record = gw.auth.add_api_key(allowed_models=["sim-large"])
    response = await admit(gw, payload(record, api=api))
    assert response.status_code == 200, response.text
    assert admission.input_only == [input_only]
    assert admission.billed == [billed]
