"""The web console at /ui, in-process with auth and history played by `ConsoleDouble`:
sign-in and the session cookie, CSRF, what each role sees, escaping of everything users
and models write, and that the API never passes through any of it."""

from __future__ import annotations

import contextlib
import html
import json
import re
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from switchyard.common.statuses import JOB_STATUSES
from switchyard.gateway.config import Settings
from switchyard.gateway.console.session import COOKIE_NAME, Session, SessionCookies

from .auth_double import gateway_with
from .console_double import ConsoleDouble

FORM = "application/x-www-form-urlencoded"
XSS = [
    "<script>window.__xss=1</script>",
    '<img src=x onerror="window.__xss=2">',
    '"><svg onload=alert(3)>',
    "javascript:alert(4)//</textarea></pre>",
]


@contextlib.asynccontextmanager
async def console(double: ConsoleDouble | None = None, **settings) -> AsyncIterator:
    double = double or ConsoleDouble()
    settings = Settings(request_timeout_s=2.0, topic_prefix="unit-console", **settings)
    async with gateway_with(double, settings) as gw:
        yield gw


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrftoken" value="([^"]+)"', page)
    assert match, "the page has no CSRF field"
    return match.group(1)


async def sign_in(gw, email: str = "alice@acme.test", password: str | None = None):
    account = gw.auth.account(email)
    page = await gw.client.get("/ui/login")
    response = await gw.client.post(
        "/ui/login",
        data={
            "email": email,
            "password": password or account.password,
            "csrftoken": csrf_of(page.text),
            "next": "/ui/requests",
        },
    )
    return response


async def test_the_sign_in_page_has_labelled_email_and_password_fields():
    async with console() as gw:
        page = await gw.client.get("/ui/login")
        assert page.status_code == 200
        assert re.search(r'<label for="email">Email</label>', page.text)
        assert re.search(r'<label for="password">Password</label>', page.text)
        assert 'type="password"' in page.text


async def test_signing_in_sets_an_httponly_lax_signed_session_cookie_and_goes_on():
    async with console() as gw:
        response = await sign_in(gw)
        assert response.status_code == 303
        assert response.headers["location"] == "/ui/requests"
        cookie = next(
            value
            for value in response.headers.get_list("set-cookie")
            if value.startswith(COOKIE_NAME + "=")
        )
        flags = cookie.lower()
        assert "httponly" in flags and "samesite=lax" in flags and "path=/ui" in flags
        assert "secure" not in flags  # development: plain http on localhost
        page = await gw.client.get("/ui/requests")
        assert page.status_code == 200 and "alice@acme.test" in page.text


async def test_signing_in_gives_a_new_csrf_token():
    """A CSRF token known before sign-in (anybody able to plant a cookie could have set
    it) protects nothing of the session: sign-in sets a new one, which the pages carry."""
    from switchyard.gateway.console.session import CSRF_COOKIE

    async with console() as gw:
        before = gw.client.cookies.get(CSRF_COOKIE) or (
            await gw.client.get("/ui/login")
        ).cookies.get(CSRF_COOKIE)
        response = await sign_in(gw)
        assert response.status_code == 303
        issued = response.cookies.get(CSRF_COOKIE)
        assert before and issued and issued != before
        page = await gw.client.get("/ui/keys")
        assert page.status_code == 200
        assert csrf_of(page.text) == issued == gw.client.cookies.get(CSRF_COOKIE)


async def test_a_planted_csrf_cookie_neither_opens_nor_breaks_the_sessions_forms():
    """The CSRF token is bound to the session. A CSRF cookie set by somebody else (a
    sibling subdomain, a plain-http response), holding a token validly signed for a visit
    of theirs, does not let their form through, and the session's own forms still work."""
    from switchyard.gateway.console.session import CSRF_COOKIE

    async with console() as gw:
        # The attacker's own visit: a token the console signed, and a form carrying it.
        planted = (await gw.client.get("/ui/login")).cookies.get(CSRF_COOKIE)
        assert planted
        await sign_in(gw)
        own = csrf_of((await gw.client.get("/ui/keys")).text)
        assert own != planted
        gw.client.cookies.set(CSRF_COOKIE, planted, path="/ui")
        forged = await gw.client.post("/ui/keys", data={"csrftoken": planted, "name": "forged"})
        assert forged.status_code == 403
        assert "CSRF token" in forged.text
        page = await gw.client.get("/ui/keys")
        assert csrf_of(page.text) == own  # the session's token, not the planted one
        made = await gw.client.post("/ui/keys", data={"csrftoken": own, "name": "mine"})
        assert made.status_code == 201, made.text
        assert "forged" not in (await gw.client.get("/ui/keys")).text


# Cookies a planter could set beside the session's (the CSRF layer's cookie parser,
# `http.cookies.SimpleCookie`, reads whitespace as a separator and stops at a pair it
# cannot parse), and ones an unrelated app on the host could set.
PLANTED = {
    "in-another-pair": 'x=1 {csrf}={token} "z',
    "after-an-unclosed-quote": 'a="b; {csrf}={token}',
    "nameless-then-csrf": "junk; {csrf}={token}",
    "path-attribute-first": "path=/; {csrf}={token}",
}
UNRELATED = ["junk", 'a="b', "path=/", "a=x\\y", "a=\u00e9"]


@pytest.mark.parametrize("shape", sorted(PLANTED))
async def test_a_csrf_token_smuggled_in_another_cookie_does_not_pass(shape):
    from switchyard.gateway.console.session import CSRF_COOKIE

    async with console() as gw:
        planted = (await gw.client.get("/ui/login")).cookies.get(CSRF_COOKIE)
        await sign_in(gw)
        session = gw.client.cookies.get(COOKIE_NAME, path="/ui")
        own = csrf_of((await gw.client.get("/ui/keys")).text)
        cookie = PLANTED[shape].format(csrf=CSRF_COOKIE, token=planted)
        for header in (f"{cookie}; {COOKIE_NAME}={session}", f"{COOKIE_NAME}={session}; {cookie}"):
            gw.client.cookies.clear()
            forged = await gw.client.post(
                "/ui/keys",
                content=f"csrftoken={planted}&name=forged",
                headers={"content-type": FORM, "cookie": header},
            )
            assert forged.status_code == 403, (shape, header)
            mine = await gw.client.post(
                "/ui/keys",
                content=f"csrftoken={own}&name=mine",
                headers={"content-type": FORM, "cookie": header},
            )
            assert mine.status_code == 201, (shape, header, mine.text)


@pytest.mark.parametrize("unrelated", UNRELATED)
async def test_other_cookies_on_the_host_never_break_the_sessions_forms(unrelated):
    async with console() as gw:
        await sign_in(gw)
        session = gw.client.cookies.get(COOKIE_NAME, path="/ui")
        own = csrf_of((await gw.client.get("/ui/keys")).text)
        gw.client.cookies.clear()
        for header in (
            f"{unrelated}; {COOKIE_NAME}={session}",
            f"{COOKIE_NAME}={session}; {unrelated}",
        ):
            made = await gw.client.post(
                "/ui/keys",
                content=f"csrftoken={own}&name=k",
                headers={"content-type": FORM, "cookie": header.encode()},
            )
            assert made.status_code == 201, (unrelated, made.text)


async def test_before_sign_in_the_first_csrf_cookie_sent_is_the_one_checked():
    """RFC 6265 sends the cookie of the most specific path first: the sign-in form is
    checked against that one, whatever follows it."""
    from switchyard.gateway.console.session import CSRF_COOKIE

    async with console() as gw:
        first = (await gw.client.get("/ui/login")).cookies.get(CSRF_COOKIE)
        gw.client.cookies.clear()
        other = (await gw.client.get("/ui/login")).cookies.get(CSRF_COOKIE)
        gw.client.cookies.clear()
        header = f"{CSRF_COOKIE}={first}; {CSRF_COOKIE}={other}"
        for token, refused in ((first, False), (other, True)):
            answer = await gw.client.post(
                "/ui/login",
                content=f"csrftoken={token}&email=a%40b.test&password=wrong",
                headers={"content-type": FORM, "cookie": header},
            )
            assert (answer.status_code == 403) is refused, (token, answer.status_code)


# What a browser says of a form another site sent: Fetch Metadata, or (without it) the
# Origin. A sibling subdomain, able to plant cookies for the host, is `same-site`.
FROM_ANOTHER_SITE = [
    {"sec-fetch-site": "cross-site"},
    {"sec-fetch-site": "same-site"},
    {"sec-fetch-site": "same-site", "origin": "http://gateway"},
    {"sec-fetch-site": "something-new"},
    {"origin": "http://evil.test"},
    {"origin": "http://sub.gateway"},
    {"origin": "http://gateway:8443"},
    {"origin": "null"},
]
FROM_THIS_SITE = [
    {"sec-fetch-site": "same-origin", "origin": "http://gateway"},
    {"sec-fetch-site": "none"},
    {"origin": "http://gateway"},
    {"origin": "https://gateway"},  # TLS ended by a proxy: the scheme is not compared
    {},  # no browser: a script, which meets the CSRF token like everybody
]


async def test_a_sign_in_form_from_another_site_is_refused_even_with_a_planted_cookie():
    """Login CSRF: before sign-in the token is checked against the browser's CSRF cookie,
    which a planter chooses. A form carrying the planter's own token pair (one valid
    visit of theirs) still gets no session when the browser says it came from elsewhere;
    from the console's own page, the same pair signs in."""
    from switchyard.gateway.console.session import CSRF_COOKIE

    async with console() as gw:
        account = gw.auth.account("alice@acme.test")
        planted = (await gw.client.get("/ui/login")).cookies.get(CSRF_COOKIE)
        gw.client.cookies.clear()
        form = f"csrftoken={planted}&email=alice%40acme.test&password={account.password}"
        for where, refused in [(h, True) for h in FROM_ANOTHER_SITE] + [
            (h, False) for h in FROM_THIS_SITE
        ]:
            answer = await gw.client.post(
                "/ui/login",
                content=form,
                headers={"content-type": FORM, "cookie": f"{CSRF_COOKIE}={planted}", **where},
            )
            signed_in = COOKIE_NAME + "=" in answer.headers.get("set-cookie", "")
            if refused:
                assert answer.status_code == 403, (where, answer.status_code)
                assert "sent from another site" in answer.text
                assert not signed_in, where
                assert answer.headers["x-frame-options"] == "DENY"
            else:
                assert answer.status_code == 303, (where, answer.status_code)
                assert signed_in, where
        assert len(gw.auth.calls_to("/v1/auth/token", "POST")) == len(FROM_THIS_SITE)


async def test_a_sessions_form_from_another_site_is_refused_with_its_own_token():
    """Every form, not only sign-in: a cross-site post with the session's cookie and even
    its right token (leaked, say) changes nothing; GETs from anywhere are links."""
    async with console() as gw:
        await sign_in(gw)
        own = csrf_of((await gw.client.get("/ui/keys")).text)
        for where in FROM_ANOTHER_SITE:
            answer = await gw.client.post(
                "/ui/keys", data={"csrftoken": own, "name": "forged"}, headers=where
            )
            assert answer.status_code == 403, where
        linked = await gw.client.get("/ui/keys", headers={"sec-fetch-site": "cross-site"})
        assert linked.status_code == 200 and "forged" not in linked.text
        assert not gw.auth.calls_to("/v1/api-keys", "POST")
        made = await gw.client.post(
            "/ui/keys",
            data={"csrftoken": own, "name": "mine"},
            headers={"sec-fetch-site": "same-origin", "origin": "http://gateway"},
        )
        assert made.status_code == 201, made.text


async def test_a_cookie_that_is_not_utf8_is_no_failure():
    async with console() as gw:
        page = await gw.client.get("/ui/login", headers={"cookie": b"a=\xff"})
        assert page.status_code == 200
        refused = await gw.client.post(
            "/ui/login",
            content="email=a%40b.test&password=x",
            headers={"content-type": FORM, "cookie": b"a=\xff"},
        )
        assert refused.status_code == 403


async def test_signing_out_drops_the_sessions_csrf_token():
    from switchyard.gateway.console.session import CSRF_COOKIE

    async with console() as gw:
        await sign_in(gw)
        token = csrf_of((await gw.client.get("/ui/keys")).text)
        response = await gw.client.post("/ui/logout", data={"csrftoken": token})
        assert response.status_code == 303
        dropped = [
            value
            for value in response.headers.get_list("set-cookie")
            if value.startswith(CSRF_COOKIE + "=")
        ]
        assert dropped and "max-age=0; path=/ui" in dropped[0].lower()
        login = await gw.client.get("/ui/login")
        assert csrf_of(login.text) != token


def test_a_session_cookie_without_its_csrf_token_is_no_session():
    """Cookies from before sessions carried their CSRF token: sign in again."""
    from itsdangerous import URLSafeTimedSerializer

    key = b"k" * 32
    old = URLSafeTimedSerializer(key, salt="switchyard.console.session").dumps(
        ["a", "r", "e@x.test", time.time()]
    )
    cookies = SessionCookies(key, ttl_s=60, secure=False)
    assert cookies.decode(old) is None
    assert cookies.decode(cookies.encode(Session("a", "r", "e", time.time(), ""))) is None
    kept = Session("a", "r", "e", time.time(), cookies.new_csrf_token())
    assert cookies.decode(cookies.encode(kept)) == kept


def test_outside_development_the_session_cookie_is_secure():
    from starlette.responses import Response

    response = Response()
    SessionCookies(b"k" * 32, ttl_s=60, secure=True).set(
        response, Session("a", "r", "e@x.test", time.time(), "t")
    )
    assert "secure" in response.headers["set-cookie"].lower()


async def test_a_wrong_password_is_refused_with_a_message_and_no_cookie():
    async with console() as gw:
        response = await sign_in(gw, password="wrong-password")
        assert response.status_code == 401
        assert "Incorrect email or password." in response.text
        assert not any(
            value.startswith(COOKIE_NAME) for value in response.headers.get_list("set-cookie")
        )


@pytest.mark.parametrize(
    ("seconds", "said"), [(42, "in 42 seconds"), (298, "in 5 minutes"), (60, "in 1 minute")]
)
async def test_a_throttled_sign_in_says_when_to_try_again(seconds, said):
    double = ConsoleDouble(sign_in_throttled_s=seconds)
    async with console(double) as gw:
        response = await sign_in(gw)

    assert response.status_code == 429
    assert response.headers["retry-after"] == str(seconds)
    assert f"Too many sign-in attempts; try again {said}." in response.text


async def test_auth_busy_hashing_is_not_called_too_many_attempts():
    """Auth's 429 while too many passwords wait for its hasher is nothing the user did:
    the page does not blame their attempts."""
    double = ConsoleDouble(sign_in_throttled_s=1, sign_in_throttled_code="passwords_busy")
    async with console(double) as gw:
        response = await sign_in(gw)

    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"
    assert "Many passwords are being checked right now; try again in 1 second." in response.text
    assert "Too many" not in response.text


@pytest.mark.parametrize(
    "path",
    [
        "/ui/",
        "/ui/usage",
        "/ui/requests",
        "/ui/keys",
        "/ui/teams",
        "/ui/jobs",
        "/ui/models",
        "/ui/password",
    ],
)
async def test_every_page_needs_a_sign_in(path):
    async with console() as gw:
        response = await gw.client.get(path)
        assert response.status_code == 303
        assert response.headers["location"].startswith("/ui/login?next=")


async def test_a_tampered_expired_or_foreign_cookie_is_no_session():
    async with console() as gw:
        await sign_in(gw)
        value = gw.client.cookies.get(COOKIE_NAME, path="/ui")
        for forged in (
            value[:-2] + ("AA" if not value.endswith("AA") else "BB"),
            SessionCookies(b"another key", ttl_s=60, secure=False).encode(
                Session("a", "r", "x", time.time(), "t")
            ),
            SessionCookies(gw.settings.console_signing_key(), ttl_s=60, secure=False).encode(
                Session("a", "r", "x", time.time() - 3600, "t")  # signed in long ago
            ),
        ):
            gw.client.cookies.clear()
            gw.client.cookies.set(COOKIE_NAME, forged, path="/ui")
            response = await gw.client.get("/ui/requests")
            assert response.status_code == 303, forged


# An `Authorization: Bearer` header made the CSRF layer (asgi_csrf) wave a form through
# as an API call; the console reads no such header, so it must change nothing.
WITH_AND_WITHOUT_BEARER = ({}, {"authorization": "Bearer junk"})


async def test_forms_without_the_csrf_token_are_refused():
    async with console() as gw:
        gw.auth.add_key(gw.auth.account("alice@acme.test"), "victim key")
        # Sign-in itself (a forged cross-site sign-in), with no cookies at all.
        for headers in WITH_AND_WITHOUT_BEARER:
            response = await gw.client.post(
                "/ui/login",
                data={"email": "alice@acme.test", "password": "alice-password"},
                headers=headers,
            )
            assert response.status_code == 403, headers
            assert COOKIE_NAME not in response.headers.get("set-cookie", "")
        await sign_in(gw)
        key_id = next(iter(gw.auth.keys_by_id))
        for path, data in (
            ("/ui/keys", {"name": "forged"}),
            (f"/ui/keys/{key_id}/revoke", {}),
            ("/ui/jobs/abc/cancel", {}),
            ("/ui/logout", {}),
        ):
            for token in (None, "not-the-token"):
                for headers in WITH_AND_WITHOUT_BEARER:
                    body = dict(data, **({"csrftoken": token} if token else {}))
                    response = await gw.client.post(path, data=body, headers=headers)
                    assert response.status_code == 403, (path, token, headers)
                    assert "Request refused" in response.text
        assert not gw.auth.calls_to("/v1/api-keys", "POST")
        assert not [call for call in gw.auth.recorded if call.method == "DELETE"]
        assert gw.auth.keys_by_id[key_id]["status"] == "active"
        # htmx sends the token as a header instead of a field.
        page = await gw.client.get("/ui/keys")
        response = await gw.client.post(
            f"/ui/keys/{key_id}/revoke", headers={"x-csrftoken": csrf_of(page.text)}
        )
        assert response.status_code == 303
        assert gw.auth.keys_by_id[key_id]["status"] == "revoked"


async def test_another_tenants_request_id_is_not_found():
    async with console() as gw:
        eve = gw.auth.account("eve@evil.test")
        secret = gw.auth.add_item(eve, request={"messages": [{"role": "user", "content": "evil"}]})
        mine = gw.auth.add_item(gw.auth.account("alice@acme.test"))
        await sign_in(gw, "root@acme.test")  # an admin, of another tenant
        response = await gw.client.get(f"/ui/requests/{secret['id']}")
        assert response.status_code == 404
        assert "evil" not in response.text
        # History was asked as the verified identity, whatever the URL said.
        call = gw.auth.calls_to(f"/v1/history/{secret['id']}")[-1]
        assert call.headers["x-switchyard-tenant"] == "acme"
        assert call.headers["x-switchyard-user-id"] == "user-root"
        assert (await gw.client.get(f"/ui/requests/{mine['id']}")).status_code == 200
        assert (await gw.client.get("/ui/requests/..%2F..%2Fetc")).status_code == 404


async def test_members_see_their_own_requests_and_keys_admins_their_tenant():
    async with console() as gw:
        alice, root = gw.auth.account("alice@acme.test"), gw.auth.account("root@acme.test")
        gw.auth.add_key(alice, "alice key")
        gw.auth.add_key(root, "root key")
        gw.auth.add_item(alice, model="alice-model")
        gw.auth.add_item(root, model="root-model")
        await sign_in(gw)
        keys, log = await gw.client.get("/ui/keys"), await gw.client.get("/ui/requests")
        assert "alice key" in keys.text and "root key" not in keys.text
        assert "alice-model" in log.text and "root-model" not in log.text
        assert gw.auth.calls_to("/v1/history")[-1].headers["x-switchyard-role"] == "member"
        await gw.client.post("/ui/logout", data={"csrftoken": csrf_of(log.text)})
        await sign_in(gw, "root@acme.test")
        keys, log = await gw.client.get("/ui/keys"), await gw.client.get("/ui/requests")
        assert "alice key" in keys.text and "root key" in keys.text
        assert "alice-model" in log.text and "root-model" in log.text


async def test_xss_payloads_from_users_and_models_render_as_text():
    double = ConsoleDouble(teams=[])
    alice = double.account("alice@acme.test")
    items = []
    for payload in XSS:
        double.add_key(alice, payload)
        double.teams.append(team(payload, payload, 1.0, "1d"))
        items.append(
            double.add_item(
                alice,
                model=payload,
                status="failed",
                request={
                    "model": payload,
                    "system": payload,
                    "messages": [
                        {"role": "user", "content": payload},
                        {
                            "role": "assistant",
                            "content": None,
                            "tool_calls": [
                                {
                                    "id": "call_1",
                                    "type": "function",
                                    "function": {"name": payload, "arguments": payload},
                                }
                            ],
                        },
                        {"role": "tool", "tool_call_id": payload, "content": payload},
                    ],
                },
                response={
                    "type": "message",
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": payload},
                        {"type": "tool_use", "id": "t1", "name": payload, "input": {"q": payload}},
                    ],
                },
                error={"type": payload, "code": payload, "message": payload, "status": 500},
            )
        )
    async with console(double) as gw:
        await sign_in(gw)
        pages = [
            await gw.client.get(path)
            for path in ("/ui/keys", "/ui/requests", "/ui/teams")
            + tuple(f"/ui/requests/{item['id']}" for item in items)
        ]
        for page in pages:
            assert page.status_code == 200, page.request.url
            for payload in XSS:
                assert payload not in page.text, (page.request.url, payload)
            for marker in ("<script>window", "<img src=x", "<svg onload", "</textarea>"):
                assert marker not in page.text, (page.request.url, marker)
        detail = pages[3].text
        assert html.escape(XSS[0], quote=False) in detail or html.escape(XSS[0]) in detail
        assert "&lt;script&gt;" in pages[1].text  # the model name in the log, as text


async def test_pages_carry_a_csp_without_inline_scripts_and_no_inline_script_or_style():
    double = ConsoleDouble()
    double.add_item(double.account("alice@acme.test"))
    async with console(double) as gw:
        await sign_in(gw)
        for path in ("/ui/login", "/ui/", "/ui/usage", "/ui/requests", "/ui/keys", "/ui/models"):
            page = await gw.client.get(path)
            csp = page.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "unsafe-inline" not in csp
            assert "unsafe-eval" not in csp and "frame-ancestors 'none'" in csp
            assert page.headers["cache-control"] == "no-store"
            # Every script is a file of this origin.
            for tag in re.findall(r"<script\b[^>]*>", page.text):
                assert re.search(r'src="/ui/static/[^"]+\.js"', tag), (path, tag)
            assert " style=" not in page.text and "<style" not in page.text
            assert re.search(r"\son[a-z]+=", page.text) is None, path


async def test_the_api_passes_through_none_of_the_console():
    double = ConsoleDouble()
    record = double.add_api_key(user_id="user-alice", tenant="acme")
    async with console(double) as gw:
        response = await gw.client.get(
            "/v1/models", headers={"authorization": f"Bearer {record.key}"}
        )
        assert response.status_code == 200
        assert "content-security-policy" not in response.headers
        assert "set-cookie" not in response.headers
        # A POST to the API with cookies and no CSRF token is not the console's business.
        gw.client.cookies.set("switchyard_csrf", "x", path="/")
        response = await gw.client.post(
            "/v1/chat/completions",
            headers={"authorization": f"Bearer {record.key}"},
            json={"model": "sim-small", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert response.status_code == 200
        routes = [getattr(route, "path", None) for route in gw.app.routes]
        assert routes[-1] == "/ui"  # mounted after every API route


async def test_a_new_key_shows_its_secret_once_and_can_be_revoked():
    async with console() as gw:
        await sign_in(gw)
        page = await gw.client.get("/ui/keys")
        created = await gw.client.post(
            "/ui/keys",
            data={
                "csrftoken": csrf_of(page.text),
                "name": "ci pipeline",
                "allowed_models": ["sim-small"],
                "scopes": ["chat"],
            },
        )
        assert created.status_code == 201
        secret = re.search(r'<code id="new-secret">([^<]+)</code>', created.text).group(1)
        assert secret.startswith("sk-sy-SECRET")
        body = gw.auth.calls_to("/v1/api-keys", "POST")[-1].read()
        assert b'"allowed_models":["sim-small"]' in body.replace(b" ", b"")
        listing = await gw.client.get("/ui/keys")
        assert "ci pipeline" in listing.text and secret not in listing.text
        key_id = next(k for k, v in gw.auth.keys_by_id.items() if v["name"] == "ci pipeline")
        revoked = await gw.client.post(
            f"/ui/keys/{key_id}/revoke", data={"csrftoken": csrf_of(listing.text)}
        )
        assert revoked.status_code == 303
        assert gw.auth.keys_by_id[key_id]["status"] == "revoked"
        missing = await gw.client.post(
            "/ui/keys/key-unknown/revoke", data={"csrftoken": csrf_of(listing.text)}
        )
        assert missing.status_code == 404


async def test_bad_key_input_is_shown_on_the_form_not_a_500():
    async with console() as gw:
        await sign_in(gw)
        token = csrf_of((await gw.client.get("/ui/keys")).text)
        for data, message in (
            ({"name": "x", "expires_in_days": "soon"}, "whole number"),
            ({"name": "n" * 300}, "name is too long"),
        ):
            response = await gw.client.post("/ui/keys", data={"csrftoken": token, **data})
            assert response.status_code == 400 and message in response.text


async def test_the_csv_download_is_what_the_usage_api_answers():
    double = ConsoleDouble(usage_csv=b"bucket,model,requests\n2025-03-01T00:00:00Z,sim,7\n")
    async with console(double) as gw:
        await sign_in(gw)
        response = await gw.client.get("/ui/usage.csv?group_by=model&range=7d")
        assert response.status_code == 200
        assert response.content == double.usage_csv
        assert response.headers["content-type"].startswith("text/csv")
        assert "attachment" in response.headers["content-disposition"]
        call = double.calls_to("/v1/usage")[-1]
        assert call.url.params["format"] == "csv" and call.url.params["group_by"] == "model"
        assert call.url.params["since"] == "168h"


@pytest.mark.parametrize(
    "expires_in_s",
    [-60, -3, 2],
    ids=["expired", "within-the-gateways-leeway", "about-to-expire"],
)
async def test_an_expired_access_token_is_refreshed_once_and_the_cookie_renewed(expires_in_s):
    """Also a token the gateway still accepts (its clock-skew leeway) but auth, which the
    page calls with it, would refuse, and one that expires while the page is made."""
    async with console() as gw:
        await sign_in(gw)
        gw.auth.access_ttl_s = 300
        value = gw.client.cookies.get(COOKIE_NAME, path="/ui")
        cookies = SessionCookies(gw.settings.console_signing_key(), ttl_s=3600, secure=False)
        session = cookies.decode(value)
        expired = gw.auth.access_token(
            gw.auth.account("alice@acme.test"), exp=int(time.time()) + expires_in_s
        )
        gw.client.cookies.set(
            COOKIE_NAME,
            cookies.encode(
                Session(
                    expired,
                    session.refresh_token,
                    session.email,
                    time.time(),
                    session.csrf_token,
                )
            ),
            path="/ui",
        )
        response = await gw.client.get("/ui/keys")
        assert response.status_code == 200
        assert len(gw.auth.calls_to("/v1/auth/refresh")) == 1
        assert any(v.startswith(COOKIE_NAME) for v in response.headers.get_list("set-cookie"))
        # The renewed cookie works without another refresh.
        assert (await gw.client.get("/ui/keys")).status_code == 200
        assert len(gw.auth.calls_to("/v1/auth/refresh")) == 1


async def test_signing_out_ends_the_sign_in_at_auth_and_drops_the_cookie():
    async with console() as gw:
        await sign_in(gw)
        page = await gw.client.get("/ui/requests")
        response = await gw.client.post("/ui/logout", data={"csrftoken": csrf_of(page.text)})
        assert response.status_code == 303 and response.headers["location"] == "/ui/login"
        logout = gw.auth.calls_to("/v1/auth/logout")[-1]
        assert logout.headers["authorization"].startswith("Bearer ")
        assert (await gw.client.get("/ui/requests")).status_code == 303


def team(team_id: str, name: str, budget: float | None, period: str | None) -> dict:
    return {
        "id": team_id,
        "tenant": "acme",
        "name": name,
        "allowed_models": None,
        "limits": {
            "max_budget_usd": budget,
            "budget_period": period,
            "budget_anchor_at": "2025-01-01T00:00:00Z",
            "rpm_limit": 60,
            "tpm_limit": None,
            "max_parallel_requests": None,
        },
        "created_at": "2025-01-01T00:00:00Z",
    }


async def test_teams_page_says_when_teams_are_not_available_and_key_limits_are_hidden():
    async with console() as gw:
        await sign_in(gw, "root@acme.test")
        page = await gw.client.get("/ui/teams")
        assert page.status_code == 200 and "Not available on this server yet" in page.text
        keys = await gw.client.get("/ui/keys")
        assert 'name="rpm_limit"' not in keys.text
        assert "not available on this server yet" in keys.text


async def test_teams_show_spend_against_budget_and_the_next_reset():
    double = ConsoleDouble(
        teams=[team("team-1", "search", 10.0, "30d"), team("team-2", "ads", None, None)],
        team_spend={"team-1": 2.5},
    )
    async with console(double) as gw:
        await sign_in(gw, "root@acme.test")
        page = await gw.client.get("/ui/teams")
        assert '<progress value="2.5" max="10.0"' in page.text
        assert "$2.50 of $10.00" in page.text and "RPM 60" in page.text
        assert "no budget" in page.text  # the team without one
        since = double.calls_to("/v1/usage")[-1].url.params["since"]
        # Periods of 30 days from the anchor: the current one started on a multiple.
        from datetime import UTC, datetime

        start = datetime.fromisoformat(since.replace("Z", "+00:00"))
        assert (start - datetime(2025, 1, 1, tzinfo=UTC)).days % 30 == 0
        assert (datetime.now(UTC) - start).days < 30


def test_the_teams_doubles_answer_in_auths_real_shapes():
    # The console reads auth's team list and `/v1/me`: the double answers with the very
    # models auth's routes answer with, so a renamed field fails here.
    auth_routes = pytest.importorskip("switchyard.auth.api.limits")
    double = ConsoleDouble(teams=[team("team-1", "search", 10.0, "30d")])
    account = double.account("root@acme.test")
    headers = {"Authorization": f"Bearer {double.access_token(account)}"}
    listed = double.handle(httpx.Request("GET", "http://auth/v1/admin/teams", headers=headers))
    assert auth_routes.TeamList.model_validate(listed.json()).data[0].name == "search"
    me = double.handle(httpx.Request("GET", "http://auth/v1/me", headers=headers))
    parsed = auth_routes.MeOut.model_validate(me.json())
    assert parsed.team_id == "team-1" and parsed.levels["team"].limits.max_budget_usd == 10.0


class TeamLedger:
    """The limit ledger as `/v1/spend` reads it: the team has spent `spent` this period."""

    def __init__(self, spent: float) -> None:
        self.spent = spent

    async def counters(self, scopes=None):
        from switchyard.gateway.governance.ledger import CounterState

        return [
            CounterState(
                scope="team:team-1",
                kind="spend",
                window_start=time.time(),
                window_end=None,
                limit=10.0,
                committed=self.spent,
                spent=self.spent,
            )
        ]


async def nothing_to_flush() -> None:
    """An admission with no settlements pending."""


class TeamPolicies:
    """Auth's policy of every caller: a member of team-1, whose budget is $10 per 30 days."""

    async def get(self, user_id, api_key_id):
        from datetime import UTC, datetime

        from switchyard.common.governance import Limits
        from switchyard.gateway.governance.policy import LevelLimits, Policy

        anchor = datetime(2025, 1, 1, tzinfo=UTC).timestamp()
        limits = Limits(max_budget_usd=10.0, budget_period="30d")
        return Policy(
            tenant="acme", team_id="team-1", levels=(LevelLimits("team", "team-1", limits, anchor),)
        )


async def test_a_member_sees_their_whole_teams_spend_from_the_ledger_not_only_their_own():
    from types import SimpleNamespace

    # History would answer with the member's own requests only ($0.50).
    double = ConsoleDouble(
        teams=[team("team-1", "search", 10.0, "30d")], team_spend={"team-1": 0.5}
    )
    async with console(double) as gw:
        gateway = gw.app.state.gateway
        admission = gateway.admission
        gateway.admission = SimpleNamespace(
            policies=TeamPolicies(), ledger=TeamLedger(7.25), flush=nothing_to_flush
        )
        try:
            await sign_in(gw)  # alice, a member
            page = await gw.client.get("/ui/teams")
        finally:
            gateway.admission = admission
        assert page.status_code == 200, page.text
        assert "$7.25 of $10.00" in page.text
        assert "$0.50" not in page.text
        assert double.calls_to("/v1/usage") == []


async def test_a_member_is_told_when_team_spend_cannot_be_read():
    double = ConsoleDouble(teams=[team("team-1", "search", 10.0, "30d")])
    async with console(double) as gw:
        await sign_in(gw)  # auth's policy endpoint is not played here: no spend to read
        page = await gw.client.get("/ui/teams")
        assert "Spend per team is not available" in page.text
        assert " of $10.00" not in page.text and "budget $10.00" in page.text


async def test_zero_and_lifetime_team_budgets_show_their_spend_and_never_reset():
    double = ConsoleDouble(
        teams=[team("team-1", "frozen", 0.0, "30d"), team("team-2", "grant", 50.0, None)],
        team_spend={"team-1": 0.0, "team-2": 12.5},
    )
    async with console(double) as gw:
        await sign_in(gw, "root@acme.test")
        page = await gw.client.get("/ui/teams")
        assert "$0.00 of $0.00" in page.text  # a zero budget is a budget, not "no budget"
        assert "no budget" not in page.text
        assert "$12.50 of $50.00" in page.text
        rows = re.findall(r"<tr>.*?</tr>", page.text, re.S)
        grant = next(row for row in rows if "grant" in row)
        assert "lifetime" in grant and "never" in grant
        # The lifetime budget's spend is counted from its anchor.
        sinces = {call.url.params["since"] for call in double.calls_to("/v1/usage")}
        assert "2025-01-01T00:00:00Z" in sinces


async def test_key_limits_are_sent_when_filled_in_and_bad_ones_are_shown():
    double = ConsoleDouble(teams=[team("team-1", "search", 10.0, "30d")])
    async with console(double) as gw:
        await sign_in(gw)
        page = await gw.client.get("/ui/keys")
        assert 'name="rpm_limit"' in page.text
        token = csrf_of(page.text)
        created = await gw.client.post(
            "/ui/keys",
            data={
                "csrftoken": token,
                "name": "limited",
                "rpm_limit": "30",
                "max_budget_usd": "1.5",
                "budget_period": "7d",
            },
        )
        assert created.status_code == 201
        sent = json.loads(double.calls_to("/v1/api-keys", "POST")[-1].read())
        assert sent["rpm_limit"] == 30 and sent["max_budget_usd"] == 1.5
        assert sent["budget_period"] == "7d" and "tpm_limit" not in sent
        assert "RPM 30" in created.text
        refused = await gw.client.post(
            "/ui/keys", data={"csrftoken": token, "name": "bad", "rpm_limit": "-5"}
        )
        assert refused.status_code == 400 and "rpm_limit" in refused.text


async def test_usage_by_team_without_teams_says_so():
    async with console() as gw:
        await sign_in(gw)
        page = await gw.client.get("/ui/usage?group_by=team")
        assert page.status_code == 200 and "Not available" in page.text


async def test_a_metadata_only_request_shows_no_content_only_that_it_was_not_kept():
    double = ConsoleDouble()
    item = double.add_item(
        double.account("alice@acme.test"),
        request={
            "model": "sim-small",
            "message_count": 2,
            "message_roles": ["system", "user"],
            "temperature": 0.2,
            "redacted": True,
        },
        response={
            "object": "chat.completion",
            "choices": [{"index": 0, "finish_reason": "stop"}],
            "redacted": True,
        },
    )
    async with console(double) as gw:
        await sign_in(gw)
        page = await gw.client.get(f"/ui/requests/{item['id']}")
        assert "Metadata only." in page.text and "2 message(s) (system, user)" in page.text
        assert 'id="request-conversation"' not in page.text
        assert "temperature" in page.text


async def test_the_detail_view_renders_tool_calls_usage_latency_and_deployment():
    double = ConsoleDouble()
    item = double.add_item(
        double.account("alice@acme.test"),
        request={
            "model": "sim-small",
            "tools": [{"type": "function", "function": {"name": "get_weather"}}],
            "messages": [{"role": "user", "content": "Weather in Paris?"}],
        },
        response={
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "tool_calls",
                    "message": {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": "call_9",
                                "type": "function",
                                "function": {
                                    "name": "get_weather",
                                    "arguments": '{"city":"Paris"}',
                                },
                            }
                        ],
                    },
                }
            ],
        },
        latency_ms=1234.0,
        deployment="eu-primary",
        usage={"input_tokens": 11, "output_tokens": 7, "total_tokens": 18},
    )
    async with console(double) as gw:
        await sign_in(gw)
        page = (await gw.client.get(f"/ui/requests/{item['id']}")).text
        assert "Weather in Paris?" in page
        assert "Tool call <code>get_weather</code>" in page
        assert (
            "&#34;city&#34;: &#34;Paris&#34;" in page
            or "&quot;city&quot;: &quot;Paris&quot;" in page
        )
        assert "1,234 ms" in page and "eu-primary" in page
        assert "11 in · 7 out · 18 total" in page and "tool_calls" in page


