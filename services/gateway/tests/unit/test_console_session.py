"""The console's session cookie keeps what it holds to itself: the access and refresh
tokens and the email cannot be read out of it by any decoding, an altered or older-format
cookie is no session (and is dropped), every replica with the same secret reads it, and
a sign-in the console lets go of (sign-out, or the session's lifetime over) is ended at
auth, so its refresh token mints nothing afterwards. A session too large for one cookie
is split over several and read back whole."""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
import zlib

import pytest
from itsdangerous import URLSafeTimedSerializer
from starlette.responses import Response

from switchyard.gateway.config import Settings
from switchyard.gateway.console.session import (
    COOKIE_NAME,
    Session,
    SessionCookies,
    chunk_name,
    cookie_value,
)

from .console_double import ConsoleDouble
from .test_console import console, csrf_of, sign_in


def _blobs(value: str) -> list[bytes]:
    """Everything a reader of the cookie could decode: the value and each of its
    dot-separated parts as text, base64 (URL-safe and standard, padded or not) and zlib
    (from any of the first 64 offsets of a decoded part)."""
    texts = [value, *value.split("."), *value.lstrip(".").split(".")]
    blobs: list[bytes] = [text.encode() for text in texts]
    for text in texts:
        padded = text + "=" * (-len(text) % 4)
        for decode in (base64.urlsafe_b64decode, base64.b64decode):
            try:
                blobs.append(decode(padded))
            except (binascii.Error, ValueError):
                pass
    for blob in list(blobs):
        for offset in range(min(64, len(blob))):
            try:
                blobs.append(zlib.decompressobj().decompress(blob[offset:]))
            except zlib.error:
                pass
    return blobs


def _revealed(value: str, secrets: list[str]) -> list[str]:
    """Which of `secrets` (or any of their dot-separated parts: a JWT's claims) can be
    read out of the cookie `value`."""
    pieces = {piece for secret in secrets for piece in (secret, *secret.split(".")) if piece}
    blobs = _blobs(value)
    return sorted(piece for piece in pieces if any(piece.encode() in b for b in blobs))


def _old_format(key: bytes, session: Session) -> str:
    """The cookie as it was made before it was encrypted: signed and readable."""
    return URLSafeTimedSerializer(key, salt="switchyard.console.session").dumps(
        [
            session.access_token,
            session.refresh_token,
            session.email,
            session.started_at,
            session.csrf_token,
        ]
    )


def _cookies(gw, ttl_s: int | None = None) -> SessionCookies:
    return SessionCookies(
        gw.settings.console_signing_key(),
        ttl_s=ttl_s or gw.settings.console_session_ttl_s,
        secure=False,
    )


def _dropped(response) -> bool:
    return any(
        value.startswith(COOKIE_NAME + "=") and "max-age=0" in value.lower()
        for value in response.headers.get_list("set-cookie")
    )


async def test_the_cookie_reveals_neither_token_nor_the_email():
    async with console() as gw:
        await sign_in(gw)
        value = gw.client.cookies.get(COOKIE_NAME, path="/ui")
        session = _cookies(gw).decode(value)
        assert session is not None and session.email == "alice@acme.test"
        assert session.refresh_token in gw.auth.refresh_tokens  # the one auth issued
        secrets = [session.access_token, session.refresh_token, session.email]
        assert _revealed(value, secrets) == []
        # The check reads the earlier, signed-only cookie: it would see them there.
        old = _old_format(gw.settings.console_signing_key(), session)
        assert set(_revealed(old, secrets)) >= set(secrets)
        # Nothing a cookie value has to be quoted for.
        assert re.fullmatch(r"[A-Za-z0-9_-]+", value)


def test_the_same_session_encrypts_differently_each_time():
    cookies = SessionCookies(b"k" * 32, ttl_s=60, secure=False)
    session = Session("access", "sy-rt-secret", "e@x.test", time.time(), "csrf")
    first, second = cookies.encode(session), cookies.encode(session)
    assert first != second
    assert cookies.decode(first) == cookies.decode(second) == session


def test_every_replica_with_the_console_secret_reads_the_cookie():
    settings = Settings(console_secret_key="shared secret of the fleet")
    one = SessionCookies(settings.console_signing_key(), ttl_s=60, secure=False)
    other = SessionCookies(settings.console_signing_key(), ttl_s=60, secure=False)
    session = Session("a", "r", "e@x.test", time.time(), "t")
    assert other.decode(one.encode(session)) == session
    stranger = SessionCookies(b"another secret", ttl_s=60, secure=False)
    assert stranger.decode(one.encode(session)) is None
    # Derived from the internal token when no console secret is set: the same on replicas.
    derived = Settings(internal_token="the fleet's internal token")
    a = SessionCookies(derived.console_signing_key(), ttl_s=60, secure=False)
    b = SessionCookies(
        Settings(internal_token="the fleet's internal token").console_signing_key(),
        ttl_s=60,
        secure=False,
    )
    assert b.decode(a.encode(session)) == session


