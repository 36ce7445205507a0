"""The console's session: the auth service's access and refresh tokens of a signed-in
user, in one HttpOnly, SameSite=Lax cookie (Secure outside development), encrypted and
authenticated with Fernet (AES-128-CBC and HMAC-SHA256, from `cryptography`) under a key
derived from the console's secret, so every replica reads every replica's cookies. The
session ends `console_session_ttl_s` after sign-in whatever the tokens say.

The cookie is a bearer credential for the console until then, but it gives away nothing
inside it: whoever copies it (a log, a proxy, a shared machine) cannot read the refresh
token to mint access tokens at auth, nor the access token or the email. Altering it, or a
cookie of an earlier format (itsdangerous' signed, readable value), is no session.

Who the user is, is decided by the access token inside it, verified like any API caller's
(RS256 against auth's JWKS, revocations included).

A session too large for one cookie (an access token naming many allowed models) is
split over several: browsers keep no cookie over 4,096 bytes, and would silently drop
it, sending the user back to the sign-in page. The first cookie says how many there are
(`<count>*<first part>`, `*` being no character of a Fernet token); a session that fits
in one is one cookie, as it always was (`cookie_value` reassembles either).

The session also carries the CSRF token issued at sign-in. While a session lasts, the
console's CSRF layer (asgi-csrf, a signed double-submit token) is shown that token in place
of whatever CSRF cookie the browser sent, so the token is bound to the session: a CSRF
cookie planted by somebody able to set cookies for this host (a sibling subdomain, a
plain-http response) neither replaces it nor opens the session's forms to its owner."""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from itsdangerous import URLSafeSerializer
from starlette.responses import Response

COOKIE_NAME = "switchyard_console"
COOKIE_PATH = "/ui"
# The CSRF layer's double-submit cookie (asgi-csrf), under the same path.
CSRF_COOKIE = "switchyard_csrf"
# asgi-csrf's signing namespace (its itsdangerous salt) for the console's tokens.
CSRF_NAMESPACE = "switchyard.console.csrf"
# HKDF's label for the session cookie's key: a key of its own, whatever else the console
# secret keys (the CSRF tokens).
_KEY_INFO = b"switchyard.console.session.fernet"
# Browsers keep no cookie over 4096 bytes (RFC 6265 6.1: at least that, name and
# attributes included): a session is cut into parts of at most `CHUNK_CHARS` characters,
# at most `MAX_CHUNKS` of them (about 22 KB, leaving a third of the 32 KiB a request's
# head may take to the browser's other headers and cookies).
CHUNK_CHARS = 3800
MAX_CHUNKS = 6
_MAX_VALUE = CHUNK_CHARS * MAX_CHUNKS
_COUNT_SEPARATOR = "*"


def chunk_name(index: int) -> str:
    """The name of the session cookie holding part `index` (0: the first)."""
    return COOKIE_NAME if index == 0 else f"{COOKIE_NAME}.{index}"


def cookie_value(cookies: Mapping[str, str]) -> str | None:
    """The session cookie's value as `SessionCookies.encode` made it, from the cookies a
    request sent (name to value): one cookie's value, or the parts the first one counts
    joined; None when there is none, or a part is missing or the count is not one."""
    first = cookies.get(COOKIE_NAME)
    if first is None or _COUNT_SEPARATOR not in first:
        return first
    count, _, head = first.partition(_COUNT_SEPARATOR)
    if not count.isdigit() or not 2 <= int(count) <= MAX_CHUNKS:
        return None
    parts = [head]
    for index in range(1, int(count)):
        part = cookies.get(chunk_name(index))
        if part is None:
            return None
        parts.append(part)
    return "".join(parts)


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


def _fernet_key(key: bytes) -> bytes:
    """The session cookie's Fernet key (32 bytes, URL-safe base64): HKDF-SHA256 of the
    console secret, which may be any string an operator set."""
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_KEY_INFO).derive(key)
    return base64.urlsafe_b64encode(derived)


class SessionTooLarge(ValueError):
    """A session larger than `MAX_CHUNKS` cookies hold (an access token naming thousands
    of allowed models)."""


class SessionCookies:
    """Encodes sessions into the cookie value and back; `secure` adds the Secure flag.
    `key` is the console secret: the session cookie is encrypted under a key derived from
    it, and the CSRF tokens are signed with its hex (`csrf_secret`)."""

    def __init__(self, key: bytes, *, ttl_s: int, secure: bool) -> None:
        self._fernet = Fernet(_fernet_key(key))
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
        """The encrypted cookie value for `session`: a Fernet token without its base64
        padding (`=` would make the cookie a quoted string)."""
        fields = [
            session.access_token,
            session.refresh_token,
            session.email,
            session.started_at,
            session.csrf_token,
        ]
        token = self._fernet.encrypt(json.dumps(fields, separators=(",", ":")).encode())
        return token.decode("ascii").rstrip("=")

    def decode(self, value: str | None) -> Session | None:
        """The session in a cookie value; None if absent, altered, of another format or key,
        or ended."""
        session = self._open(value)
        if session is None or self._ended(session):
            return None
        return session

    def ended(self, value: str | None) -> Session | None:
        """The session in a genuine cookie value whose lifetime is over (to end its sign-in
        at auth); None for anything else, a live session included."""
        session = self._open(value)
        return session if session is not None and self._ended(session) else None

    def _ended(self, session: Session) -> bool:
        return session.started_at + self.ttl_s <= time.time()

    def _open(self, value: str | None) -> Session | None:
        """Decrypt and check a cookie value, however old the session in it. Fernet's own
        age check is not used: it refuses a token stamped more than a minute ahead of this
        replica's clock, and the session's age is `started_at`'s, inside the token."""
        if not value or len(value) > _MAX_VALUE:
            return None
        try:
            plain = self._fernet.decrypt(value + "=" * (-len(value) % 4))
            fields = json.loads(plain)
        except (InvalidToken, ValueError):
            # ValueError: a value that is not ASCII (base64), or not JSON once decrypted.
            return None
        if (
            not isinstance(fields, list)
            or len(fields) != 5
            or not all(isinstance(field, str) for field in (*fields[:3], fields[4]))
            or isinstance(fields[3], bool)
            or not isinstance(fields[3], int | float)
            or not fields[4]
        ):
            return None
        return Session(*fields)

    def set(self, response: Response, session: Session) -> None:
        """Set the session cookie on `response`, in as many parts as it needs (module
        docstring): HttpOnly, SameSite=Lax, expiring when the session ends (at least one
        second). Raises SessionTooLarge, setting nothing, for one beyond `MAX_CHUNKS`."""
        remaining = max(1, int(session.started_at + self.ttl_s - time.time()))
        value = self.encode(session)
        parts = [value[i : i + CHUNK_CHARS] for i in range(0, len(value), CHUNK_CHARS)]
        if len(parts) > MAX_CHUNKS:
            raise SessionTooLarge(f"a console session of {len(value)} characters is too large")
        if len(parts) > 1:
            parts[0] = f"{len(parts)}{_COUNT_SEPARATOR}{parts[0]}"
        for index, part in enumerate(parts):
            response.set_cookie(
                chunk_name(index),
                part,
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

    def clear(self, response: Response, sent: Mapping[str, str] | None = None) -> None:
        """Delete the session cookie on `response` (sign-out): its first part, and the
        other parts among the cookies `sent` (every possible one when not given)."""
        for index in range(MAX_CHUNKS):
            name = chunk_name(index)
            if index == 0 or sent is None or name in sent:
                response.delete_cookie(
                    name, path=COOKIE_PATH, httponly=True, samesite="lax", secure=self.secure
                )
