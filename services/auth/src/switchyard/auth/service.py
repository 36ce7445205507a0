"""The auth use cases, independent of HTTP and the CLI: users and API keys, passwords,
access and refresh tokens, revocation, and the revocation state gateways start from.

Each public method is one transaction on a session from the given factory. A change other
services must learn about (a revoked key, a disabled user, a revoked token or sign-in, a
new signing key) writes its event to the outbox in the same transaction, so the event is
published if and only if the change is committed (see `outbox.py`).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar

from sqlalchemy import inspect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from switchyard.auth import scopes as known_scopes
from switchyard.auth.keys import generate_api_key, hash_api_key, visible_prefix
from switchyard.auth.models import (
    ROLES,
    ApiKey,
    OutboxEvent,
    RefreshToken,
    RevokedToken,
    SigningKeyRecord,
    Team,
    TokenFamily,
    User,
)
from switchyard.auth.names import fold_email, look_alike_message
from switchyard.auth.passwords import PasswordHasher
from switchyard.auth.store import AuthStore
from switchyard.auth.tokens import (
    AccessClaims,
    AccessToken,
    TokenIssuer,
    generate_refresh_token,
    hash_refresh_token,
)
from switchyard.common.events import (
    MAX_JWT_LEEWAY_S,
    ApiKeyRevoked,
    ApiKeyRevokedData,
    AuthEvent,
    SigningKeyRotated,
    SigningKeyRotatedData,
    TokenFamilyRevoked,
    TokenFamilyRevokedData,
    TokenRevoked,
    TokenRevokedData,
    UserDisabled,
    UserEnabled,
    UserStatusData,
    new_id,
)
from switchyard.common.governance import LIMIT_FIELDS, Limits

E = TypeVar("E", bound=AuthEvent)

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")
_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
EVENT_SOURCE = "auth"
DEFAULT_REFRESH_TTL = timedelta(days=30)
# A user creates at most their cap of live keys within this window (see create_api_key).
KEY_CREATION_WINDOW = timedelta(days=1)


class AuthError(Exception):
    """A request the service refuses; the message is safe to show the caller."""


class InvalidInput(AuthError):
    """Input the service refuses (a bad email, role, name, scope or expiry); `param` names
    the field at fault. The API answers 400."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class DuplicateEmail(AuthError):
    """A user with this email already exists (the API answers 409)."""

    pass


class UserNotFound(AuthError):
    """No such user (in the caller's tenant); the API answers 404."""

    pass


class ApiKeyNotFound(AuthError):
    """No such API key (in the caller's tenant, or of the caller); the API answers 404."""

    pass


class KeyAlreadyRevoked(AuthError):
    """The API key was revoked: nothing about it can change any more; the API answers 409."""

    pass


class TooManyApiKeys(AuthError):
    """The user already holds as many live API keys as allowed, or created that many in
    the last 24 hours (the API answers 409)."""

    pass


class ExceedsCredential(AuthError):
    """A key or token asked for more than the credential (or user) creating it holds."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


class InvalidCredentials(AuthError):
    """The email and password do not match an enabled user with a password. One message for
    every cause (the API answers 401)."""

    def __init__(self) -> None:
        # One message for every cause, so callers cannot probe which emails exist.
        super().__init__("Incorrect email or password.")


class InvalidGrant(AuthError):
    """A refresh token that is unknown, expired, spent or revoked: one message for all."""

    def __init__(self, reused: bool = False) -> None:
        super().__init__("The refresh token is invalid, expired or revoked; sign in again.")
        self.reused = reused


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
    team_id: str | None = None


@dataclass(frozen=True)
class ApiKeyState:
    """An API key found by its id, whatever its state: its identity, whether it is revoked
    and whether its user is enabled (what a gateway checks before admitting a request
    billed to it)."""

    identity: ApiKeyIdentity
    revoked: bool
    user_active: bool


@dataclass(frozen=True)
class TokenPair:
    """What a sign-in or a refresh returns: an access token and the next refresh token."""

    access: AccessToken
    refresh_token: str
    refresh_expires_in: int
    session_id: str


@dataclass(frozen=True)
class RevocationSnapshot:
    """Everything a gateway must refuse, as of `generated_at`."""

    generated_at: datetime
    revoked_tokens: list[tuple[str, datetime]]  # (jti, expires_at)
    revoked_sessions: list[tuple[str, datetime]]  # (family id, expires_at)
    revoked_api_keys: list[str]
    disabled_users: list[str]


def printable(text: str) -> bool:
    """No control or format characters (NUL, ESC, CR/LF, tabs, bidi overrides, ...): what
    names and emails must be, so no terminal or log that prints them can be steered."""
    return text.isprintable()


def normalise_email(email: str, *, new: bool = False) -> str:
    """The email as accounts are stored and found by it (`names.fold_email`): trimmed,
    compatibility forms folded (full-width `ａｌｉｃｅ` is `alice`; `é` typed as one
    character or as `e` and a combining accent is one address) and lower-cased.

    Raises InvalidInput (param `email`) when it holds control characters, is not
    `local@domain`, or is longer than 320 characters; and, for a `new` account's email,
    when a part of it mixes scripts with look-alike letters (`аlice` with a Cyrillic `а`),
    which would read as another account's."""
    email = fold_email(email)
    if not printable(email):
        raise InvalidInput("The email address must not contain control characters.", param="email")
    if not _EMAIL.match(email) or len(email) > 320:
        raise InvalidInput(f"'{email}' is not a valid email address.", param="email")
    if new and (refusal := look_alike_message("email address", email)) is not None:
        raise InvalidInput(refusal, param="email")
    return email


