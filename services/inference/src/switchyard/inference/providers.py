"""Upstream providers: one call to one deployment with the official SDK, and the mapping
of every SDK failure to the error the client of Switchyard should see.

Every provider speaks OpenAI's shapes to the rest of the service: `chat` returns a
`chat.completion`, `stream` yields `chat.completion.chunk` dicts, `embeddings` returns an
embeddings list. The Anthropic provider translates both ways (`switchyard.common.translate`).

Replies are read as raw bytes (`with_raw_response` / `with_streaming_response`) and parsed
once with orjson: the SDKs' pydantic models would cost more CPU than the rest of a
request's path, and the reply is forwarded as a dict. The SDKs' own retries are disabled
(`max_retries=0`): retries, backoff and fallback are the handler's, so that they honour
the request's deadline and the circuit breakers.
"""

from __future__ import annotations

import asyncio
import email.utils
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import anthropic
import httpx2
import openai
import orjson
import structlog
from anthropic.resources.messages import AsyncMessages
from openai.resources.chat.completions import AsyncCompletions
from openai.resources.embeddings import AsyncEmbeddings

from switchyard.common.events import ErrorInfo
from switchyard.common.routing import Deployment
from switchyard.common.translate import (
    DEFAULT_ANTHROPIC_MAX_TOKENS,
    AnthropicToOpenAIStream,
    TranslationError,
    anthropic_response_to_openai,
    openai_request_to_anthropic,
)

log = structlog.get_logger("switchyard.inference.providers")


def _sdk_parameters(method: Callable[..., Any], *excluded: str) -> frozenset[str]:
    return frozenset(inspect.signature(method).parameters) - {
        "self",
        "extra_headers",
        "extra_query",
        "extra_body",
        "timeout",
        *excluded,
    }


# Body fields the SDKs take as keyword arguments; any other field travels in `extra_body`,
# so a parameter newer than the installed SDK still reaches the upstream. Streaming is
# decided by the caller, never by the body.
_CHAT_PARAMETERS = _sdk_parameters(AsyncCompletions.create, "stream", "stream_options")
_EMBEDDINGS_PARAMETERS = _sdk_parameters(AsyncEmbeddings.create)
_MESSAGES_PARAMETERS = _sdk_parameters(AsyncMessages.create, "stream")
_STREAM_FIELDS = ("stream", "stream_options")


