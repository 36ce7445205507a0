"""A team's allowed models bound its members' keys and access tokens: what gateways are
told a key may use (the internal lookups) and a user's tokens may use (the user status),
and what the tokens auth signs carry (only the models asked for, never the team's)."""

from __future__ import annotations

import jwt
import pytest

from switchyard.auth.keys import hash_api_key
from switchyard.auth.service import InvalidInput

from .test_admin_api import PASSWORD

INTERNAL = {"x-switchyard-internal-token": "test-internal-token"}


def claims_of(access_token: str) -> dict:
    return jwt.decode(access_token, options={"verify_signature": False})


async def sign_in(auth_app, email: str) -> dict:
    response = await auth_app.client.post(
        "/v1/auth/token", json={"grant_type": "password", "username": email, "password": PASSWORD}
    )
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture
async def acme(auth_app):
    service = auth_app.service
    await service.create_user(
        email="admin@acme.test", tenant="acme", role="admin", password=PASSWORD
    )
    member = await service.create_user(email="carol@acme.test", tenant="acme", password=PASSWORD)
    admin_token = (await sign_in(auth_app, "admin@acme.test"))["access_token"]
    return {"member": member, "admin_headers": {"Authorization": f"Bearer {admin_token}"}}


async def small_team(auth_app, acme, models: list[str] | None = None) -> str:
    """A team allowed `models` (default: sim-small only), with carol moved into it."""
    team = await auth_app.client.post(
        "/v1/admin/teams",
        json={"name": "smallonly", "allowed_models": models or ["sim-small"]},
        headers=acme["admin_headers"],
    )
    assert team.status_code == 201, team.text
    moved = await auth_app.client.patch(
        f"/v1/admin/users/{acme['member'].id}",
        json={"team_id": team.json()["id"]},
        headers=acme["admin_headers"],
    )
    assert moved.status_code == 200, moved.text
    return team.json()["id"]


async def widen_team(auth_app, acme, team_id: str) -> None:
    """The team now allows sim-small and sim-large."""
    widened = await auth_app.client.patch(
        f"/v1/admin/teams/{team_id}",
        json={"allowed_models": ["sim-small", "sim-large"]},
        headers=acme["admin_headers"],
    )
    assert widened.status_code == 200, widened.text


async def admin_key(auth_app, acme, **body) -> dict:
    created = await auth_app.client.post(
        "/v1/admin/api-keys",
        json={"user_id": acme["member"].id, "name": "c2", **body},
        headers=acme["admin_headers"],
    )
    assert created.status_code == 201, created.text
    return created.json()


async def lookup(auth_app, key: dict) -> dict:
    response = await auth_app.client.post(
        "/internal/v1/api-keys/lookup",
        json={"secret_hash": hash_api_key(key["key"])},
        headers=INTERNAL,
    )
    assert response.status_code == 200, response.text
    return response.json()


async def user_status(auth_app, user_id: str) -> dict:
    response = await auth_app.client.get(f"/internal/v1/users/{user_id}", headers=INTERNAL)
    assert response.status_code == 200, response.text
    return response.json()


async def key_state(auth_app, key: dict) -> dict:
    response = await auth_app.client.get(f"/internal/v1/api-keys/{key['key_id']}", headers=INTERNAL)
    assert response.status_code == 200, response.text
    return response.json()


async def test_a_team_members_key_without_models_of_its_own_answers_the_teams(
    auth_app, acme
) -> None:
    await small_team(auth_app, acme)
    key = await admin_key(auth_app, acme)
    assert key["allowed_models"] is None

    assert (await lookup(auth_app, key))["allowed_models"] == ["sim-small"]
    assert (await key_state(auth_app, key))["allowed_models"] == ["sim-small"]


async def test_a_key_with_its_own_models_answers_those_its_team_allows_in_its_order(
    auth_app, acme
) -> None:
    await small_team(auth_app, acme, ["sim-small", "sim-medium"])
    key = await admin_key(auth_app, acme, allowed_models=["sim-large", "sim-medium", "sim-small"])

    assert (await lookup(auth_app, key))["allowed_models"] == ["sim-medium", "sim-small"]
    assert (await key_state(auth_app, key))["allowed_models"] == ["sim-medium", "sim-small"]


