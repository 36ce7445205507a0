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
client or recorded (an upstream that echoes its request headers must not leak a key);
`ProviderError.redact` applies it to every string of an error an upstream wrote (its
message, type, code and param). `metric_code` names a failure in metric labels and logs
from a bounded set: an upstream's code outside it is `other`, so an upstream can neither
create a new time series per answer nor put a secret into a label.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from switchyard.common.bus.base import EventTooLargeError
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

    An upstream's `type`, `code` and `param` are its own text, as untrusted as its
    message: `redact` removes credentials from all of them before the error is relayed,
    recorded or logged.
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
        details: dict[str, Any] | None = None,
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
        self.details = details

    @property
    def metric_code(self) -> str:
        """The failure's label in metrics and logs: its code, else its kind, else
        `error`. An upstream's code (`vendor` set) is used only when it is one of
        `KNOWN_UPSTREAM_CODES`, else `other`: the label's values stay a bounded set, and
        never hold what an upstream echoed (a key)."""
        if self.code is None:
            return self.kind or "error"
        if self.vendor is None or self.code in KNOWN_UPSTREAM_CODES:
            return self.code
        return "other"

    @property
    def code_label(self) -> str:
        """The client's code as a metric label: `metric_code` for an error with a code,
        empty without one."""
        return "" if self.code is None else self.metric_code

    def redact(self, secrets: Iterable[str]) -> ProviderError:
        """The error with `redact` applied to every string an upstream may have written
        (message, type, code, param), `secrets` being the deployment's credentials; the
        error itself, changed in place."""
        secrets = tuple(secrets)
        self.message = redact(self.message, secrets)
        self.args = (self.message,)
        self.type = _redacted(self.type, secrets)
        self.code = _redacted(self.code, secrets)
        self.param = _redacted(self.param, secrets)
        self.details = redacted_details(self.details, secrets)
        return self

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
        code, param, message = self.code, self.param, self.message
        if self.vendor is not None and self.vendor != client and status == 400:
            overflow = context_overflow(self.vendor, code, message)
            if overflow is not None:
                code, param, message = overflow.words(api)
        if client == "openai" and self.vendor == "anthropic" and status == 429 and code is None:
            # OpenAI's code for a rate limit, which OpenAI's clients branch on (Anthropic
            # has no codes); an upstream's own code, where it gave one, is kept.
            code = "rate_limit_exceeded"
        return ErrorInfo(
            status=status,
            type=kind,
            code=code,
            param=param,
            message=message,
            retry_after_s=self.retry_after,
            should_retry=self.should_retry,
            details=self.details,
        )


# A request longer than the model's context window, as each API words it: OpenAI's 400
# `context_length_exceeded` ("This model's maximum context length is 128000 tokens.
# However, your messages resulted in 130000 tokens...", vLLM's "...you requested 5000
# tokens (4000 in the messages, 1000 in the completion)..."), Anthropic's 400
# `invalid_request_error` "prompt is too long: 210000 tokens > 200000 maximum". Clients
# act on them (Claude Code compacts the conversation on Anthropic's words; OpenAI's SDK
# users and Codex on the code), so a client of the other API gets its own API's words.
_OPENAI_OVERFLOW_CODE = "context_length_exceeded"
_OPENAI_LIMIT = re.compile(r"maximum context length is (\d+) tokens")
_OPENAI_ASKED = re.compile(r"(?:resulted in|requested) (\d+) tokens")
_ANTHROPIC_OVERFLOW = re.compile(r"^prompt is too long(?:: (\d+) tokens > (\d+) maximum)?")
# Anthropic's words when the input fits but not with `max_tokens` on top.
_ANTHROPIC_WITH_OUTPUT = re.compile(
    r"^input length and `?max_tokens`? exceed context limit: (\d+) \+ (\d+) > (\d+)"
)


class ContextOverflow:
    """A context-window overflow an upstream reported: the tokens asked for and the
    model's limit, where its message said them (None where not)."""

    def __init__(self, asked: int | None, limit: int | None, message: str) -> None:
        self.asked = asked
        self.limit = limit
        self.message = message

    def words(self, api: ClientAPI) -> tuple[str | None, str | None, str]:
        """(code, param, message) of this overflow in the words of `api`'s vendor."""
        if api.vendor == "anthropic":
            if self.asked is not None and self.limit is not None:
                return None, None, f"prompt is too long: {self.asked} tokens > {self.limit} maximum"
            return None, None, f"prompt is too long: {self.message}"
        param = "messages" if api is ClientAPI.OPENAI_CHAT_COMPLETIONS else "input"
        if self.asked is not None and self.limit is not None:
            message = (
                f"This model's maximum context length is {self.limit} tokens. However, your "
                f"messages resulted in {self.asked} tokens. Please reduce the length of the "
                "messages."
            )
        else:
            message = f"This model's maximum context length was exceeded: {self.message}"
        return _OPENAI_OVERFLOW_CODE, param, message