class ProviderError(Exception):
    """A failed upstream call, already translated to what the client should get.

    - `retryable`: another deployment may succeed (rate limit, outage, timeout, refused
      credentials), so the handler falls back;
    - `retry_same`: retrying the same deployment after a backoff may succeed (429, 5xx,
      timeouts, connection errors; not refused credentials);
    - `unhealthy`: the failure counts against the deployment's circuit breaker.
    """

    def __init__(
        self,
        status: int,
        type: str,
        message: str,
        *,
        code: str | None = None,
        retryable: bool = False,
        retry_same: bool | None = None,
        unhealthy: bool | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message
        self.code = code
        self.retryable = retryable
        self.retry_same = retryable if retry_same is None else retry_same
        self.unhealthy = retryable if unhealthy is None else unhealthy
        self.retry_after = retry_after

    @property
    def is_timeout(self) -> bool:
        return self.status == 504

    def to_error_info(self) -> ErrorInfo:
        return ErrorInfo(
            status=self.status,
            type=self.type,
            code=self.code,
            message=self.message,
            retry_after_s=self.retry_after,
        )


def invalid_request(message: str, code: str | None = None) -> ProviderError:
    return ProviderError(400, "invalid_request_error", message, code=code)


@dataclass
class StreamProgress:
    """Token counts of a stream in progress, as far as the upstream has reported them, so
    a cancelled or failed stream can still record usage."""

    input_tokens: int | None = None
    output_tokens: int | None = None


class ChatProvider(Protocol):
    async def chat(self, body: dict[str, Any], *, timeout_s: float) -> dict[str, Any]:
        """Call the upstream without streaming; return the chat.completion object."""

    def stream(
        self, body: dict[str, Any], *, timeout_s: float, progress: StreamProgress
    ) -> AsyncIterator[dict[str, Any]]:
        """Call the upstream with streaming; yield chat.completion.chunk objects, the last
        one with usage (empty choices) when the upstream reports it."""

    async def embeddings(self, body: dict[str, Any], *, timeout_s: float) -> dict[str, Any]:
        """Create embeddings; return the OpenAI embeddings list object."""

    async def aclose(self) -> None: ...


# --------------------------------------------------------------------------- errors


def _retry_after(headers: Any) -> float | None:
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


def _upstream_message(exc: openai.APIStatusError | anthropic.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        if isinstance(body.get("message"), str):  # OpenAI: the SDK keeps the error object
            return body["message"]
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]  # Anthropic: the whole body
    return exc.message


def map_sdk_error(
    exc: openai.OpenAIError | anthropic.AnthropicError | httpx2.HTTPError, deployment: str
) -> ProviderError:
    """What the caller gets for an SDK (or mid-stream transport) failure."""
    if isinstance(
        exc, openai.APITimeoutError | anthropic.APITimeoutError | httpx2.TimeoutException
    ):
        return timeout_error(deployment)
    if isinstance(
        exc, openai.APIConnectionError | anthropic.APIConnectionError | httpx2.TransportError
    ):
        return ProviderError(
            502,
            "upstream_error",
            f"Upstream deployment {deployment!r} is unreachable.",
            code="upstream_unreachable",
            retryable=True,
        )
    if not isinstance(exc, openai.APIStatusError | anthropic.APIStatusError):
        return ProviderError(
            502,
            "upstream_error",
            f"Upstream deployment {deployment!r} failed: {exc}",
            code="upstream_error",
            retryable=True,
        )
    status = exc.status_code
    if status in (401, 403):
        # Our credentials were refused: the caller can do nothing about it, and retrying
        # the same deployment cannot help; another deployment may.
        return ProviderError(
            502,
            "upstream_error",
            f"Upstream deployment {deployment!r} refused Switchyard's credentials.",
            code="upstream_auth_failed",
            retryable=True,
            retry_same=False,
        )
    if status == 429:
        retry_after = _retry_after(exc.response.headers)
        hint = f" Retry after {retry_after:g} seconds." if retry_after is not None else ""
        return ProviderError(
            429,
            "rate_limit_error",
            f"Upstream deployment {deployment!r} is rate limited.{hint}",
            code="upstream_rate_limited",
            retryable=True,
            retry_after=retry_after,
        )
    if status == 408:
        return timeout_error(deployment)
    if 400 <= status < 500:
        error_type = "not_found_error" if status == 404 else "invalid_request_error"
        code = getattr(exc, "code", None) or getattr(exc, "error_code", None)
        return ProviderError(status, error_type, _upstream_message(exc), code=code)
    overloaded = status == 529 or getattr(exc, "type", None) == "overloaded_error"
    return ProviderError(
        502,
        "upstream_error",
        f"Upstream deployment {deployment!r} answered HTTP {status}.",
        code="upstream_overloaded" if overloaded else "upstream_error",
        retryable=True,
        retry_after=_retry_after(exc.response.headers),
    )


def timeout_error(deployment: str) -> ProviderError:
    return ProviderError(
        504,
        "timeout_error",
        f"Upstream deployment {deployment!r} timed out.",
        code="upstream_timeout",
        retryable=True,
    )


def invalid_reply(deployment: str) -> ProviderError:
    return ProviderError(
        502,
        "upstream_error",
        f"Upstream deployment {deployment!r} returned an invalid reply.",
        code="upstream_invalid_reply",
        retryable=True,
    )


def stream_error(deployment: str, error: Any) -> ProviderError:
    """An error the upstream reported inside a stream (after a 200)."""
    error = error if isinstance(error, dict) else {}
    message = error.get("message") if isinstance(error.get("message"), str) else "stream failed"
    overloaded = error.get("type") == "overloaded_error"
    return ProviderError(
        502,
        "upstream_error",
        f"Upstream deployment {deployment!r} failed while streaming: {message}",
        code="upstream_overloaded" if overloaded else "upstream_stream_error",
        retryable=True,
    )


# --------------------------------------------------------------------------- helpers


async def sse_events(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str | None, str]]:
    """(event name, data) of each Server-Sent Event in a stream of lines."""
    event: str | None = None
    data: list[str] = []
    async for line in lines:
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = None, []
            continue
        if line[0] == ":":
            continue
        name, _, value = line.partition(":")
        if value[:1] == " ":
            value = value[1:]
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
    if data:
        yield event, "\n".join(data)


