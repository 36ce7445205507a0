"""Repository over an `AsyncSession`: the only module that writes SQL for the auth tables.

It neither commits nor decides policy; `service.AuthService` owns the transaction and the
rules (what counts as revoked, expired or disabled).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload

from switchyard.auth.models import (
    ApiKey,
    OutboxEvent,
    RefreshToken,
    RevokedToken,
    SigningKeyRecord,
    TokenFamily,
    User,
)


class AuthStore:
    """Queries and writes of the auth tables on one `AsyncSession`. Methods flush but never
    commit: the caller owns the transaction. Times are timezone-aware UTC datetimes."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    # -- users ----------------------------------------------------------------------

    async def add_user(self, user: User) -> User:
        """Insert `user` (flushed, so its id and defaults are set) and return it. Raises
        IntegrityError for a taken email."""
        self.session.add(user)
        await self.session.flush()
        return user

    async def user_by_id(self, user_id: str, *, for_update: bool = False) -> User | None:
        """The user with id `user_id` and their team, or None; `for_update` locks the
        user's row until the transaction ends (PostgreSQL; SQLite serialises writers)."""
        return await self.session.get(
            User,
            user_id,
            options=[joinedload(User.team)],
            with_for_update={"of": User} if for_update else None,
        )

    async def user_by_email(self, email: str) -> User | None:
        """The user with this (already normalised) email and their team, or None."""
        result = await self.session.execute(
            select(User).options(joinedload(User.team)).where(User.email == email)
        )
        return result.scalar_one_or_none()

    async def users(self, tenant: str | None = None) -> Sequence[User]:
        """Every user (only those of `tenant` when given), oldest first."""
        query = select(User).order_by(User.created_at, User.id)
        if tenant is not None:
            query = query.where(User.tenant == tenant)
        return (await self.session.execute(query)).scalars().all()

    async def disabled_user_ids(self) -> list[str]:
        """The ids of every disabled user."""
        result = await self.session.execute(select(User.id).where(User.disabled.is_(True)))
        return list(result.scalars())

    # -- API keys -------------------------------------------------------------------

    async def add_api_key(self, api_key: ApiKey) -> ApiKey:
        """Insert `api_key` (flushed, so its id and defaults are set) and return it."""
        self.session.add(api_key)
        await self.session.flush()
        return api_key

    async def api_key_by_hash(self, secret_hash: str) -> ApiKey | None:
        """The key with this hash, its user and its team, whatever its state."""
        result = await self.session.execute(
            select(ApiKey)
            .options(joinedload(ApiKey.user).joinedload(User.team), joinedload(ApiKey.team))
            .where(ApiKey.secret_hash == secret_hash)
        )
        return result.scalar_one_or_none()

    async def api_key_by_id(self, key_id: str) -> ApiKey | None:
        """The API key with id `key_id` (any state), or None."""
        return await self.session.get(ApiKey, key_id)

    async def api_key_by_id_with_user(self, key_id: str) -> ApiKey | None:
        """The API key with id `key_id` (any state), its user and its team, or None."""
        result = await self.session.execute(
            select(ApiKey)
            .options(joinedload(ApiKey.user).joinedload(User.team), joinedload(ApiKey.team))
            .where(ApiKey.id == key_id)
        )
        return result.scalar_one_or_none()

    async def api_keys(
        self, *, tenant: str | None = None, user_id: str | None = None
    ) -> Sequence[ApiKey]:
        """Every API key (only the tenant's and/or the user's when given), oldest first, revoked
        ones included."""
        query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
        if tenant is not None:
            query = query.where(ApiKey.tenant == tenant)
        if user_id is not None:
            query = query.where(ApiKey.user_id == user_id)
        return (await self.session.execute(query)).scalars().all()

    async def live_api_key_count(self, user_id: str, now: datetime) -> int:
        """How many of the user's keys are neither revoked nor expired at `now`."""
        query = (
            select(func.count())
            .select_from(ApiKey)
            .where(
                ApiKey.user_id == user_id,
                ApiKey.revoked_at.is_(None),
                or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now),
            )
        )
        return int((await self.session.execute(query)).scalar_one())

    async def api_keys_created_since(self, user_id: str, since: datetime) -> int:
        """How many keys the user created at or after `since`, in any state."""
        query = (
            select(func.count())
            .select_from(ApiKey)
            .where(ApiKey.user_id == user_id, ApiKey.created_at >= since)
        )
        return int((await self.session.execute(query)).scalar_one())

    async def revoked_api_key_ids(
        self, now: datetime, revoked_since: datetime | None = None
    ) -> list[str]:
        """Revoked keys that would otherwise still be valid (not yet expired), only those
        revoked at or after `revoked_since` when it is given."""
        query = select(ApiKey.id).where(
            ApiKey.revoked_at.is_not(None),
            or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now),
        )
        if revoked_since is not None:
            query = query.where(ApiKey.revoked_at >= revoked_since)
        result = await self.session.execute(query)
        return list(result.scalars())

    # -- refresh-token families -----------------------------------------------------

    async def add(self, *rows: object) -> None:
        """Insert `rows` (any mapped objects) and flush."""
        self.session.add_all(rows)
        await self.session.flush()

    async def refresh_token_by_hash(self, token_hash: str) -> RefreshToken | None:
        """The refresh token with this SHA-256 hash (hex), with its family, the family's
        user and the user's team loaded; None if unknown."""
        result = await self.session.execute(
            select(RefreshToken)
            .options(
                joinedload(RefreshToken.family).joinedload(TokenFamily.user).joinedload(User.team)
            )
            .where(RefreshToken.token_hash == token_hash)
        )
        return result.scalar_one_or_none()

    async def mark_refresh_token_used(self, token_id: str, now: datetime) -> bool:
        """Spend the token; False if it was already spent (possibly a moment ago, by a
        concurrent request): one atomic UPDATE, so exactly one caller wins on any database."""
        result = await self.session.execute(
            update(RefreshToken)
            .where(RefreshToken.id == token_id, RefreshToken.used_at.is_(None))
            .values(used_at=now)
            .execution_options(synchronize_session=False)
        )
        return cast(CursorResult[Any], result).rowcount == 1

    async def family_by_id(self, family_id: str) -> TokenFamily | None:
        """The refresh-token family (sign-in session) `family_id`, or None."""
        return await self.session.get(TokenFamily, family_id)

    async def active_families(self, user_id: str, now: datetime) -> Sequence[TokenFamily]:
        """The user's sign-in sessions neither revoked nor expired at `now`."""
        result = await self.session.execute(
            select(TokenFamily).where(
                TokenFamily.user_id == user_id,
                TokenFamily.revoked_at.is_(None),
                TokenFamily.expires_at > now,
            )
        )
        return result.scalars().all()

    async def families_revoked_since(self, since: datetime) -> Sequence[TokenFamily]:
        """The sign-in sessions revoked at or after `since`."""
        result = await self.session.execute(
            select(TokenFamily).where(TokenFamily.revoked_at >= since)
        )
        return result.scalars().all()

    # -- access-token blocklist -----------------------------------------------------

    async def revoked_token(self, jti: str) -> RevokedToken | None:
        """The blocklist entry of access token `jti`, or None if it is not revoked."""
        return await self.session.get(RevokedToken, jti)

    async def revoked_tokens(self, now: datetime) -> Sequence[RevokedToken]:
        """The blocklist entries of access tokens that have not expired at `now`."""
        result = await self.session.execute(
            select(RevokedToken).where(RevokedToken.expires_at > now)
        )
        return result.scalars().all()

    # -- signing keys ---------------------------------------------------------------

    async def latest_signing_key(self) -> SigningKeyRecord | None:
        """The signing key recorded as activated last, or None before the first."""
        result = await self.session.execute(
            select(SigningKeyRecord).order_by(SigningKeyRecord.activated_at.desc()).limit(1)
        )
        return result.scalar_one_or_none()

    async def signing_key(self, kid: str) -> SigningKeyRecord | None:
        """The recorded signing key `kid`, or None."""
        return await self.session.get(SigningKeyRecord, kid)

    # -- outbox ---------------------------------------------------------------------

    async def pending_events(self, limit: int) -> Sequence[OutboxEvent]:
        """Up to `limit` outbox events not yet published, oldest first."""
        result = await self.session.execute(
            select(OutboxEvent)
            .where(OutboxEvent.published_at.is_(None))
            .order_by(OutboxEvent.id)
            .limit(limit)
        )
        return result.scalars().all()

    # -- housekeeping ---------------------------------------------------------------

    async def purge(self, now: datetime, revoked_families_before: datetime) -> int:
        """Delete rows that can no longer matter: expired refresh tokens and blocklist
        entries, finished sign-ins, and published events older than a day."""
        finished = or_(
            TokenFamily.expires_at <= now, TokenFamily.revoked_at < revoked_families_before
        )
        removed = 0
        # Children first: SQLite does not enforce the cascade unless asked to.
        for statement in (
            delete(RefreshToken).where(
                or_(
                    RefreshToken.expires_at <= now,
                    RefreshToken.family_id.in_(select(TokenFamily.id).where(finished)),
                )
            ),
            delete(RevokedToken).where(RevokedToken.expires_at <= now),
            delete(TokenFamily).where(finished),
        ):
            result = await self.session.execute(
                statement.execution_options(synchronize_session=False)
            )
            removed += cast(CursorResult[Any], result).rowcount or 0
        return removed

    async def purge_published_events(self, before: datetime) -> int:
        """Delete outbox events published before `before`; returns how many were deleted."""
        result = await self.session.execute(
            delete(OutboxEvent)
            .where(OutboxEvent.published_at.is_not(None), OutboxEvent.published_at < before)
            .execution_options(synchronize_session=False)
        )
        return cast(CursorResult[Any], result).rowcount or 0
