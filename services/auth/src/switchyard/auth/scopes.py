"""Scopes carried by access tokens and API keys.

The gateway decides what each scope allows; auth only hands them out. Password-grant
tokens carry every user scope; API keys get the gateway scopes unless narrowed.
"""

from __future__ import annotations

CHAT = "chat"  # chat completions, messages and jobs through the gateway
HISTORY_READ = "history:read"  # the caller's own request history and usage
KEYS_WRITE = "keys:write"  # create API keys for oneself

API_KEY_SCOPES: tuple[str, ...] = (CHAT, HISTORY_READ)
DEFAULT_API_KEY_SCOPES: tuple[str, ...] = API_KEY_SCOPES
USER_TOKEN_SCOPES: tuple[str, ...] = (CHAT, HISTORY_READ, KEYS_WRITE)
