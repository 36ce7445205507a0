"""The console's session: the auth service's access and refresh tokens of a signed-in
user, in one HttpOnly, SameSite=Lax cookie (Secure outside development), signed and
timestamped with itsdangerous so it expires after `console_session_ttl_s` whatever the
tokens say.

The signature only keeps the cookie from being altered or kept past its lifetime; who
the user is, is decided by the access token inside it, verified like any API caller's
(RS256 against auth's JWKS, revocations included).

The session also carries the CSRF token issued at sign-in. While a session lasts, the
console's CSRF layer (asgi-csrf, a signed double-submit token) is shown that token in place
of whatever CSRF cookie the browser sent, so the token is bound to the session: a CSRF
cookie planted by somebody able to set cookies for this host (a sibling subdomain, a
plain-http response) neither replaces it nor opens the session's forms to its owner."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeSerializer, URLSafeTimedSerializer
from starlette.responses import Response

COOKIE_NAME = "switchyard_console"
COOKIE_PATH = "/ui"
# The CSRF layer's double-submit cookie (asgi-csrf), under the same path.
CSRF_COOKIE = "switchyard_csrf"
# asgi-csrf's signing namespace (its itsdangerous salt) for the console's tokens.
CSRF_NAMESPACE = "switchyard.console.csrf"
_SALT = "switchyard.console.session"


@dataclass(frozen=True)
class Session:
    """A signed-in user: their tokens, their email (for display), when they signed in
    (epoch seconds; the session ends `ttl_s` after it, refreshes included) and the CSRF
    token the session's forms carry (`SessionCookies.new_csrf_token`)."""

    access_token: str
    refresh_token: str
    email: str
    started_at: float
    csrf_token: str


class SessionCookies:
    """Encodes sessions into the cookie value and back; `secure` adds the Secure flag.
    `key` signs the session cookie and, as `csrf_secret` (its hex), the CSRF tokens."""

    def __init__(self, key: bytes, *, ttl_s: int, secure: bool) -> None:
        self._serializer = URLSafeTimedSerializer(key, salt=_SALT)
        self.csrf_secret = key.hex()
        self._csrf_signer = URLSafeSerializer(self.csrf_secret)
        self.ttl_s = ttl_s
        self.secure = secure

    def new_csrf_token(self) -> str:
        """A fresh CSRF token in the form asgi-csrf issues and verifies: a random string
        signed with itsdangerous' `URLSafeSerializer(csrf_secret)`, salted with
        `CSRF_NAMESPACE`."""
        return self._csrf_signer.dumps(secrets.token_hex(16), salt=CSRF_NAMESPACE)

    def encode(self, session: Session) -> str:
        """The signed, timestamped cookie value for `session` (itsdangerous, URL-safe)."""
        return self._serializer.dumps(
            [
                session.access_token,
                session.refresh_token,
                session.email,
                session.started_at,
                session.csrf_token,
            ]
        )

    def decode(self, value: str | None) -> Session | None:
        """The session in a cookie value; None if absent, altered, malformed or expired (a
        cookie from before sessions carried their CSRF token is malformed: sign in again)."""
        if not value:
            return None
        try:
            fields = self._serializer.loads(value, max_age=self.ttl_s)
        except BadSignature:  # also SignatureExpired
            return None
        if (
            not isinstance(fields, list)
            or len(fields) != 5
            or not all(isinstance(field, str) for field in (*fields[:3], fields[4]))
            or not isinstance(fields[3], int | float)
            or not fields[4]
        ):
            return None
        session = Session(*fields)
        if session.started_at + self.ttl_s <= time.time():
            return None
        return session

    def set(self, response: Response, session: Session) -> None:
        """Set the session cookie on `response`: HttpOnly, SameSite=Lax, expiring when the
        session ends (at least one second)."""
        remaining = max(1, int(session.started_at + self.ttl_s - time.time()))
        response.set_cookie(
            COOKIE_NAME,
            self.encode(session),
            max_age=remaining,
            path=COOKIE_PATH,
            httponly=True,
            samesite="lax",
            secure=self.secure,
        )

    def set_csrf_token(self, response: Response, session: Session) -> None:
        """Set the CSRF cookie on `response` to the session's token, as asgi-csrf would set
        it (not HttpOnly, SameSite=Lax, for the browser's session). Forms are checked
        against the session's token whatever this cookie holds; setting it keeps the
        browser's cookie the same as what its pages carry."""
        response.set_cookie(
            CSRF_COOKIE, session.csrf_token, path=COOKIE_PATH, samesite="lax", secure=self.secure
        )

    def drop_csrf_token(self, response: Response) -> None:
        """Delete the CSRF cookie on `response` (sign-out: the ended session's token is not
        kept as the next visitor's)."""
        response.delete_cookie(CSRF_COOKIE, path=COOKIE_PATH, samesite="lax", secure=self.secure)

    def clear(self, response: Response) -> None:
        """Delete the session cookie on `response` (sign-out)."""
        response.delete_cookie(
            COOKIE_NAME, path=COOKIE_PATH, httponly=True, samesite="lax", secure=self.secure
        )