def context_overflow(vendor: str, code: str | None, message: str) -> ContextOverflow | None:
    """The context-window overflow a 400 of `vendor` (`openai`, `anthropic`) with `code`
    and `message` reports, None for any other error."""
    limit = _OPENAI_LIMIT.search(message) if vendor == "openai" else None
    # vLLM answers with OpenAI's words but no such code (`"code": 400`).
    if vendor == "openai" and (code == _OPENAI_OVERFLOW_CODE or limit is not None):
        asked = _OPENAI_ASKED.search(message)
        return ContextOverflow(
            int(asked.group(1)) if asked else None,
            int(limit.group(1)) if limit else None,
            message,
        )
    if vendor == "anthropic":
        with_output = _ANTHROPIC_WITH_OUTPUT.match(message)
        if with_output is not None:
            prompt, output, window = (int(group) for group in with_output.groups())
            return ContextOverflow(prompt + output, window, message)
        matched = _ANTHROPIC_OVERFLOW.match(message)
        if matched is not None:
            tokens, most = matched.groups()
            return ContextOverflow(
                int(tokens) if tokens else None, int(most) if most else None, message
            )
    return None


# The error codes OpenAI's and Anthropic's APIs document (and Google's canonical statuses,
# which Vertex AI answers with where a code belongs): the only upstream codes metric
# labels and logs name; any other is `other`.
KNOWN_UPSTREAM_CODES = frozenset(
    {
        "rate_limit_exceeded",
        "insufficient_quota",
        "context_length_exceeded",
        "invalid_prompt",
        "invalid_api_key",
        "invalid_request_error",
        "invalid_value",
        "invalid_type",
        "invalid_image",
        "invalid_image_format",
        "invalid_base64_image",
        "invalid_image_url",
        "image_too_large",
        "image_too_small",
        "image_parse_error",
        "image_content_policy_violation",
        "image_file_too_large",
        "unsupported_image_media_type",
        "empty_image_file",
        "failed_to_download_image",
        "image_file_not_found",
        "invalid_image_mode",
        "unsupported_parameter",
        "unsupported_value",
        "missing_required_parameter",
        "model_not_found",
        "content_policy_violation",
        "content_filter",
        "server_error",
        "vector_store_timeout",
        "string_above_max_length",
        "array_above_max_length",
        "integer_above_max_value",
        "integer_below_min_value",
        "decimal_above_max_value",
        "decimal_below_min_value",
        # Google's canonical status names.
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    }
)


def invalid_request(
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    details: dict[str, Any] | None = None,
) -> ProviderError:
    """A request refused before any upstream call (400): nothing another deployment of
    the same protocol could do differently."""
    return ProviderError(400, None, message, code=code, param=param, details=details)


def response_too_large(reason: BaseException, what: str = "reply") -> ProviderError:
    """The 502 `response_too_large` of an upstream's `what` (its reply, or part of its
    stream) that the bus refuses to carry (`reason`: larger than the bus takes, or nested
    deeper than an event may be): no retry could deliver it."""
    why = (
        "it is larger than Switchyard carries"
        if isinstance(reason, EventTooLargeError)
        else "Switchyard cannot carry it"
    )
    return ProviderError(
        502,
        None,
        f"The upstream's {what} could not be delivered: {why} ({reason}).",
        code="response_too_large",
    )


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


def _redacted(text: str | None, secrets: Iterable[str]) -> str | None:
    return None if text is None else redact(text, secrets)


# An Anthropic error's `details` larger than this (encoded) is not relayed: the SDKs read
# a code and a short list from it.
MAX_DETAILS_BYTES = 4096


def redacted_details(details: Any, secrets: Iterable[str] = ()) -> dict[str, Any] | None:
    """An upstream error's `details` object with `redact` applied to its whole text, or
    None when it is not an object, is larger than MAX_DETAILS_BYTES encoded, or is no
    longer JSON once redacted."""
    if not isinstance(details, dict):
        return None
    try:
        text = json.dumps(details, ensure_ascii=False)
    except (TypeError, ValueError):
        return None
    if len(text.encode()) > MAX_DETAILS_BYTES:
        return None
    try:
        cleaned = json.loads(redact(text, secrets))
    except ValueError:
        return None
    return cleaned if isinstance(cleaned, dict) else None