def _bounded_scopes(
    requested: Sequence[str] | None, allowed: Sequence[str], default: Sequence[str]
) -> list[str]:
    """The scopes of a new key or token: `requested` (or the defaults still within
    `allowed`), refused if any is unknown or beyond `allowed`."""
    if requested is None:
        return [scope for scope in default if scope in allowed]
    unknown = sorted(set(requested) - set(known_scopes.ALL_SCOPES))
    if unknown:
        raise InvalidInput(f"Unknown scope(s): {', '.join(unknown)}.", param="scopes")
    beyond = [scope for scope in dict.fromkeys(requested) if scope not in allowed]
    if beyond:
        raise ExceedsCredential(
            f"Scope(s) {', '.join(beyond)} exceed what the creating credential or user holds "
            f"({', '.join(allowed) or 'none'}).",
            param="scopes",
        )
    # Keep the caller's order but drop repeats.
    return list(dict.fromkeys(requested))


def _validate_models(models: Sequence[str] | None) -> list[str] | None:
    """`models` (a key's, token's or team's `allowed_models`) trimmed and without repeats;
    None for None (any model). Raises InvalidInput for an empty list (it would allow no
    model: every request would answer 404) or a name that is empty, longer than 200
    characters or not printable."""
    if models is None:
        return None
    if not models:
        raise InvalidInput(
            "allowed_models is empty: it would allow no model. Name at least one, or leave "
            "it out (null) for every model.",
            param="allowed_models",
        )
    cleaned = [model.strip() for model in models]
    if any(not model or len(model) > 200 or not printable(model) for model in cleaned):
        raise InvalidInput(
            "Model names must be 1-200 printable characters.", param="allowed_models"
        )
    return list(dict.fromkeys(cleaned))


def _bounded_models(
    requested: Sequence[str] | None, limit: Sequence[str] | None
) -> list[str] | None:
    """The models of a new key or token: `requested` within `limit` (None: any model).
    Omitted under a limited credential, the key gets the credential's models."""
    models = _validate_models(requested)
    if limit is None:
        return models
    if models is None:
        return list(limit)
    beyond = [model for model in models if model not in limit]
    if beyond:
        raise ExceedsCredential(
            f"Model(s) {', '.join(beyond)} exceed the models the creating credential may use.",
            param="allowed_models",
        )
    return models


def effective_models(own: Sequence[str] | None, team: Team | None) -> list[str] | None:
    """The models a key or access token may use: its `own` list (None: any) within the
    models of `team` (None, or a team without a list: no bound), in `own`'s order. None
    only when neither restricts; an empty list when they share no model."""
    team_models = team.allowed_models if team is not None else None
    if team_models is None:
        return list(own) if own is not None else None
    if own is None:
        return list(team_models)
    return [model for model in own if model in team_models]


def credential_models(own: Sequence[str] | None, holder: User) -> list[str] | None:
    """The models an access token may use now: its `own` claim (None: any) within those of
    its `holder`'s team as it is now, which gateways bound it by at each request; what a
    key it creates may hold at most. `holder` must come with their team (RuntimeError)."""
    return effective_models(own, _loaded_team(holder))


def _check_team_models(
    models: Sequence[str], teams: Sequence[Team | None], what: str = "key"
) -> None:
    """Raise InvalidInput when none of `models` (a new key's or token's list, not empty) is
    one that `teams` (the key's and its user's) allow: a credential's models are always
    bounded by both (`effective_models`), so it could call nothing and would answer 404 to
    every request. Some beyond a team's models are kept: the credential gets those its
    teams allow, and the others should a team's list grow. `what` names the credential in
    the message."""
    if not models:
        return
    callable_models: list[str] | None = list(models)
    for team in teams:
        callable_models = effective_models(callable_models, team)
    if callable_models:
        return
    names = sorted({team.name for team in teams if team is not None})
    raise InvalidInput(
        f"None of the models {', '.join(models)} is among those team {', '.join(names)} may "
        f"use: the {what} could call no model.",
        param="allowed_models",
    )