def tool_call_request(arguments: str) -> dict:
    return {
        "model": "sim-small",
        "messages": [
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "f", "arguments": arguments},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "ok"},
        ],
    }


@pytest.mark.parametrize(
    "arguments",
    [
        "[" * 100_000 + "]" * 100_000,  # too deep for Python's JSON reader
        "[" * 5_000 + "]" * 5_000,  # short enough to be read, still too deep
        "[" + "{}," * 500_000 + "{}]",  # long: shown as written, never read and indented
    ],
    ids=["deep", "deep-and-short", "long"],
)
async def test_a_stored_request_with_any_tool_arguments_can_be_opened(arguments):
    """A member's request whose tool call's arguments are too deep to read made its page a
    500 for the member and every admin; long ones were read and indented by Python's
    `json` on the event loop (seconds, at every view). Both are shown as written, cut."""
    double = ConsoleDouble()
    item = double.add_item(
        double.account("alice@acme.test"), request=tool_call_request(arguments), response={}
    )
    async with console(double) as gw:
        await sign_in(gw)
        page = await gw.client.get(f"/ui/requests/{item['id']}")
        assert page.status_code == 200, page.text[:500]
        assert "Tool call <code>f</code>" in page.text
        assert arguments[:200] in page.text
        assert ("more characters not shown here" in page.text) is (len(arguments) > 20_000)


