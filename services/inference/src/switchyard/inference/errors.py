"""Failures of a request, and how a client of either API sees them.

`ProviderError` is one failed attempt (an upstream's answer, a transport failure, or
Switchyard's own refusal) with what the retry logic needs to know about it. Its `type`
is in the vocabulary of `vendor` (the API it came from); `to_error_info(api)` gives the
`ErrorInfo` of the terminal event in the vocabulary of the client's API: an upstream
error reaches a client of the same API as the upstream said it (status, type, code,
param); a client of the other API gets the same status, with the type its own SDK and
docs use for it (Anthropic's `overloaded_error` for 529, OpenAI's `rate_limit_error`
for 429...), both from `switchyard.common.errorformat`, the one table every service
answers with.

`redact` removes credentials from text an upstream wrote, before it is relayed to a
client or recorded (an upstream that echoes its request headers must not leak a key).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from switchyard.common.errorformat import error_type
from switchyard.common.events import ClientAPI, ErrorInfo


class ProviderError(Exception):
    """A failed attempt, already shaped for the client.

    - `vendor`: whose vocabulary `type` is in (`openai`, `anthropic`), None for
      Switchyard's own errors (their type then follows the status);
    - `retryable`: another deployment may succeed (rate limit, outage, timeout, refused
      credentials), so the request falls back;
    - `retry_same`: retrying the same deployment after a backoff may succeed;
    - `should_retry`: the upstream's `x-should-retry` header (None without one), relayed
      to the client;
    - `unhealthy`: the failure counts against the deployment's circuit breaker (a rate
      limit does not: the deployment is up, only busy);
    - `code`: the code the client gets: an upstream's own (None when it sent none, as
      OpenAI's server errors do), or Switchyard's for its own errors;
    - `kind`: Switchyard's name for an upstream failure whose code is None
      (`upstream_error`, `upstream_rate_limited`...), for metrics and logs only
      (`metric_code`).
    """

    def __init__(
        self,
        status: int,
        type: str | None,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        vendor: str | None = None,
        retryable: bool = False,
        retry_same: bool | None = None,
        unhealthy: bool | None = None,
        retry_after: float | None = None,
        should_retry: bool | None = None,
        kind: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message
        self.code = code
        self.param = param
        self.vendor = vendor
        self.retryable = retryable
        self.retry_same = retryable if retry_same is None else retry_same
        self.unhealthy = retryable if unhealthy is None else unhealthy
        self.retry_after = retry_after
        self.should_retry = should_retry
        self.kind = kind

    @property
    def metric_code(self) -> str:
        """The failure's label in metrics and logs: its code, else its kind, else
        `error`."""
        return self.code or self.kind or "error"

    @property
    def is_timeout(self) -> bool:
        """Whether the error is a timeout (504): the deadline may be why."""
        return self.status == 504

    def to_error_info(self, api: ClientAPI) -> ErrorInfo:
        """The error as a client of `api` should get it."""
        client = api.vendor
        status = self.status
        if client == "openai" and status == 529:
            status = 503  # OpenAI has no 529; its clients know 503 as "overloaded"
        elif client == "anthropic" and status == 503 and self.vendor != "anthropic":
            # Anthropic's API answers "overloaded" with 529 (`overloaded_error`), never 503;
            # an Anthropic upstream's own 503 is relayed as it was.
            status = 529
        if self.type is not None and (self.vendor == client or self.vendor is None):
            kind = self.type
        else:
            kind = error_type(client, status)
        return ErrorInfo(
            status=status,
            type=kind,
            code=self.code,
            param=self.param,
            message=self.message,
            retry_after_s=self.retry_after,
            should_retry=self.should_retry,
        )


def invalid_request(
    message: str, *, param: str | None = None, code: str | None = None
) -> ProviderError:
    """A request refused before any upstream call (400): nothing another deployment of
    the same protocol could do differently."""
    return ProviderError(400, None, message, code=code, param=param)


# --------------------------------------------------------------------------- redaction

_SECRET_PATTERNS = (
    # "Bearer <token>" anywhere (Authorization headers echoed back).
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]{6,}"), r"\1 [redacted]"),
    # Header or field assignments: x-api-key: ..., "api_key": "...", authorization=...
    (
        re.compile(
            r"(?i)\b(x-api-key|api[-_]?key|authorization|access[-_]?token|secret|password)"
            r"(\"?'?\s*[:=]\s*\"?'?)([^\s\"',;}]{4,})"
        ),
        r"\1\2[redacted]",
    ),
    # Provider key formats: sk-..., sk-ant-..., sk-proj-...
    (re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"), "[redacted]"),
)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` without credentials: the given `secrets` verbatim, bearer tokens, key-like
    assignments and provider key formats are replaced by `[redacted]`."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[redacted]")
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text