def split_arguments(
    body: dict[str, Any], parameters: frozenset[str], skip: tuple[str, ...] = ()
) -> dict[str, Any]:
    """SDK keyword arguments from a request body; unknown fields go in `extra_body`."""
    arguments: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for name, value in body.items():
        if name in skip:
            continue
        (arguments if name in parameters else extra)[name] = value
    if extra:
        arguments["extra_body"] = extra
    return arguments


def sdk_arguments(body: dict[str, Any], upstream_model: str) -> dict[str, Any]:
    """Keyword arguments for `chat.completions.create` from an OpenAI request body."""
    arguments = split_arguments(body, _CHAT_PARAMETERS, _STREAM_FIELDS)
    arguments["model"] = upstream_model
    return arguments


def _parse_object(content: bytes | str, deployment: str, required: str | None) -> dict[str, Any]:
    try:
        parsed = orjson.loads(content)
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict) or (required is not None and required not in parsed):
        raise invalid_reply(deployment)
    return parsed


def parse_completion(content: bytes, deployment: str) -> dict[str, Any]:
    response = _parse_object(content, deployment, "choices")
    if not isinstance(response["choices"], list):
        raise invalid_reply(deployment)
    return response


def _stream_failure(exc: Exception, deployment: str) -> Exception:
    """What to raise for an exception out of a streaming call: SDK and transport failures
    are mapped; TypeError/ValueError are the SDK refusing the arguments; anything else is
    a bug and stays itself."""
    if isinstance(exc, openai.OpenAIError | anthropic.AnthropicError | httpx2.HTTPError):
        return map_sdk_error(exc, deployment)
    if isinstance(exc, TypeError | ValueError):
        return invalid_request(f"Invalid request: {exc}")
    return exc


# --------------------------------------------------------------------------- OpenAI


