"""`Idempotency-Key` on every model request (`POST /v1/chat/completions`, `/v1/messages`,
`/v1/messages/count_tokens`, `/v1/responses`, `/v1/responses/input_tokens`,
`/v1/embeddings`), on `POST /v1/jobs` and
on `POST /v1/replays` (a retried replay would send every recorded request again).

A client that may retry a POST sends `Idempotency-Key: <up to 255 printable characters>`.
Within 24 hours, for the same tenant:

- the same key with the same body returns the original response, byte for byte (status,
  body, `x-request-id` and the headers describing the body, `KEPT_HEADERS`; streams are
  replayed whole), marked `Idempotent-Replayed: true`, and nothing runs again;
- if the original is still running, the retry waits for its result (at most
  `SWITCHYARD_GATEWAY_IDEMPOTENCY_WAIT_S`, default the request timeout), or, with
  `Idempotency-Wait: false`, gets 409 `idempotency_key_in_use` at once;
- the same key with a different body (or on another endpoint, or from another user of
  the tenant) gets 422 `idempotency_key_reused`;
- a credential without `history:read` (which reads back only what it made itself) has
  keys of its own (`claimed_key`): the same key from another of its user's credentials
  is another key.

Responses that ran nothing — invalid bodies, unknown models, a full gateway, the bus
being down, a client that went away — are not kept: the key is released and a retry runs.
Nor are failures the client is told to retry (408, 429, 5xx: a rate limit, an upstream
down or timing out), also when a stream answered 200 ends with one as its error event: a
retry with the key runs the request again. Other failures (a 400
from the upstream, say) are replayed as they failed. One 504 is neither: a request
published whose reply did not come by its deadline (`deadline_exceeded`,
`publish_outcome_unknown`) may have run, its reply held up by the broker. Its key then
waits for that request's recorded outcome (history's `await_outcome`): a retry waits (or
gets 409) while it is unknown, gets 409 `idempotency_answered_late` with its
`x-request-id` if it completed, and runs if it failed, or once the key's lease (the
request timeout plus a margin) has run out without an outcome.
Without the header nothing changes, and the check costs one scan of the request headers.

The caller is checked before anything is claimed or replayed — credentials, the route's
scope, that the body is a JSON object within the nesting bound, and that the credential
may use the body's `model` — so a stored answer is never handed to a caller who could not
have asked for it; such requests go on to the route, which refuses them as usual.

For a tenant storing metadata only, history keeps no response content: a retry gets 409
`idempotency_response_not_stored` with the original `x-request-id` (it still never runs
twice); so does the retry of a Responses API request whose response was deleted
(`DELETE /v1/responses/{id}` drops the answer the key kept). Answers holding no content
(a created replay's id and state, a token count: `CONTENT_FREE_PATHS`) are kept and
replayed for such a tenant too.

Claims live in the history service's database (`/internal/v1/idempotency/...`,
INSERT ... ON CONFLICT), so they hold across every gateway replica. The replica that
claims a key stores the exact bytes it sent; a replica dying before that leaves a claim
whose lease (the request timeout plus a margin) then lets a retry run it again.

This is a pure ASGI middleware (it must see the response bytes); it authenticates the
caller itself (cached, as the routes do) because keys are scoped to the tenant. If it
cannot (bad credentials), it steps aside and the route answers as usual.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, cast

import httpx
import orjson
import structlog
from prometheus_client import Counter
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from switchyard.common import exactjson, jsonbody, scopes
from switchyard.common.errors import APIError
from switchyard.common.headers import IDEMPOTENCY_KEY_HEADER, REQUEST_ID_HEADER
from switchyard.common.offloop import off_loop
from switchyard.gateway.api.deps import (
    DuplicateCredentialsError,
    credentials_of,
    required_scope,
)
from switchyard.gateway.auth import (
    AuthenticationError,
    AuthUnavailableError,
    Principal,
    request_client_key,
)
from switchyard.gateway.cache import CACHE_HEADER
from switchyard.gateway.dispatch import (
    NOT_KEPT,
    OUTCOME_UNKNOWN,
    STREAM_FAILED_STATUS,
    TOKEN_COUNT_HEADER,
)
from switchyard.gateway.errors import respond
from switchyard.gateway.intake import serves

log = structlog.get_logger("switchyard.gateway.idempotency")

IDEMPOTENT_PATHS = frozenset(
    {
        "/v1/chat/completions",
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/v1/responses",
        "/v1/responses/input_tokens",
        "/v1/embeddings",
        "/v1/jobs",
        "/v1/replays",
    }
)
# Paths that create something other than a request (no x-request-id to tell that the
# answer ran something): their answer is kept only when it created it (201), with the
# model it would run on in this body field.
CREATING_PATHS = {"/v1/replays": "to_model"}
JOBS_PATH = "/v1/jobs"
# Paths whose answers hold no content of the tenant's (a replay's id and state, a token
# count): kept for a tenant storing metadata only too, so its retries get them back.
CONTENT_FREE_PATHS = frozenset(
    {"/v1/replays", "/v1/messages/count_tokens", "/v1/responses/input_tokens"}
)
KEY_HEADER = IDEMPOTENCY_KEY_HEADER.encode()
# Response headers that describe the body (not the moment it was answered, as rate-limit
# headers do), so a replay carries them with it: whether a token count is the model's own
# or an estimate, and whether the answer came from the response cache.
KEPT_HEADERS = frozenset({TOKEN_COUNT_HEADER.encode(), CACHE_HEADER.encode()})
REQUEST_ID = REQUEST_ID_HEADER.encode()
WAIT_HEADER = "idempotency-wait"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
# Beyond the request's own deadline, how long a claim stays with the replica running it.
LEASE_MARGIN_S = 30.0
# Responses without x-request-id ran nothing (refused before publishing): not kept. Nor
# are failures a client is told to retry (a timeout, a rate limit, a server or upstream
# failure): replaying them would answer every retry with the same failure for the key's
# whole lifetime, defeating the retry the key exists for.
_NOT_KEPT_STATUSES = frozenset({408, 429, 499})


def _kept_status(status: int) -> bool:
    """Whether an answer with HTTP `status` is stored for replay under its key."""
    return status < 500 and status not in _NOT_KEPT_STATUSES


OUTCOMES = Counter(
    "switchyard_gateway_idempotency_total",
    "Requests with an Idempotency-Key, by outcome (claimed, replayed, waited, conflict, "
    "mismatch, not_stored, answered_late, unavailable).",
    ["outcome"],
)


class IdempotencyUnavailable(Exception):
    """The claim store (history) did not answer."""


@dataclass(frozen=True)
class Claim:
    """History's answer to a claim (`outcome`: `claimed`, `in_progress`, `completed` or
    `mismatch`), with the recorded response (`status_code`, `content_type`, `body` bytes) of a
    completed one; see history's `ClaimResult`."""

    outcome: str
    claim_token: str | None = None
    request_id: str | None = None
    status_code: int | None = None
    content_type: str | None = None
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    reason: str | None = None