async def test_models_page_shows_routing_and_circuit_breaker_states():
    double = ConsoleDouble(
        metrics="# TYPE switchyard_inference_circuit_state gauge\n"
        'switchyard_inference_circuit_state{model="sim-small",deployment="simulator"} 1.0\n'
    )
    async with console(
        double, console_inference_metrics_urls=["http://127.0.0.1:8003/metrics"]
    ) as gw:
        await sign_in(gw)
        page = (await gw.client.get("/ui/models")).text
        assert '<span class="circuit circuit-open">open</span>' in page
        assert '<span class="circuit circuit-closed">closed</span>' in page  # other models
        assert "<code>sim-large</code>" in page


async def test_models_page_shows_server_errors_not_the_errors_requests_caused():
    """A deployment's health: 5xx failures and expired requests, not the 4xx a request
    itself caused (history's `server_error_rate`)."""
    double = ConsoleDouble(
        performance=[
            {
                "model": "sim-small",
                "deployment": "simulator",
                "requests": 8,
                "errors": 4,
                "error_rate": 0.5,
                "server_errors": 1,
                "server_error_rate": 0.125,
                "latency_ms_p50": 12.0,
                "latency_ms_p95": 30.0,
            }
        ]
    )
    async with console(double) as gw:
        await sign_in(gw)
        page = (await gw.client.get("/ui/models")).text
        assert "Server errors</abbr>" in page
        assert "12.5%" in page and "50.0%" not in page


