"""Scopes carried by access tokens and API keys; defined once in `switchyard.common.scopes`
so the gateway enforces exactly what auth hands out."""

from __future__ import annotations

from switchyard.common.scopes import (
    ADMIN,
    ADMIN_TOKEN_SCOPES,
    ALL_SCOPES,
    API_KEY_SCOPES,
    CHAT,
    DEFAULT_API_KEY_SCOPES,
    HISTORY_READ,
    HISTORY_WRITE,
    KEYS_WRITE,
    USER_TOKEN_SCOPES,
    token_scopes,
)

__all__ = [
    "ADMIN",
    "ADMIN_TOKEN_SCOPES",
    "ALL_SCOPES",
    "API_KEY_SCOPES",
    "CHAT",
    "DEFAULT_API_KEY_SCOPES",
    "HISTORY_READ",
    "HISTORY_WRITE",
    "KEYS_WRITE",
    "USER_TOKEN_SCOPES",
    "token_scopes",
]
