"""The console's session: the auth service's access and refresh tokens of a signed-in
user, in one HttpOnly, SameSite=Lax cookie (Secure outside development), signed and
timestamped with itsdangerous so it expires after `console_session_ttl_s` whatever the
tokens say.

The signature only keeps the cookie from being altered or kept past its lifetime; who
the user is, is decided by the access token inside it, verified like any API caller's
(RS256 against auth's JWKS, revocations included)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.responses import Response

COOKIE_NAME = "switchyard_console"
COOKIE_PATH = "/ui"
# The CSRF layer's double-submit cookie (asgi-csrf), under the same path.
CSRF_COOKIE = "switchyard_csrf"
_SALT = "switchyard.console.session"


@dataclass(frozen=True)
class Session:
    """A signed-in user: their tokens, their email (for display) and when they signed in
    (epoch seconds; the session ends `ttl_s` after it, refreshes included)."""

    access_token: str
    refresh_token: str
    email: str
    started_at: float


class SessionCookies:
    """Encodes sessions into the cookie value and back; `secure` adds the Secure flag."""

    def __init__(self, key: bytes, *, ttl_s: int, secure: bool) -> None:
        self._serializer = URLSafeTimedSerializer(key, salt=_SALT)
        self.ttl_s = ttl_s
        self.secure = secure

    def encode(self, session: Session) -> str:
        """The signed, timestamped cookie value for `session` (itsdangerous, URL-safe)."""
        return self._serializer.dumps(
            [session.access_token, session.refresh_token, session.email, session.started_at]
        )

    def decode(self, value: str | None) -> Session | None:
        """The session in a cookie value; None if absent, altered, malformed or expired."""
        if not value:
            return None
        try:
            fields = self._serializer.loads(value, max_age=self.ttl_s)
        except BadSignature:  # also SignatureExpired
            return None
        if (
            not isinstance(fields, list)
            or len(fields) != 4
            or not all(isinstance(field, str) for field in fields[:3])
            or not isinstance(fields[3], int | float)
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

    def drop_csrf_token(self, response: Response) -> None:
        """Delete the CSRF cookie on `response`, so that the next page issues a new token
        (at sign-in: a token known before it, which anybody able to plant a cookie could
        have set, then protects nothing of the session)."""
        response.delete_cookie(CSRF_COOKIE, path=COOKIE_PATH, samesite="lax", secure=self.secure)

    def clear(self, response: Response) -> None:
        """Delete the session cookie on `response` (sign-out)."""
        response.delete_cookie(
            COOKIE_NAME, path=COOKIE_PATH, httponly=True, samesite="lax", secure=self.secure
        )