async def test_cancelling_a_job_records_it_at_history_and_tells_inference():
    double = ConsoleDouble()
    async with console(double) as gw:
        await sign_in(gw)
        seen = []

        async def control(event):
            seen.append(event)

        await gw.bus.subscribe([gw.topics.control], "test", control)
        page = await gw.client.get("/ui/jobs")
        answer = {"id": "job1", "object": "job", "status": "cancelled"}
        original = double.answer_history

        def history(request, path, method):
            if path == "/v1/jobs/job1/cancel":
                import httpx

                return httpx.Response(200, json=answer)
            return original(request, path, method)

        double.answer_history = history
        response = await gw.client.post(
            "/ui/jobs/job1/cancel", data={"csrftoken": csrf_of(page.text)}
        )
        assert response.status_code == 303
        from switchyard.common.testing.infra import async_wait_until

        async def cancelled():
            return seen or None

        await async_wait_until(cancelled, timeout=5, message="cancel event")
        assert seen[0].request_id == "job1" and seen[0].tenant == "acme"


async def test_the_jobs_page_offers_cancel_for_unfinished_jobs_only():
    def job(job_id: str, status: str) -> dict:
        return {
            "id": job_id,
            "object": "job",
            "status": status,
            "model": "sim-small",
            "created_at": "2026-01-01T00:00:00Z",
            "started_at": None,
            "completed_at": None,
            "error": None,
            "webhook": None,
        }

    double = ConsoleDouble()
    double.jobs = [
        job("jobqueued", "queued"),
        job("jobrunning", "in_progress"),
        job("jobdone", "completed"),
    ]
    async with console(double) as gw:
        await sign_in(gw)
        page = (await gw.client.get("/ui/jobs")).text
    assert 'action="/ui/jobs/jobqueued/cancel"' in page
    assert 'action="/ui/jobs/jobrunning/cancel"' in page
    assert "jobdone/cancel" not in page
    assert 'class="status status-in_progress"' in page
    # Every status history records is offered, `refused` (a budget or rate limit) too.
    for status in JOB_STATUSES:
        assert f'<option value="{status}"' in page


