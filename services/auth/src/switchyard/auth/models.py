"""SQLAlchemy 2 declarative models of the auth tables.

- `auth_users`, `auth_api_keys` (migration 0001): users of every tenant and their keys;
- `auth_token_families`, `auth_refresh_tokens` (0002): one family per sign-in, holding
  the chain of refresh tokens that rotation produces; reuse of a spent one revokes all;
- `auth_revoked_tokens` (0002): the blocklist of access-token ids revoked before expiry;
- `auth_signing_keys` (0002): every key that has signed, so a rotation is noticed once;
- `auth_outbox` (0002): auth events written in the same transaction as the change they
  announce, published to the bus afterwards (see `outbox.py`).
- `auth_teams`, `auth_tenants` (0003): teams of a tenant, and each tenant's own limits and
  what gateways do when their limit store is unreachable. Teams, users and keys carry
  limits too (`LimitColumns`): a budget per period and rate limits; NULL is "no limit".
- `cache_enabled`, `cache_ttl_s` on `auth_teams` and `auth_api_keys` (0004): the gateways'
  response cache for the requests of one team or one key (`CacheColumns`); NULL is "as
  the level above says" (key, then team, then the tenant's history settings).
- 0005 stores emails folded (`names.fold_email`: compatibility forms too, NFKC).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from typing_extensions import override

ROLES = ("admin", "member")


def new_id() -> str:
    """A new row id: 32 lowercase hex digits of a random UUID."""
    return uuid.uuid4().hex


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC (the default of the timestamp columns)."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python.

    PostgreSQL stores `timestamptz`; SQLite has no time zones and hands back naive values,
    which this type marks as UTC again so comparisons never mix naive and aware datetimes.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    @override
    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given for a UTC column; use datetime.now(UTC)")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    @override
    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """The declarative base of every auth table (its metadata is what the migrations track)."""

    pass


class LimitColumns:
    """Budget and rate limits of one level (see `switchyard.common.governance.Limits`)."""

    max_budget_usd: Mapped[float | None] = mapped_column(Float, nullable=True)
    # 1d | 7d | 30d; NULL with a budget: the budget never resets.
    budget_period: Mapped[str | None] = mapped_column(String(8), nullable=True)
    # Periods start at this instant plus whole periods (set when the budget is first set
    # or its period changes).
    budget_anchor_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    rpm_limit: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    tpm_limit: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    max_parallel_requests: Mapped[int | None] = mapped_column(Integer, nullable=True)


class CacheColumns:
    """The response cache opt-in of one team or one API key. NULL: not set here, so the
    next level decides (key, then team, then the tenant's setting in history)."""

    cache_enabled: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    # Seconds a cached answer is reused (the gateway caps it at its maximum).
    cache_ttl_s: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Tenant(LimitColumns, Base):
    """A tenant's own limits; a tenant without a row has none."""

    __tablename__ = "auth_tenants"
    __table_args__ = (
        CheckConstraint(
            "rate_limit_failure_mode IN ('open', 'closed') "
            "AND budget_failure_mode IN ('open', 'closed')",
            name="ck_auth_tenants_failure_modes",
        ),
    )

    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    # What gateways do when the limit store cannot answer: refuse ('closed') or admit
    # without counting ('open').
    rate_limit_failure_mode: Mapped[str] = mapped_column(String(8), default="open")
    budget_failure_mode: Mapped[str] = mapped_column(String(8), default="closed")
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Team(LimitColumns, CacheColumns, Base):
    """A team of a tenant (`auth_teams`): its name, the models its members may use (None:
    any the tenant may), its limits and response cache opt-in."""

    __tablename__ = "auth_teams"
    __table_args__ = (
        UniqueConstraint("tenant", "name", name="uq_auth_teams_tenant_name"),
        Index("ix_auth_teams_tenant", "tenant"),
    )

    id: Mapped[str] = mapped_column(Text, primary_key=True, default=new_id)
    tenant: Mapped[str] = mapped_column(String(128))
    name: Mapped[str] = mapped_column(String(200))
    # None: every model the tenant may use.
    allowed_models: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class User(LimitColumns, Base):
    """A user (`auth_users`): email (lower-cased, unique across tenants), tenant, role
    (`admin` or `member`), Argon2 password hash (None: API keys only), disabled flag, team and
    limits."""

    __tablename__ = "auth_users"
    __table_args__ = (
        UniqueConstraint("email", name="uq_auth_users_email"),
        CheckConstraint("role IN ('admin', 'member')", name="ck_auth_users_role"),
        Index("ix_auth_users_tenant", "tenant"),
    )

    id: Mapped[str] = mapped_column(Text, primary_key=True, default=new_id)
    # Always stored lower-cased, so uniqueness is case-insensitive on every database.
    email: Mapped[str] = mapped_column(String(320))
    tenant: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    # None for users who only ever use API keys.
    password_hash: Mapped[str | None] = mapped_column(Text, nullable=True)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # The team the user belongs to, if any (a user is in at most one team).
    team_id: Mapped[str | None] = mapped_column(
        Text,
        ForeignKey("auth_teams.id", ondelete="SET NULL", name="fk_auth_users_team_id"),
        nullable=True,
    )

    api_keys: Mapped[list[ApiKey]] = relationship(back_populates="user")
    # Its models bound every access token issued to the user (see `service.effective_models`).
    team: Mapped[Team | None] = relationship()


class ApiKey(LimitColumns, CacheColumns, Base):
    """An API key (`auth_api_keys`): owner, name, visible prefix and SHA-256 hash (never the
    key), scopes, models it may use (None: any), expiry, revocation, team, limits and
    response cache opt-in."""

    __tablename__ = "auth_api_keys"
    __table_args__ = (
        UniqueConstraint("secret_hash", name="uq_auth_api_keys_secret_hash"),
        Index("ix_auth_api_keys_user_id", "user_id"),
    )

    id: Mapped[str] = mapped_column(Text, primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(
        Text, ForeignKey("auth_users.id", ondelete="CASCADE", name="fk_auth_api_keys_user_id")
    )
    tenant: Mapped[str] = mapped_column(String(128))
    name: Mapped[str] = mapped_column(String(200))
    # The visible start of the key, so people can tell their keys apart in lists.
    prefix: Mapped[str] = mapped_column(String(16))
    # sha256 of the whole key: the key itself is never stored.
    secret_hash: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    # None means every model the tenant may use.
    allowed_models: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # The team whose limits the key's requests count against (its user's team), if any.
    team_id: Mapped[str | None] = mapped_column(
        Text,
        ForeignKey("auth_teams.id", ondelete="SET NULL", name="fk_auth_api_keys_team_id"),
        nullable=True,
    )

    user: Mapped[User] = relationship(back_populates="api_keys")
    # Its models bound the key's own (see `service.effective_models`).
    team: Mapped[Team | None] = relationship()


class TokenFamily(Base):
    """One sign-in: every refresh token rotation produces belongs to it, and every access
    token issued from it carries its id as the `sid` claim."""

    __tablename__ = "auth_token_families"
    __table_args__ = (Index("ix_auth_token_families_user_id", "user_id"),)

    id: Mapped[str] = mapped_column(Text, primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(
        Text, ForeignKey("auth_users.id", ondelete="CASCADE", name="fk_auth_token_families_user_id")
    )
    tenant: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # When its newest refresh token expires: after that the sign-in is over.
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # logout | reuse_detected | user_disabled | admin
    revoked_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)

    user: Mapped[User] = relationship()


class RefreshToken(Base):
    """One refresh token of a sign-in (`auth_refresh_tokens`), stored as its SHA-256 hash;
    `used_at` is set when it is exchanged, and presenting it again is reuse."""

    __tablename__ = "auth_refresh_tokens"
    __table_args__ = (
        UniqueConstraint("token_hash", name="uq_auth_refresh_tokens_token_hash"),
        Index("ix_auth_refresh_tokens_family_id", "family_id"),
    )

    id: Mapped[str] = mapped_column(Text, primary_key=True, default=new_id)
    family_id: Mapped[str] = mapped_column(
        Text,
        ForeignKey(
            "auth_token_families.id",
            ondelete="CASCADE",
            name="fk_auth_refresh_tokens_family_id",
        ),
    )
    # sha256 of the opaque token: the token itself is never stored.
    token_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Set when the token is exchanged; presenting it again is reuse.
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    family: Mapped[TokenFamily] = relationship()


class RevokedToken(Base):
    """An access token refused before its expiry (logout, operator)."""

    __tablename__ = "auth_revoked_tokens"
    __table_args__ = (Index("ix_auth_revoked_tokens_expires_at", "expires_at"),)

    jti: Mapped[str] = mapped_column(Text, primary_key=True)
    user_id: Mapped[str] = mapped_column(Text)
    tenant: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    reason: Mapped[str] = mapped_column(String(32))


class SigningKeyRecord(Base):
    """A key that has signed access tokens; the latest `activated_at` is the current one."""

    __tablename__ = "auth_signing_keys"

    kid: Mapped[str] = mapped_column(String(128), primary_key=True)
    public_jwk: Mapped[dict[str, Any]] = mapped_column(JSON)
    activated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class OutboxEvent(Base):
    """An auth event waiting to be (or already) published to the auth events topic."""

    __tablename__ = "auth_outbox"
    __table_args__ = (Index("ix_auth_outbox_published_at_id", "published_at", "id"),)

    # SQLite autoincrements only an INTEGER PRIMARY KEY.
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    event_type: Mapped[str] = mapped_column(String(64))
    # Partition key on the bus (the user id).
    key: Mapped[str | None] = mapped_column(Text, nullable=True)
    payload: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