def _loaded_team(user: User) -> Team | None:
    """The team `user` was loaded with (every user this module's store loads comes with
    it). Raises RuntimeError for a user in a team loaded without it, rather than issue a
    token that escapes the team's models."""
    if user.team_id is None:
        return None
    team = None if "team" in inspect(user).unloaded else user.team
    if team is None or team.id != user.team_id:
        raise RuntimeError("the user was loaded without their team; load them with AuthService")
    return team


def _utcnow() -> datetime:
    return datetime.now(UTC)


class AuthService:
    """The auth use cases on the database behind `sessions`: users, API keys, passwords,
    sign-in and refresh tokens, revocation and signing-key rotation.

    `reads` is the session factory of the methods that only read (default: `sessions`):
    `session_factory(db.read_only(engine))`, so that on SQLite a key lookup or a revocation
    check neither waits behind a write in progress nor holds one up.
    `passwords` hashes and checks passwords; `tokens` signs access tokens (None where nothing
    is signed, e.g. the CLI's user and key commands); `refresh_ttl` is how long a sign-in
    session's refresh tokens last; `max_api_keys_per_user` caps a user's live keys, and
    the keys they create in a day (None: no cap). Methods raise the `AuthError`
    subclasses, whose messages are safe to show the caller."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        passwords: PasswordHasher,
        tokens: TokenIssuer | None = None,
        *,
        refresh_ttl: timedelta = DEFAULT_REFRESH_TTL,
        max_api_keys_per_user: int | None = None,
        reads: async_sessionmaker[AsyncSession] | None = None,
    ) -> None:
        self._sessions = sessions
        self._reads = reads if reads is not None else sessions
        # None: no cap (the operator's own commands); the service caps what users make.
        self._max_api_keys_per_user = max_api_keys_per_user
        self._passwords = passwords
        # None where nothing signs tokens (user and key commands), so they need no signing key.
        self._tokens = tokens
        self._refresh_ttl = refresh_ttl
        # Called after a commit that wrote events, so the outbox relay publishes at once.
        self.on_events_written: Callable[[], None] = lambda: None

    @property
    def tokens(self) -> TokenIssuer:
        """The access-token issuer. Raises RuntimeError when the service was built without one."""
        if self._tokens is None:
            raise RuntimeError("this AuthService was built without a signing key")
        return self._tokens

    @property
    def sessions(self) -> async_sessionmaker[AsyncSession]:
        """The session factory of the auth database (for callers that run their own queries)."""
        return self._sessions

    @property
    def reads(self) -> async_sessionmaker[AsyncSession]:
        """The session factory for queries that only read (`reads` above)."""
        return self._reads

    # -- events ---------------------------------------------------------------------

    def _record(self, session: AsyncSession, event: AuthEvent, key: str | None) -> None:
        session.add(OutboxEvent(event_type=event.type, key=key, payload=event.model_dump_json()))

    async def _commit_with_events(self, session: AsyncSession) -> None:
        await session.commit()
        self.on_events_written()

    def _access_ttl(self) -> timedelta:
        # The CLI has no issuer; the default lifetime bounds its revocations instead.
        return self._tokens.ttl if self._tokens is not None else timedelta(minutes=15)

    # -- users ----------------------------------------------------------------------

    async def create_user(
        self,
        *,
        email: str,
        tenant: str = "default",
        role: str = "member",
        password: str | None = None,
    ) -> User:
        """Create a user in `tenant` with `role` (one of `models.ROLES`) and, when given, a
        password (hashed with Argon2); without one the user cannot sign in with a password.

        Raises:
            InvalidInput: a bad email, role, tenant (1-128 letters, digits, `.`, `_`, `-`) or an
                empty password.
            DuplicateEmail: the email is taken.
            HashingBusy: too many password hashes are already waiting."""
        email = normalise_email(email, new=True)
        if role not in ROLES:
            raise InvalidInput(f"Role must be one of: {', '.join(ROLES)}.", param="role")
        check_tenant(tenant)
        if password is not None and not password:
            raise InvalidInput("Password must not be empty.", param="password")
        password_hash = await self._passwords.hash_async(password) if password is not None else None
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
        """The user with this email, as stored exactly, else normalised (what an operator
        names an account by: one whose stored address folds to another account's, kept
        as it was by auth migration 0005, is found by its own). Raises UserNotFound, or
        InvalidInput for a malformed email."""
        folded = normalise_email(email)
        async with self._reads() as session:
            store = AuthStore(session)
            exact = email.strip()
            user = await store.user_by_email(exact) if exact != folded else None
            if user is None:
                user = await store.user_by_email(folded)
        if user is None:
            raise UserNotFound(f"No user with email {fold_email(email)}.")
        return user

    async def list_users(self, tenant: str | None = None) -> list[User]:
        """Every user (only those of `tenant` when given), oldest first."""
        async with self._reads() as session:
            return list(await AuthStore(session).users(tenant))

    async def set_disabled(
        self, user_id: str, disabled: bool, *, tenant: str | None = None
    ) -> User:
        """Disable or enable a user (only within `tenant` when given). Disabling also ends
        every sign-in of the user, so enabling them again does not revive old sessions."""
        now = _utcnow()
        async with self._sessions() as session:
            store = AuthStore(session)
            user = await _user_in(store, user_id, tenant)
            if user.disabled == disabled:
                return user
            user.disabled = disabled
            status = UserStatusData(user_id=user.id)
            if disabled:
                self._record(session, self._event(UserDisabled, user.tenant, status), user.id)
                for family in await store.active_families(user.id, now):
                    self._revoke_family(session, family, "user_disabled", now)
            else:
                self._record(session, self._event(UserEnabled, user.tenant, status), user.id)
            await self._commit_with_events(session)
            return user

    # -- API keys -------------------------------------------------------------------

    async def create_api_key(
        self,
        *,
        user_id: str,
        name: str = "default",
        scopes: Sequence[str] | None = None,
        allowed_models: Sequence[str] | None = None,
        expires_at: datetime | None = None,
        key: str | None = None,
        creator_scopes: Sequence[str] | None = None,
        creator_models: Sequence[str] | None = None,
        creator_follows_team: bool = False,
        team_id: str | None | Literal[False] = False,
        limits: Limits | None = None,
    ) -> IssuedApiKey:
        """A new key for the user; `key` fixes the secret (the dev key), else it is random.

        The key never holds more than its creator: its scopes stay within the scopes the
        user's role grants and, when given, `creator_scopes` (the creating token's); its
        models within `creator_models` when given (a key created without a model list by
        a credential limited to some models gets that list, or, with
        `creator_follows_team` (the creating token names no models of its own: it is
        bounded by its team's as they change) and that list the user's team's, follows
        the team likewise). Anything beyond raises
        ExceedsCredential; unknown scopes and bad names raise InvalidInput; a user who
        already holds the service's cap of live keys, or created that many in the last 24
        hours, raises TooManyApiKeys. `team_id` False puts the key in its user's team;
        `limits` must have been checked against the levels above
        (`Governance.create_api_key` does)."""
        name = name.strip()
        if not name or len(name) > 200 or not printable(name):
            raise InvalidInput("Key name must be 1-200 printable characters.", param="name")
        if expires_at is not None and expires_at <= _utcnow():
            raise InvalidInput("Expiry must be in the future.", param="expires_at")
        secret = key or generate_api_key()
        async with self._sessions() as session:
            store = AuthStore(session)
            # Locked (PostgreSQL), so concurrent creations count each other's keys.
            user = await store.user_by_id(user_id, for_update=True)
            if user is None:
                raise UserNotFound(f"No user with id {user_id}.")
            if user.disabled:
                raise InvalidInput(f"User {user.email} is disabled.", param="user")
            cap = self._max_api_keys_per_user
            if cap is not None:
                now = _utcnow()
                if await store.live_api_key_count(user.id, now) >= cap:
                    raise TooManyApiKeys(
                        f"User {user.email} already holds {cap} live API keys, the most "
                        "allowed; revoke one they no longer use first."
                    )
                # Revoked keys stay on record: creating and revoking in a loop is bounded
                # by the day.
                if await store.api_keys_created_since(user.id, now - KEY_CREATION_WINDOW) >= cap:
                    raise TooManyApiKeys(
                        f"User {user.email} created {cap} API keys in the last 24 hours, the "
                        "most allowed; try again later."
                    )
            allowed = [
                scope
                for scope in known_scopes.token_scopes(user.role)
                if scope in known_scopes.API_KEY_SCOPES
                and (creator_scopes is None or scope in creator_scopes)
            ]
            scope_list = _bounded_scopes(scopes, allowed, known_scopes.DEFAULT_API_KEY_SCOPES)
            models = _bounded_models(allowed_models, creator_models)
            team = _loaded_team(user)
            if models is not None:
                key_team = team
                if team_id is not False and team_id != user.team_id:
                    key_team = await session.get(Team, team_id) if team_id else None
                _check_team_models(models, (team, key_team))
            if (
                allowed_models is None
                and creator_follows_team
                and creator_models is not None
                and team is not None
                and team.allowed_models is not None
                and sorted(creator_models) == sorted(team.allowed_models)
            ):
                # No list asked for, and the creating token is bounded by the user's team
                # alone (it names no models of its own): so is the key, by the team's list
                # at every lookup (`effective_models`), not by a copy of today's. A token
                # whose own list happens to equal the team's gives the key that list: the
                # token would not follow the team either.
                models = None
            record = ApiKey(
                user_id=user.id,
                tenant=user.tenant,
                name=name,
                prefix=visible_prefix(secret),
                secret_hash=hash_api_key(secret),
                scopes=scope_list,
                allowed_models=models,
                expires_at=expires_at,
                team_id=user.team_id if team_id is False else team_id,
            )
            if limits is not None:
                for field_name in LIMIT_FIELDS:
                    setattr(record, field_name, getattr(limits, field_name))
                if limits.max_budget_usd is not None:
                    record.budget_anchor_at = _utcnow()
            await store.add_api_key(record)
            await session.commit()
            return IssuedApiKey(key=secret, record=record)

    async def list_api_keys(
        self, *, tenant: str | None = None, user_id: str | None = None
    ) -> list[ApiKey]:
        """Every API key (only the tenant's and/or the user's when given), oldest first, revoked
        ones included."""
        async with self._reads() as session:
            return list(await AuthStore(session).api_keys(tenant=tenant, user_id=user_id))

    async def revoke_api_key(
        self,
        key_id: str,
        *,
        tenant: str | None = None,
        user_id: str | None = None,
        reason: str = "operator",
    ) -> ApiKey:
        """Revoke a key (only the tenant's, or only the user's own, when those are given).
        Revoking a revoked key changes nothing; an unknown key is `ApiKeyNotFound`."""
        async with self._sessions() as session:
            record = await AuthStore(session).api_key_by_id(key_id)
            if (
                record is None
                or (tenant is not None and record.tenant != tenant)
                or (user_id is not None and record.user_id != user_id)
            ):
                raise ApiKeyNotFound(f"No API key with id {key_id}.")
            if record.revoked_at is None:
                record.revoked_at = _utcnow()
                event = self._event(
                    ApiKeyRevoked,
                    record.tenant,
                    ApiKeyRevokedData(key_id=record.id, user_id=record.user_id, reason=reason),
                )
                self._record(session, event, record.user_id)
                await self._commit_with_events(session)
            return record

    async def lookup_api_key(
        self, secret_hash: str, now: datetime | None = None
    ) -> ApiKeyIdentity | None:
        """The identity behind a key hash; None if unknown, revoked, expired or user disabled."""
        now = now or _utcnow()
        async with self._reads() as session:
            record = await AuthStore(session).api_key_by_hash(secret_hash.lower())
        if record is None or record.revoked_at is not None or record.user.disabled:
            return None
        if record.expires_at is not None and record.expires_at <= now:
            return None
        return _identity(record)

    async def api_key_state(self, key_id: str) -> ApiKeyState | None:
        """The key with id `key_id` in whatever state (revoked, expired, user disabled), or
        None if there is no such key. Reads only."""
        async with self._reads() as session:
            record = await AuthStore(session).api_key_by_id_with_user(key_id)
        if record is None:
            return None
        return ApiKeyState(
            identity=_identity(record),
            revoked=record.revoked_at is not None,
            user_active=not record.user.disabled,
        )

    async def api_key_exists(self, key: str) -> bool:
        """Whether the plaintext API key `key` is on record (in any state)."""
        async with self._reads() as session:
            return await AuthStore(session).api_key_by_hash(hash_api_key(key)) is not None

    # -- passwords and tokens -------------------------------------------------------

    async def authenticate(self, email: str, password: str) -> User:
        """The user these credentials belong to, or `InvalidCredentials` for any failure."""
        try:
            email = normalise_email(email)
        except InvalidInput:
            email = ""
        async with self._sessions() as session:
            user = await AuthStore(session).user_by_email(email) if email else None
        # Always one hash check, so timing does not reveal whether the email exists; off the
        # event loop, and with no database connection held while it runs.
        valid = await self._passwords.verify_async(user.password_hash if user else None, password)
        if user is None or not valid or user.disabled:
            raise InvalidCredentials()
        if self._passwords.needs_rehash(user.password_hash or ""):
            new_hash = await self._passwords.hash_async(password)
            async with self._sessions() as session:
                stored = await AuthStore(session).user_by_id(user.id)
                if stored is not None:
                    stored.password_hash = new_hash
                    await session.commit()
        return user

    def issue_access_token(
        self,
        user: User,
        *,
        scopes: Sequence[str] | None = None,
        allowed_models: Sequence[str] | None = None,
    ) -> AccessToken:
        """An access token outside any sign-in (the `tokens create` command), never with
        scopes beyond what the user's role grants (ExceedsCredential). It carries
        `allowed_models` when given (InvalidInput when the user's team allows none of them:
        the token could call nothing), never the team's list: gateways bound every token by
        the models its user's team allows when the request arrives (`team_models`).

        `user` must come with their team, as `user_by_email`, `user_by_id` and
        `authenticate` load them (RuntimeError otherwise)."""
        granted = known_scopes.token_scopes(user.role)
        models = _validate_models(allowed_models)
        if models is not None:
            _check_team_models(models, (_loaded_team(user),), "token")
        return self.tokens.issue(
            user_id=user.id,
            tenant=user.tenant,
            role=user.role,
            scopes=_bounded_scopes(scopes, granted, granted),
            allowed_models=models,
        )

    async def sign_in(self, user: User) -> TokenPair:
        """Start a sign-in: a new token family, its first refresh token and an access token
        (which names no models: gateways bound it by the user's team's as they are at each
        request)."""
        now = _utcnow()
        refresh_token = generate_refresh_token()
        async with self._sessions() as session:
            family = TokenFamily(
                user_id=user.id,
                tenant=user.tenant,
                created_at=now,
                expires_at=now + self._refresh_ttl,
            )
            session.add(family)
            await session.flush()
            session.add(
                RefreshToken(
                    family_id=family.id,
                    token_hash=hash_refresh_token(refresh_token),
                    created_at=now,
                    expires_at=family.expires_at,
                )
            )
            await session.commit()
        return self._pair(user, family.id, refresh_token)

    async def refresh(self, refresh_token: str) -> TokenPair:
        """Exchange a refresh token for a new pair. The presented token is spent; presenting
        a spent token again means it leaked, so the whole family is revoked."""
        now = _utcnow()
        async with self._sessions() as session:
            store = AuthStore(session)
            record = await store.refresh_token_by_hash(hash_refresh_token(refresh_token))
            if record is None:
                raise InvalidGrant()
            family = record.family
            if family.revoked_at is not None:
                raise InvalidGrant()
            if record.used_at is not None or not await store.mark_refresh_token_used(
                record.id, now
            ):
                self._revoke_family(session, family, "reuse_detected", now)
                await self._commit_with_events(session)
                raise InvalidGrant(reused=True)
            user = family.user
            if record.expires_at <= now or user.disabled:
                raise InvalidGrant()
            next_token = generate_refresh_token()
            family.expires_at = now + self._refresh_ttl
            session.add(
                RefreshToken(
                    family_id=family.id,
                    token_hash=hash_refresh_token(next_token),
                    created_at=now,
                    expires_at=family.expires_at,
                )
            )
            await session.commit()
        return self._pair(user, family.id, next_token)

    def _pair(self, user: User, family_id: str, refresh_token: str) -> TokenPair:
        access = self.tokens.issue(
            user_id=user.id,
            tenant=user.tenant,
            role=user.role,
            scopes=known_scopes.token_scopes(user.role),
            session_id=family_id,
        )
        return TokenPair(
            access=access,
            refresh_token=refresh_token,
            refresh_expires_in=int(self._refresh_ttl.total_seconds()),
            session_id=family_id,
        )

    async def logout(
        self, *, refresh_token: str | None = None, claims: AccessClaims | None = None
    ) -> None:
        """End a sign-in: revoke the family of the refresh token and of the access token's
        `sid`, and block the access token itself. Unknown tokens are ignored (RFC 7009)."""
        now = _utcnow()
        async with self._sessions() as session:
            store = AuthStore(session)
            families: dict[str, TokenFamily] = {}
            if refresh_token:
                record = await store.refresh_token_by_hash(hash_refresh_token(refresh_token))
                if record is not None:
                    families[record.family.id] = record.family
            if claims is not None:
                if claims.session_id:
                    family = await store.family_by_id(claims.session_id)
                    if family is not None and family.user_id == claims.user_id:
                        families[family.id] = family
                await self._block_access_token(session, store, claims, "logout", now)
            for family in families.values():
                if family.revoked_at is None:
                    self._revoke_family(session, family, "logout", now)
            await self._commit_with_events(session)

    async def revoke_access_token(self, claims: AccessClaims, reason: str = "operator") -> None:
        """Put one access token (by its `jti`) on the blocklist until it expires, and publish
        `auth.token_revoked`; an already expired or revoked token changes nothing. `reason` is
        recorded with the entry."""
        async with self._sessions() as session:
            await self._block_access_token(session, AuthStore(session), claims, reason, _utcnow())
            await self._commit_with_events(session)

    async def _block_access_token(
        self,
        session: AsyncSession,
        store: AuthStore,
        claims: AccessClaims,
        reason: str,
        now: datetime,
    ) -> None:
        # A gateway accepts a token for some clock skew past its expiry (as
        # `revocations` counts): until then, a revocation still matters.
        if claims.expires_at + timedelta(seconds=MAX_JWT_LEEWAY_S) <= now:
            return
        if await store.revoked_token(claims.jti) is not None:
            return
        session.add(
            RevokedToken(
                jti=claims.jti,
                user_id=claims.user_id,
                tenant=claims.tenant,
                expires_at=claims.expires_at,
                revoked_at=now,
                reason=reason,
            )
        )
        data = TokenRevokedData(
            jti=claims.jti, user_id=claims.user_id, expires_at=claims.expires_at
        )
        self._record(session, self._event(TokenRevoked, claims.tenant, data), claims.user_id)

    def _revoke_family(
        self, session: AsyncSession, family: TokenFamily, reason: str, now: datetime
    ) -> None:
        family.revoked_at = now
        family.revoked_reason = reason
        data = TokenFamilyRevokedData(
            family_id=family.id,
            user_id=family.user_id,
            reason=reason,
            # Access tokens of the family were issued before now, so none outlives this.
            expires_at=now + self._access_ttl(),
        )
        self._record(session, self._event(TokenFamilyRevoked, family.tenant, data), family.user_id)

    async def is_access_token_revoked(self, claims: AccessClaims) -> bool:
        """Whether the token's `jti` is blocklisted or its sign-in session (`sid`) was revoked."""
        async with self._reads() as session:
            store = AuthStore(session)
            if await store.revoked_token(claims.jti) is not None:
                return True
            if claims.session_id:
                family = await store.family_by_id(claims.session_id)
                return family is not None and family.revoked_at is not None
        return False

    async def user_by_id(self, user_id: str) -> User | None:
        """The user with id `user_id` (enabled or not), or None."""
        async with self._reads() as session:
            return await AuthStore(session).user_by_id(user_id)

    async def active_user(self, user_id: str) -> User | None:
        """The user if they still exist and are enabled (tokens can outlive both)."""
        async with self._reads() as session:
            user = await AuthStore(session).user_by_id(user_id)
        return user if user is not None and not user.disabled else None

    async def set_password(
        self,
        user_id: str,
        password: str,
        *,
        tenant: str | None = None,
        keep_session: str | None = None,
        reason: Literal["admin", "logout"] = "admin",
    ) -> User:
        """Make `password` the password of the user `user_id` (only within `tenant` when
        given), hashed with Argon2, and end every sign-in of theirs but `keep_session` (a
        sign-in's `sid`: the one of a user changing their own password), as a leaked
        password's sessions must end with it; `reason` is theirs in
        `auth.token_family_revoked` (`admin` when an operator or admin sets it, `logout`
        when the user signs their other sessions out). Their API keys stay valid.

        Raises:
            UserNotFound: no such user (in `tenant`).
            InvalidInput: an empty password.
            HashingBusy: too many password hashes are already waiting."""
        if not password:
            raise InvalidInput("Password must not be empty.", param="password")
        password_hash = await self._passwords.hash_async(password)
        now = _utcnow()
        async with self._sessions() as session:
            store = AuthStore(session)
            user = await _user_in(store, user_id, tenant)
            user.password_hash = password_hash
            for family in await store.active_families(user.id, now):
                if family.id != keep_session:
                    self._revoke_family(session, family, reason, now)
            await self._commit_with_events(session)
            return user

    async def ensure_password(self, email: str, password: str) -> None:
        """Make `password` the user's password unless it already is (development set-up:
        the dev user's password follows SWITCHYARD_DEV_PASSWORD). Raises UserNotFound.
        The check and the hash run in a child process (`hash_unless_matches`): embedded
        mode calls this at every start, and the serving process keeps no trace of the
        hash's memory."""
        if not password:
            raise InvalidInput("Password must not be empty.", param="password")
        async with self._sessions() as session:
            user = await AuthStore(session).user_by_email(normalise_email(email))
            if user is None:
                raise UserNotFound(f"No user with email {fold_email(email)}.")
            # Off the event loop: a Python start and an Argon2 check take a fraction of a
            # second, and a slow machine's more.
            new_hash = await asyncio.to_thread(
                self._passwords.hash_unless_matches, user.password_hash, password
            )
            if new_hash is None:
                return
            user.password_hash = new_hash
            await session.commit()

    async def ensure_user(self, *, email: str, tenant: str, role: str) -> User:
        """The user with this email, created without a password if absent."""
        try:
            return await self.user_by_email(email)
        except UserNotFound:
            try:
                return await self.create_user(email=email, tenant=tenant, role=role)
            except DuplicateEmail:  # another process created it in between
                return await self.user_by_email(email)

    # -- what gateways start from ---------------------------------------------------

    async def revocations(
        self, now: datetime | None = None, api_keys_revoked_since: datetime | None = None
    ) -> RevocationSnapshot:
        """Everything a gateway must refuse at `now` (default: the current time): revoked access
        tokens and sign-in sessions with the instant each stops mattering, revoked API keys not
        yet expired (only those revoked at or after `api_keys_revoked_since` when given: a
        gateway looks every key up at auth before it trusts it, so it needs only the keys
        an answer it may still hold predates), and disabled users."""
        now = now or _utcnow()
        access_ttl = self._access_ttl()
        # A gateway accepts a token for some clock skew past its expiry: a revocation
        # matters that much longer.
        skew = timedelta(seconds=MAX_JWT_LEEWAY_S)
        async with self._reads() as session:
            store = AuthStore(session)
            tokens = await store.revoked_tokens(now - skew)
            families = await store.families_revoked_since(now - access_ttl - skew)
            keys = await store.revoked_api_key_ids(now, api_keys_revoked_since)
            disabled = await store.disabled_user_ids()
        return RevocationSnapshot(
            generated_at=now,
            revoked_tokens=[(token.jti, token.expires_at) for token in tokens],
            revoked_sessions=[
                (family.id, family.revoked_at + access_ttl)
                for family in families
                if family.revoked_at is not None
            ],
            revoked_api_keys=keys,
            disabled_users=disabled,
        )

    async def record_signing_key(self) -> bool:
        """Note the active signing key; if it is not the one that signed last, announce the
        rotation so verifiers fetch the JWKS at once. True if an event was written."""
        key = self.tokens.signing_key
        now = _utcnow()
        async with self._sessions() as session:
            store = AuthStore(session)
            latest = await store.latest_signing_key()
            if latest is not None and latest.kid == key.kid:
                return False
            record = await store.signing_key(key.kid)
            if record is None:
                session.add(
                    SigningKeyRecord(kid=key.kid, public_jwk=key.public_jwk(), activated_at=now)
                )
            else:
                record.activated_at = now
            data = SigningKeyRotatedData(
                kid=key.kid,
                previous_kid=latest.kid if latest is not None else None,
                published_kids=self.tokens.published_kids,
            )
            self._record(session, self._event(SigningKeyRotated, "*", data), None)
            try:
                await self._commit_with_events(session)
            except IntegrityError:  # another replica recorded it at the same moment
                return False
        return True

    async def purge_expired(self, now: datetime | None = None) -> int:
        """Delete rows that can no longer matter at `now` (default: the current time): expired
        refresh tokens and blocklist entries, finished sign-ins, published events older than a
        day. Returns how many rows were deleted."""
        now = now or _utcnow()
        async with self._sessions() as session:
            # Blocklist entries and revoked sessions outlive their tokens by the clock skew
            # a gateway may accept (`revocations`).
            skew = timedelta(seconds=MAX_JWT_LEEWAY_S)
            removed = await AuthStore(session).purge(now - skew, now - self._access_ttl() - skew)
            await session.commit()
        return removed

    @staticmethod
    def _event(event_class: type[E], tenant: str, data: Any) -> E:
        return event_class(source=EVENT_SOURCE, tenant=tenant, request_id=new_id(), data=data)


# The longest a key may be made to last (ten years); longer, ask for no expiry.
MAX_EXPIRY_DAYS = 3650


async def _user_in(store: AuthStore, user_id: str, tenant: str | None) -> User:
    """The user `user_id` (only within `tenant` when given), with their team. Raises
    UserNotFound otherwise: another tenant's user is answered as one that does not
    exist."""
    user = await store.user_by_id(user_id)
    if user is None or (tenant is not None and user.tenant != tenant):
        raise UserNotFound(f"No user with id {user_id}.")
    return user


def check_tenant(tenant: str) -> None:
    """Raise InvalidInput (param `tenant`) unless `tenant` is a tenant name: 1 to 128
    letters, digits, `.`, `_` or `-`, starting with a letter or digit."""
    if not _TENANT.match(tenant):
        raise InvalidInput("Tenant must be 1-128 letters, digits, '.', '_' or '-'.", param="tenant")


def expiry_in_days(days: int | None) -> datetime | None:
    """The UTC instant `days` days from now, or None for None (no expiry). Raises InvalidInput
    (param `expires_in_days`) unless `days` is from 1 to `MAX_EXPIRY_DAYS`."""
    if days is None:
        return None
    if not 0 < days <= MAX_EXPIRY_DAYS:
        raise InvalidInput(
            f"Expiry must be from 1 to {MAX_EXPIRY_DAYS} days (for none, leave it out).",
            param="expires_in_days",
        )
    return datetime.now(UTC) + timedelta(days=days)


def _identity(record: ApiKey) -> ApiKeyIdentity:
    """What a gateway knows of a key (its record, loaded with its user and team)."""
    # A key never outlives a demotion: it keeps only what the user's role still grants.
    granted = known_scopes.token_scopes(record.user.role)
    return ApiKeyIdentity(
        key_id=record.id,
        user_id=record.user_id,
        tenant=record.tenant,
        role=record.user.role,
        scopes=[scope for scope in record.scopes if scope in granted],
        # A team's change of models reaches its keys at their next lookup. Bounded by the
        # key's team and by its user's (a key an admin put in no team, or another one, does
        # not escape the models of the team its user is in).
        allowed_models=effective_models(
            effective_models(record.allowed_models, record.team), _loaded_team(record.user)
        ),
        expires_at=record.expires_at,
        team_id=record.team_id,
    )
