"""Prometheus counters of the auth service (served by the shared `/metrics` route)."""

from __future__ import annotations

from prometheus_client import Counter

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