async def test_the_request_log_pages_with_history_cursors_and_keeps_the_filters():
    double = ConsoleDouble()
    double.add_item(double.account("alice@acme.test"))
    original = double.answer_history

    def history(request, path, method):
        response = original(request, path, method)
        if path == "/v1/history" and "cursor" not in request.url.params:
            body = response.json()
            body["next_cursor"] = "CURSOR-1"
            return httpx.Response(200, json=body)
        return response

    double.answer_history = history
    async with console(double) as gw:
        await sign_in(gw)
        page = await gw.client.get("/ui/requests?status=failed&model=sim-small&range=24h")
        assert page.status_code == 200
        call = double.calls_to("/v1/history")[-1]
        assert call.url.params["status"] == "failed" and call.url.params["model"] == "sim-small"
        assert "since" in call.url.params and call.url.params["limit"] == "25"
        older = re.search(r'href="(/ui/requests\?[^"]*cursor=CURSOR-1[^"]*)"', page.text)
        assert older, "no link to the next page"
        link = html.unescape(older.group(1))
        assert "status=failed" in link and "model=sim-small" in link
        second = await gw.client.get(link)
        assert second.status_code == 200 and "Newest" in second.text
        assert double.calls_to("/v1/history")[-1].url.params["cursor"] == "CURSOR-1"


