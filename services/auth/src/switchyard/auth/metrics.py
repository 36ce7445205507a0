"""Prometheus counters of the auth service (served by the shared `/metrics` route)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

TOKEN_REQUESTS = Counter(
    "switchyard_auth_token_requests",
    "Password-grant token requests by outcome.",
    ["outcome"],  # issued | invalid_credentials | invalid_request
)
API_KEY_LOOKUPS = Counter(
    "switchyard_auth_api_key_lookups",
    "Internal API key lookups by result.",
    ["result"],  # found | not_found
)
API_KEYS_CREATED = Counter("switchyard_auth_api_keys_created", "API keys created through the API.")
REFRESH_REQUESTS = Counter(
    "switchyard_auth_refresh_requests",
    "Refresh-token exchanges by outcome.",
    ["outcome"],  # rotated | invalid | reuse_detected
)
LOGINS_THROTTLED = Counter(
    "switchyard_auth_logins_throttled",
    "Sign-in attempts refused with 429 by the login rate limits.",
    # account (from this address) | account_all_addresses | address | hashing (the
    # password hashing pool is full)
    ["limit"],
)
REVOCATIONS = Counter(
    "switchyard_auth_revocations",
    "Revocations through the API by kind.",
    ["kind"],  # api_key | user_disabled | logout | password_changed
)
OUTBOX_PUBLISHED = Counter(
    "switchyard_auth_outbox_published", "Auth events published from the outbox to the bus."
)
OUTBOX_FAILING = Gauge(
    "switchyard_auth_outbox_failing",
    "1 while auth events cannot be published (bus or database unreachable), else 0.",
)
