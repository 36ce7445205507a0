"""Access tokens name no team's models: the gateway bounds each by the models its user's
team allows as auth last said (the user status it already asks for), so a team's long
list never makes a token too long, and a change of the list or of the user's team reaches
every token at the next request after auth announces it (`auth.limits_changed`)."""

from __future__ import annotations

import asyncio

from switchyard.common.events import LimitsChanged, LimitsChangedData
from switchyard.gateway import auth as auth_module
from switchyard.gateway.auth import STALE_WAIT_S
from switchyard.gateway.config import Settings

from .auth_double import AuthDouble, gateway_with

CHAT = {"messages": [{"role": "user", "content": "Hello"}]}


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


async def chat(gw, token: str, model: str) -> int:
    response = await gw.client.post(
        "/v1/chat/completions", json={"model": model, **CHAT}, headers=bearer(token)
    )
    return response.status_code


async def listed(gw, token: str) -> list[str]:
    response = await gw.client.get("/v1/models", headers=bearer(token))
    assert response.status_code == 200, response.text
    return [model["id"] for model in response.json()["data"]]


def limits_changed(scope: str, scope_id: str) -> LimitsChanged:
    return LimitsChanged(
        source="auth",
        tenant="acme",
        request_id=scope_id,
        data=LimitsChangedData(scope=scope, scope_id=scope_id),
    )


