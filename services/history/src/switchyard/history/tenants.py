"""Per-tenant settings of the history service (`history_tenant_settings`).

- `store_content`: false means metadata only — from then on, no prompt or completion text
  is written for the tenant (request bodies and replies are reduced to their metadata,
  see privacy.py); the recorded history stored before stays until purged, but the
  tenant's response cache entries (completions kept only to be served again) are deleted
  in the same transaction as the switch, so a metadata-only tenant has nothing cached.
- `retention_days`: requests and events older than this are deleted by the periodic purge
  (and by `switchyard retention purge`); unset means the service-wide default.
- `webhook_secret`: the key job webhooks of the tenant are signed with (HMAC-SHA256);
  created on first use, rotated on demand.
- `cache_enabled`, `cache_ttl_s`: the gateways' response cache for every request of the
  tenant (requests may still opt out, or opt in when it is off), and how long its answers
  are reused (unset: the gateway's default). A metadata-only tenant's answers are never
  cached, whatever these say.

A tenant without a row stores content and keeps it for the default retention.
"""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from switchyard.common.db import dialect_insert, read_only
from switchyard.history.models import cache_entries_table, tenant_settings_table

UNSET: Any = object()


@dataclass(frozen=True)
class TenantSettingsView:
    """A tenant's history settings; None means the service-wide default. `retention_days` in
    days, `cache_ttl_s` in seconds."""

    tenant: str
    store_content: bool = True
    retention_days: int | None = None
    webhook_secret: str | None = None
    updated_at: datetime | None = None
    cache_enabled: bool | None = None
    cache_ttl_s: int | None = None

    def public(self, *, include_secret: bool) -> dict[str, Any]:
        """The settings as the API shows them; the webhook secret only with `include_secret`."""
        data = asdict(self)
        if not include_secret:
            data.pop("webhook_secret")
        return data


def new_webhook_secret() -> str:
    """A new secret for signing job webhooks: `whsec_` and 32 random bytes, URL-safe base64."""
    return "whsec_" + secrets.token_urlsafe(32)


class TenantSettingsStore:
    """Per-tenant history settings in the database."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        # For the lookups that only read (each cache-settings call, the sweeper's list).
        self._reads = read_only(engine)
        self._dialect = engine.dialect.name

    async def get(self, tenant: str) -> TenantSettingsView:
        """The tenant's settings (the defaults when it has none stored)."""
        async with self._reads.connect() as connection:
            return await _get(connection, tenant)

    async def update(
        self,
        tenant: str,
        *,
        store_content: bool | None = None,
        retention_days: int | None = UNSET,
        rotate_webhook_secret: bool = False,
        cache_enabled: bool | None = None,
        cache_ttl_s: int | None = UNSET,
    ) -> TenantSettingsView:
        """Change some settings (the others keep their value) and return them all. Setting
        `store_content` to False also deletes the tenant's response cache entries."""
        async with self._engine.begin() as connection:
            current = await _get(connection, tenant)
            values: dict[str, Any] = {
                "cache_enabled": current.cache_enabled if cache_enabled is None else cache_enabled,
                "cache_ttl_s": current.cache_ttl_s if cache_ttl_s is UNSET else cache_ttl_s,
                "tenant": tenant,
                "store_content": current.store_content if store_content is None else store_content,
                "retention_days": current.retention_days
                if retention_days is UNSET
                else retention_days,
                "webhook_secret": new_webhook_secret()
                if rotate_webhook_secret or current.webhook_secret is None
                else current.webhook_secret,
                "updated_at": datetime.now(UTC),
            }
            await _upsert(connection, self._dialect, values)
            if not values["store_content"]:
                # The stored completions are exactly what the tenant asked not to keep.
                await connection.execute(
                    delete(cache_entries_table).where(cache_entries_table.c.tenant == tenant)
                )
            return TenantSettingsView(**values)

    async def webhook_secret(self, tenant: str) -> str:
        """The tenant's signing secret, created now if it has none yet."""
        async with self._engine.begin() as connection:
            current = await _get(connection, tenant)
            if current.webhook_secret is not None:
                return current.webhook_secret
            insert = dialect_insert(tenant_settings_table, self._dialect)
            await connection.execute(
                insert.on_conflict_do_nothing(index_elements=["tenant"]),
                {
                    "tenant": tenant,
                    "store_content": True,
                    "retention_days": None,
                    "webhook_secret": new_webhook_secret(),
                    "updated_at": datetime.now(UTC),
                },
            )
            settings = tenant_settings_table.c
            # Two replicas may race here: whichever secret was stored first is the one.
            update = (
                tenant_settings_table.update()
                .where(settings.tenant == tenant, settings.webhook_secret.is_(None))
                .values(webhook_secret=new_webhook_secret(), updated_at=datetime.now(UTC))
            )
            await connection.execute(update)
            return (await _get(connection, tenant)).webhook_secret  # type: ignore[return-value]

    async def all(self) -> list[TenantSettingsView]:
        """Every tenant with stored settings."""
        async with self._reads.connect() as connection:
            rows = (await connection.execute(select(tenant_settings_table))).mappings().all()
        return [TenantSettingsView(**dict(row)) for row in rows]


async def _get(connection: AsyncConnection, tenant: str) -> TenantSettingsView:
    row = (
        (
            await connection.execute(
                select(tenant_settings_table).where(tenant_settings_table.c.tenant == tenant)
            )
        )
        .mappings()
        .first()
    )
    return TenantSettingsView(**dict(row)) if row is not None else TenantSettingsView(tenant)


async def _upsert(connection: AsyncConnection, dialect: str, values: dict[str, Any]) -> None:
    insert = dialect_insert(tenant_settings_table, dialect).values(values)
    await connection.execute(
        insert.on_conflict_do_update(
            index_elements=["tenant"],
            set_={name: insert.excluded[name] for name in values if name != "tenant"},
        )
    )
