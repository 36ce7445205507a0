"""Repository over an `AsyncSession`: the only module that writes SQL for the auth tables.

It neither commits nor decides policy; `service.AuthService` owns the transaction and the
rules (what counts as revoked, expired or disabled).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload

from switchyard.auth.models import ApiKey, User


class AuthStore:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add_user(self, user: User) -> User:
        self.session.add(user)
        await self.session.flush()
        return user

    async def user_by_id(self, user_id: str) -> User | None:
        return await self.session.get(User, user_id)

    async def user_by_email(self, email: str) -> User | None:
        result = await self.session.execute(select(User).where(User.email == email))
        return result.scalar_one_or_none()

    async def add_api_key(self, api_key: ApiKey) -> ApiKey:
        self.session.add(api_key)
        await self.session.flush()
        return api_key

    async def api_key_by_hash(self, secret_hash: str) -> ApiKey | None:
        """The key with this hash and its user, whatever its state."""
        result = await self.session.execute(
            select(ApiKey).options(joinedload(ApiKey.user)).where(ApiKey.secret_hash == secret_hash)
        )
        return result.scalar_one_or_none()
