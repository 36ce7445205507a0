"""The wire to one deployment: POST a JSON body to a path of the provider's API through
its official SDK client (its authentication, base URL, timeouts and error classes) and
read the answer as raw JSON or as Server-Sent Events; every failure becomes a
`ProviderError` carrying the upstream's own status, type, code and param.

Replies are read as bytes and parsed once with orjson (never into SDK models: those
would cost more CPU than the rest of a request's path). Streams are parsed with
httpx-sse, which splits lines only where the SSE format does (CR, LF, CRLF): text holding
U+2028, U+2029 or U+0085 survives. The SDKs' own retries are off (`max_retries=0`): the
retry logic honours the request's deadline and the circuit breakers. Redirects are never
followed: an upstream answering 3xx fails like any other bad answer, so a key is never
sent to another host.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, cast

import anthropic
import httpx2
import openai
import orjson
from httpx_sse import EventSource, SSEError

from switchyard.common.errorformat import status_of
from switchyard.common.routing import Deployment
from switchyard.inference.errors import ProviderError, redact

Protocol_ = Literal["openai", "anthropic"]


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


def retry_after(headers: Any) -> float | None:
    """Seconds from `retry-after-ms`, `retry-after` (seconds or an HTTP date)."""
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_object(exc: openai.APIStatusError | anthropic.APIStatusError) -> dict[str, Any]:
    """The upstream's error object (OpenAI's SDK keeps the inner object as `body`,
    Anthropic's the whole `{"type": "error", "error": {...}}`). Google's APIs (Gemini's
    OpenAI-compatible endpoint, Vertex AI) may wrap theirs in a list,
    `[{"error": {"code": 400, "message", "status": "INVALID_ARGUMENT"}}]`, with a numeric
    `code` and the error's name in `status`: that name is taken as the `code`."""
    body = exc.body
    if isinstance(body, list) and body and isinstance(body[0], dict):
        body = body[0]
    if isinstance(body, dict):
        inner = body.get("error")
        error = inner if isinstance(inner, dict) else body
        if not isinstance(error.get("code"), str) and isinstance(error.get("status"), str):
            error = {**error, "code": error["status"]}
        return error
    return {}


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def map_sdk_error(
    exc: openai.OpenAIError | anthropic.AnthropicError | httpx2.HTTPError,
    deployment: Deployment,
    protocol: Protocol_,
) -> ProviderError:
    """What the client gets for an SDK (or mid-stream transport) failure of a call to
    `deployment`, which speaks `protocol`."""
    name = deployment.name
    if isinstance(
        exc, openai.APITimeoutError | anthropic.APITimeoutError | httpx2.TimeoutException
    ):
        return timeout_error(name)
    if isinstance(
        exc, openai.APIConnectionError | anthropic.APIConnectionError | httpx2.TransportError
    ):
        return ProviderError(
            502,
            None,
            f"Upstream deployment {name!r} is unreachable.",
            code="upstream_unreachable",
            retryable=True,
        )
    if not isinstance(exc, openai.APIStatusError | anthropic.APIStatusError):
        return ProviderError(
            502,
            None,
            f"Upstream deployment {name!r} failed: {redact(str(exc), _secrets(deployment))}",
            code="upstream_error",
            retryable=True,
        )
    status = exc.status_code
    error = _error_object(exc)
    message = redact(
        _str(error.get("message")) or exc.message or f"HTTP {status}", _secrets(deployment)
    )
    upstream_type = _str(error.get("type"))
    code = _str(error.get("code"))
    param = _str(error.get("param"))
    wait = retry_after(exc.response.headers)
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
        # Our credentials were refused: the caller can do nothing about it, and retrying
        # the same deployment cannot help; another deployment may.
        return ProviderError(
            502,
            None,
            f"Upstream deployment {name!r} refused Switchyard's credentials.",
            code="upstream_auth_failed",
            retryable=True,
            retry_same=False,
        )
    if status == 429:
        # Busy, not broken: retried (after Retry-After) and fallen back from, but it
        # never counts against the circuit breaker.
        return ProviderError(
            429,
            upstream_type,
            message,
            code=code or "upstream_rate_limited",
            param=param,
            vendor=protocol,
            retryable=True,
            unhealthy=False,
            retry_after=wait,
        )
    if status == 408:
        return timeout_error(name)
    if 400 <= status < 500:
        return ProviderError(
            status, upstream_type, message, code=code, param=param, vendor=protocol
        )
    return ProviderError(
        status,
        upstream_type,
        message,
        code=code or ("upstream_overloaded" if status == 529 else "upstream_error"),
        param=param,
        vendor=protocol,
        retryable=True,
        retry_after=wait,
    )


