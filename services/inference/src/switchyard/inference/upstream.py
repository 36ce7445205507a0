"""The wire to one deployment: POST a JSON body to a path of the provider's API through
its official SDK client (its authentication, base URL, timeouts and error classes) and
read the answer as raw JSON or as Server-Sent Events; every failure becomes a
`ProviderError` carrying the upstream's own status, type, code and param.

The plain `openai` and `anthropic` kinds skip the SDK's per-call request building (its
options model, header merging, user-agent and platform look-ups, stdlib JSON), which
cost more CPU than anything else in the call: what the client sends with every request
(base URL, key header, user agent, `x-stainless-*`, `anthropic-version`) is read from it
once, and each request merges in its own headers as the SDK would, serialises the body
with orjson and goes out on aiohttp directly (`DirectRequests`), where the SDK's aiohttp
client would build it twice (as an httpx request, then as an aiohttp one). The headers,
path and body on the wire are the SDK's; an error status maps through the same
`status_error` as the SDK's exceptions. The platform kinds (`platforms.py`),
whose authentication runs per call, keep the SDK's `post`.

Replies are read as bytes and parsed once with orjson (never into SDK models: those
would cost more CPU than the rest of a request's path). Streams are parsed with
httpx-sse, which splits lines only where the SSE format does (CR, LF, CRLF): text holding
U+2028, U+2029 or U+0085 survives. The SDKs' own retries are off (`max_retries=0`): the
retry logic honours the request's deadline and the circuit breakers. Redirects are never
followed: an upstream answering 3xx fails like any other bad answer, so a key is never
sent to another host.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import email.utils
import functools
import http
import json
import math
import re
import ssl
import sys
import time
import urllib.request
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

import aiohttp
import httpx2
import openai
import structlog
import yarl
from aiohttp.http_exceptions import ContentEncodingError
from httpx_sse import EventSource, SSEError

from switchyard.common import exactjson
from switchyard.common.errorformat import status_of
from switchyard.common.offloop import off_loop
from switchyard.common.routing import Deployment
from switchyard.inference.errors import ProviderError, redact, redacted_details

if TYPE_CHECKING:
    import anthropic

log = structlog.get_logger("switchyard.inference.upstream")

Protocol_ = Literal["openai", "anthropic"]

# Deployment kinds whose client is the `anthropic` SDK's.
ANTHROPIC_SDK_KINDS = frozenset({"anthropic", "bedrock", "vertex"})


def anthropic_sdk() -> ModuleType:
    """The `anthropic` package, imported on first use: importing it takes about 40 MiB and
    one to two seconds, which a process routing to no Anthropic-protocol deployment never
    pays. `preload_sdks` imports it in a worker thread before it is needed."""
    import anthropic

    return anthropic


def needs_anthropic_sdk(deployments: Iterable[Deployment]) -> bool:
    """Whether any of `deployments` is reached through the `anthropic` SDK."""
    return any(deployment.provider in ANTHROPIC_SDK_KINDS for deployment in deployments)


async def preload_sdks(deployments: Iterable[Deployment]) -> None:
    """Import the SDKs `deployments` need and build the TLS context their clients share
    (`tls_context`: the SDKs' HTTP stack imported, the CA bundle loaded) in a worker
    thread, so that no request does either on the event loop (the clients themselves are
    made on first use, in well under a millisecond each)."""
    deployments = list(deployments)
    if needs_anthropic_sdk(deployments) and "anthropic" not in sys.modules:
        await asyncio.to_thread(anthropic_sdk)
    if deployments:
        await asyncio.to_thread(tls_context)


def _sdk_classes(*names: str) -> tuple[type, ...]:
    """The classes called `names` (`APIStatusError`, `Omit`...) in each SDK this process
    has imported: an SDK never imported cannot have made the object being classified. A
    name an SDK lacks, or an SDK another thread is still importing, adds nothing."""
    sdks = (openai, sys.modules.get("anthropic"))
    found = (getattr(sdk, name, None) for sdk in sdks if sdk is not None for name in names)
    return tuple(cls for cls in found if isinstance(cls, type))


@dataclass(frozen=True)
class SSE:
    """One Server-Sent Event of an upstream stream: its `event` name (None when the
    stream names none) and its JSON `data` parsed."""

    event: str | None
    data: dict[str, Any]


class Upstream(Protocol):
    """One deployment's API, spoken in its own protocol."""

    deployment: Deployment

    @property
    def protocol(self) -> Protocol_:
        """The wire protocol the deployment speaks (`openai` or `anthropic`)."""
        ...

    async def send(
        self, path: str, body: dict[str, Any], headers: Mapping[str, str], timeout_s: float
    ) -> dict[str, Any]:
        """POST `body`; the JSON object answered. Raises ProviderError."""
        ...

    def stream(
        self, path: str, body: dict[str, Any], headers: Mapping[str, str], timeout_s: float
    ) -> AsyncGenerator[SSE, None]:
        """POST `body`; the events of the streamed answer, until the stream ends (an
        OpenAI `[DONE]` is not yielded). Raises ProviderError, also mid-stream."""
        ...

    async def aclose(self) -> None:
        """Close the client's connections; the upstream is not used after."""
        ...


# --------------------------------------------------------------------------- errors


def should_retry(headers: Any) -> bool | None:
    """The upstream's `x-should-retry` answer header as a bool (`true` or `false`, any
    case), None when it sent none or another value. OpenAI's and Anthropic's APIs send it
    to tell their SDKs whether to retry an error; the SDKs read it before their own rules."""
    value = headers.get("x-should-retry")
    if value is None:
        return None
    return {"true": True, "false": False}.get(value.strip().lower())


# The longest wait a provider's Retry-After is taken for (seconds, a day): a longer one
# (`1e400`, `inf`, a date years ahead) is a day; `nan` is no answer.
MAX_RETRY_AFTER_S = 86_400.0


def _wait(seconds: float) -> float | None:
    if math.isnan(seconds):
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER_S)