def test_a_session_from_a_replica_whose_clock_runs_ahead_is_read():
    """Only the session's own start decides its age; a replica a few minutes ahead is
    no reason to sign its users out."""
    cookies = SessionCookies(b"k" * 32, ttl_s=3600, secure=False)
    ahead = Session("a", "r", "e@x.test", time.time() + 300, "t")
    assert cookies.decode(cookies.encode(ahead)) == ahead


def _tampered(value: str) -> list[str]:
    """The cookie with one bit changed in each part of the Fernet token (version,
    timestamp, IV, ciphertext, MAC), cut short, lengthened, or not a token at all."""
    raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))

    def flipped(at: int) -> str:
        changed = raw[:at] + bytes([raw[at] ^ 0x01]) + raw[at + 1 :]
        return base64.urlsafe_b64encode(changed).decode().rstrip("=")

    return [
        flipped(0),  # the version
        flipped(5),  # the timestamp
        flipped(12),  # the IV
        flipped(len(raw) // 2),  # the ciphertext
        flipped(len(raw) - 1),  # the MAC
        value[:-10],
        value + "AAAA",
        value[: len(value) // 2],
        "x" + value,
        "not a cookie",
        "\u00e9" + value,
        "A" * 9000,
    ]


async def test_a_tampered_cookie_is_no_session_and_is_dropped():
    async with console() as gw:
        await sign_in(gw)
        value = gw.client.cookies.get(COOKIE_NAME, path="/ui")
        for forged in _tampered(value):
            assert _cookies(gw).decode(forged) is None, forged
            gw.client.cookies.clear()
            response = await gw.client.get(
                "/ui/keys", headers={"cookie": f"{COOKIE_NAME}={forged}".encode()}
            )
            assert response.status_code == 303, forged
            assert response.headers["location"].startswith("/ui/login")
            assert _dropped(response), forged
        assert gw.auth.calls_to("/v1/auth/refresh") == []


@pytest.mark.parametrize("htmx", [False, True])
async def test_an_old_format_cookie_is_signed_out_not_a_failure(htmx):
    async with console() as gw:
        await sign_in(gw)
        session = _cookies(gw).decode(gw.client.cookies.get(COOKIE_NAME, path="/ui"))
        old = _old_format(gw.settings.console_signing_key(), session)
        gw.client.cookies.clear()
        gw.client.cookies.set(COOKIE_NAME, old, path="/ui")
        response = await gw.client.get("/ui/keys", headers={"hx-request": "true"} if htmx else {})
        if htmx:
            assert response.status_code == 204
            assert response.headers["hx-redirect"].startswith("/ui/login")
        else:
            assert response.status_code == 303
            assert response.headers["location"].startswith("/ui/login")
        assert _dropped(response)
        assert gw.auth.calls_to("/v1/auth/refresh") == []
        # Signing in again works as ever.
        gw.client.cookies.clear()
        assert (await sign_in(gw)).status_code == 303
        assert (await gw.client.get("/ui/keys")).status_code == 200


async def test_no_cookie_sets_no_cookie_on_the_way_to_sign_in():
    async with console() as gw:
        response = await gw.client.get("/ui/keys")
        assert response.status_code == 303
        assert not any(
            value.startswith(COOKIE_NAME + "=") for value in response.headers.get_list("set-cookie")
        )


async def test_a_session_past_its_lifetime_is_not_refreshed_and_its_sign_in_ends_at_auth():
    async with console() as gw:
        await sign_in(gw)
        cookies = _cookies(gw)
        session = cookies.decode(gw.client.cookies.get(COOKIE_NAME, path="/ui"))
        long_ago = time.time() - cookies.ttl_s - 1
        ended = Session(
            session.access_token,
            session.refresh_token,
            session.email,
            long_ago,
            session.csrf_token,
        )
        gw.client.cookies.set(COOKIE_NAME, cookies.encode(ended), path="/ui")
        response = await gw.client.get("/ui/keys")
        assert response.status_code == 303 and _dropped(response)
        assert gw.auth.calls_to("/v1/auth/refresh") == []
        logout = gw.auth.calls_to("/v1/auth/logout")[-1]
        assert json.loads(logout.read()) == {"refresh_token": session.refresh_token}
        assert session.refresh_token not in gw.auth.refresh_tokens  # refused from now on


async def test_signing_out_with_an_expired_access_token_still_ends_the_sign_in():
    """Auth refuses an expired access token before it reads the refresh token: the console
    sends the refresh token alone then, so the sign-in ends all the same."""
    async with console() as gw:
        await sign_in(gw)
        token = csrf_of((await gw.client.get("/ui/keys")).text)
        cookies = _cookies(gw)
        session = cookies.decode(gw.client.cookies.get(COOKIE_NAME, path="/ui"))
        expired = gw.auth.access_token(
            gw.auth.account("alice@acme.test"), exp=int(time.time()) - 60
        )
        stale = Session(
            expired, session.refresh_token, session.email, session.started_at, session.csrf_token
        )
        gw.client.cookies.set(COOKIE_NAME, cookies.encode(stale), path="/ui")
        response = await gw.client.post("/ui/logout", data={"csrftoken": token})
        assert response.status_code == 303 and _dropped(response)
        calls = gw.auth.calls_to("/v1/auth/logout")
        assert [("authorization" in call.headers) for call in calls] == [True, False]
        assert session.refresh_token not in gw.auth.refresh_tokens
        assert (await gw.client.get("/ui/keys")).status_code == 303


async def test_after_sign_out_the_sessions_refresh_token_mints_nothing():
    async with console() as gw:
        await sign_in(gw)
        token = csrf_of((await gw.client.get("/ui/keys")).text)
        session = _cookies(gw).decode(gw.client.cookies.get(COOKIE_NAME, path="/ui"))
        response = await gw.client.post("/ui/logout", data={"csrftoken": token})
        assert response.status_code == 303
        assert session.refresh_token not in gw.auth.refresh_tokens
        # A copy of the cookie taken before sign-out, once its access token has expired:
        # the refresh is refused, so it is no session.
        expired = gw.auth.access_token(
            gw.auth.account("alice@acme.test"), exp=int(time.time()) - 60
        )
        copy = Session(
            expired, session.refresh_token, session.email, session.started_at, session.csrf_token
        )
        gw.client.cookies.set(COOKIE_NAME, _cookies(gw).encode(copy), path="/ui")
        refused = await gw.client.get("/ui/keys")
        assert refused.status_code == 303 and _dropped(refused)
        assert len(gw.auth.calls_to("/v1/auth/refresh")) == 1


async def test_a_session_too_large_for_one_cookie_is_split_and_read_back_whole():
    """An access token naming a team's many allowed models makes a session larger than
    the 4,096 bytes a browser keeps in one cookie (which it would drop without a word,
    sending the user back to sign in): it is set in parts, each within that, read back
    whole on the next page, and every part is dropped at sign-out."""
    models = [f"bedrock-anthropic-claude-model-{n:03d}-v2" for n in range(101)]
    async with console(ConsoleDouble(token_claims={"allowed_models": models})) as gw:
        signed_in = await sign_in(gw)
        parts = [
            value
            for value in signed_in.headers.get_list("set-cookie")
            if value.startswith(COOKIE_NAME)
        ]
        assert len(parts) > 1 and all(len(value) < 4096 for value in parts)

        page = await gw.client.get("/ui/keys")

        assert page.status_code == 200, page.headers
        jar = {c.name: c.value for c in gw.client.cookies.jar if c.path == "/ui"}
        session = _cookies(gw).decode(cookie_value(jar))
        assert session is not None and session.email == "alice@acme.test"

        page = await gw.client.get("/ui/keys")
        signed_out = await gw.client.post("/ui/logout", data={"csrftoken": csrf_of(page.text)})
        dropped = [
            value.split("=", 1)[0]
            for value in signed_out.headers.get_list("set-cookie")
            if "max-age=0" in value.lower()
        ]
        assert set(dropped) >= {chunk_name(i) for i in range(len(parts))}


def test_a_split_session_missing_a_part_or_miscounted_is_no_session():
    cookies = SessionCookies(b"k" * 32, ttl_s=60, secure=False)
    session = Session("a" * 9000, "refresh", "a@b.test", time.time(), "csrf")
    carrier = Response()
    cookies.set(carrier, session)
    jar = dict(
        header.split(";", 1)[0].split("=", 1) for header in carrier.headers.getlist("set-cookie")
    )
    assert len(jar) >= 3 and jar[COOKIE_NAME].startswith(f"{len(jar)}*")
    assert cookies.decode(cookie_value(jar)) == session

    assert cookie_value({k: v for k, v in jar.items() if k != chunk_name(1)}) is None
    for count in ("2", "9", "x", ""):
        miscounted = {**jar, COOKIE_NAME: count + jar[COOKIE_NAME][1:]}
        assert cookies.decode(cookie_value(miscounted)) is None


async def test_a_sign_in_too_large_for_every_cookie_is_told_so_not_a_failure():
    """Beyond what the session's cookies hold, the sign-in page says why (a 400 naming the
    team's models), never a 500 and never a sign-in page coming back without a word."""
    models = [f"bedrock-anthropic-claude-model-{n:04d}-v2" for n in range(1200)]
    async with console(ConsoleDouble(token_claims={"allowed_models": models})) as gw:
        refused = await sign_in(gw)

        assert refused.status_code == 400
        assert "too large" in refused.text and "models" in refused.text
        assert not [
            value
            for value in refused.headers.get_list("set-cookie")
            if value.startswith(COOKIE_NAME)
        ]
