"""Where the console's data comes from: the same services the gateway's API calls.

- auth's API with the user's own access token (sign-in, refresh, sign-out, API keys,
  users, teams), so auth applies its own rules (members act on their own keys, admins on
  their tenant, 404 across tenants);
- history's API with the internal token and the identity the gateway verified from that
  access token, exactly as `/v1/history`, `/v1/usage` and `/v1/jobs` forward;
- the gateway's own routing table, and the inference replicas' `/metrics` for circuit
  breaker states.

Never another service's database. Every failure is a `BackendError` carrying the status
and the message of the service's error object, for the page to show.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httpx
import structlog
from prometheus_client.parser import text_string_to_metric_families

from switchyard.common import exactjson
from switchyard.gateway.api.history import identity_headers
from switchyard.gateway.api.jobs import request_cancellation
from switchyard.gateway.auth import Principal
from switchyard.gateway.bootstrap import Gateway

log = structlog.get_logger("switchyard.gateway.console")

CIRCUIT_METRIC = "switchyard_inference_circuit_state"
CIRCUIT_STATES = {0: "closed", 1: "open", 2: "half-open"}
_TIMEOUT_S = 10.0


class BackendError(Exception):
    """A call failed: `status` is the HTTP status (503 when the service is unreachable),
    `message` and `code` come from the service's error object, `retry_after` from its
    `Retry-After` header (the raw value, when it sent one)."""

    def __init__(
        self, status: int, message: str, code: str | None = None, retry_after: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.retry_after = retry_after


@dataclass(frozen=True)
class TokenPair:
    """An access token and its refresh token from auth (JWTs)."""

    access_token: str
    refresh_token: str


def _error_of(response: httpx.Response, service: str) -> BackendError:
    message, code = f"{service} answered {response.status_code}.", None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            message = str(error.get("message") or message)
            code = error.get("code") if isinstance(error.get("code"), str) else None
        elif isinstance(body.get("detail"), str):
            message = body["detail"]
    return BackendError(response.status_code, message, code, response.headers.get("retry-after"))


class ConsoleBackend:
    """The console's client of auth and history: sign-in and token refresh, and history calls
    made as the signed-in user. Failures come back as `BackendError` with the service's status
    and message."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway
        self._auth_url = gateway.settings.auth_url.rstrip("/")
        self._history_url = gateway.settings.history_url.rstrip("/")

    @property
    def gateway(self) -> Gateway:
        """The gateway the console runs in."""
        return self._gateway

    async def _call(self, service: str, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._gateway.http.request(method, url, timeout=_TIMEOUT_S, **kwargs)
        except httpx.HTTPError as exc:
            log.warning("console backend unreachable", service=service, error=repr(exc))
            raise BackendError(
                503, f"The {service} service is unreachable; retry shortly.", "unavailable"
            ) from None
        if response.status_code >= 400:
            raise _error_of(response, service)
        return response

    # -- signing in and out (auth) ------------------------------------------------

    async def sign_in(self, email: str, password: str, client_address: str) -> TokenPair:
        """Tokens for these credentials (the OAuth2 password grant); BackendError 401 for
        wrong ones, 429 when auth throttles sign-ins."""
        response = await self._call(
            "auth",
            "POST",
            f"{self._auth_url}/v1/auth/token",
            data={"grant_type": "password", "username": email, "password": password},
            # Auth's per-address limit uses it when it trusts this proxy.
            headers={"x-forwarded-for": client_address},
        )
        body = response.json()
        return TokenPair(body["access_token"], body["refresh_token"])

    async def refresh(self, refresh_token: str) -> TokenPair:
        """A new token pair for `refresh_token` (auth rotates it: the old one is spent).

        Raises:
            BackendError: auth refused the token (401) or is unreachable (503).
        """
        response = await self._call(
            "auth",
            "POST",
            f"{self._auth_url}/v1/auth/refresh",
            json={"refresh_token": refresh_token},
        )
        body = response.json()
        return TokenPair(body["access_token"], body["refresh_token"])

    async def sign_out(self, access_token: str, refresh_token: str) -> None:
        """End the sign-in at auth (every gateway then refuses its tokens): its refresh
        token's family, and the access token itself while it is valid."""
        url = f"{self._auth_url}/v1/auth/logout"
        body = {"refresh_token": refresh_token}
        try:
            await self._call(
                "auth", "POST", url, json=body, headers={"authorization": f"Bearer {access_token}"}
            )
        except BackendError as exc:
            if exc.status != 401:
                raise
            # Auth refuses an expired access token before it reads the body; the refresh
            # token alone still ends the family, and with it every access token of the
            # sign-in (their `sid`).
            await self.end_sign_in(refresh_token)

    async def end_sign_in(self, refresh_token: str) -> None:
        """End a sign-in at auth by its refresh token alone (a session whose lifetime is
        over: its access token has no use left)."""
        await self._call(
            "auth",
            "POST",
            f"{self._auth_url}/v1/auth/logout",
            json={"refresh_token": refresh_token},
        )

    async def change_password(
        self, access_token: str, current_password: str, new_password: str, client_address: str
    ) -> None:
        """Change the signed-in user's password at auth (`POST /v1/auth/password`): their
        other sign-ins end. BackendError 403 (`incorrect_password`) for a wrong current
        password, 429 while auth throttles the account, 400 for a new password it
        refuses."""
        await self._call(
            "auth",
            "POST",
            f"{self._auth_url}/v1/auth/password",
            json={"current_password": current_password, "new_password": new_password},
            # Auth's per-address limit uses it when it trusts this proxy.
            headers={"authorization": f"Bearer {access_token}", "x-forwarded-for": client_address},
        )

    async def principal(self, access_token: str) -> Principal:
        """The verified caller behind an access token, as the API would see it; raises the
        authenticator's AuthenticationError or AuthUnavailableError."""
        return await self._gateway.authenticator.authenticate(f"Bearer {access_token}", None)

    # -- auth's API as the user -------------------------------------------------------

    async def auth(self, access_token: str, method: str, path: str, *, json: Any = None) -> Any:
        """Call auth's API with the user's access token; the JSON answer (None for 204)."""
        response = await self._call(
            "auth",
            method,
            self._auth_url + path,
            json=json,
            headers={"authorization": f"Bearer {access_token}"},
        )
        return response.json() if response.content else None

    # -- history's API as the verified identity ---------------------------------

    async def history(
        self,
        principal: Principal,
        path: str,
        params: dict[str, Any] | None = None,
        *,
        method: str = "GET",
    ) -> Any:
        """The decoded JSON body of a history call (see `history_response`)."""
        response = await self.history_response(principal, path, params, method=method)
        return await exactjson.loads_off_loop(response.content)

    async def history_response(
        self,
        principal: Principal,
        path: str,
        params: dict[str, Any] | None = None,
        *,
        method: str = "GET",
    ) -> httpx.Response:
        """Call history's `path` as `principal` (the identity headers the gateway sends on the
        API's behalf); query parameters that are None or empty are left out.

        Raises:
            BackendError: history is unreachable (503) or answered an error status.
        """
        clean = {key: value for key, value in (params or {}).items() if value not in (None, "")}
        return await self._call(
            "history",
            method,
            self._history_url + path,
            params=clean,
            headers=identity_headers(self._gateway, principal),
        )

    async def cancel_job(self, principal: Principal, job_id: str) -> Any:
        """Cancel a job as `POST /v1/jobs/{id}/cancel` does: history records it, then
        inference is told to skip or stop it."""
        job = await self.history(principal, f"/v1/jobs/{job_id}/cancel", method="POST")
        request_cancellation(self._gateway, principal.tenant, job_id)
        return job

    # -- inference replicas' circuit breakers -----------------------------------

    async def circuit_states(self) -> tuple[dict[tuple[str, str], str], int]:
        """({(model, deployment): state}, replicas that answered) from every configured
        inference `/metrics` URL; the worst state across replicas wins (open > half-open >
        closed). A breaker absent from an answering replica's metrics has never opened
        there: closed."""
        urls = self._gateway.settings.console_inference_metrics_urls
        pages = await asyncio.gather(*(self._metrics(url) for url in urls))
        severity = {"closed": 0, "half-open": 1, "open": 2}
        states: dict[tuple[str, str], str] = {}
        for text in pages:
            if text is None:
                continue
            for family in text_string_to_metric_families(text):
                if family.name != CIRCUIT_METRIC:
                    continue
                for sample in family.samples:
                    key = (sample.labels.get("model", ""), sample.labels.get("deployment", ""))
                    state = CIRCUIT_STATES.get(int(sample.value), "closed")
                    if severity[state] >= severity[states.get(key, "closed")]:
                        states[key] = state
        return states, sum(text is not None for text in pages)

    async def _metrics(self, url: str) -> str | None:
        token = self._gateway.settings.metrics_token
        headers = {"authorization": f"Bearer {token}"} if token else None
        try:
            response = await self._gateway.http.get(url, timeout=2.0, headers=headers)
        except httpx.HTTPError:
            return None
        return response.text if response.status_code == 200 else None