def retry_after(headers: Any) -> float | None:
    """Seconds from `retry-after-ms`, `retry-after` (seconds or an HTTP date), from 0 to
    `MAX_RETRY_AFTER_S`; None when neither says a number."""
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            wait = _wait(float(value) / 1000)
        except ValueError:
            wait = None
        if wait is not None:
            return wait
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return _wait(float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return _wait(when.timestamp() - time.time())


# The limits whose refill time a 429 may name without a Retry-After: OpenAI's (and the
# OpenAI-compatible servers' that copy it) `x-ratelimit-remaining-<limit>` with
# `x-ratelimit-reset-<limit>`, a Go duration ("1s", "6m0s", "20ms"); Anthropic's
# `anthropic-ratelimit-<limit>-remaining` with `...-reset`, an RFC 3339 instant. Sources:
# OpenAI's and Anthropic's rate-limit guides (response headers).
_OPENAI_LIMITS = ("requests", "tokens")
_ANTHROPIC_LIMITS = ("requests", "tokens", "input-tokens", "output-tokens")
_GO_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_GO_DURATION_UNIT_S = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,  # Go writes the micro sign; it reads the Greek mu too
    "\u03bcs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def _go_duration_s(value: str) -> float | None:
    """Seconds in a Go duration string (`time.Duration.String()`: "1h2m3.5s", "20ms");
    None for anything else."""
    value = value.strip()
    parts = _GO_DURATION_PART.findall(value)
    if not parts or "".join(number + unit for number, unit in parts) != value:
        return None
    return sum(float(number) * _GO_DURATION_UNIT_S[unit] for number, unit in parts)


def _instant_wait_s(value: str) -> float | None:
    """Seconds from now to an RFC 3339 instant (`2026-12-07T15:04:05Z`); None if it is
    not one."""
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    return when.timestamp() - time.time()


def _exhausted(headers: Any, name: str) -> bool:
    value = headers.get(name)
    try:
        return value is not None and float(value) <= 0
    except ValueError:
        return False


def rate_limit_reset(headers: Any) -> float | None:
    """Seconds until the limits a 429 says are used up refill, from the rate-limit
    headers OpenAI and Anthropic send beside it (the longest, when several are at 0),
    from 0 to `MAX_RETRY_AFTER_S`; None when no limit says it is at 0 with a readable
    reset. For an upstream that sends no Retry-After: its client is told how long the
    wait really is, and a wait that outlives the request is not slept through."""
    waits: list[float | None] = []
    for limit in _OPENAI_LIMITS:
        reset = headers.get(f"x-ratelimit-reset-{limit}")
        if reset is not None and _exhausted(headers, f"x-ratelimit-remaining-{limit}"):
            waits.append(_go_duration_s(reset))
    for limit in _ANTHROPIC_LIMITS:
        reset = headers.get(f"anthropic-ratelimit-{limit}-reset")
        if reset is not None and _exhausted(headers, f"anthropic-ratelimit-{limit}-remaining"):
            waits.append(_instant_wait_s(reset))
    known = [wait for wait in waits if wait is not None and not math.isnan(wait)]
    # A limit already refilled (a reset of 0, or an instant past by this host's clock)
    # says nothing of how long to wait: the retry's own backoff applies.
    return _wait(max(known)) if known and max(known) > 0 else None


# The longest error message kept whole (characters): a longer one is cut there.
_TEXT_MESSAGE_MAX = 1000
# How deep an error body's objects are looked into for its message and fields.
_ERROR_DEPTH = 4
# A body decoded with more than this share of its characters undecodable (U+FFFD) or
# control characters is binary, not text: it is no message.
_GARBLED_SHARE = 0.1
# The members an error object keeps its message in, by the servers that send them:
# OpenAI's and Anthropic's `message`, FastAPI's `detail`, Pydantic's `msg`, and a string
# `error` (`{"error": "model 'x' not found"}`).
# `errors`: GraphQL's list of error objects, as Cloudflare's API and gateways answer.
_MESSAGE_MEMBERS = ("message", "detail", "msg", "error", "errors")


def _error_object(body: object) -> dict[str, Any]:
    """The upstream's error object in `body`, the error reply as the SDK keeps it
    (`APIStatusError.body`: OpenAI's SDK keeps the inner object, Anthropic's the whole
    `{"type": "error", "error": {...}}`), with a `message` only when one was found.

    Error objects nested in `error` members are unwrapped (Anthropic's envelope, a proxy
    wrapping an upstream's whole reply: `{"error": {"error": {...}}}`); `type`, `code`
    and `param` are the innermost object's. Google's APIs (Gemini's OpenAI-compatible
    endpoint, Vertex AI) may wrap theirs in a list,
    `[{"error": {"code": 400, "message", "status": "INVALID_ARGUMENT"}}]`, with a numeric
    `code` and the error's name in `status`: that name is taken as the `code`; a numeric
    `code` alone (vLLM's `"code": 400`) is its text. The message is the first readable
    one from the innermost object outwards (`_message_of`: NestJS's list `message`,
    FastAPI's `detail` string, object or validation list...). A body that is text (any
    reply that is not JSON) is the message when it reads as one (`_text_message`)."""
    if isinstance(body, list) and body and isinstance(body[0], dict):
        body = body[0]
    if isinstance(body, str):
        text = _text_message(body)
        return {} if text is None else {"message": text}
    if not isinstance(body, dict):
        return {}
    levels = [body]
    while len(levels) < _ERROR_DEPTH and isinstance(levels[-1].get("error"), dict):
        levels.append(levels[-1]["error"])
    error = dict(levels[-1])
    error.pop("message", None)
    message = next(
        (found for level in reversed(levels) if (found := _message_of(level)) is not None),
        None,
    )
    if message is not None:
        error["message"] = message
    code = error.get("code")
    if not isinstance(code, str):
        if isinstance(error.get("status"), str):
            error["code"] = error["status"]
        elif isinstance(code, int) and not isinstance(code, bool):
            error["code"] = str(code)
    return error


def _message_of(value: object, depth: int = 0) -> str | None:
    """The readable message in a JSON `value` of an error body, None when it holds none:
    a string (cleaned, `_clean`); a list's messages joined by "; " (NestJS's list of
    strings, FastAPI's validation errors, each as `loc: msg`); an object's first message
    member (`_MESSAGE_MEMBERS`). Numbers, booleans and null are no message."""
    if depth > _ERROR_DEPTH:
        return None
    if isinstance(value, str):
        return _clean(value)
    if isinstance(value, list):
        parts = [part for item in value[:50] if (part := _message_of(item, depth + 1)) is not None]
        return _clean("; ".join(parts)) if parts else None
    if not isinstance(value, dict):
        return None
    for member in _MESSAGE_MEMBERS:
        found = _message_of(value.get(member), depth + 1)
        if found is not None:
            loc = value.get("loc")
            if member == "msg" and isinstance(loc, list) and loc:
                found = _clean(".".join(str(part) for part in loc) + f": {found}")
            return found
    return None


def _clean(text: str) -> str | None:
    """`text` as a message: runs of whitespace made one space, characters that do not
    print (control and format characters, lone surrogates) dropped, cut at
    `_TEXT_MESSAGE_MAX` characters; None when nothing is left."""
    text = " ".join(text[: _TEXT_MESSAGE_MAX * 4].split())
    if not text.isprintable():
        text = "".join(char for char in text if char.isprintable())
    if len(text) > _TEXT_MESSAGE_MAX:
        text = text[:_TEXT_MESSAGE_MAX] + "…"
    return text or None


def _text_message(text: str) -> str | None:
    """A reply's text as a message, None when it is none: empty, markup (an HTML error
    page says nothing a client can use), JSON the parser refused (nested too deep), or
    binary (more than `_GARBLED_SHARE` of it undecodable or control characters)."""
    text = text.strip()
    if not text or text.startswith(("<", "{", "[")):
        return None
    sample = text[: _TEXT_MESSAGE_MAX * 4]
    garbled = sum(
        1 for char in sample if char == "\ufffd" or (not char.isprintable() and not char.isspace())
    )
    if garbled > len(sample) * _GARBLED_SHARE:
        return None
    return _clean(sample)


def _reason(status: int) -> str:
    """The message of an error reply that holds none: its status and reason phrase."""
    try:
        return f"HTTP {status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _redacted_str(value: Any, secrets: tuple[str, ...]) -> str | None:
    """`value` when it is a non-empty string, with credentials redacted; else None."""
    text = _str(value)
    return None if text is None else redact(text, secrets)


def unreachable(deployment: str) -> ProviderError:
    """The 502 `upstream_unreachable` of a call to `deployment` (its name) whose
    connection failed: retryable."""
    return ProviderError(
        502,
        None,
        f"Upstream deployment {deployment!r} is unreachable.",
        code="upstream_unreachable",
        retryable=True,
    )


def map_sdk_error(
    exc: openai.OpenAIError | anthropic.AnthropicError | httpx2.HTTPError,
    deployment: Deployment,
    protocol: Protocol_,
) -> ProviderError:
    """What the client gets for an SDK (or mid-stream transport) failure of a call to
    `deployment`, which speaks `protocol`; an HTTP error status is mapped by
    `status_error`."""
    name = deployment.name
    if not isinstance(exc, _sdk_classes("APIStatusError")) and _connection_failure_under(exc):
        return unreachable(name)
    if isinstance(exc, (*_sdk_classes("APITimeoutError"), httpx2.TimeoutException)):
        return timeout_error(name)
    if isinstance(exc, (*_sdk_classes("APIConnectionError"), httpx2.TransportError)):
        return unreachable(name)
    if not isinstance(exc, _sdk_classes("APIStatusError")):
        return ProviderError(
            502,
            None,
            f"Upstream deployment {name!r} failed: {redact(str(exc), _secrets(deployment))}",
            code="upstream_error",
            retryable=True,
        )
    status = cast("openai.APIStatusError | anthropic.APIStatusError", exc)
    body = status.body
    try:
        # The whole reply, as direct requests read it: OpenAI's SDK keeps only its
        # `error` member (`sdk_error_body`).
        body, _ = sdk_error_body(status.status_code, status.response.text, protocol)
    except httpx2.ResponseNotRead:
        pass  # a body never read: the SDK's (None) is all there is
    return status_error(
        status.status_code,
        status.response.headers,
        body,
        status.message,
        deployment,
        protocol,
    )


def _underlying(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first exception of type `kind` among those `exc` was raised from or during
    (`__cause__`, else `__context__`), a few wrappers deep at most (never round a cycle);
    None when there is none."""
    cause = exc.__cause__ or exc.__context__
    for _ in range(8):
        if cause is None or isinstance(cause, kind):
            return cause
        cause = cause.__cause__ or cause.__context__
    return None


def _undecodable(exc: BaseException) -> bool:
    """Whether `exc` is aiohttp failing to decode a body by its `content-encoding` (one
    that was not asked for, such as `br`, whose response aiohttp refuses whatever its
    status, or data that is not in it): a bad reply, not a broken connection."""
    return isinstance(exc, aiohttp.ClientError) and (
        _underlying(exc, ContentEncodingError) is not None
    )


def _connection_failure_under(exc: BaseException) -> bool:
    """Whether `exc` was caused by aiohttp failing to connect or losing the connection
    (not by a timeout): the SDKs' aiohttp transport reports those as httpx's
    `ConnectTimeout`, which the SDKs turn into a timeout, but nothing timed out."""
    cause = _underlying(exc, aiohttp.ClientConnectionError)
    return cause is not None and not isinstance(cause, TimeoutError)


def sdk_error_body(status: int, text: str, protocol: Protocol_) -> tuple[object, str]:
    """The `body` of an error reply with HTTP `status` whose text is `text`, and the
    `message` the SDK of `protocol` gives its `APIStatusError` (the SDKs'
    `_make_status_error_from_response`). The body is the whole reply, JSON parsed, else
    the text stripped, as Anthropic's SDK keeps it: OpenAI's SDK keeps only an `error`
    member, which loses a message kept beside it (NestJS's `{"message": [...], "error":
    "Bad Request"}`) and `{"error": null}` whole. The message starts `Error code:
    <status>`, followed by the upstream's message (OpenAI) or the body (Anthropic, which
    gives a text reply as it is)."""
    text = text.strip()
    head = f"Error code: {status}"
    try:
        # The stdlib's parser, as the SDKs use: the same body (and message) as through
        # the SDK for any reply, even one orjson reads otherwise (integers beyond 64 bits).
        parsed = json.loads(text)
    except (ValueError, RecursionError):
        # RecursionError: JSON nested deeper than the parser goes, which the SDKs, whose
        # `except Exception` catches it, keep as text too.
        return text, (text or head) if protocol == "anthropic" else head
    if protocol == "anthropic":
        return parsed, f"{head} - {parsed}"
    error = parsed.get("error", parsed) if isinstance(parsed, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if isinstance(message, str) and message:
        head = f"{head} - {message}"
    return parsed, head


def status_error(
    status: int,
    headers: Any,
    body: object,
    sdk_message: str,
    deployment: Deployment,
    protocol: Protocol_,
) -> ProviderError:
    """What the client gets for an upstream's answer with HTTP `status` >= 300 (never
    followed), its response `headers` (for `retry-after`) and `body` as the SDK keeps it
    (`APIStatusError.body`: JSON parsed, else text; see `sdk_error_body`), `sdk_message`
    being the message the SDK's exception carries. That message is never relayed: the
    anthropic SDK's is the body's Python repr (`{'foo': 1}`), OpenAI's only `Error code:
    <status>` when the body names no message; the client gets the body's own message
    (`_error_object`), else the status and its reason (`_reason`), the same whichever
    protocol and path (SDK or direct) carried it. The upstream's own type, code and param
    are kept for the statuses the client can act on; credentials in all four (not only
    the message: an upstream may echo its key in any of them) are redacted."""
    del sdk_message  # kept in the signature: it is what an SDK's exception carries
    name = deployment.name
    error = _error_object(body)
    secrets = _secrets(deployment)
    message = redact(_str(error.get("message")) or _reason(status), secrets)
    upstream_type = _redacted_str(error.get("type"), secrets)
    code = _redacted_str(error.get("code"), secrets)
    param = _redacted_str(error.get("param"), secrets)
    # Anthropic's machine-readable part (`thread_not_found`...), which its SDKs recover by.
    details = redacted_details(error.get("details"), secrets)
    wait = retry_after(headers)
    retry = should_retry(headers)
    if 300 <= status < 400:
        return ProviderError(
            502,
            None,
            f"Upstream deployment {name!r} answered with a redirect (HTTP {status}), "
            "which is never followed.",
            code="upstream_redirect",
            retryable=True,
            retry_same=False,
        )
    if status in (401, 403):
        return credentials_refused(name, status, message, details)
    if status == 429:
        # Busy, not broken: retried (after Retry-After) and fallen back from, but it
        # never counts against the circuit breaker.
        return ProviderError(
            429,
            upstream_type,
            message,
            # An upstream's code reaches the client as it was, null included.
            code=code,
            kind="upstream_rate_limited",
            param=param,
            vendor=protocol,
            retryable=True,
            # The upstream's word that waiting will not help (a quota used up) holds for
            # this deployment; another may still take the request.
            retry_same=retry is not False,
            unhealthy=False,
            retry_after=wait if wait is not None else rate_limit_reset(headers),
            should_retry=retry,
            details=details,
        )
    if 400 <= status < 500 and status != 408:
        return ProviderError(
            status,
            upstream_type,
            message,
            code=code,
            param=param,
            vendor=protocol,
            should_retry=retry,
            details=details,
        )
    # A server error, or a 408 (the upstream gave up waiting for the request): retried
    # and fallen back from, as a timeout is, but what reaches the client is the
    # upstream's own answer.
    return ProviderError(
        status,
        upstream_type,
        message,
        code=code,
        kind="upstream_overloaded" if status == 529 else "upstream_error",
        param=param,
        vendor=protocol,
        retryable=True,
        retry_same=retry is not False,
        retry_after=wait,
        should_retry=retry,
        details=details,
    )


# The status a Responses API error `code` stands for (OpenAI's Responses reference, the
# `error` event and a failed response's `error.code`); other codes are server errors.
RESPONSES_CODE_STATUS = {
    "rate_limit_exceeded": 429,
    "insufficient_quota": 429,
    "invalid_prompt": 400,
    "context_length_exceeded": 400,
    "vector_store_timeout": 504,
    # Switchyard's credentials were refused: nothing the client can fix (as for a 401).
    "invalid_api_key": 502,
}
# Codes of an input the upstream could not use (`invalid_image`, `image_too_large`,
# `unsupported_image_media_type`, `failed_to_download_image`...): the client's to fix.
_CLIENT_CODE_PREFIXES = ("invalid_", "image_", "unsupported_", "empty_", "failed_to_download")


# The error types of OpenAI's 429s (the limit hit: requests, tokens, the account's quota).
_OPENAI_LIMIT_TYPES = {"requests": 429, "tokens": 429, "insufficient_quota": 429}


def responses_code_status(code: str | None) -> int:
    """The HTTP status a Responses API error `code` stands for: 429, 400 or 504 as listed
    in RESPONSES_CODE_STATUS, 400 for a code naming a bad input, else 500."""
    if code is None:
        return 500
    status = RESPONSES_CODE_STATUS.get(code)
    if status is not None:
        return status
    return 400 if code.startswith(_CLIENT_CODE_PREFIXES) else 500


def credentials_refused(
    deployment: str | None,
    status: int,
    message: str,
    details: dict[str, Any] | None,
    *,
    in_stream: bool = False,
) -> ProviderError:
    """The 502 `upstream_auth_failed` of an upstream refusing Switchyard's credentials
    for `deployment` (its name, when known) with HTTP `status` 401 or 403, or the error
    type or code standing for them inside its stream (`in_stream`): the key is wrong, or
    lacks permission (a model the account cannot use, its spend limit reached). The caller
    can do nothing about it: `x-should-retry: false` stops the SDKs' retries, which could
    not help either; another deployment may (`retryable`, not `retry_same`).

    The upstream's `message` is logged for the operator, never relayed: it names the
    provider account (an AWS account and role, a GCP project, an OpenAI organization,
    the end of a masked key), which no tenant is to read. Of its `details`, only
    Anthropic's `error_code` is kept (its SDKs' typed exceptions read it)."""
    refusal = "refused Switchyard's credentials" if status == 401 else "refused access"
    where = f"upstream deployment {deployment!r}" if deployment else "the upstream"
    how = "in its stream" if in_stream else f"with HTTP {status}"
    log.warning(
        "upstream refused Switchyard's credentials",
        deployment=deployment,
        status=status,
        in_stream=in_stream,
        upstream_message=message,
    )
    error_code = details.get("error_code") if details else None
    return ProviderError(
        502,
        None,
        f"{where[0].upper()}{where[1:]} {refusal} ({how}); its operator must fix the "
        "deployment's credentials.",
        code="upstream_auth_failed",
        retryable=True,
        retry_same=False,
        should_retry=False,
        details={"error_code": error_code} if isinstance(error_code, str) else None,
    )


# Error types of a stream that stand for an upstream refusing Switchyard's credentials.
_CREDENTIALS_REFUSED_TYPES = {"authentication_error": 401, "permission_error": 403}


def stream_error(deployment: Deployment, protocol: Protocol_, error: Any) -> ProviderError:
    """An error the upstream reported inside a stream (after its 200), with the status
    its type stands for (an Anthropic `overloaded_error` is a 529). A Responses API
    `error` event is the error itself (`type: "error"`, its `code`, `message`, `param`):
    its status is the one its code stands for. An OpenAI-protocol error whose code has a
    status of its own (`rate_limit_exceeded` under the type `requests` or `tokens`, as
    OpenAI's 429s carry it) has that status whatever its type says."""
    error = error if isinstance(error, dict) else {}
    kind = _str(error.get("type"))
    code = _str(error.get("code"))
    if kind == "error":
        kind = None
        status = responses_code_status(code)
    else:
        by_code = None
        if protocol == "openai":
            by_code = RESPONSES_CODE_STATUS.get(code or "") or _OPENAI_LIMIT_TYPES.get(kind or "")
        status = by_code or (status_of(protocol, kind) if kind else None) or 500
    if kind == "overloaded_error":
        status = 529
    if kind == "timeout_error":  # the upstream's own timeout: a 504 (retried), never a 408
        status = 504
    if kind in ("server_error", "api_error"):
        status = 500
    retryable = status >= 500 or status == 429
    # Every string the upstream wrote is redacted, not only the message: it may echo its
    # key in any of them. Its type and code are read unredacted above (a key never maps
    # to a status).
    secrets = _secrets(deployment)
    message = redact(_str(error.get("message")) or "The stream failed.", secrets)
    # Anthropic's machine-readable part, which its SDKs recover by, as for a status.
    details = redacted_details(error.get("details"), secrets)
    # Anthropic's word, and many OpenAI-compatible servers': as the same refusal answered
    # with its status.
    refused = _CREDENTIALS_REFUSED_TYPES.get(kind or "")
    if code == "invalid_api_key":  # a Responses stream's `error` event says it so
        refused = 401
    if refused is not None or status in (401, 403):
        return credentials_refused(
            deployment.name, refused or status, message, details, in_stream=True
        )
    return ProviderError(
        status,
        _redacted_str(kind, secrets),
        message,
        code=_redacted_str(code, secrets),
        kind="upstream_stream_error",
        param=_redacted_str(error.get("param"), secrets),
        vendor=protocol,
        retryable=retryable,
        unhealthy=status >= 500,
        details=details,
    )


def timeout_error(deployment: str) -> ProviderError:
    """The 504 `upstream_timeout` of a call to `deployment` (its name) that outlived its
    timeout: retryable, and another deployment may be faster."""
    return ProviderError(
        504,
        None,
        f"Upstream deployment {deployment!r} timed out.",
        code="upstream_timeout",
        retryable=True,
    )


def cut_short(deployment: str) -> ProviderError:
    """The 502 `upstream_unreachable` of a stream from `deployment` (its name) whose body
    ended before the stream's own end: the same failure as a connection lost half-way in
    the chunked encoding, which HTTP itself detects (a body delimited by the connection's
    close cannot tell). Retryable."""
    return ProviderError(
        502,
        None,
        f"Upstream deployment {deployment!r} ended its answer before the end of its stream.",
        code="upstream_unreachable",
        retryable=True,
    )


# The events that end a stream, by their `type`: Anthropic's Messages
# (https://docs.anthropic.com/en/docs/build-with-claude/streaming) and OpenAI's Responses
# (https://platform.openai.com/docs/api-reference/responses-streaming). A Chat Completions
# stream ends with `data: [DONE]`.
ENDING_EVENT_TYPES = frozenset(
    {"message_stop", "response.completed", "response.incomplete", "response.failed"}
)


class StreamEnd:
    """Whether an upstream stream reached its own end, from its events' JSON `data`: an
    ending event (`ENDING_EVENT_TYPES`), a Chat Completions stream's usage chunk (no
    choices, `usage`: OpenAI sends it last, before `[DONE]`), or a Chat Completions stream
    whose every choice has its `finish_reason` (some OpenAI-compatible servers end a
    stream without `[DONE]`; nothing of the answer is missing then, at most the usage
    chunk after it, which the caller estimates when it is missing)."""

    __slots__ = ("ended", "_unfinished", "_finished")

    def __init__(self) -> None:
        self.ended = False
        self._unfinished: set[Any] = set()
        self._finished = False

    def see(self, data: dict[str, Any]) -> None:
        """Take the next event's `data`."""
        if data.get("type") in ENDING_EVENT_TYPES:
            self.ended = True
            return
        choices = data.get("choices")
        if not isinstance(choices, list):
            return
        if not choices and isinstance(data.get("usage"), dict):
            self.ended = True  # the usage chunk: the last before `[DONE]`
            return
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0)
            if choice.get("finish_reason"):
                self._unfinished.discard(index)
                self._finished = True
            else:
                self._unfinished.add(index)
        self.ended = self._finished and not self._unfinished


def invalid_reply(deployment: str) -> ProviderError:
    """The 502 `upstream_invalid_reply` of a reply from `deployment` (its name) that is not
    the JSON object its protocol promises: retryable."""
    return ProviderError(
        502,
        None,
        f"Upstream deployment {deployment!r} returned an invalid reply.",
        code="upstream_invalid_reply",
        retryable=True,
    )


def _secrets(deployment: Deployment) -> tuple[str, ...]:
    return deployment.secrets()


def parse_object(content: bytes | str, deployment: str) -> dict[str, Any]:
    """The JSON object in `content`; raises the invalid-reply ProviderError otherwise.

    A lone UTF-16 surrogate escape in a string (`"\\ud83d"` without its low half: valid
    JSON by RFC 8259's grammar, which a model's server may write when it splits an emoji)
    becomes U+FFFD: orjson refuses it, and no event, row or client answer could carry it
    (UTF-8 has no form for it)."""
    try:
        parsed = exactjson.loads_replacing_lone_surrogates(content)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise invalid_reply(deployment)
    return parsed


# --------------------------------------------------------------------------- clients


@functools.cache
def tls_context() -> ssl.SSLContext:
    """The TLS context of direct requests: httpx's (`httpx2.create_ssl_context`), as the
    SDKs' aiohttp transport builds it (certifi's roots, or `SSL_CERT_FILE` /
    `SSL_CERT_DIR`). Built once per process: a build takes 20 to 30 ms on the event
    loop."""
    return httpx2.create_ssl_context()


# Seconds an idle connection to an upstream is kept for the next call: under the 5 s
# after which common servers close one (uvicorn's, which serves vLLM and the simulator;
# Node's). At 5 s, as the SDKs keep one, a call sent on a connection the server was
# closing failed (502 `upstream_unreachable`, and a retry): no client library repeats a
# POST that met a closed connection.
UPSTREAM_KEEPALIVE_S = 4.0
# The SDKs' DEFAULT_CONNECTION_LIMITS, with that keep-alive.
UPSTREAM_MAX_CONNECTIONS = 1000
UPSTREAM_LIMITS = httpx2.Limits(
    max_connections=UPSTREAM_MAX_CONNECTIONS,
    max_keepalive_connections=100,
    keepalive_expiry=UPSTREAM_KEEPALIVE_S,
)


def sdk_http_client(sdk: ModuleType) -> Any:
    """The HTTP client an SDK client of one deployment sends with: `sdk`'s (the `openai`
    or `anthropic` module) `DefaultAioHttpClient`, redirects never followed, on the
    process's one TLS context (`tls_context`), idle connections kept `UPSTREAM_KEEPALIVE_S`.
    Left to itself, each such client builds a TLS context of its own, loading the CA
    bundle: 20 to 30 ms on the event loop (the first request to each model waited for it)
    and about 0.8 MiB for every (model, deployment), whether its URL is HTTPS or not."""
    return sdk.DefaultAioHttpClient(
        follow_redirects=False, verify=tls_context(), limits=UPSTREAM_LIMITS
    )


def _proxied(url: httpx2.URL) -> bool:
    """Whether a proxy of the environment may apply to `url`: a `<scheme>_proxy` or
    `all_proxy` variable (either case, as the standard library reads them) is set, and
    `no_proxy` neither is `*` nor names the URL's host exactly (with or without its
    port). The standard library and httpx disagree on other `no_proxy` entries (a leading
    dot, a domain covering subdomains, CIDR ranges): for those this answers True, and the
    SDK's client, which decides for itself, is used."""
    proxies = urllib.request.getproxies()
    if not (proxies.get(url.scheme) or proxies.get("all")):
        return False
    host = url.host.lower()
    port = url.port or {"http": 80, "https": 443}.get(url.scheme)
    for entry in (raw.strip().lower() for raw in proxies.get("no", "").split(",")):
        if entry == "*" or entry in (host, f"{host}:{port}"):
            return False
    return True


class DirectRequests:
    """The requests an SDK client would build, built without its per-call machinery (its
    request options model, header merging, user-agent and platform look-ups, stdlib JSON)
    and sent on one HTTP client instead of two (the SDKs' aiohttp client is httpx's API
    over an aiohttp transport: each request is built as an httpx request, then again as an
    aiohttp one). What the client sends with every request is read from it ONCE
    (`base_url`, `auth_headers`, `default_headers`: its user agent, `x-stainless-*` platform
    headers, Anthropic's `anthropic-version`, and the HTTP client's own `accept-encoding`
    and `connection`); each request only merges its own headers into a copy, serialises
    the body with orjson and goes out on an `aiohttp.ClientSession` configured as the SDK's
    transport configures its own (the SDK's connection limit, httpx's keep-alive expiry and
    TLS trust store, no redirects, no proxy and no `.netrc` look-up).

    Headers merge as the SDKs merge them (openai's `_merge_headers`, anthropic's
    `build_headers`): case-insensitively, a later layer winning in the earlier one's place
    with its own spelling of the name; anthropic's `x-stainless-helper` is appended to, not
    replaced. The per-request `x-stainless-timeout` / `x-stainless-read-timeout` (the
    timeout, seconds) and `x-stainless-retry-count` (`0`: the SDK never retries here) sit
    where each SDK puts them. `usable(client)` says whether a client can be read this
    way: one whose authentication is a fixed header, with no per-call hook, and whose
    base URL no proxy of the environment may apply to (a deployment behind a proxy keeps
    the SDK's client, which routes through it)."""

    _URLS_KEPT = 64  # paths are the adapters' constants; the bound is a safety net
    # The limits the SDK clients are given (`UPSTREAM_LIMITS`), which their aiohttp
    # transport hands to its connector.
    MAX_CONNECTIONS = UPSTREAM_MAX_CONNECTIONS
    KEEPALIVE_S = UPSTREAM_KEEPALIVE_S

    def __init__(self, client: Any, http: httpx2.AsyncClient, protocol: Protocol_) -> None:
        self.protocol = protocol
        self._base_url: httpx2.URL = client.base_url
        # Each path's URL and `host` header (as httpx gives it).
        self._urls: dict[str, tuple[yarl.URL, str]] = {}
        # Streams' ends being read (`DirectResponse.close_after_end`), with their responses.
        self._drains: dict[asyncio.Task[None], aiohttp.ClientResponse] = {}
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        # The HTTP client's own (`accept-encoding`, `connection`...), which httpx sends
        # first unless the request's headers name them (`accept`, `user-agent`).
        self._http_headers = [(name.lower(), value) for name, value in http.headers.items()]
        layers: list[Mapping[str, Any]]
        if protocol == "anthropic":
            # anthropic's `default_headers` include its `auth_headers`; its per-request
            # timeout and retry-count headers come first, the defaults over them.
            placeholder = {"x-stainless-timeout": "", "x-stainless-retry-count": "0"}
            placeholder["x-stainless-read-timeout"] = ""
            layers = [placeholder, client.default_headers]
        else:
            layers = [client.auth_headers, client.default_headers]
        self._headers = _merge_headers({}, *layers, append_helper=protocol == "anthropic")

    @staticmethod
    def usable(client: Any) -> bool:
        """Whether `client`'s requests can be built by this class: a plain
        `openai.AsyncOpenAI` or `anthropic.AsyncAnthropic` whose credentials are a fixed
        header, that has no custom auth flow (token providers, workload identity), and
        whose base URL no proxy of the environment may apply to (see `_proxied`)."""
        if type(client) not in _sdk_classes("AsyncOpenAI", "AsyncAnthropic"):
            return False
        if client.custom_auth is not None or client.default_query:
            return False
        if getattr(client, "_api_key_provider", None) is not None:
            return False
        if getattr(client, "_provider_runtime", None) is not None:
            return False
        if _proxied(client.base_url):
            return False
        names = {name.lower() for name in {**client.auth_headers, **client.default_headers}}
        return "authorization" in names or "x-api-key" in names

    def url(self, path: str) -> tuple[yarl.URL, str]:
        """The URL of `path`, joined to the client's base URL as the SDK's `_prepare_url`
        joins a relative one (an absolute URL is kept), and its `host` header as httpx
        writes it. Kept parsed: the HTTP client takes a `URL` as it is, where a string
        would be parsed again on every request."""
        kept = self._urls.get(path)
        if kept is None:
            joined = httpx2.URL(path)
            if joined.is_relative_url:
                raw_path = self._base_url.raw_path + joined.raw_path.lstrip(b"/")
                joined = self._base_url.copy_with(raw_path=raw_path)
            kept = (yarl.URL(str(joined), encoded=True), joined.netloc.decode("ascii"))
            if len(self._urls) < self._URLS_KEPT:
                self._urls[path] = kept
        return kept

    def headers(self, extra: Mapping[str, str], timeout_s: float) -> list[tuple[str, str]]:
        """The headers of one request: the client's own, then `extra` (the per-request
        ones, which win), with the timeout headers for `timeout_s` seconds. Raises
        UnicodeEncodeError (a ValueError) for a name or value beyond ASCII in an OpenAI
        request, which openai's SDK refuses; anthropic's sends them in UTF-8."""
        timeout = str(timeout_s)
        if self.protocol == "anthropic":
            merged = _merge_headers(
                self._headers,
                {"x-stainless-timeout": timeout, "x-stainless-read-timeout": timeout},
                extra,
                append_helper=True,
            )
        else:
            merged = _merge_headers(self._headers, extra, append_helper=False)
            # openai adds these after the caller's headers, unless the caller set them.
            merged.setdefault("x-stainless-retry-count", ("x-stainless-retry-count", "0"))
            merged.setdefault("x-stainless-read-timeout", ("x-stainless-read-timeout", timeout))
        # httpx's `Headers.update`: the client's own first, but those the request names;
        # names in lower case, as httpx's headers hand them to the SDK's aiohttp transport.
        headers = [pair for pair in self._http_headers if pair[0] not in merged]
        headers += [(name, value) for name, (_, value) in merged.items()]
        if self.protocol == "openai":
            for name, value in headers:
                if not (name.isascii() and value.isascii()):
                    # What httpx raises for it under openai's SDK.
                    value.encode("ascii")
                    name.encode("ascii")
        return headers

    @staticmethod
    def timeout(timeout_s: float, connect_s: float | None = None) -> aiohttp.ClientTimeout:
        """`timeout_s` for each read, and `connect_s` (`timeout_s` when None) for
        connecting and waiting for a pooled connection, as the SDK's transport maps
        httpx's timeout (no total: a stream may last longer)."""
        connect = timeout_s if connect_s is None else connect_s
        return aiohttp.ClientTimeout(
            total=None, connect=connect, sock_connect=connect, sock_read=timeout_s
        )

    def session(self) -> aiohttp.ClientSession:
        """The HTTP client, made on first use (on the running event loop). Raises
        aiohttp's ClientConnectionError once `aclose` was called (as the SDK's client
        refuses to send when closed)."""
        if self._closed:
            raise aiohttp.ClientConnectionError("the upstream's HTTP client is closed")
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self.MAX_CONNECTIONS, keepalive_timeout=self.KEEPALIVE_S, ssl=tls_context()
            )
            # Cookies are kept and sent back as the SDK's httpx client does, also to an
            # upstream addressed by its IP (aiohttp's default jar refuses those).
            self._session = aiohttp.ClientSession(
                connector=connector, trust_env=False, cookie_jar=aiohttp.CookieJar(unsafe=True)
            )
        return self._session

    async def post(
        self,
        path: str,
        body: dict[str, Any],
        headers: Mapping[str, str],
        timeout_s: float,
        *,
        stream: bool,
        connect_s: float | None = None,
    ) -> DirectResponse:
        """POST the JSON `body` to `path`; the response, its body read unless `stream`.
        `timeout_s` bounds each read, `connect_s` (`timeout_s` when None) connecting.
        Redirects are not followed. Raises what aiohttp raises (`aiohttp.ClientError`,
        `TimeoutError`), orjson's TypeError for a body it cannot serialise and a
        ValueError for a header the SDK refuses."""
        url, host = self.url(path)
        content = exactjson.dumps(body)
        # `host` first and `content-length` last, in lower case, as httpx sends them
        # (aiohttp would add its own, capitalised).
        request_headers = [("host", host), *self.headers(headers, timeout_s)]
        request_headers.append(("content-length", str(len(content))))
        response = await self.session().post(
            url,
            data=content,
            headers=request_headers,
            timeout=self.timeout(timeout_s, connect_s),
            allow_redirects=False,
        )
        reply = DirectResponse(response, self._drains)
        if not stream:
            try:
                await reply.aread()
            finally:
                reply.release()
        return reply

    async def aclose(self) -> None:
        """Close the HTTP client and its connections (streams' ends still being read
        are given up); no request is sent after."""
        self._closed = True
        drains = list(self._drains.items())
        for drain, _ in drains:
            drain.cancel()
        await asyncio.gather(*self._drains, return_exceptions=True)
        # A drain cancelled before it ran never closed its response.
        for _, response in drains:
            response.close()
        if self._session is not None:
            await self._session.close()


class DirectResponse:
    """An aiohttp response with the part of httpx's `Response` interface the callers use
    (`status_code`, `is_success`, `headers`, `aread`, `text`, `aiter_bytes`, `aiter_text`,
    `aclose`), so that a stream is parsed by httpx-sse whichever client carried it."""

    # How long a stream's end (after its last event) is waited for in the background, so
    # that its connection goes back to the pool instead of being closed.
    DRAIN_S = 5.0

    def __init__(
        self,
        response: aiohttp.ClientResponse,
        drains: dict[asyncio.Task[None], aiohttp.ClientResponse],
    ) -> None:
        """`drains`: where the tasks reading streams' ends are kept (their client's, which
        cancels them when it closes)."""
        self._response = response
        self._drains = drains
        self._content: bytes | None = None
        self.status_code = response.status
        self.headers = response.headers

    @property
    def is_success(self) -> bool:
        """Whether the status is 2xx."""
        return 200 <= self.status_code < 300

    async def aread(self) -> bytes:
        """The whole body (read once, decompressed as `content-encoding` says). Raises
        aiohttp's ClientPayloadError for a body cut short or that cannot be decoded."""
        if self._content is None:
            self._content = await self._response.read()
        return self._content

    @property
    def text(self) -> str:
        """The body read, decoded by its charset, or as UTF-8 when it names none or one
        that is not a text encoding (errors replaced, as httpx decodes)."""
        content = self._content or b""
        charset = self._response.charset
        if charset:
            try:
                return content.decode(charset, errors="replace")
            except (LookupError, UnicodeError):
                pass
        return content.decode("utf-8", errors="replace")

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body, chunk by chunk as it arrives."""
        async for chunk in self._response.content.iter_any():
            yield chunk

    async def aiter_text(self) -> AsyncIterator[str]:
        """The body as UTF-8 text, chunk by chunk as it arrives (decoded incrementally,
        errors replaced): Server-Sent Events are UTF-8 whatever the charset says (the
        HTML standard's event stream interpretation)."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        async for chunk in self._response.content.iter_any():
            text = decoder.decode(chunk)
            if text:
                yield text
        text = decoder.decode(b"", final=True)
        if text:
            yield text

    def release(self) -> None:
        """Give the connection back to the pool (the body read) or drop it."""
        self._response.release()

    async def aclose(self) -> None:
        """Close the response: its connection goes back to the pool when the body was
        read to its end, and is closed otherwise (a stream given up half-way)."""
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()

    def close_after_end(self) -> None:
        """Close a stream whose last event was read (OpenAI's `[DONE]`) without waiting
        for what ends its body (the last chunk of its chunked encoding, often a packet of
        its own): the rest is read in the background for up to `DRAIN_S` seconds, and the
        connection then goes back to the pool, or is closed if the body does not end."""
        if self._response.content.at_eof():
            self._response.release()
            return
        task = asyncio.get_running_loop().create_task(self._drain())
        self._drains[task] = self._response
        task.add_done_callback(lambda done: self._drains.pop(done, None))

    async def _drain(self) -> None:
        ended = False
        try:
            async with asyncio.timeout(self.DRAIN_S):
                while await self._response.content.readany():
                    pass
            ended = True
        except Exception:  # noqa: BLE001, S110 - a body that does not end is closed below
            pass
        finally:
            if ended:
                self._response.release()
            else:
                self._response.close()


# What either HTTP client carries an upstream's answer in.
Reply = httpx2.Response | DirectResponse

# aiohttp's failures to reach an upstream or read its answer (a TimeoutError among them
# is a timeout): what the SDKs turn into APIConnectionError.
TRANSPORT_ERRORS = (aiohttp.ClientError, ConnectionError, ssl.SSLError, TimeoutError)


def _merge_headers(
    base: Mapping[str, tuple[str, str]], *layers: Mapping[str, Any], append_helper: bool
) -> dict[str, tuple[str, str]]:
    """`base` (lower-case name -> (name, value)) with `layers` merged in order: a later
    value replaces an earlier one in its place, with its own spelling of the name; an
    SDK `Omit` removes the header; with `append_helper` (anthropic's SDK), the tokens of
    a later `x-stainless-helper` are appended to the earlier ones."""
    merged = dict(base)
    omit = _sdk_classes("Omit")
    for layer in layers:
        for name, value in layer.items():
            key = name.lower()
            if isinstance(value, omit):
                merged.pop(key, None)
                continue
            if append_helper and key == "x-stainless-helper" and key in merged:
                value = _append_tokens(merged[key][1], value)
            merged[key] = (name, value)
    return merged


def _append_tokens(existing: str, addition: str) -> str:
    """`existing`, a comma-separated list, with the tokens of `addition` it lacks
    (anthropic's `_append_header_value`)."""
    tokens = [token for token in (raw.strip() for raw in existing.split(",")) if token]
    for token in (raw.strip() for raw in addition.split(",")):
        if token and token not in tokens:
            tokens.append(token)
    return ", ".join(tokens)


class SDKUpstream:
    """An upstream reached through an official SDK client: its own `post`, or, when the
    upstream was given the client's HTTP client and the client qualifies
    (`DirectRequests.usable`), requests built directly from what the client sends with
    every request (`DirectRequests`), which reach the wire the same."""

    protocol: Protocol_

    def __init__(
        self, deployment: Deployment, client: Any, http: httpx2.AsyncClient | None = None
    ) -> None:
        self.deployment = deployment
        self.client = client
        self.direct: DirectRequests | None = None
        if http is not None and DirectRequests.usable(client):
            self.direct = DirectRequests(client, http, self.protocol)
        # Streams through the SDK's client whose end is still being read (`_end_later`),
        # with the iterator they were read with and their response.
        self._ends: dict[asyncio.Task[None], tuple[AsyncIterator[Any], Reply]] = {}

    @property
    def name(self) -> str:
        """The deployment's name, as errors and logs give it."""
        return self.deployment.name

    def _connect_s(self, timeout_s: float) -> float:
        """How long connecting may take on a call whose reads may take `timeout_s`: the
        deployment's `timeout_s` at most, however long a non-streamed reply is waited
        for, so that an unreachable upstream is left as soon as for a stream."""
        return min(self.deployment.timeout_s, timeout_s)

    def _options(self, headers: Mapping[str, str], timeout_s: float) -> dict[str, Any]:
        connect_s = self._connect_s(timeout_s)
        # Waiting for a pooled connection is bounded as connecting is (aiohttp's `connect`
        # covers both on direct requests).
        timeout = httpx2.Timeout(timeout_s, connect=connect_s, pool=connect_s)
        options: dict[str, Any] = {"timeout": timeout, "follow_redirects": False}
        if headers:
            options["headers"] = dict(headers)
        return options

    def _failure(self, exc: BaseException) -> BaseException:
        """The exception to raise for `exc` out of a call: SDK and transport failures
        are mapped; TypeError/ValueError are the SDK refusing the arguments (a 400 whose
        message never holds the exception's text, which is Python's, not the client's
        API's, and may quote what was sent); anything else is a bug and stays itself."""
        if isinstance(exc, ProviderError):
            return exc
        if isinstance(exc, TimeoutError):
            # aiohttp's (direct requests): connecting, a read, or a pooled connection.
            return timeout_error(self.name)
        if _undecodable(exc):
            return invalid_reply(self.name)
        if isinstance(exc, TRANSPORT_ERRORS):
            # What the SDKs turn into APIConnectionError.
            return unreachable(self.name)
        if isinstance(exc, (*_sdk_classes("OpenAIError", "AnthropicError"), httpx2.HTTPError)):
            return map_sdk_error(exc, self.deployment, self.protocol)  # type: ignore[arg-type]
        if isinstance(exc, SSEError):
            return invalid_reply(self.name)
        if isinstance(exc, TypeError | ValueError):
            log.warning(
                "upstream client refused the request",
                deployment=self.name,
                error=redact(repr(exc), _secrets(self.deployment))[:300],
            )
            return ProviderError(
                400,
                None,
                "Invalid request: it holds a value this model's upstream API cannot be sent.",
                code="invalid_request",
            )
        return exc

    async def _post(
        self,
        path: str,
        body: dict[str, Any],
        headers: Mapping[str, str],
        timeout_s: float,
        *,
        stream: bool,
    ) -> Reply:
        """POST `body` to `path`; the response with a 2xx status (its body read unless
        `stream`). Raises ProviderError for any other status and for a timeout or a
        connection failure, as the SDK's exceptions for them are mapped."""
        if self.direct is None:
            response: Reply = await self.client.post(
                path,
                cast_to=httpx2.Response,
                body=body,
                options=self._options(headers, timeout_s),
                stream=stream,
                stream_cls=None,
            )
            return response
        try:
            response = await self.direct.post(
                path, body, headers, timeout_s, stream=stream, connect_s=self._connect_s(timeout_s)
            )
        except TRANSPORT_ERRORS as exc:
            raise self._failure(exc) from exc
        if response.is_success:
            return response
        try:
            await response.aread()
        except aiohttp.ClientPayloadError:
            # A body cut short or undecodable: the status still says what happened.
            pass
        finally:
            await response.aclose()
        error_body, message = sdk_error_body(response.status_code, response.text, self.protocol)
        raise status_error(
            response.status_code,
            response.headers,
            error_body,
            message,
            self.deployment,
            self.protocol,
        )

    async def send(
        self, path: str, body: dict[str, Any], headers: Mapping[str, str], timeout_s: float
    ) -> dict[str, Any]:
        """POST the JSON `body` to `path` (relative to the client's base URL) with the
        allow-listed `headers`, within `timeout_s` seconds; the JSON object answered. Raises
        ProviderError: the upstream's error mapped (`status_error`), a timeout, a transport
        failure, or a reply that is not a JSON object."""
        try:
            response = await self._post(path, body, headers, timeout_s, stream=False)
            content = await response.aread()
        except Exception as exc:
            failure = self._failure(exc)
            if failure is exc:
                raise
            raise failure from exc
        # A large reply (embeddings of thousands of inputs) is parsed in a worker thread.
        return await off_loop(functools.partial(parse_object, deployment=self.name), content)

    async def stream(
        self, path: str, body: dict[str, Any], headers: Mapping[str, str], timeout_s: float
    ) -> AsyncGenerator[SSE, None]:
        """POST the JSON `body` to `path` asking for a stream; yields each Server-Sent Event
        as an `SSE` with its JSON data, until the stream ends (OpenAI's `[DONE]` is not
        yielded). Raises ProviderError, also mid-stream: an `error` event, an error object
        in place of a chunk, a broken connection, a body that ends before the stream's own
        end (`StreamEnd`; `cut_short`). The response is closed however it ends."""
        response = None
        events: AsyncIterator[Any] | None = None
        done = False
        end = StreamEnd()
        try:
            response = await self._post(path, body, headers, timeout_s, stream=True)
            events = self._events(response)
            async for sse in events:
                data = sse.data
                if data == "[DONE]":
                    done = True
                    return
                event = None if sse.event == "message" else sse.event
                parsed = parse_object(data, self.name)
                if (
                    event == "error"
                    or parsed.get("type") == "error"
                    or (
                        parsed.get("error") is not None
                        and "type" not in parsed
                        and not parsed.get("choices")
                    )
                ):
                    # Anthropic's error event and OpenAI's error object nest the error
                    # (`error`; a string in some OpenAI-compatible servers'); a Responses
                    # `error` event is the error itself. An event that names another type
                    # is not one, whatever `error` member it has (an event added to the
                    # API after this code, `"error": null`).
                    inner = parsed.get("error")
                    if isinstance(inner, str):
                        # Its message, and its type beside it (TGI's `error_type`).
                        error = {"message": inner, "type": parsed.get("error_type")}
                    else:
                        error = inner if isinstance(inner, dict) else parsed
                    raise stream_error(self.deployment, self.protocol, error)
                end.see(parsed)
                yield SSE(event, parsed)
            if not end.ended:
                # The body ended (its connection closed) before the stream did: what
                # arrived is not the whole answer.
                raise cut_short(self.name)
        except Exception as exc:
            failure = self._failure(exc)
            if failure is exc:
                raise
            raise failure from exc
        finally:
            # After `[DONE]` the connection is kept for the next request: the rest of the
            # body is read in the background instead of the connection being closed.
            if done and isinstance(response, DirectResponse):
                response.close_after_end()
            elif done and response is not None and events is not None:
                self._end_later(events, response)
            elif response is not None:
                await response.aclose()

    def _end_later(self, events: AsyncIterator[Any], response: Reply) -> None:
        """Read what is left of a stream of the SDK's client after its last event (`events`,
        the iterator the stream was being read with) for up to `DirectResponse.DRAIN_S`
        seconds, then close `response`: read to its end, its connection goes back to the
        pool (as `DirectResponse.close_after_end` does on direct requests); otherwise it
        is closed. `aclose` gives up what is still being read."""

        async def read_to_end() -> None:
            try:
                async with asyncio.timeout(DirectResponse.DRAIN_S):
                    async for _ in events:
                        pass  # nothing after `[DONE]` is passed on
            except Exception:  # noqa: BLE001, S110 - a body that does not end is closed below
                pass
            finally:
                await response.aclose()

        task = asyncio.get_running_loop().create_task(read_to_end())
        self._ends[task] = (events, response)
        task.add_done_callback(lambda done: self._ends.pop(done, None))

    def _events(self, response: Reply) -> AsyncIterator[Any]:
        """The events of a streamed answer (objects with `event` and `data`): parsed as
        Server-Sent Events here; Bedrock frames them otherwise."""
        # httpx-sse is typed against httpx's Response; httpx2's and DirectResponse have
        # the part of its interface it uses (`headers`, `aiter_text`).
        return EventSource(cast(Any, response)).aiter_sse()

    async def aclose(self) -> None:
        """Close the SDK client, the direct requests' HTTP client and their connections
        (streams' ends still being read are given up)."""
        ends = list(self._ends.items())
        for task, _ in ends:
            task.cancel()
        await asyncio.gather(*(task for task, _ in ends), return_exceptions=True)
        # A read cancelled before it ran closed neither its iterator nor its response.
        for _, (events, response) in ends:
            with contextlib.suppress(Exception):
                await cast(AsyncGenerator[Any, None], events).aclose()
            with contextlib.suppress(Exception):
                await response.aclose()
        try:
            await self.client.close()
        finally:
            if self.direct is not None:
                await self.direct.aclose()


class OpenAIUpstream(SDKUpstream):
    """Any OpenAI-compatible upstream (OpenAI, vLLM, Ollama, the simulator); paths are
    relative to its base URL (which ends in `/v1`)."""

    protocol: Protocol_ = "openai"

    @classmethod
    def create(cls, deployment: Deployment) -> OpenAIUpstream:
        """The upstream of an OpenAI-protocol `deployment`: the `openai` SDK's async client on
        aiohttp, with the SDK's own retries off (Switchyard retries). Raises RoutingError when
        the API key variable it names is unset."""
        http = sdk_http_client(openai)
        client = openai.AsyncOpenAI(
            api_key=deployment.api_key(),
            base_url=deployment.base_url,
            timeout=deployment.timeout_s,
            max_retries=0,
            http_client=http,
        )
        return cls(deployment, client, http)


def anthropic_base_url(base_url: str | None) -> str | None:
    """The Messages path is `/v1/messages`: a base URL ending in `/v1` is taken as its root."""
    if base_url is None:
        return None
    return base_url.rstrip("/").removesuffix("/v1")


class AnthropicUpstream(SDKUpstream):
    """Anthropic's API (or a compatible server); paths start with `/v1`."""

    protocol: Protocol_ = "anthropic"

    @classmethod
    def create(cls, deployment: Deployment) -> AnthropicUpstream:
        """The upstream of an Anthropic-protocol `deployment`: the `anthropic` SDK's async
        client on aiohttp, SDK retries off. Raises RoutingError when the API key variable it
        names is unset."""
        anthropic = anthropic_sdk()
        http = sdk_http_client(anthropic)
        client = anthropic.AsyncAnthropic(
            api_key=deployment.api_key(),
            base_url=anthropic_base_url(deployment.base_url),
            timeout=deployment.timeout_s,
            max_retries=0,
            http_client=http,
        )
        return cls(deployment, client, http)


def create_upstream(deployment: Deployment) -> Upstream:
    """The upstream client of `deployment`, by its provider kind."""
    from switchyard.inference import platforms

    kinds: dict[str, Callable[[Deployment], Upstream]] = {
        "openai": OpenAIUpstream.create,
        "anthropic": AnthropicUpstream.create,
        "azure_openai": platforms.AzureOpenAIUpstream.create,
        "bedrock": platforms.BedrockUpstream.create,
        "vertex": platforms.VertexUpstream.create,
        "gemini": platforms.GeminiUpstream.create,
    }
    return kinds[deployment.provider](deployment)