class IdempotencyClient:
    """The history service's claim store, as `principal`."""

    def __init__(self, http: httpx.AsyncClient, history_url: str, internal_token: str) -> None:
        self._http = http
        self._base = history_url.rstrip("/") + "/internal/v1/idempotency"
        self._token = internal_token

    def _headers(self, principal: Principal) -> dict[str, str]:
        return principal.internal_headers(self._token)

    async def _post(
        self, principal: Principal, action: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        try:
            response = await self._http.post(
                f"{self._base}/{action}",
                content=orjson.dumps(body),
                headers={**self._headers(principal), "content-type": "application/json"},
                timeout=5.0,
            )
        except httpx.HTTPError as exc:
            raise IdempotencyUnavailable(repr(exc)) from None
        if response.status_code != 200:
            raise IdempotencyUnavailable(f"history answered {response.status_code}")
        return cast(dict[str, Any], await exactjson.loads_off_loop(response.content))

    async def claim(
        self, principal: Principal, key: str, endpoint: str, fingerprint: str, lease_s: float
    ) -> Claim:
        """Claim `key` for `endpoint` and the body's `fingerprint` for `lease_s` seconds.

        Raises:
            IdempotencyUnavailable: history did not answer, or answered an error status.
        """
        data = await self._post(
            principal,
            "claim",
            {"key": key, "endpoint": endpoint, "fingerprint": fingerprint, "lease_s": lease_s},
        )
        body = data.get("body_b64")
        return Claim(
            outcome=data["outcome"],
            claim_token=data.get("claim_token"),
            request_id=data.get("request_id"),
            status_code=data.get("status_code"),
            content_type=data.get("content_type"),
            body=base64.b64decode(body) if body is not None else None,
            headers=data.get("headers") or {},
            reason=data.get("reason"),
        )

    async def complete(
        self,
        principal: Principal,
        key: str,
        claim_token: str,
        *,
        request_id: str | None,
        status_code: int,
        content_type: str,
        body: bytes,
        holds_content: bool = True,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Record the response a claimed key answered (`body` bytes, sent base64;
        `holds_content` false for an object Switchyard created, which history keeps even
        for a tenant storing metadata only; `headers`: those of `KEPT_HEADERS` it carried).

        Raises:
            IdempotencyUnavailable: history did not answer, or answered an error status.
        """
        await self._post(
            principal,
            "complete",
            {
                "key": key,
                "claim_token": claim_token,
                "request_id": request_id,
                "status_code": status_code,
                "content_type": content_type,
                "body_b64": base64.b64encode(body).decode(),
                "holds_content": holds_content,
                "headers": headers or {},
            },
        )

    async def await_outcome(
        self, principal: Principal, key: str, claim_token: str, request_id: str, lease_s: float
    ) -> None:
        """Tie a claim to `request_id`, published, whose outcome this replica stopped
        waiting for (its deadline passed): a retry is answered from that request's
        recorded outcome, for `lease_s` seconds at most while it is unknown.

        Raises:
            IdempotencyUnavailable: history did not answer, or answered an error status.
        """
        await self._post(
            principal,
            "await-outcome",
            {
                "key": key,
                "claim_token": claim_token,
                "request_id": request_id,
                "lease_s": lease_s,
            },
        )

    async def release(self, principal: Principal, key: str, claim_token: str) -> None:
        """Give up a claim so a retry runs again (the request ran nothing).

        Raises:
            IdempotencyUnavailable: history did not answer, or answered an error status.
        """
        await self._post(principal, "release", {"key": key, "claim_token": claim_token})


# What `_parsed` gives for a body that is not JSON within the bounds.
_UNPARSED = object()


def _parsed(body: bytes) -> Any:
    """The JSON in `body` (`jsonbody.loads`, its bounds included), or `_UNPARSED`."""
    try:
        return jsonbody.loads(body)
    except (orjson.JSONDecodeError, jsonbody.JsonTooDeep, jsonbody.JsonTooManyValues):
        return _UNPARSED


def fingerprint(method: str, path: str, body: bytes, data: Any = _UNPARSED) -> str:
    """What 'the same request' means: method, path and the JSON body with keys sorted (so
    a client re-serialising its body in another key order still matches). `data` is the
    body parsed (`_parsed`), when the caller has it."""
    if data is _UNPARSED:
        data = _parsed(body)
    try:
        canonical = body if data is _UNPARSED else orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        canonical = body
    digest = hashlib.sha256()
    for part in (method.encode(), b"\n", path.encode(), b"\n", canonical):
        digest.update(part)
    return digest.hexdigest()


def _error(path: str, exc: APIError) -> Response:
    return respond(path, exc)


class IdempotencyMiddleware:
    """ASGI middleware applying `Idempotency-Key` to the idempotent POST paths (module
    docstring); other requests pass through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point: run the request once per key, or answer from its claim."""
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["path"] not in IDEMPOTENT_PATHS
        ):
            await self.app(scope, receive, send)
            return
        raw_keys = [value for name, value in scope["headers"] if name == KEY_HEADER]
        if not raw_keys:
            await self.app(scope, receive, send)
            return
        if len(raw_keys) > 1:
            # Which one counts is ambiguous; a retry naming the other would run it twice.
            response = _error(
                scope["path"],
                APIError(
                    400,
                    f"Idempotency-Key was sent {len(raw_keys)} times; send it once.",
                    param="Idempotency-Key",
                    code="invalid_idempotency_key",
                ),
            )
            await response(scope, receive, send)
            return
        await self._handle(scope, receive, send, raw_keys[0])

    async def _handle(self, scope: Scope, receive: Receive, send: Send, raw_key: bytes) -> None:
        path = scope["path"]
        key = raw_key.decode("latin-1").strip()
        if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable() or not key.isascii():
            response = _error(
                path,
                APIError(
                    400,
                    f"Invalid Idempotency-Key: use 1 to {MAX_KEY_LENGTH} printable ASCII "
                    "characters (e.g. a UUID).",
                    param="Idempotency-Key",
                    code="invalid_idempotency_key",
                ),
            )
            await response(scope, receive, send)
            return

        headers = Headers(scope=scope)
        if wait_for_running(headers) is None:
            response = _error(
                path,
                APIError(
                    400,
                    "Invalid value for the Idempotency-Wait header: use 'true' (wait for a "
                    "request still running with this key, the default) or 'false' (answer "
                    "409 at once).",
                    param="Idempotency-Wait",
                    code="invalid_idempotency_wait",
                ),
            )
            await response(scope, receive, send)
            return
        body = await _read_body(receive)
        replay_receive = _replaying(body, receive)
        gateway = scope["app"].state.gateway
        try:
            principal = await gateway.authenticator.authenticate(
                *credentials_of(scope["headers"]), client=request_client_key(scope)
            )
        except (AuthenticationError, AuthUnavailableError, DuplicateCredentialsError):
            principal = None
        # Parsed once for every use here, a large body off the event loop.
        data = None if principal is None else await off_loop(_parsed, body)
        if principal is None or not _may_run(gateway, principal, path, data):
            await self.app(scope, replay_receive, send)  # the route refuses it properly
            return

        key = claimed_key(principal, key)
        client = IdempotencyClient(
            gateway.http, gateway.settings.history_url, gateway.settings.internal_token
        )
        settings = gateway.settings
        print_ = fingerprint("POST", path, body, data)
        wait = wait_for_running(headers)
        wait_s = settings.idempotency_wait_s or settings.request_timeout_s
        # The request's own deadline: a stream's is longer (`Settings.timeout_for`).
        lease_s = settings.timeout_for(_streams(data)) + LEASE_MARGIN_S
        give_up_at = time.monotonic() + wait_s
        delay = 0.02
        waited = False
        while True:
            try:
                claim = await client.claim(principal, key, path, print_, lease_s)
            except IdempotencyUnavailable as exc:
                log.error("idempotency store unavailable", error=str(exc))
                OUTCOMES.labels("unavailable").inc()
                response = _error(
                    path,
                    APIError(
                        503,
                        "Idempotency-Key cannot be honoured right now (its store is "
                        "unavailable); retry shortly.",
                        code="idempotency_unavailable",
                        headers={"Retry-After": "2"},
                    ),
                )
                await response(scope, receive, send)
                return
            if claim.outcome == "claimed":
                OUTCOMES.labels("claimed").inc()
                await self._run(scope, replay_receive, send, client, principal, key, claim, lease_s)
                return
            if claim.outcome == "answered_late":
                # Its request completed after the replica running it answered 504: it is
                # never run again, and its answer is in its record.
                OUTCOMES.labels("answered_late").inc()
                response = _error(
                    path,
                    APIError(
                        409,
                        "This Idempotency-Key's request completed after the gateway stopped "
                        "waiting for it (it answered 504); it is not run again. Its answer is "
                        "recorded: GET /v1/history/{x-request-id}. Use a new key to run it "
                        "again.",
                        param="Idempotency-Key",
                        code="idempotency_answered_late",
                        headers={REQUEST_ID_HEADER: claim.request_id} if claim.request_id else None,
                    ),
                )
                await response(scope, receive, send)
                return
            if claim.outcome == "completed" and claim.body is None:
                # The tenant keeps metadata only, or the response was deleted: the request
                # ran, its answer is not kept.
                OUTCOMES.labels("not_stored").inc()
                response = _error(
                    path,
                    APIError(
                        409,
                        "This Idempotency-Key's request already ran; its response is not kept "
                        "(your organisation stores metadata only, or the response was "
                        "deleted; see x-request-id). Use a new key to run it again.",
                        param="Idempotency-Key",
                        code="idempotency_response_not_stored",
                        headers={REQUEST_ID_HEADER: claim.request_id} if claim.request_id else None,
                    ),
                )
                await response(scope, receive, send)
                return
            if claim.outcome == "completed":
                OUTCOMES.labels("waited" if waited else "replayed").inc()
                await _replay(claim, send)
                return
            if claim.outcome == "mismatch":
                OUTCOMES.labels("mismatch").inc()
                response = _error(
                    path,
                    APIError(
                        422,
                        claim.reason or "This Idempotency-Key was used for another request.",
                        param="Idempotency-Key",
                        code="idempotency_key_reused",
                    ),
                )
                await response(scope, receive, send)
                return
            # In progress elsewhere: wait for its result, or tell the client.
            if not wait or time.monotonic() + delay > give_up_at:
                OUTCOMES.labels("conflict").inc()
                response = _error(
                    path,
                    APIError(
                        409,
                        "A request with this Idempotency-Key is still in progress; retry "
                        "later (or without 'Idempotency-Wait: false' to wait for it)."
                        if not wait
                        else "A request with this Idempotency-Key is still in progress after "
                        f"waiting {wait_s:g} s for it; retry later.",
                        param="Idempotency-Key",
                        code="idempotency_key_in_use",
                        headers={"Retry-After": "1"},
                    ),
                )
                await response(scope, receive, send)
                return
            waited = True
            await asyncio.sleep(delay)
            delay = min(0.5, delay * 1.5)

    async def _run(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        client: IdempotencyClient,
        principal: Principal,
        key: str,
        claim: Claim,
        lease_s: float,
    ) -> None:
        """Run the request, keeping a copy of the response to store with the claim. A
        request published whose outcome the route stopped waiting for (`OUTCOME_UNKNOWN`)
        ties the claim to its request for `lease_s` seconds, instead of giving it back."""
        assert claim.claim_token is not None
        max_bytes = scope["app"].state.gateway.settings.idempotency_max_response_bytes
        status = 0
        content_type = "application/json"
        request_id: str | None = None
        kept_headers: dict[str, str] = {}
        chunks: list[bytes] = []
        size = 0
        settled = False

        async def settle(complete: bool) -> None:
            nonlocal settled
            if settled:
                return
            settled = True
            try:
                if complete:
                    await client.complete(
                        principal,
                        key,
                        claim.claim_token,  # type: ignore[arg-type]
                        request_id=request_id,
                        status_code=status,
                        content_type=content_type,
                        body=b"".join(chunks),
                        holds_content=scope["path"] not in CONTENT_FREE_PATHS,
                        headers=kept_headers,
                    )
                elif request_id is not None and scope.get("state", {}).get(OUTCOME_UNKNOWN):
                    # Published and maybe run: a retry must not run it again while its
                    # outcome may still come (the broker or inference held it up).
                    await client.await_outcome(
                        principal,
                        key,
                        claim.claim_token,  # type: ignore[arg-type]
                        request_id,
                        lease_s,
                    )
                else:
                    await client.release(principal, key, claim.claim_token)  # type: ignore[arg-type]
            except IdempotencyUnavailable as exc:
                # The claim's lease runs out and a later retry runs the request again.
                log.error("could not settle an idempotency claim", error=str(exc))

        def keep() -> bool:
            ran = request_id is not None or (scope["path"] in CREATING_PATHS and status == 201)
            # A stream is answered 200 before it runs: one that then failed says so only
            # in its last event, whose status decides as a JSON answer's would.
            state = scope.get("state", {})
            if state.get(NOT_KEPT):
                return False
            failed = state.get(STREAM_FAILED_STATUS)
            outcome = failed if isinstance(failed, int) else status
            return ran and _kept_status(status) and _kept_status(outcome) and size <= max_bytes

        async def capturing_send(message: Message) -> None:
            nonlocal status, content_type, request_id, size
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers", ()):
                    if name == b"content-type":
                        content_type = value.decode("latin-1")
                    elif name == REQUEST_ID:
                        request_id = value.decode("latin-1")
                    elif name in KEPT_HEADERS:
                        kept_headers[name.decode("latin-1")] = value.decode("latin-1")
            elif message["type"] == "http.response.body":
                piece = message.get("body", b"")
                size += len(piece)
                if size <= max_bytes:
                    chunks.append(piece)
                if not message.get("more_body", False):
                    # Stored before the client has the end of it, so an immediate retry
                    # finds the result rather than a claim still in progress.
                    await settle(keep())
            await send(message)

        try:
            await self.app(scope, receive, capturing_send)
        finally:
            if not settled:
                # The response never finished (the client went away, or an error): the
                # request is given up on, and a retry may run it.
                await asyncio.shield(settle(False))


def wait_for_running(headers: Headers) -> bool | None:
    """Whether a retry finding its key's request still running waits for its result
    (`Idempotency-Wait: true`, or no header) or is answered 409 at once (`false`); None for
    any other value (or the header sent twice), which is refused rather than guessed."""
    values = headers.getlist(WAIT_HEADER)
    if not values:
        return True
    if len(values) > 1:
        return None
    return _WAIT_VALUES.get(values[0].strip().lower())


# The values of `Idempotency-Wait` (any case) and whether each waits.
_WAIT_VALUES = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def claimed_key(principal: Principal, key: str) -> str:
    """The key a claim is made under: the client's, or for a credential without
    `history:read` (which may read back only what it made itself) the client's within
    that credential (its API key, or an access token's sign-in), as a digest that fits
    the store's 255 characters: a retry by another credential of the user never gets the
    answer stored for this one, nor this one its."""
    if scopes.HISTORY_READ in principal.scopes:
        return key
    credential = principal.api_key_id or principal.session_id or principal.token_id or ""
    digest = hashlib.blake2b(f"{credential}\0{key}".encode(), digest_size=24).hexdigest()
    return f"credential:{digest}"


def _may_run(gateway: Any, principal: Principal, path: str, data: Any) -> bool:
    """Whether the route would accept this caller with this body (`data`, parsed by
    `_parsed`) as far as access goes: the route's scope, a JSON object within the bounds,
    and a model the credential may use. Otherwise nothing is claimed or replayed (the
    route gives the refusal)."""
    needed = required_scope(path, "POST")
    if needed is not None and needed not in principal.scopes:
        return False
    # A replay reads the caller's history as well as running requests (its route checks).
    if path in CREATING_PATHS and scopes.HISTORY_READ not in principal.scopes:
        return False
    model = _model_of(path, data) if isinstance(data, dict) else None
    return isinstance(model, str) and serves(gateway, principal, model)


def _streams(data: Any) -> bool:
    """Whether the request body (`data`, parsed) asks for a stream (`"stream": true`)."""
    return isinstance(data, dict) and data.get("stream") is True


def _model_of(path: str, data: dict[str, Any]) -> Any:
    """The model a request body names: a replay's `to_model`; in a job given as a batch
    request line (`{"url": ..., "body": {...}}`), its body's `model`; else `model`."""
    if path in CREATING_PATHS:
        return data.get(CREATING_PATHS[path])
    if path == JOBS_PATH and "url" in data:
        inner = data.get("body")
        return inner.get("model") if isinstance(inner, dict) else None
    return data.get("model")


async def _read_body(receive: Receive) -> bytes:
    parts: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.request":
            parts.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(parts)
        elif message["type"] == "http.disconnect":
            return b"".join(parts)


def _replaying(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _replay(claim: Claim, send: Send) -> None:
    headers = [
        (b"content-type", (claim.content_type or "application/json").encode("latin-1")),
        (b"content-length", str(len(claim.body or b"")).encode()),
        (REPLAYED_HEADER.lower().encode(), b"true"),
    ]
    if claim.request_id:
        headers.append((REQUEST_ID, claim.request_id.encode("latin-1")))
    headers.extend(
        (name.encode("latin-1"), value.encode("latin-1"))
        for name, value in claim.headers.items()
        if name.encode("latin-1") in KEPT_HEADERS
    )
    await send(
        {"type": "http.response.start", "status": claim.status_code or 200, "headers": headers}
    )
    await send({"type": "http.response.body", "body": claim.body or b"", "more_body": False})