async def test_quiet_periods_have_zero_requests_but_no_latency_in_the_overview_charts():
    async with console() as gw:
        await sign_in(gw)
        page = await gw.client.get("/ui/?range=day")
        assert page.status_code == 200

        def spec(chart_id: str) -> dict:
            match = re.search(rf'<canvas id="{chart_id}" data-chart="([^"]+)"', page.text)
            assert match, chart_id
            return json.loads(html.unescape(match.group(1)))

        requests, latency = spec("chart-requests"), spec("chart-latency")
        assert len(requests["labels"]) in (24, 25)  # every hour of the day, quiet or not
        assert set(requests["series"][0]["data"]) == {0}
        assert {value for series in latency["series"] for value in series["data"]} == {None}


async def test_a_missing_asset_gets_the_not_found_page_with_the_consoles_own_links():
    async with console() as gw:
        for path in ("/ui/static/nothere.css", "/ui/no-such-page"):
            response = await gw.client.get(path)
            assert response.status_code == 404
            assets = re.findall(r'(?:src|href)="(/ui/[^"]*)"', response.text)
            assert assets, response.text
            assert not [link for link in assets if link.startswith("/ui/static/static/")]
            assert "/ui/static/console.css" in assets and "/ui/" in assets, assets
            assert "/ui/static/" not in assets  # "back to the overview" is the overview


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_budget_usd", "nan"),
        ("max_budget_usd", "inf"),
        ("max_budget_usd", "1_000"),
        ("max_budget_usd", "1e3"),
        ("rpm_limit", "\uff11"),  # a full-width digit: int() takes it, the API would not
        ("tpm_limit", "1_000"),
        ("max_parallel_requests", "1.5"),
        ("expires_in_days", "\u0663"),  # an Arabic-Indic digit
        ("expires_in_days", "0x10"),
        ("budget_period", "bogus"),
    ],
)
async def test_a_key_form_with_a_value_the_api_cannot_take_is_a_form_error(field, value):
    async with console() as gw:
        await sign_in(gw)
        page = await gw.client.get("/ui/keys")
        created = await gw.client.post(
            "/ui/keys", data={"csrftoken": csrf_of(page.text), "name": "k1", field: value}
        )
        assert created.status_code == 400
        assert created.headers["content-type"].startswith("text/html")
        assert gw.auth.calls_to("/v1/api-keys", "POST") == []  # nothing half-sent


