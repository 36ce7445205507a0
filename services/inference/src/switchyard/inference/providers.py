"""Upstream providers: one call to one deployment with the official SDK, and the mapping
of every SDK failure to the error the client of Switchyard should see.

Replies are read as raw bytes and parsed once with orjson: the SDK's pydantic models would
cost more CPU than the rest of a request's path, and the reply is forwarded as a dict.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import openai
import orjson
import structlog
from openai.resources.chat.completions import AsyncCompletions

from switchyard.common.events import ErrorInfo
from switchyard.common.routing import Deployment

log = structlog.get_logger("switchyard.inference.providers")

# Body fields the SDK takes as keyword arguments; any other field travels in `extra_body`,
# so a parameter newer than the installed SDK still reaches the upstream. Streaming is
# decided by the caller, never by the body.
_SDK_PARAMETERS = frozenset(inspect.signature(AsyncCompletions.create).parameters) - {
    "self",
    "extra_headers",
    "extra_query",
    "extra_body",
    "timeout",
    "stream",
    "stream_options",
}
_STREAM_FIELDS = ("stream", "stream_options")


class ProviderError(Exception):
    """A failed upstream call, already translated to what the client should get.

    `retryable` means another deployment may succeed (rate limit, outage, timeout)."""

    def __init__(
        self,
        status: int,
        type: str,
        message: str,
        *,
        code: str | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message
        self.code = code
        self.retryable = retryable
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


class ChatProvider(Protocol):
    async def chat(self, body: dict[str, Any], *, timeout_s: float) -> dict[str, Any]:
        """Call the upstream without streaming; return the chat.completion object."""

    async def aclose(self) -> None: ...


# --------------------------------------------------------------------------- OpenAI


def _upstream_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    return exc.message


def _retry_after(exc: openai.APIStatusError) -> float | None:
    value = exc.response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date; rare enough not to parse


def map_openai_error(exc: openai.OpenAIError, deployment: str) -> ProviderError:
    """What the caller gets for an SDK failure (see the status table in the module tests)."""
    if isinstance(exc, openai.APITimeoutError):
        return ProviderError(
            504,
            "timeout_error",
            f"Upstream deployment {deployment!r} timed out.",
            code="upstream_timeout",
            retryable=True,
        )
    if isinstance(exc, openai.APIConnectionError):
        return ProviderError(
            502,
            "upstream_error",
            f"Upstream deployment {deployment!r} is unreachable.",
            code="upstream_unreachable",
            retryable=True,
        )
    if not isinstance(exc, openai.APIStatusError):
        return ProviderError(
            502,
            "upstream_error",
            f"Upstream deployment {deployment!r} failed: {exc}",
            code="upstream_error",
            retryable=True,
        )
    status = exc.status_code
    if status in (401, 403):
        # Our credentials were refused: the caller can do nothing about it.
        return ProviderError(
            502,
            "upstream_error",
            f"Upstream deployment {deployment!r} refused Switchyard's credentials.",
            code="upstream_auth_failed",
            retryable=True,
        )
    if status == 429:
        retry_after = _retry_after(exc)
        hint = f" Retry after {retry_after:g} seconds." if retry_after is not None else ""
        return ProviderError(
            429,
            "rate_limit_error",
            f"Upstream deployment {deployment!r} is rate limited.{hint}",
            code="upstream_rate_limited",
            retryable=True,
            retry_after=retry_after,
        )
    if 400 <= status < 500:
        error_type = "not_found_error" if status == 404 else "invalid_request_error"
        return ProviderError(status, error_type, _upstream_message(exc), code=exc.code)
    return ProviderError(
        502,
        "upstream_error",
        f"Upstream deployment {deployment!r} answered HTTP {status}.",
        code="upstream_error",
        retryable=True,
    )


def sdk_arguments(body: dict[str, Any], upstream_model: str) -> dict[str, Any]:
    """Keyword arguments for `chat.completions.create` from an OpenAI request body."""
    arguments: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for name, value in body.items():
        if name in _STREAM_FIELDS:
            continue
        (arguments if name in _SDK_PARAMETERS else extra)[name] = value
    arguments["model"] = upstream_model
    if extra:
        arguments["extra_body"] = extra
    return arguments


@dataclass
class OpenAIProvider:
    """Any OpenAI-compatible upstream (OpenAI, vLLM, Ollama, the simulator)."""

    deployment: Deployment
    client: openai.AsyncOpenAI
    # Bounds calls in flight when the deployment has a concurrency limit.
    slots: asyncio.Semaphore | None = None

    @classmethod
    def create(cls, deployment: Deployment) -> OpenAIProvider:
        client = openai.AsyncOpenAI(
            api_key=deployment.api_key(),
            base_url=deployment.base_url,
            timeout=deployment.timeout_s,
            max_retries=deployment.max_retries,
            http_client=openai.DefaultAioHttpClient(),
        )
        slots = (
            asyncio.Semaphore(deployment.max_concurrency) if deployment.max_concurrency else None
        )
        return cls(deployment, client, slots)

    async def chat(self, body: dict[str, Any], *, timeout_s: float) -> dict[str, Any]:
        try:
            arguments = sdk_arguments(body, self.deployment.model)
        except (TypeError, AttributeError) as exc:
            raise ProviderError(
                400, "invalid_request_error", f"Invalid request body: {exc}"
            ) from exc
        if self.slots is None:
            return await self._call(arguments, timeout_s)
        async with self.slots:
            return await self._call(arguments, timeout_s)

    async def _call(self, arguments: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        try:
            raw = await self.client.chat.completions.with_raw_response.create(
                **arguments, timeout=timeout_s
            )
        except openai.OpenAIError as exc:
            raise map_openai_error(exc, self.deployment.name) from exc
        except (TypeError, ValueError) as exc:
            # The SDK refused the arguments before sending anything (e.g. no messages).
            raise ProviderError(400, "invalid_request_error", f"Invalid request: {exc}") from exc
        return parse_completion(raw.content, self.deployment.name)

    async def aclose(self) -> None:
        await self.client.close()


def parse_completion(content: bytes, deployment: str) -> dict[str, Any]:
    try:
        response = orjson.loads(content)
    except orjson.JSONDecodeError:
        response = None
    if not isinstance(response, dict) or not isinstance(response.get("choices"), list):
        raise ProviderError(
            502,
            "upstream_error",
            f"Upstream deployment {deployment!r} returned an invalid reply.",
            code="upstream_invalid_reply",
            retryable=True,
        )
    return response


@dataclass
class UnsupportedProvider:
    """Stands in for a provider this version cannot call yet, failing each request clearly."""

    deployment: Deployment

    async def chat(self, body: dict[str, Any], *, timeout_s: float) -> dict[str, Any]:
        raise ProviderError(
            501,
            "not_implemented_error",
            f"Provider {self.deployment.provider!r} (deployment {self.deployment.name!r}) "
            "is not supported by this inference service yet.",
            code="provider_not_supported",
            retryable=True,
        )

    async def aclose(self) -> None:
        return None


ProviderFactory = Callable[[Deployment], ChatProvider]


def default_provider_factory(deployment: Deployment) -> ChatProvider:
    if deployment.provider == "openai":
        return OpenAIProvider.create(deployment)
    return UnsupportedProvider(deployment)


@dataclass
class ProviderPool:
    """One provider (and SDK client, with its connection pool) per deployment, created on
    first use inside the running event loop and reused for every later call."""

    factory: ProviderFactory = default_provider_factory
    _providers: dict[tuple[str, str], ChatProvider] = field(default_factory=dict)

    def get(self, model: str, deployment: Deployment) -> ChatProvider:
        key = (model, deployment.name)
        provider = self._providers.get(key)
        if provider is None:
            provider = self._providers[key] = self.factory(deployment)
        return provider

    async def aclose(self) -> None:
        providers, self._providers = list(self._providers.values()), {}
        closing: list[Awaitable[None]] = [provider.aclose() for provider in providers]
        for result in await asyncio.gather(*closing, return_exceptions=True):
            if isinstance(result, BaseException):
                log.warning("provider did not close cleanly", error=repr(result))
