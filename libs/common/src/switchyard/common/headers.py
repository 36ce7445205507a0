"""HTTP header names the services send to and read from one another, and those the
gateway answers clients with, written once so a sender and its receiver cannot drift.

All are lower case (HTTP/2 and ASGI carry header names in lower case; HTTP/1.1 compares
them case-insensitively).
"""

from __future__ import annotations

# Service-to-service calls: the shared secret every internal route requires
# (setting `SWITCHYARD_INTERNAL_TOKEN`).
INTERNAL_TOKEN_HEADER = "x-switchyard-internal-token"

# The caller's identity as the gateway verified it, passed to history with the internal
# token: history scopes every read and write to it.
TENANT_HEADER = "x-switchyard-tenant"
USER_ID_HEADER = "x-switchyard-user-id"
ROLE_HEADER = "x-switchyard-role"
IDENTITY_HEADERS = (TENANT_HEADER, USER_ID_HEADER, ROLE_HEADER)
# Sent with the identity when the caller's API key lacks `history:read`: history then shows
# (and lets it cancel or delete) only what that key itself made, its jobs and responses.
API_KEY_ONLY_HEADER = "x-switchyard-api-key-only"

# On history's 404 for a response id whose request is recorded but is not the caller's to
# see (another tenant's or user's), or is not under that id: nothing more will be recorded
# for it, so the gateway answers at once instead of waiting for the response to be
# recorded. Between the services only: the gateway never relays it to a client.
RECORDED_HEADER = "x-switchyard-recorded"

# The id of a request, on every gateway response (the id its events and history row carry).
REQUEST_ID_HEADER = "x-request-id"
# A client's key for a POST that must never run twice (the gateway's idempotency).
IDEMPOTENCY_KEY_HEADER = "idempotency-key"
# Sent by the `anthropic` SDK on every request: answers (and errors) in Anthropic's format.
ANTHROPIC_VERSION_HEADER = "anthropic-version"