async def test_a_form_field_beyond_its_bounds_is_a_page_not_json_echoing_it():
    async with console() as gw:
        page = await gw.client.get("/ui/login")
        response = await gw.client.post(
            "/ui/login",
            data={"csrftoken": csrf_of(page.text), "email": "e" * 500, "password": "x"},
        )
        assert response.status_code == 400
        assert response.headers["content-type"].startswith("text/html")
        assert "e" * 500 not in response.text


async def test_a_multipart_form_is_refused_not_a_500():
    async with console() as gw:
        response = await gw.client.post(
            "/ui/login", files={"email": (None, "a@b.c"), "password": (None, "x" * 8)}
        )
        assert response.status_code == 415
        assert response.headers["content-type"].startswith("text/html")
        assert "content-security-policy" in response.headers


async def test_a_405_page_names_the_methods_the_address_serves():
    async with console() as gw:
        await sign_in(gw)
        response = await gw.client.get("/ui/logout")
        revoke = await gw.client.get("/ui/keys/key_1/revoke")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert revoke.status_code == 405
    assert revoke.headers["allow"] == "POST"


async def test_a_filter_given_twice_is_refused_on_a_page():
    async with console() as gw:
        await sign_in(gw)
        page = await gw.client.get("/ui/requests?model=nope&model=sim-small")
        csv = await gw.client.get("/ui/usage.csv?since=1d&since=7d")
        status = await gw.client.get("/ui/requests?status=completed&status=failed")
        jobs = await gw.client.get("/ui/jobs?status[]=queued&status=failed")
    assert page.status_code == 400
    assert status.status_code == jobs.status_code == 400
    assert page.headers["content-type"].startswith("text/html")
    assert "&#39;model&#39; was given more than once" in page.text
    assert csv.status_code == 400


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/ui/requests?range=24h&model=a//b", "/ui/requests?range=24h&model=a//b"),
        ("/ui/keys", "/ui/keys"),
        ("/ui/../..//evil.com", "/ui/"),
        ("/ui/%2e%2e/%2E%2E//evil.com", "/ui/"),
        ("/ui/./keys", "/ui/"),
        ("/ui//evil.com", "/ui/"),
        ("//evil.com/ui/", "/ui/"),
        ("https://evil.com/ui/", "/ui/"),
        ("/ui/\\evil.com", "/ui/"),
        ("/ui/keys\n", "/ui/"),
        ("/elsewhere", "/ui/"),
        (None, "/ui/"),
    ],
)
def test_after_sign_in_only_console_paths_are_followed(value, expected):
    """`next` is followed only to a path that stays in the console once a browser resolves
    its dot segments (`%2e` included)."""
    from starlette.requests import Request

    from switchyard.gateway.console.routes import safe_next

    request = Request({"type": "http", "root_path": "/ui", "path": "/ui/login", "headers": []})
    assert safe_next(request, value) == expected


