"""Scopes carried by access tokens and API keys; defined once in `switchyard.common.scopes`
so the gateway enforces exactly what auth hands out."""

from __future__ import annotations

from switchyard.common.scopes import (
    ALL_SCOPES,
    API_KEY_SCOPES,
    CHAT,
    DEFAULT_API_KEY_SCOPES,
    HISTORY_READ,
    KEYS_WRITE,
    USER_TOKEN_SCOPES,
)

__all__ = [
    "ALL_SCOPES",
    "API_KEY_SCOPES",
    "CHAT",
    "DEFAULT_API_KEY_SCOPES",
    "HISTORY_READ",
    "KEYS_WRITE",
    "USER_TOKEN_SCOPES",
]
