"""Scopes carried by access tokens and API keys: one definition shared by auth (which
hands them out) and the gateway (which decides what each one allows).

- `chat`: chat completions, messages, embeddings and jobs through the gateway;
- `history:read`: the caller's own request history and usage;
- `keys:write`: create and revoke one's own API keys at the auth service.

Password-grant tokens carry every user scope; API keys get the gateway scopes unless
narrowed when they are created.
"""

from __future__ import annotations

CHAT = "chat"
HISTORY_READ = "history:read"
KEYS_WRITE = "keys:write"

# What an API key may be given (it never manages keys itself).
API_KEY_SCOPES: tuple[str, ...] = (CHAT, HISTORY_READ)
DEFAULT_API_KEY_SCOPES: tuple[str, ...] = API_KEY_SCOPES
# What a signed-in user's access token carries.
USER_TOKEN_SCOPES: tuple[str, ...] = (CHAT, HISTORY_READ, KEYS_WRITE)
ALL_SCOPES: tuple[str, ...] = USER_TOKEN_SCOPES