@pytest.mark.parametrize(
    ("path", "location"),
    [
        ("/ui/keys/", "/ui/keys"),
        ("/ui/keys//?page=2", "/ui/keys?page=2"),
        ("/ui/requests/", "/ui/requests"),
        # Percent-encoded characters stay encoded: never a query, fragment or other id.
        ("/ui/requests/%3F/", "/ui/requests/%3F"),
        ("/ui/requests/%23frag/", "/ui/requests/%23frag"),
        ("/ui/requests/%2541/", "/ui/requests/%2541"),
    ],
)
async def test_a_trailing_slash_is_redirected_to_a_path_never_to_the_host_header(path, location):
    # Starlette's own slash redirect builds an absolute URL from the Host header: a cache
    # in front that keys on the path alone could then serve a redirect to another host.
    async with console() as gw:
        for method in ("GET", "HEAD"):
            response = await gw.client.request(method, path, headers={"host": "evil.example"})
            assert response.status_code == 307, (method, response.status_code)
            assert response.headers["location"] == location
        # Where no page answers without the slash, the console's own 404 page answers.
        missing = await gw.client.get("/ui/nothing-here/", headers={"host": "evil.example"})
        assert missing.status_code == 404 and "evil.example" not in missing.text
        assert "location" not in missing.headers
        # A form post to a slashed path is not moved (a 307 would repeat the body).
        await sign_in(gw)
        posted = await gw.client.post("/ui/keys/", headers={"host": "evil.example"})
        assert "evil.example" not in posted.headers.get("location", "")


async def test_a_turned_off_console_says_so_at_its_address():
    async with console(console_enabled=False) as gw:
        response = await gw.client.get("/ui/")

    assert response.status_code == 404
    assert "the web console is turned off" in response.json()["error"]["message"]
    assert "SWITCHYARD_GATEWAY_CONSOLE_ENABLED" in response.json()["error"]["message"]


async def change_password(gw, **fields: str):
    page = await gw.client.get("/ui/password")
    assert page.status_code == 200 and 'name="current_password"' in page.text
    return await gw.client.post("/ui/password", data={"csrftoken": csrf_of(page.text), **fields})


async def test_a_signed_in_user_changes_their_password_from_the_console():
    async with console() as gw:
        await sign_in(gw)
        old = gw.auth.account("alice@acme.test").password
        changed = await change_password(
            gw,
            current_password=old,
            new_password="a new passphrase",
            confirm_password="a new passphrase",
        )
        still_signed_in = await gw.client.get("/ui/keys")

    assert changed.status_code == 200
    assert 'id="password-changed"' in changed.text and "other sign-ins have ended" in changed.text
    assert gw.auth.account("alice@acme.test").password == "a new passphrase"
    sent = [r for r in gw.auth.recorded if r.url.path == "/v1/auth/password"]
    assert len(sent) == 1 and sent[0].headers["authorization"].startswith("Bearer ")
    assert "x-forwarded-for" in sent[0].headers  # auth's per-address limit
    assert still_signed_in.status_code == 200  # this sign-in goes on


@pytest.mark.parametrize(
    ("fields", "status", "said"),
    [
        (
            {"current_password": "wrong", "new_password": "a new passphrase",
             "confirm_password": "a new passphrase"},
            403,
            "The current password is incorrect.",
        ),
        (
            {"current_password": "x", "new_password": "a new passphrase",
             "confirm_password": "another one"},
            400,
            "differ",
        ),
        ({"current_password": "x", "new_password": "short", "confirm_password": "short"}, 400,
         "8 to 1024 characters"),
        ({"current_password": "", "new_password": "", "confirm_password": ""}, 400,
         "Enter your current password"),
    ],
)  # fmt: skip
async def test_a_refused_password_change_says_why_and_changes_nothing(fields, status, said):
    async with console() as gw:
        await sign_in(gw)
        old = gw.auth.account("alice@acme.test").password
        refused = await change_password(gw, **fields)

    assert refused.status_code == status
    assert said in refused.text and 'id="password-changed"' not in refused.text
    assert gw.auth.account("alice@acme.test").password == old
    assert "a new passphrase" not in refused.text  # never echoed


async def test_a_password_change_needs_a_sign_in_and_its_csrf_token():
    async with console() as gw:
        anonymous = await gw.client.get("/ui/password")
        assert anonymous.status_code in (302, 303, 307)
        await sign_in(gw)
        forged = await gw.client.post(
            "/ui/password",
            data={"current_password": "x", "new_password": "a new passphrase",
                  "confirm_password": "a new passphrase"},
        )  # fmt: skip
        assert forged.status_code == 403
    assert not [r for r in gw.auth.recorded if r.url.path == "/v1/auth/password"]