def stream_error(deployment: Deployment, protocol: Protocol_, error: Any) -> ProviderError:
    """An error the upstream reported inside a stream (after its 200), with the status
    its type stands for (an Anthropic `overloaded_error` is a 529)."""
    error = error if isinstance(error, dict) else {}
    kind = _str(error.get("type"))
    status = (status_of(protocol, kind) if kind else None) or 500
    if kind == "overloaded_error":
        status = 529
    if kind in ("server_error", "api_error"):
        status = 500
    message = redact(_str(error.get("message")) or "The stream failed.", _secrets(deployment))
    retryable = status >= 500 or status == 429
    return ProviderError(
        status,
        kind,
        message,
        code=_str(error.get("code")) or "upstream_stream_error",
        param=_str(error.get("param")),
        vendor=protocol,
        retryable=retryable,
        unhealthy=status >= 500,
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
    """The JSON object in `content`; raises the invalid-reply ProviderError otherwise."""
    try:
        parsed = orjson.loads(content)
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise invalid_reply(deployment)
    return parsed


# --------------------------------------------------------------------------- clients


class SDKUpstream:
    """An upstream reached through an official SDK client's own `post`."""

    protocol: Protocol_
    _sdk_errors: tuple[type[BaseException], ...]

    def __init__(self, deployment: Deployment, client: Any) -> None:
        self.deployment = deployment
        self.client = client

    @property
    def name(self) -> str:
        """The deployment's name, as errors and logs give it."""
        return self.deployment.name

    def _options(self, headers: Mapping[str, str], timeout_s: float) -> dict[str, Any]:
        options: dict[str, Any] = {"timeout": timeout_s, "follow_redirects": False}
        if headers:
            options["headers"] = dict(headers)
        return options

    def _failure(self, exc: BaseException) -> BaseException:
        """The exception to raise for `exc` out of a call: SDK and transport failures
        are mapped; TypeError/ValueError are the SDK refusing the arguments; anything
        else is a bug and stays itself."""
        if isinstance(exc, ProviderError):
            return exc
        if isinstance(exc, (*self._sdk_errors, httpx2.HTTPError)):
            return map_sdk_error(exc, self.deployment, self.protocol)  # type: ignore[arg-type]
        if isinstance(exc, SSEError):
            return invalid_reply(self.name)
        if isinstance(exc, TypeError | ValueError):
            return ProviderError(400, None, f"Invalid request: {exc}", code="invalid_request")
        return exc

    async def send(
        self, path: str, body: dict[str, Any], headers: Mapping[str, str], timeout_s: float
    ) -> dict[str, Any]:
        """POST the JSON `body` to `path` (relative to the client's base URL) with the
        allow-listed `headers`, within `timeout_s` seconds; the JSON object answered. Raises
        ProviderError: the upstream's error mapped (`map_sdk_error`), a timeout, a transport
        failure, or a reply that is not a JSON object."""
        try:
            response = await self.client.post(
                path, cast_to=httpx2.Response, body=body, options=self._options(headers, timeout_s)
            )
            content = await response.aread()
        except Exception as exc:
            failure = self._failure(exc)
            if failure is exc:
                raise
            raise failure from exc
        return parse_object(content, self.name)

    async def stream(
        self, path: str, body: dict[str, Any], headers: Mapping[str, str], timeout_s: float
    ) -> AsyncGenerator[SSE, None]:
        """POST the JSON `body` to `path` asking for a stream; yields each Server-Sent Event
        as an `SSE` with its JSON data, until the stream ends (OpenAI's `[DONE]` is not
        yielded). Raises ProviderError, also mid-stream: an `error` event, an error object
        in place of a chunk, a broken connection. The response is closed however it ends."""
        response = None
        try:
            response = await self.client.post(
                path,
                cast_to=httpx2.Response,
                body=body,
                options=self._options(headers, timeout_s),
                stream=True,
                stream_cls=None,
            )
            async for sse in self._events(response):
                data = sse.data
                if data == "[DONE]":
                    return
                event = None if sse.event == "message" else sse.event
                parsed = parse_object(data, self.name)
                if event == "error" or ("error" in parsed and not parsed.get("choices")):
                    raise stream_error(self.deployment, self.protocol, parsed.get("error"))
                yield SSE(event, parsed)
        except Exception as exc:
            failure = self._failure(exc)
            if failure is exc:
                raise
            raise failure from exc
        finally:
            if response is not None:
                await response.aclose()

    def _events(self, response: httpx2.Response) -> AsyncIterator[Any]:
        """The events of a streamed answer (objects with `event` and `data`): parsed as
        Server-Sent Events here; Bedrock frames them otherwise."""
        # httpx-sse is typed against httpx's Response; httpx2's has the same interface.
        return EventSource(cast(Any, response)).aiter_sse()

    async def aclose(self) -> None:
        """Close the SDK client and its connection pool."""
        await self.client.close()


class OpenAIUpstream(SDKUpstream):
    """Any OpenAI-compatible upstream (OpenAI, vLLM, Ollama, the simulator); paths are
    relative to its base URL (which ends in `/v1`)."""

    protocol: Protocol_ = "openai"
    _sdk_errors = (openai.OpenAIError,)

    @classmethod
    def create(cls, deployment: Deployment) -> OpenAIUpstream:
        """The upstream of an OpenAI-protocol `deployment`: the `openai` SDK's async client on
        aiohttp, with the SDK's own retries off (Switchyard retries). Raises RoutingError when
        the API key variable it names is unset."""
        client = openai.AsyncOpenAI(
            api_key=deployment.api_key(),
            base_url=deployment.base_url,
            timeout=deployment.timeout_s,
            max_retries=0,
            http_client=openai.DefaultAioHttpClient(follow_redirects=False),
        )
        return cls(deployment, client)


def anthropic_base_url(base_url: str | None) -> str | None:
    """The Messages path is `/v1/messages`: a base URL ending in `/v1` is taken as its root."""
    if base_url is None:
        return None
    return base_url.rstrip("/").removesuffix("/v1")


class AnthropicUpstream(SDKUpstream):
    """Anthropic's API (or a compatible server); paths start with `/v1`."""

    protocol: Protocol_ = "anthropic"
    _sdk_errors = (anthropic.AnthropicError,)

    @classmethod
    def create(cls, deployment: Deployment) -> AnthropicUpstream:
        """The upstream of an Anthropic-protocol `deployment`: the `anthropic` SDK's async
        client on aiohttp, SDK retries off. Raises RoutingError when the API key variable it
        names is unset."""
        client = anthropic.AsyncAnthropic(
            api_key=deployment.api_key(),
            base_url=anthropic_base_url(deployment.base_url),
            timeout=deployment.timeout_s,
            max_retries=0,
            http_client=anthropic.DefaultAioHttpClient(follow_redirects=False),
        )
        return cls(deployment, client)


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
