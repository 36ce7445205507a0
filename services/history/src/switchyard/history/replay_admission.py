"""Budgets and rate limits for replayed requests: before the replay runner publishes a
request, the gateway (which keeps the fleet's limit ledger) admits it against every limit
above the user and key it is billed to, exactly as if they had sent it
(`POST /internal/v1/admissions` on the gateway, `SWITCHYARD_GATEWAY_URL`).

`GatewayAdmission.admit(event)` returns an `Admitted` (the team id to put on the request),
a `Held` (refused by a limit: `budget` True when a budget is used up, else a rate limit
to wait `retry_after_s` for) or a `Denied` (the key or user it is billed to may not send
it: revoked, disabled, expired, not allowing the model, not in that tenant; final); it
raises `AdmissionUnavailable` when the gateway cannot be asked or cannot check credentials
or limits (the item is tried again later)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from switchyard.common import exactjson
from switchyard.common.events import ChatRequested
from switchyard.common.headers import INTERNAL_TOKEN_HEADER
from switchyard.common.http import internal_limits


@dataclass(frozen=True)
class Admitted:
    """Admitted by the gateway's limits; `team_id` is the team the request is counted against."""

    team_id: str | None


@dataclass(frozen=True)
class Held:
    """Refused by a limit: `message` says which (the gateway's words)."""

    message: str
    budget: bool
    retry_after_s: float


@dataclass(frozen=True)
class Denied:
    """The credentials the request is billed to may not send it (HTTP 403 or 404); final:
    `message` says why (the gateway's words), `code` is its error code. `item_only`: the
    request itself can never be sent (a body beyond the gateway's limit, 413), whoever
    it is billed to, so only its item is settled and the replay goes on."""

    message: str
    code: str | None
    item_only: bool = False


class AdmissionUnavailable(RuntimeError):
    """The gateway could not be asked, or could not check limits."""


class GatewayAdmission:
    """Asks a gateway to admit replayed requests (see the module docstring)."""

    def __init__(
        self,
        gateway_url: str,
        internal_token: str,
        *,
        timeout_s: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """`transport` replaces the network (tests)."""
        self._url = gateway_url.rstrip("/") + "/internal/v1/admissions"
        self._client = httpx.AsyncClient(
            headers={INTERNAL_TOKEN_HEADER: internal_token},
            timeout=timeout_s,
            transport=transport,
            limits=internal_limits(),
        )

    async def admit(self, event: ChatRequested, timeout_s: float) -> Admitted | Held | Denied:
        """Ask the gateway to admit `event` under its key's, user's, team's and tenant's limits,
        as if it had just arrived; `timeout_s` is the request's timeout in seconds.

        Returns:
            `Admitted`, `Held` when a limit refuses it (HTTP 429), or `Denied` when the
            credentials it is billed to may not send it (HTTP 403, or 404 for a key or user
            not in its tenant).

        Raises:
            AdmissionUnavailable: the gateway is unreachable or answered anything else.
        """
        data = event.data
        payload = {
            "request_id": event.request_id,
            "tenant": event.tenant,
            "user_id": data.user_id,
            "api_key_id": data.api_key_id,
            "api": data.api.value,
            "model": data.model,
            "body": data.body,
            "timeout_s": timeout_s,
        }
        try:
            # Compact UTF-8, as it was sent (httpx's `json=` escapes every non-ASCII
            # character, up to six times the bytes), every integer exact.
            response = await self._client.post(
                self._url,
                content=exactjson.dumps(payload),
                headers={"content-type": "application/json"},
            )
        except httpx.HTTPError as exc:
            raise AdmissionUnavailable(f"gateway unreachable: {exc!r}") from exc
        if response.status_code == 200:
            return Admitted(team_id=response.json().get("team_id"))
        if response.status_code == 429:
            error = _error(response)
            try:
                retry_after = float(response.headers.get("retry-after", "1"))
            except ValueError:
                retry_after = 1.0
            return Held(
                message=str(error.get("message") or "refused by a limit"),
                budget=error.get("code") == "insufficient_quota",
                retry_after_s=max(0.5, retry_after),
            )
        if response.status_code in (403, 404):
            error = _error(response)
            if error:  # a 404 without OpenAI's error object is no route: not a refusal
                code = error.get("code")
                return Denied(
                    message=str(error.get("message") or "refused: credentials may not send it"),
                    code=str(code) if code is not None else None,
                )
        if response.status_code == 413:
            # Retrying would only be refused again: the item is not replayable.
            return Denied(
                message=str(_error(response).get("message") or "the request is too large"),
                code="request_too_large",
                item_only=True,
            )
        raise AdmissionUnavailable(
            f"gateway answered {response.status_code}: {_error(response).get('message')}"
        )

    async def close(self) -> None:
        """Release the HTTP client's connections."""
        await self._client.aclose()


def _error(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}