async def test_a_key_of_no_model_its_team_allows_is_refused_naming_the_field(
    auth_app, acme
) -> None:
    """A key could never call a model its team does not allow: one whose list holds none
    the team allows would answer 404 to every request, so it is not made."""
    await small_team(auth_app, acme, ["sim-small"])

    refused = await auth_app.client.post(
        "/v1/admin/api-keys",
        json={"user_id": acme["member"].id, "name": "c3", "allowed_models": ["sim-large"]},
        headers=acme["admin_headers"],
    )

    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["param"] == "allowed_models"
    assert "sim-large" in error["message"] and "smallonly" in error["message"]
    listed = await auth_app.client.get(
        "/v1/admin/api-keys", params={"user_id": acme["member"].id}, headers=acme["admin_headers"]
    )
    assert "c3" not in [key["name"] for key in listed.json()["data"]]


async def test_keys_and_tokens_of_a_user_without_a_team_are_unchanged(auth_app, acme) -> None:
    any_model = await admin_key(auth_app, acme)
    own = await admin_key(auth_app, acme, allowed_models=["sim-large"])
    signed_in = await sign_in(auth_app, "carol@acme.test")

    assert (await lookup(auth_app, any_model))["allowed_models"] is None
    assert (await lookup(auth_app, own))["allowed_models"] == ["sim-large"]
    assert "allowed_models" not in claims_of(signed_in["access_token"])


async def test_tokens_name_no_team_models_the_user_status_names_them(auth_app, acme) -> None:
    team_id = await small_team(auth_app, acme)
    signed_in = await sign_in(auth_app, "carol@acme.test")
    refreshed = await auth_app.client.post(
        "/v1/auth/refresh", json={"refresh_token": signed_in["refresh_token"]}
    )

    assert "allowed_models" not in claims_of(signed_in["access_token"])
    assert refreshed.status_code == 200, refreshed.text
    assert "allowed_models" not in claims_of(refreshed.json()["access_token"])
    status = await user_status(auth_app, acme["member"].id)
    assert (status["team_id"], status["team_models"]) == (team_id, ["sim-small"])


async def test_a_team_of_many_long_model_names_leaves_its_members_tokens_short(
    auth_app, acme
) -> None:
    # 200 names of 40 characters: a token carrying them would pass the 8,192 characters
    # gateways accept in a credential.
    models = [f"provider-model-with-a-long-name-{index:08d}" for index in range(200)]
    await small_team(auth_app, acme, models)
    signed_in = await sign_in(auth_app, "carol@acme.test")

    assert len(signed_in["access_token"]) < 2048
    assert (await user_status(auth_app, acme["member"].id))["team_models"] == models


async def test_an_operator_token_carries_only_the_models_asked_for(auth_app, acme) -> None:
    await small_team(auth_app, acme)
    user = await auth_app.service.user_by_email("carol@acme.test")

    default = auth_app.service.issue_access_token(user)
    asked = auth_app.service.issue_access_token(user, allowed_models=["sim-large", "sim-small"])

    assert "allowed_models" not in claims_of(default.token)
    # Gateways bound it by the team's list at each request: sim-small now, sim-large too
    # should the team allow it.
    assert claims_of(asked.token)["allowed_models"] == ["sim-large", "sim-small"]


async def test_an_operator_token_for_none_of_the_teams_models_is_refused(auth_app, acme) -> None:
    await small_team(auth_app, acme)
    user = await auth_app.service.user_by_email("carol@acme.test")

    with pytest.raises(InvalidInput, match="the token could call no model") as refused:
        auth_app.service.issue_access_token(user, allowed_models=["sim-large"])
    assert refused.value.param == "allowed_models"


async def test_a_change_of_the_teams_models_reaches_the_next_lookup_and_user_status(
    auth_app, acme
) -> None:
    team_id = await small_team(auth_app, acme)
    key = await admin_key(auth_app, acme)
    member = acme["member"].id
    assert (await lookup(auth_app, key))["allowed_models"] == ["sim-small"]
    assert (await user_status(auth_app, member))["team_models"] == ["sim-small"]

    await widen_team(auth_app, acme, team_id)
    assert (await lookup(auth_app, key))["allowed_models"] == ["sim-small", "sim-large"]
    assert (await user_status(auth_app, member))["team_models"] == ["sim-small", "sim-large"]

    opened = await auth_app.client.patch(
        f"/v1/admin/teams/{team_id}", json={"allowed_models": None}, headers=acme["admin_headers"]
    )
    assert opened.status_code == 200, opened.text
    assert (await lookup(auth_app, key))["allowed_models"] is None
    assert (await user_status(auth_app, member))["team_models"] is None


