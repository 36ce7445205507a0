"""The auth use cases, independent of HTTP and the CLI: create users and API keys, check
passwords, issue access tokens and resolve an API key hash to an identity.

Each public method is one transaction on a session from the given factory.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker

from switchyard.auth import scopes as known_scopes
from switchyard.auth.keys import generate_api_key, hash_api_key, visible_prefix
from switchyard.auth.models import ROLES, ApiKey, User
from switchyard.auth.passwords import PasswordHasher
from switchyard.auth.store import AuthStore
from switchyard.auth.tokens import AccessToken, TokenIssuer

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class AuthError(Exception):
    """A request the service refuses; the message is safe to show the caller."""


class InvalidInput(AuthError):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class DuplicateEmail(AuthError):
    pass


class UserNotFound(AuthError):
    pass


class InvalidCredentials(AuthError):
    def __init__(self) -> None:
        # One message for every cause, so callers cannot probe which emails exist.
        super().__init__("Incorrect email or password.")


@dataclass(frozen=True)
class IssuedApiKey:
    """A new key: `key` is the only copy of the secret and is shown exactly once."""

    key: str
    record: ApiKey


@dataclass(frozen=True)
class ApiKeyIdentity:
    """Who an API key belongs to and what it may do; what the gateway caches."""

    key_id: str
    user_id: str
    tenant: str
    role: str
    scopes: list[str]
    allowed_models: list[str] | None
    expires_at: datetime | None


def normalise_email(email: str) -> str:
    email = email.strip().lower()
    if not _EMAIL.match(email) or len(email) > 320:
        raise InvalidInput(f"'{email}' is not a valid email address.", param="email")
    return email


def _validate_scopes(requested: Sequence[str] | None) -> list[str]:
    if requested is None:
        return list(known_scopes.DEFAULT_API_KEY_SCOPES)
    unknown = sorted(set(requested) - set(known_scopes.API_KEY_SCOPES))
    if unknown:
        raise InvalidInput(
            f"Unknown scope(s): {', '.join(unknown)}. "
            f"API keys may have: {', '.join(known_scopes.API_KEY_SCOPES)}.",
            param="scopes",
        )
    # Keep the caller's order but drop repeats.
    return list(dict.fromkeys(requested))


class AuthService:
    def __init__(
        self,
        sessions: async_sessionmaker,
        passwords: PasswordHasher,
        tokens: TokenIssuer | None = None,
    ) -> None:
        self._sessions = sessions
        self._passwords = passwords
        # None where nothing signs tokens (user and key commands), so they need no signing key.
        self._tokens = tokens

    @property
    def tokens(self) -> TokenIssuer:
        if self._tokens is None:
            raise RuntimeError("this AuthService was built without a signing key")
        return self._tokens

    async def create_user(
        self,
        *,
        email: str,
        tenant: str = "default",
        role: str = "member",
        password: str | None = None,
    ) -> User:
        email = normalise_email(email)
        if role not in ROLES:
            raise InvalidInput(f"Role must be one of: {', '.join(ROLES)}.", param="role")
        if not _TENANT.match(tenant):
            raise InvalidInput(
                "Tenant must be 1-128 letters, digits, '.', '_' or '-'.", param="tenant"
            )
        if password is not None and not password:
            raise InvalidInput("Password must not be empty.", param="password")
        password_hash = self._passwords.hash(password) if password is not None else None
        async with self._sessions() as session:
            store = AuthStore(session)
            if await store.user_by_email(email) is not None:
                raise DuplicateEmail(f"A user with email {email} already exists.")
            user = User(email=email, tenant=tenant, role=role, password_hash=password_hash)
            try:
                await store.add_user(user)
                await session.commit()
            except IntegrityError as exc:  # created concurrently since the check above
                raise DuplicateEmail(f"A user with email {email} already exists.") from exc
            return user

    async def user_by_email(self, email: str) -> User:
        async with self._sessions() as session:
            user = await AuthStore(session).user_by_email(normalise_email(email))
        if user is None:
            raise UserNotFound(f"No user with email {email.strip().lower()}.")
        return user

    async def set_disabled(self, user_id: str, disabled: bool) -> None:
        async with self._sessions() as session:
            user = await AuthStore(session).user_by_id(user_id)
            if user is None:
                raise UserNotFound(f"No user with id {user_id}.")
            user.disabled = disabled
            await session.commit()

    async def create_api_key(
        self,
        *,
        user_id: str,
        name: str = "default",
        scopes: Sequence[str] | None = None,
        allowed_models: Sequence[str] | None = None,
        expires_at: datetime | None = None,
        key: str | None = None,
    ) -> IssuedApiKey:
        """A new key for the user; `key` fixes the secret (the dev key), else it is random."""
        scope_list = _validate_scopes(scopes)
        name = name.strip()
        if not name or len(name) > 200:
            raise InvalidInput("Key name must be 1-200 characters.", param="name")
        if expires_at is not None and expires_at <= datetime.now(UTC):
            raise InvalidInput("Expiry must be in the future.", param="expires_at")
        secret = key or generate_api_key()
        async with self._sessions() as session:
            store = AuthStore(session)
            user = await store.user_by_id(user_id)
            if user is None:
                raise UserNotFound(f"No user with id {user_id}.")
            if user.disabled:
                raise InvalidInput(f"User {user.email} is disabled.", param="user")
            record = ApiKey(
                user_id=user.id,
                tenant=user.tenant,
                name=name,
                prefix=visible_prefix(secret),
                secret_hash=hash_api_key(secret),
                scopes=scope_list,
                allowed_models=list(allowed_models) if allowed_models is not None else None,
                expires_at=expires_at,
            )
            await store.add_api_key(record)
            await session.commit()
            return IssuedApiKey(key=secret, record=record)

    async def revoke_api_key(self, key_id: str) -> None:
        async with self._sessions() as session:
            record = await session.get(ApiKey, key_id)
            if record is not None and record.revoked_at is None:
                record.revoked_at = datetime.now(UTC)
                await session.commit()

    async def authenticate(self, email: str, password: str) -> User:
        """The user these credentials belong to, or `InvalidCredentials` for any failure."""
        try:
            email = normalise_email(email)
        except InvalidInput:
            email = ""
        async with self._sessions() as session:
            user = await AuthStore(session).user_by_email(email) if email else None
            # Always run one hash check, so timing does not reveal whether the email exists.
            valid = self._passwords.verify(user.password_hash if user else None, password)
            if user is None or not valid or user.disabled:
                raise InvalidCredentials()
            if self._passwords.needs_rehash(user.password_hash or ""):
                user.password_hash = self._passwords.hash(password)
                await session.commit()
            return user

    def issue_access_token(self, user: User) -> AccessToken:
        return self.tokens.issue(
            user_id=user.id,
            tenant=user.tenant,
            role=user.role,
            scopes=known_scopes.USER_TOKEN_SCOPES,
        )

    async def active_user(self, user_id: str) -> User | None:
        """The user if they still exist and are enabled (tokens can outlive both)."""
        async with self._sessions() as session:
            user = await AuthStore(session).user_by_id(user_id)
        return user if user is not None and not user.disabled else None

    async def lookup_api_key(
        self, secret_hash: str, now: datetime | None = None
    ) -> ApiKeyIdentity | None:
        """The identity behind a key hash; None if unknown, revoked, expired or user disabled."""
        now = now or datetime.now(UTC)
        async with self._sessions() as session:
            record = await AuthStore(session).api_key_by_hash(secret_hash.lower())
        if record is None or record.revoked_at is not None or record.user.disabled:
            return None
        if record.expires_at is not None and record.expires_at <= now:
            return None
        return ApiKeyIdentity(
            key_id=record.id,
            user_id=record.user_id,
            tenant=record.tenant,
            role=record.user.role,
            scopes=list(record.scopes),
            allowed_models=list(record.allowed_models)
            if record.allowed_models is not None
            else None,
            expires_at=record.expires_at,
        )

    async def ensure_user(self, *, email: str, tenant: str, role: str) -> User:
        """The user with this email, created without a password if absent."""
        try:
            return await self.user_by_email(email)
        except UserNotFound:
            try:
                return await self.create_user(email=email, tenant=tenant, role=role)
            except DuplicateEmail:  # another process created it in between
                return await self.user_by_email(email)

    async def api_key_exists(self, key: str) -> bool:
        async with self._sessions() as session:
            return await AuthStore(session).api_key_by_hash(hash_api_key(key)) is not None


def expiry_in_days(days: int | None) -> datetime | None:
    if days is None:
        return None
    if days <= 0:
        raise InvalidInput("Expiry must be a positive number of days.", param="expires_in_days")
    return datetime.now(UTC) + timedelta(days=days)
