"""Scopes carried by access tokens and API keys: one definition shared by auth (which
hands them out) and the gateway (which decides what each one allows).

- `chat`: chat completions, messages, embeddings, responses and jobs through the gateway,
  and reading back, cancelling or deleting the jobs and stored responses the same
  credential made (an API key without `history:read` sees no other key's);
- `history:read`: the caller's own request history, usage, jobs and stored responses;
- `history:write`: change the tenant's history settings (content storage, retention;
  the admin role and the `admin` scope are needed besides);
- `admin`: the tenant's administration — auth's admin API (`/v1/admin/*`: users, teams,
  keys, limits) — and its secrets (read or rotate the job webhook signing secret);
- `keys:write`: create and revoke one's own API keys at the auth service.

A scope is necessary, not sufficient: tenant settings also need the admin role, which the
history service checks. Password-grant tokens carry the scopes of the user's role
(`token_scopes`); API keys get `chat` and `history:read` unless narrowed or, within the
creating credential's own scopes, widened when they are created.
"""

from __future__ import annotations

CHAT = "chat"
HISTORY_READ = "history:read"
HISTORY_WRITE = "history:write"
ADMIN = "admin"
KEYS_WRITE = "keys:write"

# What an API key may be given (it never manages keys itself).
API_KEY_SCOPES: tuple[str, ...] = (CHAT, HISTORY_READ, HISTORY_WRITE, ADMIN)
DEFAULT_API_KEY_SCOPES: tuple[str, ...] = (CHAT, HISTORY_READ)
# What a signed-in member's access token carries; an admin's carries ADMIN_TOKEN_SCOPES.
USER_TOKEN_SCOPES: tuple[str, ...] = (CHAT, HISTORY_READ, KEYS_WRITE)
ADMIN_TOKEN_SCOPES: tuple[str, ...] = (*USER_TOKEN_SCOPES, HISTORY_WRITE, ADMIN)
ALL_SCOPES: tuple[str, ...] = ADMIN_TOKEN_SCOPES


def token_scopes(role: str) -> tuple[str, ...]:
    """The scopes a signed-in user of `role` gets in their access tokens."""
    return ADMIN_TOKEN_SCOPES if role == "admin" else USER_TOKEN_SCOPES
