"""The auth routes the gateway forwards judge the caller before the request body, through
the gateway as on auth itself: without credentials (or with bad ones) a malformed body is a
401, from a caller who may not use the route a 403, and only an authorised caller learns
what is wrong with the body. The gateway forwards the body untouched; these tests run the
real auth app (in process, on SQLite) behind it. The route table is read from the gateway
app (every route served by `forward_to_auth`), so a newly forwarded route is covered; the
public ones, whose body is the credential, are listed in `PUBLIC`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi.routing import iter_route_contexts

from switchyard.common.bus import InMemoryBus
from switchyard.gateway.api.admin import AUTH_ROUTES, forward_to_auth
from switchyard.gateway.app import create_app as create_gateway

auth_app_module = pytest.importorskip("switchyard.auth.app")

PASSWORD = "correct horse battery"
INTERNAL_TOKEN = "unit-internal-token"
# Sign-in, refresh and sign-out: the body is the credential.
PUBLIC = {("POST", "/v1/auth/token"), ("POST", "/v1/auth/refresh"), ("POST", "/v1/auth/logout")}
# Open to every signed-in user: no principal is refused them with a 403.
SIGNED_IN = {("GET", "/v1/me"), ("GET", "/v1/api-keys")}

MALFORMED = [
    ("not JSON", b"{not json", "application/json"),
    ("JSON but not an object", b"[1, 2]", "application/json"),
    ("wrong field types", b'{"name": 5, "email": 5, "rpm_limit": "x", "user_id": 5}', None),
    ("unknown fields", b'{"no_such_field": 1}', None),
    ("too deep", b"[" * 100 + b"]" * 100, "application/json"),
    ("not declared JSON", b"hello", "text/plain"),
]


def _forwarded_routes() -> list[tuple[str, str]]:
    """(method, path) of every route of the gateway app (built, never started) that
    `forward_to_auth` serves."""
    app = create_gateway(http=httpx.AsyncClient(), bus=InMemoryBus())
    routes = []
    for route in iter_route_contexts(app.routes):
        if getattr(route, "endpoint", None) is forward_to_auth:
            routes.extend((method, route.path) for method in sorted(route.methods - {"HEAD"}))
    return routes


FORWARDED = _forwarded_routes()
GUARDED = [route for route in FORWARDED if route not in PUBLIC]
PERMISSIONED = [route for route in GUARDED if route not in SIGNED_IN]


def _ids(routes: list[tuple[str, str]]) -> list[str]:
    return [f"{method} {path}" for method, path in routes]


@contextlib.asynccontextmanager
async def _auth_service(directory: Path) -> AsyncIterator[tuple[httpx.AsyncClient, object]]:
    """The real auth app on a migrated SQLite file: a client to it and its `AuthService`."""
    from argon2 import profiles

    from switchyard.auth.config import Settings as AuthSettings
    from switchyard.auth.passwords import PasswordHasher
    from switchyard.auth.plugin import MIGRATIONS_DIR
    from switchyard.auth.signing import generate_private_key, private_key_pem
    from switchyard.common.db import upgrade

    database_url = f"sqlite+aiosqlite:///{directory}/auth.db"
    upgrade(str(MIGRATIONS_DIR), database_url, "alembic_version_auth")
    key = directory / "signing-key.pem"
    key.write_bytes(private_key_pem(generate_private_key()))
    settings = AuthSettings(
        environment="test",
        database_url=database_url,
        signing_key_file=key,
        internal_token=INTERNAL_TOKEN,
        dev_key_file=directory / "unused-dev-key.pem",
        dev_api_key_file=directory / "unused-dev-api-key",
        dev_api_key=None,
    )
    bus = InMemoryBus()
    await bus.start()
    app = auth_app_module.create_app(settings, bus=bus, passwords=PasswordHasher(profiles.CHEAPEST))
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://auth") as client:
                yield client, app.state.auth.service
    finally:
        await bus.stop()


@pytest.fixture
async def behind_gateway(harness, tmp_path):
    """The gateway harness whose forwarded auth routes reach the real auth app (its other
    calls still reach the fake auth), and fresh access tokens: `tokens[name]()` for a member,
    an admin narrowed to `chat` (neither `admin` nor `keys:write`) and a full admin."""
    from switchyard.common.scopes import ADMIN_TOKEN_SCOPES, CHAT, USER_TOKEN_SCOPES

    auth_url = httpx.URL(harness.settings.auth_url)
    async with _auth_service(tmp_path) as (auth_client, service):
        fake = harness.upstreams.route

        async def route(request: httpx.Request):
            # The public API of auth (what forward_to_auth sends) goes to the real app; the
            # gateway's own calls (JWKS, internal lookups, history) to the fakes.
            forwarded = request.url.path.startswith("/v1/") and (
                request.url.host,
                request.url.port,
            ) == (auth_url.host, auth_url.port)
            if not forwarded:
                return fake(request)
            return await auth_client.request(
                request.method,
                request.url.raw_path.decode("ascii"),
                content=await request.aread(),
                headers=request.headers,
            )

        harness.upstreams.route = route
        admin = await service.create_user(
            email="admin@acme.test", tenant="acme", role="admin", password=PASSWORD
        )
        member = await service.create_user(
            email="member@acme.test", tenant="acme", password=PASSWORD
        )
        admin = await service.user_by_email(admin.email)
        member = await service.user_by_email(member.email)

        def bearer(user, scopes) -> dict[str, str]:
            token = service.issue_access_token(user, scopes=list(scopes)).token
            return {"Authorization": f"Bearer {token}"}

        yield (
            harness,
            {
                "member": lambda: bearer(member, USER_TOKEN_SCOPES),
                "narrowed": lambda: bearer(admin, [CHAT]),
                "admin": lambda: bearer(admin, ADMIN_TOKEN_SCOPES),
            },
        )


async def _call(harness, method: str, path: str, headers: dict, body: bytes, content_type):
    headers = {**headers, "content-type": content_type or "application/json"}
    concrete = path.replace("{", "").replace("}", "")
    return await harness.client.request(method, concrete, content=body, headers=headers)


def test_every_auth_route_is_forwarded_and_the_public_ones_exist():
    assert {(method, path) for method, path, _, _ in AUTH_ROUTES} == set(FORWARDED)
    assert PUBLIC <= set(FORWARDED) and SIGNED_IN <= set(FORWARDED)


@pytest.mark.parametrize(("method", "path"), GUARDED, ids=_ids(GUARDED))
async def test_no_or_bad_credentials_are_a_401_whatever_the_body(behind_gateway, method, path):
    harness, _ = behind_gateway
    credentials = {
        "none": {},
        "bad token": {"Authorization": "Bearer not-a-token"},
        "unknown API key": {"Authorization": "Bearer sk-sy-unknownunknownunknown"},
    }
    wrong = []
    for who, headers in credentials.items():
        for name, body, content_type in MALFORMED:
            response = await _call(harness, method, path, headers, body, content_type)
            code = (response.json().get("error") or {}).get("code")
            if response.status_code != 401 or code not in ("missing_token", "invalid_token"):
                wrong.append(f"{who} + {name}: {response.status_code} {response.text[:120]}")
    assert wrong == []


@pytest.mark.parametrize(("method", "path"), PERMISSIONED, ids=_ids(PERMISSIONED))
async def test_a_caller_without_the_permission_gets_a_403_whatever_the_body(
    behind_gateway, method, path
):
    harness, tokens = behind_gateway
    callers = ["narrowed"] + (["member"] if path.startswith("/v1/admin/") else [])
    wrong = []
    for who in callers:
        for name, body, content_type in MALFORMED:
            response = await _call(harness, method, path, tokens[who](), body, content_type)
            if response.status_code != 403:
                wrong.append(f"{who} + {name}: {response.status_code} {response.text[:120]}")
    assert wrong == []


async def test_an_authorised_caller_still_learns_what_is_wrong_with_the_body(behind_gateway):
    harness, tokens = behind_gateway
    response = await _call(
        harness, "POST", "/v1/admin/teams", tokens["admin"](), b"{nope", "application/json"
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"
