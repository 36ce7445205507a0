"""The gateway's HTTP client for its calls to auth and history: pooled, idle connections
let go before those services close them, and a request repeated once, at once, only when
its connection failed in a way that leaves it safe to repeat (httpx-retries policies,
chosen per request by its method or by the caller)."""

from __future__ import annotations

import httpx
from httpx_retries import Retry, RetryTransport

from switchyard.common.http import inject_trace_headers, internal_limits


class ConnectionRetry(Retry):
    """An httpx-retries policy that repeats a request, once and at once, only for what
    happened to its connection (the exceptions it is given), never for an answer: a 503
    is the service's own word. A timeout is not among them: it already waited its time."""

    def is_retryable_status_code(self, status_code: int) -> bool:
        """No status is retried (see the class docstring)."""
        return False


_METHODS = ("GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH", "DELETE")
# A write whose connection was refused (a replica stopping in a rolling restart): no byte
# of it was sent.
WRITE_RETRY = ConnectionRetry(
    total=1, allowed_methods=_METHODS, retry_on_exceptions=(httpx.ConnectError,)
)
# A read, also when it was sent on a pooled connection the server closed under it
# (httpx's RemoteProtocolError, "Server disconnected without sending a response"): a write
# is not repeated then, as it may have been done. A POST that only reads (auth's key
# lookup) asks for this policy itself (the request's `retry` extension).
READ_RETRY = ConnectionRetry(
    total=1,
    allowed_methods=_METHODS,
    retry_on_exceptions=(httpx.ConnectError, httpx.RemoteProtocolError),
)
_READS = frozenset({"GET", "HEAD", "OPTIONS"})


class ConnectionRetryTransport(RetryTransport):
    """httpx-retries' transport with `READ_RETRY` for reads and `WRITE_RETRY` for writes
    (its per-request `retry` extension, which a caller's own still overrides)."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send `request` (see the class docstring)."""
        if request.method not in _READS:
            request.extensions.setdefault("retry", WRITE_RETRY)
        return await super().handle_async_request(request)


def build_http_client() -> httpx.AsyncClient:
    """The production client for every call to auth and history: pooled (200 connections,
    50 kept alive, each idle one closed before those services would close it), a request
    whose connection was refused or a read whose connection the server closed under it
    sent once more (`ConnectionRetryTransport`), carrying the W3C trace context of the
    current span. Never through a proxy named by the environment (`HTTP_PROXY`...): these
    are calls inside the deployment."""
    pooled = httpx.AsyncHTTPTransport(limits=internal_limits(max_connections=200, max_keepalive=50))
    return httpx.AsyncClient(
        transport=ConnectionRetryTransport(pooled, retry=READ_RETRY),
        trust_env=False,
        event_hooks={"request": [inject_trace_headers]},
    )
