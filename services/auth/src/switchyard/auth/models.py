"""SQLAlchemy 2 declarative models of the auth tables: users and their API keys.

Later additions (refresh tokens, revoked token ids, signing-key history) become new tables
next to these, each with its own migration; these two tables do not need to change for them.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

ROLES = ("admin", "member")


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python.

    PostgreSQL stores `timestamptz`; SQLite has no time zones and hands back naive values,
    which this type marks as UTC again so comparisons never mix naive and aware datetimes.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given for a UTC column; use datetime.now(UTC)")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class User(Base):
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

    api_keys: Mapped[list[ApiKey]] = relationship(back_populates="user")


class ApiKey(Base):
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

    user: Mapped[User] = relationship(back_populates="api_keys")