@dataclass
class OpenAIProvider:
    """Any OpenAI-compatible upstream (OpenAI, vLLM, Ollama, the simulator)."""

    deployment: Deployment
    client: openai.AsyncOpenAI

    @classmethod
    def create(cls, deployment: Deployment) -> OpenAIProvider:
        client = openai.AsyncOpenAI(
            api_key=deployment.api_key(),
            base_url=deployment.base_url,
            timeout=deployment.timeout_s,
            max_retries=0,
            http_client=openai.DefaultAioHttpClient(),
        )
        return cls(deployment, client)

    @property
    def name(self) -> str:
        return self.deployment.name

    def _arguments(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return sdk_arguments(body, self.deployment.model)
        except (TypeError, AttributeError) as exc:
            raise invalid_request(f"Invalid request body: {exc}") from exc

    async def chat(self, body: dict[str, Any], *, timeout_s: float) -> dict[str, Any]:
        # The SDK's own `post` (its auth, base URL, timeouts and error mapping) with the body
        # the gateway already validated: `chat.completions.create` would rebuild and
        # re-check every field through typed transforms, a third of the call's CPU.
        payload = {key: value for key, value in body.items() if key not in _STREAM_FIELDS}
        payload["model"] = self.deployment.model
        content = await self._post("/chat/completions", payload, timeout_s)
        return parse_completion(content, self.name)

    async def _post(self, path: str, payload: dict[str, Any], timeout_s: float) -> bytes:
        try:
            response = await self.client.post(
                path, cast_to=httpx2.Response, body=payload, options={"timeout": timeout_s}
            )
            return await response.aread()
        except openai.OpenAIError as exc:
            raise map_sdk_error(exc, self.name) from exc
        except (TypeError, ValueError) as exc:
            raise invalid_request(f"Invalid request: {exc}") from exc

    async def stream(
        self, body: dict[str, Any], *, timeout_s: float, progress: StreamProgress
    ) -> AsyncIterator[dict[str, Any]]:
        arguments = self._arguments(body)
        # Always ask for usage: it is what the usage event records. The handler drops the
        # usage chunk when the client did not ask for it.
        arguments["stream"] = True
        arguments["stream_options"] = {"include_usage": True}
        try:
            async with self.client.chat.completions.with_streaming_response.create(
                **arguments, timeout=timeout_s
            ) as response:
                async for _, data in sse_events(response.iter_lines()):
                    if data == "[DONE]":
                        return
                    chunk = _parse_object(data, self.name, None)
                    if "error" in chunk and not chunk.get("choices"):
                        raise stream_error(self.name, chunk["error"])
                    usage = chunk.get("usage")
                    if isinstance(usage, dict):
                        progress.input_tokens = usage.get("prompt_tokens")
                        progress.output_tokens = usage.get("completion_tokens")
                    yield chunk
        except ProviderError:
            raise
        except Exception as exc:
            mapped = _stream_failure(exc, self.name)
            if mapped is exc:
                raise
            raise mapped from exc

    async def embeddings(self, body: dict[str, Any], *, timeout_s: float) -> dict[str, Any]:
        payload = {**body, "model": self.deployment.model}
        payload.setdefault("encoding_format", "float")
        response = _parse_object(
            await self._post("/embeddings", payload, timeout_s), self.name, "data"
        )
        if not isinstance(response["data"], list):
            raise invalid_reply(self.name)
        return response

    async def aclose(self) -> None:
        await self.client.close()


# --------------------------------------------------------------------------- Anthropic


def anthropic_base_url(base_url: str | None) -> str | None:
    """The SDK appends `/v1/messages`: a base URL ending in `/v1` is taken as its root."""
    if base_url is None:
        return None
    return base_url.rstrip("/").removesuffix("/v1")


@dataclass
class AnthropicProvider:
    """Anthropic's Messages API (or a compatible server), spoken in OpenAI's shapes."""

    deployment: Deployment
    client: anthropic.AsyncAnthropic
    default_max_tokens: int = DEFAULT_ANTHROPIC_MAX_TOKENS

    @classmethod
    def create(
        cls, deployment: Deployment, default_max_tokens: int = DEFAULT_ANTHROPIC_MAX_TOKENS
    ) -> AnthropicProvider:
        client = anthropic.AsyncAnthropic(
            api_key=deployment.api_key(),
            base_url=anthropic_base_url(deployment.base_url),
            timeout=deployment.timeout_s,
            max_retries=0,
            http_client=anthropic.DefaultAioHttpClient(),
        )
        return cls(deployment, client, default_max_tokens)

    @property
    def name(self) -> str:
        return self.deployment.name

    def _arguments(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            request = openai_request_to_anthropic(body, default_max_tokens=self.default_max_tokens)
        except TranslationError as exc:
            raise invalid_request(exc.message, code="unsupported_parameter") from exc
        request["model"] = self.deployment.model
        return split_arguments(request, _MESSAGES_PARAMETERS, ("stream",))

    async def chat(self, body: dict[str, Any], *, timeout_s: float) -> dict[str, Any]:
        arguments = self._arguments(body)
        try:
            raw = await self.client.messages.with_raw_response.create(
                **arguments, timeout=timeout_s
            )
            content = await raw.read()
        except (anthropic.AnthropicError, httpx2.HTTPError) as exc:
            raise map_sdk_error(exc, self.name) from exc
        except (TypeError, ValueError) as exc:
            raise invalid_request(f"Invalid request: {exc}") from exc
        message = _parse_object(content, self.name, "content")
        return anthropic_response_to_openai(message, self.deployment.model)

    async def stream(
        self, body: dict[str, Any], *, timeout_s: float, progress: StreamProgress
    ) -> AsyncIterator[dict[str, Any]]:
        arguments = self._arguments(body)
        converter = AnthropicToOpenAIStream(self.deployment.model, include_usage=True)
        try:
            async with self.client.messages.with_streaming_response.create(
                **arguments, stream=True, timeout=timeout_s
            ) as response:
                async for _, data in sse_events(response.iter_lines()):
                    event = _parse_object(data, self.name, "type")
                    if event["type"] == "error":
                        raise stream_error(self.name, event.get("error"))
                    chunks = converter.feed(event)
                    progress.input_tokens = converter.input_tokens
                    progress.output_tokens = converter.output_tokens
                    for chunk in chunks:
                        yield chunk
                    if event["type"] == "message_stop":
                        return
        except ProviderError:
            raise
        except Exception as exc:
            mapped = _stream_failure(exc, self.name)
            if mapped is exc:
                raise
            raise mapped from exc

    async def embeddings(self, body: dict[str, Any], *, timeout_s: float) -> dict[str, Any]:
        raise ProviderError(
            400,
            "invalid_request_error",
            f"Deployment {self.name!r} (Anthropic) does not offer embeddings.",
            code="unsupported_operation",
            retryable=True,  # another deployment of the model may
            retry_same=False,
            unhealthy=False,
        )

    async def aclose(self) -> None:
        await self.client.close()


# --------------------------------------------------------------------------- pool

ProviderFactory = Callable[[Deployment], ChatProvider]


def default_provider_factory(
    deployment: Deployment, *, anthropic_max_tokens: int = DEFAULT_ANTHROPIC_MAX_TOKENS
) -> ChatProvider:
    if deployment.provider == "anthropic":
        return AnthropicProvider.create(deployment, anthropic_max_tokens)
    return OpenAIProvider.create(deployment)


@dataclass
class ProviderPool:
    """One provider (and SDK client, with its connection pool) per deployment, created on
    first use inside the running event loop and reused for every later call.

    Keyed by the deployment's whole configuration: after a routing reload that changes a
    deployment, the next request gets a new client; `retire` closes clients no longer in
    the table once the calls they may still serve are over."""

    factory: ProviderFactory = default_provider_factory
    _providers: dict[tuple[str, Deployment], ChatProvider] = field(default_factory=dict)
    _closing: set[asyncio.Task[None]] = field(default_factory=set)

    def get(self, model: str, deployment: Deployment) -> ChatProvider:
        key = (model, deployment)
        provider = self._providers.get(key)
        if provider is None:
            provider = self._providers[key] = self.factory(deployment)
        return provider

    def retire(self, keep: set[tuple[str, Deployment]], grace_s: float = 600.0) -> None:
        """Close, after `grace_s`, the providers whose (model, deployment) is not in `keep`."""
        stale = [key for key in self._providers if key not in keep]
        for key in stale:
            provider = self._providers.pop(key)
            task = asyncio.get_running_loop().create_task(self._close_later(provider, grace_s))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _close_later(self, provider: ChatProvider, delay_s: float) -> None:
        try:
            await asyncio.sleep(delay_s)
        finally:
            await _close_quietly(provider)

    async def aclose(self) -> None:
        providers, self._providers = list(self._providers.values()), {}
        for task in list(self._closing):
            task.cancel()  # closes its provider now
        closing: list[Awaitable[None]] = [_close_quietly(provider) for provider in providers]
        await asyncio.gather(*closing, *self._closing, return_exceptions=True)


async def _close_quietly(provider: ChatProvider) -> None:
    try:
        await provider.aclose()
    except Exception as exc:  # noqa: BLE001 - closing must not fail shutdown
        log.warning("provider did not close cleanly", error=repr(exc))