async def until(condition, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        # The gateway signals nothing when it hears an event: its answers are what change.
        while not await condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def test_a_token_naming_no_models_is_bounded_by_its_users_team() -> None:
    auth = AuthDouble(user_teams={"user-jwt": ("team-1", ["sim-small"])})
    async with gateway_with(auth) as gw:
        token = auth.token()

        assert await chat(gw, token, "sim-small") == 200
        assert await chat(gw, token, "sim-large") == 404
        assert await listed(gw, token) == ["sim-small"]


async def test_a_tokens_own_models_are_bounded_by_its_users_team_too() -> None:
    auth = AuthDouble(user_teams={"user-jwt": ("team-1", ["sim-small"])})
    async with gateway_with(auth) as gw:
        token = auth.token(allowed_models=["sim-large", "sim-small"])

        assert await listed(gw, token) == ["sim-small"]
        assert await chat(gw, token, "sim-large") == 404


async def test_a_team_without_a_list_leaves_the_token_its_own() -> None:
    auth = AuthDouble(user_teams={"user-jwt": ("team-1", None)})
    async with gateway_with(auth) as gw:
        assert sorted(await listed(gw, auth.token())) == ["sim-claude", "sim-large", "sim-small"]
        assert await listed(gw, auth.token(allowed_models=["sim-large"])) == ["sim-large"]


async def test_a_change_of_the_teams_models_reaches_tokens_at_the_next_request() -> None:
    auth = AuthDouble(user_teams={"user-jwt": ("team-1", ["sim-small"])})
    async with gateway_with(auth) as gw:
        token = auth.token()
        assert await chat(gw, token, "sim-large") == 404

        auth.user_teams["user-jwt"] = ("team-1", ["sim-small", "sim-large"])
        # Until auth announces it, the cached answer holds (the cache lasts 30 s).
        assert await chat(gw, token, "sim-large") == 404
        await gw.publish_auth_event(limits_changed("team", "team-1"))

        async def widened() -> bool:
            return await chat(gw, token, "sim-large") == 200

        await until(widened)
        # And narrowed again the same way.
        auth.user_teams["user-jwt"] = ("team-1", [])
        await gw.publish_auth_event(limits_changed("team", "team-1"))

        async def emptied() -> bool:
            return await chat(gw, token, "sim-small") == 404

        await until(emptied)


async def test_a_user_moved_into_another_team_gets_its_models_at_the_next_request() -> None:
    auth = AuthDouble(user_teams={"user-jwt": ("team-1", ["sim-small", "sim-large"])})
    async with gateway_with(auth) as gw:
        token = auth.token()
        assert await chat(gw, token, "sim-large") == 200

        auth.user_teams["user-jwt"] = ("team-2", ["sim-small"])
        await gw.publish_auth_event(limits_changed("user", "user-jwt"))

        async def moved() -> bool:
            return await chat(gw, token, "sim-large") == 404

        await until(moved)
        assert await chat(gw, token, "sim-small") == 200


async def test_another_teams_change_asks_nothing_about_this_user() -> None:
    auth = AuthDouble(user_teams={"user-jwt": ("team-1", ["sim-small"])})
    async with gateway_with(auth) as gw:
        token = auth.token()
        assert await chat(gw, token, "sim-small") == 200
        asked = auth.count("/internal/v1/users/user-jwt")

        await gw.publish_auth_event(limits_changed("team", "team-2"))
        await gw.publish_auth_event(limits_changed("team", "team-1"))

        async def asked_again() -> bool:
            await chat(gw, token, "sim-small")
            return auth.count("/internal/v1/users/user-jwt") > asked

        await until(asked_again)
        # team-2's change alone would not have; team-1's did, once.
        assert auth.count("/internal/v1/users/user-jwt") == asked + 1


async def test_a_change_of_the_team_asks_again_about_keys() -> None:
    auth = AuthDouble()
    record = auth.add_api_key(allowed_models=["sim-small"])
    async with gateway_with(auth) as gw:
        assert await chat(gw, record.key, "sim-large") == 404
        record.allowed_models = ["sim-small", "sim-large"]
        await gw.publish_auth_event(limits_changed("team", "team-1"))

        async def widened() -> bool:
            return await chat(gw, record.key, "sim-large") == 200

        await until(widened)


async def test_an_unreadable_team_list_is_no_bound_lifted() -> None:
    auth = AuthDouble(user_teams={"user-jwt": ("team-1", "sim-small")})
    async with gateway_with(auth) as gw:
        response = await gw.client.post(
            "/v1/chat/completions",
            json={"model": "sim-large", **CHAT},
            headers=bearer(auth.token()),
        )
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "auth_unavailable"


async def test_the_teams_bound_holds_while_auth_is_down() -> None:
    auth = AuthDouble(user_teams={"user-jwt": ("team-1", ["sim-small"])})
    async with gateway_with(auth, outage_settings(ttl_s=0.05)) as gw:
        token = auth.token()
        assert await chat(gw, token, "sim-small") == 200
        auth.down = True
        await asyncio.sleep(0.1)

        assert await chat(gw, token, "sim-small") == 200
        assert await chat(gw, token, "sim-large") == 404


async def test_an_answer_auth_gave_before_a_change_is_not_kept_as_fresh() -> None:
    auth = AuthDouble(user_teams={"user-jwt": ("team-1", ["sim-small"])})
    answer_given, release = holding_a_user_answer(auth)
    async with gateway_with(auth) as gw:
        token = auth.token()
        first = await changed_while_asking(
            gw, auth, token, answer_given, ["sim-small", "sim-large"]
        )
        release.set()

        assert await first == 404  # answered with what auth said when it was asked
        assert await chat(gw, token, "sim-large") == 200


def holding_a_user_answer(auth: AuthDouble, nth: int = 1) -> tuple[asyncio.Event, asyncio.Event]:
    """Make auth's `nth` user status answer wait (made at once, delivered on `release`);
    returns (`answer_given`, `release`). Before the gateway starts: it reads `handle`
    then."""
    answer_given, release = asyncio.Event(), asyncio.Event()
    plain = auth.handle
    asked = {"count": 0}

    def handle(request):
        if not request.url.path.startswith("/internal/v1/users/"):
            return plain(request)
        asked["count"] += 1
        answer = plain(request)
        if asked["count"] != nth:
            return answer

        async def on_the_way():
            answer_given.set()
            await release.wait()
            return answer

        return on_the_way()

    auth.handle = handle  # type: ignore[method-assign]
    return answer_given, release


async def changed_while_asking(
    gw, auth: AuthDouble, token: str, answer_given: asyncio.Event, models: list[str]
) -> asyncio.Task[int]:
    """A request for sim-large whose user lookup auth answers; then, while that answer is
    on its way, team-1 allowing `models` and announced, and heard. Returns the request."""
    first = asyncio.create_task(chat(gw, token, "sim-large"))
    await answer_given.wait()
    auth.user_teams["user-jwt"] = ("team-1", models)
    await gw.publish_auth_event(limits_changed("team", "team-1"))
    await heard(gw, 1)
    return first


async def heard(gw, changes: int) -> None:
    authenticator = gw.gateway.authenticator
    async with asyncio.timeout(5):
        while authenticator._changes < changes:  # noqa: ASYNC110 - no event to wait on
            await asyncio.sleep(0.01)


async def test_a_request_after_a_change_does_not_join_a_lookup_from_before_it() -> None:
    auth = AuthDouble(user_teams={"user-jwt": ("team-1", ["sim-small", "sim-large"])})
    answer_given, release = holding_a_user_answer(auth)
    async with gateway_with(auth) as gw:
        token = auth.token()
        first = await changed_while_asking(gw, auth, token, answer_given, ["sim-small"])
        # Asks auth itself before the first's answer arrives (joining it, it would not).
        second = asyncio.create_task(chat(gw, token, "sim-large"))
        async with asyncio.timeout(5):
            while auth.count("/internal/v1/users/user-jwt") < 2:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        release.set()

        assert await first == 200  # asked before the change: auth's answer then
        assert await second == 404


def outage_settings(ttl_s: float = 3600.0) -> Settings:
    """Answers cached `ttl_s` and served stale an hour more while auth is down."""
    return Settings(
        request_timeout_s=2.0,
        topic_prefix="unit-auth",
        api_key_cache_ttl_s=ttl_s,
        auth_stale_if_error_s=3600.0,
    )


async def test_a_narrowed_team_is_not_served_wide_while_auth_is_down() -> None:
    auth = AuthDouble(user_teams={"user-jwt": ("team-1", ["sim-small", "sim-large"])})
    record = auth.add_api_key(team_id="team-1")
    async with gateway_with(auth, outage_settings()) as gw:
        token = auth.token()
        assert await chat(gw, token, "sim-large") == 200
        assert await chat(gw, record.key, "sim-large") == 200

        auth.down = True  # right after the change, before anyone asked again
        await gw.publish_auth_event(limits_changed("team", "team-1"))
        await heard(gw, 1)

        # What auth said before the change cannot stand in for it: 503, never the old list.
        for credential in (token, record.key):
            response = await gw.client.post(
                "/v1/chat/completions",
                json={"model": "sim-large", **CHAT},
                headers=bearer(credential),
            )
            assert response.status_code == 503, response.text
            assert response.json()["error"]["code"] == "auth_unavailable"


async def test_another_teams_change_leaves_answers_usable_while_auth_is_down() -> None:
    auth = AuthDouble(user_teams={"user-jwt": ("team-1", ["sim-small"])})
    record = auth.add_api_key(team_id="team-1")
    async with gateway_with(auth, outage_settings()) as gw:
        token = auth.token()
        assert await chat(gw, token, "sim-small") == 200
        assert await chat(gw, record.key, "sim-small") == 200

        auth.down = True
        await gw.publish_auth_event(limits_changed("team", "team-2"))
        await heard(gw, 1)

        assert await chat(gw, token, "sim-small") == 200
        # The key is asked about again (its user's team is not in its answer), and served
        # from its last answer while auth cannot say.
        assert await chat(gw, record.key, "sim-small") == 200
        assert await chat(gw, token, "sim-large") == 404


async def test_an_answer_from_before_a_change_is_not_served_stale_after_it() -> None:
    auth = AuthDouble(user_teams={"user-jwt": ("team-1", ["sim-small", "sim-large"])})
    answer_given, release = holding_a_user_answer(auth)
    async with gateway_with(auth, outage_settings()) as gw:
        token = auth.token()
        first = await changed_while_asking(gw, auth, token, answer_given, ["sim-small"])
        release.set()
        assert await first == 200  # asked before the change: auth's answer then

        auth.down = True
        response = await gw.client.post(
            "/v1/chat/completions", json={"model": "sim-large", **CHAT}, headers=bearer(token)
        )
        assert response.status_code == 503, response.text


async def test_a_lookup_failing_after_a_change_does_not_bring_back_the_old_answer() -> None:
    auth = AuthDouble(user_teams={"user-jwt": ("team-1", ["sim-small", "sim-large"])})
    plain = auth.handle
    armed: dict = {"on": False, "gw": None}

    def handle(request):
        if armed["on"] and request.url.path.startswith("/internal/v1/users/"):
            armed["on"] = False
            # Narrowed and announced while this lookup is on its way; then auth goes down.
            auth.user_teams["user-jwt"] = ("team-1", ["sim-small"])
            armed["gw"].gateway.revocations.state.apply(limits_changed("team", "team-1"))
            auth.down = True
        return plain(request)

    auth.handle = handle  # type: ignore[method-assign]
    async with gateway_with(auth, outage_settings(ttl_s=0.05)) as gw:
        armed["gw"] = gw
        token = auth.token()
        assert await chat(gw, token, "sim-large") == 200
        await asyncio.sleep(0.1)  # past the answer's TTL, within its stale bound
        armed["on"] = True

        # Neither the request whose lookup failed nor the next is answered from before.
        assert await chat(gw, token, "sim-large") == 503
        assert await chat(gw, token, "sim-large") == 503


async def test_another_tenants_team_change_asks_nothing_about_this_tenants_keys() -> None:
    auth = AuthDouble()
    record = auth.add_api_key(team_id="team-1")  # of tenant acme
    async with gateway_with(auth) as gw:
        assert await chat(gw, record.key, "sim-small") == 200
        before = auth.count("/internal/v1/api-keys/lookup")

        other = limits_changed("team", "globex-team").model_copy(update={"tenant": "globex"})
        await gw.publish_auth_event(other)
        await heard(gw, 1)

        assert await chat(gw, record.key, "sim-small") == 200
        assert auth.count("/internal/v1/api-keys/lookup") == before


async def test_a_change_heard_while_waiting_for_auth_is_not_answered_from_before_it() -> None:
    auth = AuthDouble(user_teams={"user-jwt": ("team-1", ["sim-small", "sim-large"])})
    answer_given, release = holding_a_user_answer(auth, nth=2)
    async with gateway_with(auth, outage_settings(ttl_s=0.05)) as gw:
        token = auth.token()
        assert await chat(gw, token, "sim-large") == 200
        await asyncio.sleep(0.1)  # past the answer's TTL, within its stale bound

        slow = asyncio.create_task(chat(gw, token, "sim-large"))
        await answer_given.wait()
        auth.user_teams["user-jwt"] = ("team-1", ["sim-small"])
        gw.gateway.revocations.state.apply(limits_changed("team", "team-1"))
        # Past the wait after which a usable old answer stands in for a slow auth: the old
        # answer is no longer usable, so the request waits for auth's.
        await asyncio.sleep(STALE_WAIT_S + 0.3)
        assert not slow.done()
        release.set()

        assert await slow == 200  # what auth answered when it was asked, before the change
        assert await chat(gw, token, "sim-large") == 404  # that answer was not kept


async def test_an_answer_from_before_a_change_no_longer_remembered_is_not_kept(
    monkeypatch,
) -> None:
    monkeypatch.setattr(auth_module, "MAX_CHANGES_REMEMBERED", 2)
    auth = AuthDouble(user_teams={"user-jwt": ("team-1", ["sim-small", "sim-large"])})
    answer_given, release = holding_a_user_answer(auth)
    async with gateway_with(auth) as gw:
        token = auth.token()
        first = await changed_while_asking(gw, auth, token, answer_given, ["sim-small"])
        # One more change than remembered: team-1's is forgotten while the answer from
        # before it is on its way.
        gw.gateway.revocations.state.apply(limits_changed("user", "someone-else"))
        assert gw.gateway.authenticator._changed_at.get(("team", "team-1")) is None
        release.set()

        assert await first == 200
        assert await chat(gw, token, "sim-large") == 404
