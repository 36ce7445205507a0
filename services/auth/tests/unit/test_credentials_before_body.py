"""Every route of the auth service that needs credentials judges them before the request
body: without credentials (or with bad ones) a malformed body is a 401, from a caller who
may not use the route a 403, and only an authorised caller learns what is wrong with the
body (400 in the route's usual format). The route table is read from the app itself, so a
new route is covered as soon as it exists; the public routes, where the body is the
credential or nothing is secret, are listed in `PUBLIC`."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any

import pytest
from fastapi import APIRouter, Body
from fastapi.routing import iter_route_contexts

from switchyard.auth.api.routing import CredentialsFirstRoute
from switchyard.auth.app import create_app
from switchyard.auth.config import Settings
from switchyard.auth.signing import generate_private_key, private_key_pem
from switchyard.common.scopes import ADMIN_TOKEN_SCOPES, CHAT, USER_TOKEN_SCOPES

from ..conftest import INTERNAL_TOKEN

PASSWORD = "correct horse battery"

# Routes anyone may call: sign-in, refresh and sign-out take their credential in the body
# (sign-out also takes a bearer token, judged before its body: see
# `test_sign_out_judges_a_presented_token_before_its_body`), and the rest are public.
PUBLIC = {
    ("POST", "/v1/auth/token"),
    ("POST", "/v1/auth/refresh"),
    ("POST", "/v1/auth/logout"),
    ("GET", "/.well-known/jwks.json"),
    ("GET", "/livez"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/assets/{name}"),
}
# Routes every signed-in user may call: no principal is refused them with a 403.
SIGNED_IN = {("GET", "/v1/me"), ("GET", "/v1/api-keys")}
INTERNAL_PREFIX = "/internal/"

# (name, body, content type): bodies that are wrong in every way a body can be.
MALFORMED = [
    ("not JSON", b"{not json", "application/json"),
    ("JSON but not an object", b"[1, 2]", "application/json"),
    ("a JSON string", b'"text"', "application/json"),
    ("wrong field types", b'{"name": 5, "email": 5, "rpm_limit": "x", "user_id": 5}', None),
    ("unknown fields", b'{"no_such_field": 1}', None),
    ("too deep", b"[" * 100 + b"]" * 100, "application/json"),
    ("not declared JSON", b"hello", "text/plain"),
    ("empty", b"", "application/json"),
]


def _route_table() -> list[tuple[str, str, bool]]:
    """(method, path, whether it takes a body) of every route of the auth app (built, never
    started: nothing is read or connected), HEAD left out (answered as its GET)."""
    with tempfile.TemporaryDirectory() as directory:
        key = Path(directory) / "signing-key.pem"
        key.write_bytes(private_key_pem(generate_private_key()))
        app = create_app(
            Settings(
                environment="test",
                database_url=f"sqlite+aiosqlite:///{directory}/unused.db",
                signing_key_file=key,
                internal_token=INTERNAL_TOKEN,
                dev_key_file=Path(directory) / "unused-dev-key.pem",
                dev_api_key_file=Path(directory) / "unused-dev-api-key",
                dev_api_key=None,
            )
        )
        table = []
        for route in iter_route_contexts(app.routes):
            if not route.methods or route.path is None:
                continue
            for method in sorted(route.methods - {"HEAD"}):
                table.append((method, route.path, getattr(route, "body_field", None) is not None))
        return table


ROUTES = _route_table()
GUARDED = [(m, p, body) for m, p, body in ROUTES if (m, p) not in PUBLIC]
PERMISSIONED = [
    (m, p, body)
    for m, p, body in GUARDED
    if (m, p) not in SIGNED_IN and not p.startswith(INTERNAL_PREFIX)
]
WITH_BODY = [(m, p) for m, p, body in GUARDED if body]


def _ids(routes: list) -> list[str]:
    return [f"{route[0]} {route[1]}" for route in routes]


def _concrete(path: str) -> str:
    return path.replace("{", "").replace("}", "")


async def _call(auth_app, method: str, path: str, headers: dict, body: bytes, content_type):
    headers = {**headers, "content-type": content_type or "application/json"}
    return await auth_app.client.request(method, _concrete(path), content=body, headers=headers)


def _error_code(response) -> str | None:
    error = response.json().get("error")
    return error.get("code") if isinstance(error, dict) else None


@pytest.fixture
async def people(auth_app):
    """Fresh access tokens of a member, of an admin narrowed to `chat` (neither `admin` nor
    `keys:write`) and of a full admin: `people[name]()` issues one (sign-out revokes)."""
    service = auth_app.service
    admin = await service.create_user(
        email="admin@acme.test", tenant="acme", role="admin", password=PASSWORD
    )
    member = await service.create_user(email="member@acme.test", tenant="acme", password=PASSWORD)
    admin = await service.user_by_email(admin.email)
    member = await service.user_by_email(member.email)

    def bearer(user, scopes) -> dict[str, str]:
        token = service.issue_access_token(user, scopes=list(scopes)).token
        return {"Authorization": f"Bearer {token}"}

    return {
        "member": lambda: bearer(member, USER_TOKEN_SCOPES),
        "narrowed": lambda: bearer(admin, [CHAT]),
        "admin": lambda: bearer(admin, ADMIN_TOKEN_SCOPES),
    }


def test_the_route_table_is_read_from_the_app():
    assert ("POST", "/v1/admin/users", True) in ROUTES
    assert ("POST", "/internal/v1/api-keys/lookup", True) in ROUTES
    assert ("GET", "/v1/me", False) in GUARDED
    # Every public route named still exists: a renamed one is not silently exempt.
    assert PUBLIC <= {(m, p) for m, p, _ in ROUTES}


@pytest.mark.parametrize(("method", "path", "has_body"), GUARDED, ids=_ids(GUARDED))
async def test_no_or_bad_credentials_are_a_401_whatever_the_body(auth_app, method, path, has_body):
    internal = path.startswith(INTERNAL_PREFIX)
    credentials = {
        "none": {},
        "bad token": {"Authorization": "Bearer not-a-token"},
        "unknown API key": {"Authorization": "Bearer sk-sy-unknownunknownunknown"},
    }
    if internal:
        credentials["bad internal token"] = {"x-switchyard-internal-token": "wrong"}
    wrong = []
    for who, headers in credentials.items():
        for name, body, content_type in MALFORMED:
            response = await _call(auth_app, method, path, headers, body, content_type)
            if response.status_code != 401:
                wrong.append(f"{who} + {name}: {response.status_code} {response.text[:120]}")
            elif not internal and _error_code(response) not in ("missing_token", "invalid_token"):
                wrong.append(f"{who} + {name}: 401 {response.text[:120]}")
    assert wrong == []


@pytest.mark.parametrize(("method", "path", "has_body"), PERMISSIONED, ids=_ids(PERMISSIONED))
async def test_a_caller_without_the_permission_gets_a_403_whatever_the_body(
    auth_app, people, method, path, has_body
):
    callers = ["narrowed"] + (["member"] if path.startswith("/v1/admin/") else [])
    wrong = []
    for who in callers:
        for name, body, content_type in MALFORMED:
            response = await _call(auth_app, method, path, people[who](), body, content_type)
            if response.status_code != 403:
                wrong.append(f"{who} + {name}: {response.status_code} {response.text[:120]}")
    assert wrong == []


@pytest.mark.parametrize(("method", "path"), WITH_BODY, ids=_ids(WITH_BODY))
async def test_an_authorised_caller_learns_what_is_wrong_with_the_body(
    auth_app, people, method, path
):
    def headers() -> dict[str, str]:
        if path.startswith(INTERNAL_PREFIX):
            return {"x-switchyard-internal-token": INTERNAL_TOKEN}
        return people["admin"]()

    expected = {
        "not JSON": "invalid_json",
        "JSON but not an object": "invalid_json",
        "a JSON string": "invalid_json",
        "too deep": "json_too_deep",
        "unknown fields": "invalid_request",
    }
    wrong = []
    for name, body, content_type in MALFORMED:
        if name not in expected:
            continue
        response = await _call(auth_app, method, path, headers(), body, content_type)
        error = response.json().get("error") or {}
        if response.status_code != 400 or error.get("code") != expected[name]:
            wrong.append(f"{name}: {response.status_code} {response.text[:160]}")
        elif set(error) != {"message", "type", "param", "code"}:
            wrong.append(f"{name}: error format {sorted(error)}")
    assert wrong == []


async def test_sign_out_judges_a_presented_token_before_its_body(auth_app, people):
    for name, body, content_type in MALFORMED:
        response = await _call(
            auth_app,
            "POST",
            "/v1/auth/logout",
            {"Authorization": "Bearer not-a-token"},
            body,
            content_type,
        )
        assert response.status_code == 401, (name, response.text)
        assert _error_code(response) == "invalid_token"
    # With a valid token the body is still read, and refused as before.
    refused = await _call(
        auth_app, "POST", "/v1/auth/logout", people["member"](), b"{nope", "application/json"
    )
    assert refused.status_code == 400 and _error_code(refused) == "invalid_json"


def test_a_route_whose_body_takes_anything_is_refused_when_built():
    # Such a body would let a body that is not JSON through to the endpoint.
    router = APIRouter(route_class=CredentialsFirstRoute)

    async def takes_anything(body: Annotated[Any, Body()]) -> None:
        return None

    with pytest.raises(TypeError, match="accepts any value"):
        router.add_api_route("/anything", takes_anything, methods=["POST"])