async def test_a_key_put_in_no_team_is_still_bounded_by_its_users_team(auth_app, acme) -> None:
    # An admin may count a key against no team (team_id null), or take it out of one: the
    # key still belongs to a user in a team, whose models bound it.
    await small_team(auth_app, acme)
    outside = await admin_key(auth_app, acme, team_id=None)
    assert (await lookup(auth_app, outside))["allowed_models"] == ["sim-small"]

    inside = await admin_key(auth_app, acme)
    moved = await auth_app.client.patch(
        f"/v1/admin/api-keys/{inside['key_id']}",
        json={"team_id": None},
        headers=acme["admin_headers"],
    )
    assert moved.status_code == 200, moved.text
    assert (await key_state(auth_app, inside))["allowed_models"] == ["sim-small"]


async def test_a_members_own_key_follows_the_teams_models_as_they_change(auth_app, acme) -> None:
    team_id = await small_team(auth_app, acme)
    token = (await sign_in(auth_app, "carol@acme.test"))["access_token"]
    created = await auth_app.client.post(
        "/v1/api-keys", json={"name": "mine"}, headers={"Authorization": f"Bearer {token}"}
    )
    assert created.status_code == 201, created.text
    key = created.json()
    # Bounded by the team, not by a copy of its list.
    assert key["allowed_models"] is None
    assert (await lookup(auth_app, key))["allowed_models"] == ["sim-small"]

    await widen_team(auth_app, acme, team_id)
    assert (await lookup(auth_app, key))["allowed_models"] == ["sim-small", "sim-large"]


async def key_of_a_token_listing(auth_app, models: list[str]) -> dict:
    """The key carol makes with an access token naming `models` of its own."""
    user = await auth_app.service.user_by_email("carol@acme.test")
    listed = auth_app.service.issue_access_token(user, allowed_models=models)
    created = await auth_app.client.post(
        "/v1/api-keys", json={"name": "mine"}, headers={"Authorization": f"Bearer {listed.token}"}
    )
    assert created.status_code == 201, created.text
    return created.json()


async def test_a_key_made_by_a_token_narrower_than_the_team_keeps_the_tokens_models(
    auth_app, acme
) -> None:
    await small_team(auth_app, acme, ["sim-small", "sim-large"])
    key = await key_of_a_token_listing(auth_app, ["sim-small"])
    assert key["allowed_models"] == ["sim-small"]
    assert (await lookup(auth_app, key))["allowed_models"] == ["sim-small"]


async def test_a_member_cannot_give_a_key_models_beyond_the_token_making_it(auth_app, acme) -> None:
    await small_team(auth_app, acme)
    token = (await sign_in(auth_app, "carol@acme.test"))["access_token"]
    created = await auth_app.client.post(
        "/v1/api-keys",
        json={"name": "wider", "allowed_models": ["sim-large"]},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert created.status_code == 403, created.text
    assert created.json()["error"]["code"] == "insufficient_scope"


async def test_a_key_made_by_a_token_listing_exactly_the_teams_models_keeps_that_list(
    auth_app, acme
) -> None:
    # The token's own list does not follow the team: neither does the key it makes.
    team_id = await small_team(auth_app, acme)
    key = await key_of_a_token_listing(auth_app, ["sim-small"])
    assert key["allowed_models"] == ["sim-small"]

    await widen_team(auth_app, acme, team_id)
    assert (await lookup(auth_app, key))["allowed_models"] == ["sim-small"]


async def test_an_empty_model_list_is_refused_for_keys_teams_and_tokens(auth_app, acme) -> None:
    # governance.md: a list allowing no model is refused, it could call nothing; an empty
    # one was taken, and every request of the key answered 404.
    team_id = await small_team(auth_app, acme)
    signed_in = await sign_in(auth_app, "carol@acme.test")
    own = await auth_app.client.post(
        "/v1/api-keys",
        json={"name": "none", "allowed_models": []},
        headers={"Authorization": f"Bearer {signed_in['access_token']}"},
    )
    by_admin = await auth_app.client.post(
        "/v1/admin/api-keys",
        json={"user_id": acme["member"].id, "name": "none", "allowed_models": []},
        headers=acme["admin_headers"],
    )
    team = await auth_app.client.patch(
        f"/v1/admin/teams/{team_id}", json={"allowed_models": []}, headers=acme["admin_headers"]
    )
    for refused in (own, by_admin, team):
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["param"] == "allowed_models"
        assert "allow no model" in refused.json()["error"]["message"]
    user = await auth_app.service.user_by_email("carol@acme.test")
    with pytest.raises(InvalidInput, match="allow no model"):
        auth_app.service.issue_access_token(user, allowed_models=[])
    # Null still means every model the team allows.
    cleared = await auth_app.client.patch(
        f"/v1/admin/teams/{team_id}", json={"allowed_models": None}, headers=acme["admin_headers"]
    )
    assert cleared.status_code == 200 and cleared.json()["allowed_models"] is None
