"""The provider kinds reached through a cloud platform, each through its official SDK
client (the wire they speak is in docs/protocols.md, "Provider kinds"):

- `azure_openai`: the `openai` SDK's `AsyncAzureOpenAI`. `POST {endpoint}/openai/
  deployments/{deployment}/chat/completions?api-version=...` (and `/embeddings`), with the
  key in `api-key`, or a Microsoft Entra ID token as `Authorization: Bearer`.
- `bedrock`: the `anthropic` SDK's `AsyncAnthropicBedrock`. `POST /model/{id}/invoke` and
  `/invoke-with-response-stream`, signed with AWS Signature Version 4 (botocore); the
  stream is framed in AWS's binary event-stream encoding, each frame carrying one
  Anthropic event, which the SDK's own decoder unpacks. Token counts use Bedrock's
  `CountTokens` (`POST /model/{id}/count-tokens`), which the SDK does not wrap.
- `vertex`: the `anthropic` SDK's `AsyncAnthropicVertex`. `POST /projects/{project}/
  locations/{region}/publishers/anthropic/models/{model}:rawPredict` (`:streamRawPredict`
  for Server-Sent Events, `count-tokens:rawPredict` for token counts), with a Google
  OAuth 2.0 access token as `Authorization: Bearer`.
- `gemini`: the `openai` SDK against Gemini's OpenAI-compatible endpoint, with its quirks
  mended (`GeminiUpstream`).

Credentials are read from the variables and files the routing table names; no value is
ever logged, and every value is removed from error messages relayed to clients.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
import urllib.parse
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any, cast

import httpx2
import openai
from typing_extensions import override

from switchyard.common import exactjson
from switchyard.common.routing import GEMINI_OPENAI_BASE_URL, Deployment, RoutingError
from switchyard.inference.errors import ProviderError
from switchyard.inference.upstream import (
    SSE,
    AnthropicUpstream,
    OpenAIUpstream,
    Reply,
    anthropic_sdk,
    invalid_reply,
    parse_object,
    sdk_http_client,
)

COUNT_TOKENS_PATH = "/v1/messages/count_tokens"
# botocore's signer logs the canonical request at DEBUG, and that holds the session token
# (`x-amz-security-token`): never let it through, whatever level logging runs at.
logging.getLogger("botocore.auth").setLevel(logging.INFO)
GOOGLE_CLOUD_SCOPE = "https://www.googleapis.com/auth/cloud-platform"


def missing_credential(deployment: Deployment, exc: Exception) -> ProviderError:
    """A credential the deployment names cannot be read right now: another deployment
    may serve the request; this one is not called."""
    return ProviderError(
        502,
        None,
        f"Upstream deployment {deployment.name!r} has no usable credentials: {exc}",
        code="upstream_credentials_missing",
        retryable=True,
        retry_same=False,
    )


class TokenFile:
    """An access token kept in a file that something else renews: read again whenever
    the file changes (its modification time or size). Calling it returns the token."""

    def __init__(self, deployment: Deployment, path: str) -> None:
        self.deployment = deployment
        self.path = path
        self._lock = threading.Lock()
        self._signature: tuple[int, int] | None = None
        self._token = ""

    def __call__(self) -> str:
        """The token in the file, read again if the file changed since. Raises the
        `upstream_credentials_missing` ProviderError when it cannot be read or is empty."""
        try:
            stat = os.stat(self.path)
            signature = (stat.st_mtime_ns, stat.st_size)
            with self._lock:
                if signature != self._signature:
                    with open(self.path, encoding="utf-8") as handle:
                        self._token = handle.read().strip()
                    self._signature = signature
                token = self._token
        except OSError as exc:
            raise missing_credential(
                self.deployment, RuntimeError(f"cannot read {self.path}: {exc.strerror}")
            ) from None
        if not token:
            raise missing_credential(self.deployment, RuntimeError(f"{self.path} is empty"))
        return token


class TokenVariable:
    """An access token in an environment variable, read at each call."""

    def __init__(self, deployment: Deployment, variable: str) -> None:
        self.deployment = deployment
        self.variable = variable

    def __call__(self) -> str:
        """The token in the variable now. Raises the `upstream_credentials_missing`
        ProviderError when it is unset."""
        try:
            return self.deployment.secret(self.variable)
        except RoutingError as exc:
            raise missing_credential(self.deployment, exc) from None


# --------------------------------------------------------------------------- Azure OpenAI


class AzureOpenAIUpstream(OpenAIUpstream):
    """Azure OpenAI: `model` is the Azure deployment name, which the SDK puts in the path
    (`/openai/deployments/{model}/...`); `api-version` goes in every query string."""

    @classmethod
    @override
    def create(cls, deployment: Deployment) -> AzureOpenAIUpstream:
        auth: dict[str, Any]
        if deployment.api_key_env is not None:
            auth = {"api_key": deployment.api_key()}
        elif deployment.azure_ad_token_env is not None:
            auth = {
                "azure_ad_token_provider": TokenVariable(deployment, deployment.azure_ad_token_env)
            }
        else:
            assert deployment.azure_ad_token_file is not None
            auth = {
                "azure_ad_token_provider": TokenFile(deployment, deployment.azure_ad_token_file)
            }
        client = openai.AsyncAzureOpenAI(
            azure_endpoint=deployment.base_url or "",
            api_version=deployment.api_version,
            timeout=deployment.timeout_s,
            max_retries=0,
            http_client=sdk_http_client(openai),
            **auth,
        )
        return cls(deployment, client)


# --------------------------------------------------------------------------- Gemini


class GeminiUpstream(OpenAIUpstream):
    """Gemini's OpenAI-compatible endpoint, with its quirks mended so that clients (and
    the translation to Anthropic's Messages) see OpenAI's shapes:

    - a streamed tool call may come without `index`: each new call (one with an `id`)
      gets the next index, and argument pieces without one belong to the last call;
    - a streamed answer that made tool calls ends with `finish_reason: "stop"`: it is
      `"tool_calls"`, as in Gemini's own non-streamed answer;
    - a choice may lack `message`, and `usage` may lack `completion_tokens`: they are
      filled in (no content; total minus prompt tokens);
    - errors come as a list, `[{"error": {"code": 400, "status": "INVALID_ARGUMENT"}}]`:
      read as the error object, with `status` as its code (`upstream.map_sdk_error`).

    Fields Gemini does not know are refused by Gemini itself with a 400 naming them, which
    reaches the client as Gemini wrote it.
    """

    @classmethod
    @override
    def create(cls, deployment: Deployment) -> GeminiUpstream:
        client = openai.AsyncOpenAI(
            api_key=deployment.api_key(),
            base_url=deployment.base_url or GEMINI_OPENAI_BASE_URL,
            timeout=deployment.timeout_s,
            max_retries=0,
            http_client=sdk_http_client(openai),
        )
        return cls(deployment, client)

    @override
    async def send(
        self, path: str, body: dict[str, Any], headers: Mapping[str, str], timeout_s: float
    ) -> dict[str, Any]:
        reply = await super().send(path, body, headers, timeout_s)
        for choice in reply.get("choices") or ():
            if isinstance(choice, dict) and not isinstance(choice.get("message"), dict):
                choice["message"] = {"role": "assistant", "content": None}
        _complete_usage(reply.get("usage"))
        return reply

    @override
    async def stream(
        self, path: str, body: dict[str, Any], headers: Mapping[str, str], timeout_s: float
    ) -> AsyncGenerator[SSE, None]:
        calls: dict[int, int] = {}  # choice index -> tool calls started so far
        async for sse in super().stream(path, body, headers, timeout_s):
            _complete_usage(sse.data.get("usage"))
            for choice in sse.data.get("choices") or ():
                if isinstance(choice, dict):
                    _mend_choice(choice, calls)
            yield sse


def _complete_usage(usage: Any) -> None:
    if not isinstance(usage, dict) or isinstance(usage.get("completion_tokens"), int):
        return
    total, prompt = usage.get("total_tokens"), usage.get("prompt_tokens")
    if isinstance(total, int) and isinstance(prompt, int):
        usage["completion_tokens"] = max(0, total - prompt)


def _mend_choice(choice: dict[str, Any], calls: dict[int, int]) -> None:
    position = choice.get("index", 0)
    delta = choice.get("delta")
    tool_calls = delta.get("tool_calls") if isinstance(delta, dict) else None
    if isinstance(tool_calls, list):
        for call in tool_calls:
            if not isinstance(call, dict):
                continue
            if isinstance(call.get("index"), int):
                calls[position] = max(calls.get(position, 0), call["index"] + 1)
                continue
            if call.get("id") or not calls.get(position):
                calls[position] = calls.get(position, 0) + 1
            call["index"] = calls[position] - 1
    if choice.get("finish_reason") == "stop" and calls.get(position):
        choice["finish_reason"] = "tool_calls"


# --------------------------------------------------------------------------- Anthropic on clouds


class _PlatformAnthropicUpstream(AnthropicUpstream):
    """Claude on a cloud platform: the API version travels in the body (the SDK writes
    `anthropic_version`), so the client's `anthropic-version` header is not sent on."""

    def _options(self, headers: Mapping[str, str], timeout_s: float) -> dict[str, Any]:
        kept = {name: value for name, value in headers.items() if name != "anthropic-version"}
        return super()._options(kept, timeout_s)


class BedrockUpstream(_PlatformAnthropicUpstream):
    """Claude on AWS Bedrock. Credentials: a Bedrock API key (`api_key_env`), or AWS
    keys from the variables the deployment names, or `aws_profile`, or else the standard
    AWS chain (environment, shared files, container or instance role) as boto3 finds it."""

    @classmethod
    @override
    def create(cls, deployment: Deployment) -> BedrockUpstream:
        credentials: dict[str, Any] = {}
        if deployment.api_key_env is not None:
            credentials["api_key"] = deployment.api_key()
        if deployment.aws_access_key_id_env is not None:
            credentials["aws_access_key"] = deployment.secret(deployment.aws_access_key_id_env)
        if deployment.aws_secret_access_key_env is not None:
            credentials["aws_secret_key"] = deployment.secret(deployment.aws_secret_access_key_env)
        if deployment.aws_session_token_env is not None:
            credentials["aws_session_token"] = deployment.secret(deployment.aws_session_token_env)
        anthropic = anthropic_sdk()
        client = anthropic.AsyncAnthropicBedrock(
            aws_region=deployment.region,
            aws_profile=deployment.aws_profile,
            base_url=deployment.base_url,
            timeout=deployment.timeout_s,
            max_retries=0,
            http_client=sdk_http_client(anthropic),
            **credentials,
        )
        return cls(deployment, client)

    def _events(self, response: Reply) -> AsyncIterator[Any]:
        # AWS event-stream frames, not Server-Sent Events: the SDK's own decoder (botocore)
        # yields one event per frame, an `exception` frame as an `error` event.
        return cast(
            AsyncIterator[Any],
            self.client._make_sse_decoder().aiter_bytes(response.aiter_bytes()),
        )

    @override
    async def send(
        self, path: str, body: dict[str, Any], headers: Mapping[str, str], timeout_s: float
    ) -> dict[str, Any]:
        if path != COUNT_TOKENS_PATH:
            return await super().send(path, body, headers, timeout_s)
        return await self._count_tokens(body, headers, timeout_s)

    async def _count_tokens(
        self, body: dict[str, Any], headers: Mapping[str, str], timeout_s: float
    ) -> dict[str, Any]:
        """Bedrock's CountTokens (botocore's bedrock-runtime model: `POST
        /model/{modelId}/count-tokens`, `{"input": {"invokeModel": {"body": <base64>}}}`
        answered by `{"inputTokens": N}`), for the InvokeModel body the request would
        send; answered in Anthropic's shape, `{"input_tokens": N}`."""
        from anthropic._constants import ANTHROPIC_API_VERSION  # what the SDK's invoke sends

        invoke = {key: value for key, value in body.items() if key != "model"}
        invoke.setdefault("anthropic_version", ANTHROPIC_API_VERSION)
        invoke.setdefault("max_tokens", 1)  # required by InvokeModel; no effect on input
        betas = headers.get("anthropic-beta")
        if betas:
            invoke.setdefault("anthropic_beta", [beta.strip() for beta in betas.split(",")])
        payload = {
            "input": {"invokeModel": {"body": base64.b64encode(exactjson.dumps(invoke)).decode()}}
        }
        model = urllib.parse.quote(str(body.get("model") or self.deployment.model), safe=":")
        options = self._options({"content-type": "application/json"}, timeout_s)
        try:
            # Raw bytes: the SDK adds `anthropic_version` to JSON bodies it posts.
            response = await self.client.post(
                f"/model/{model}/count-tokens",
                cast_to=httpx2.Response,
                content=exactjson.dumps(payload),
                options=options,
            )
            content = await response.aread()
        except Exception as exc:
            failure = self._failure(exc)
            if failure is exc:
                raise
            raise failure from exc
        counted = parse_object(content, self.name).get("inputTokens")
        if not isinstance(counted, int) or isinstance(counted, bool):
            raise invalid_reply(self.name)
        return {"input_tokens": counted}


class VertexUpstream(_PlatformAnthropicUpstream):
    """Claude on Google Vertex AI. Credentials: a service-account key file
    (`credentials_file`), an access token (`access_token_env`), or else Application
    Default Credentials as google-auth finds them. Tokens from a key file are renewed by
    google-auth before they expire (in a worker thread)."""

    @classmethod
    @override
    def create(cls, deployment: Deployment) -> VertexUpstream:
        options: dict[str, Any] = {}
        if deployment.access_token_env is not None:
            options["access_token"] = deployment.secret(deployment.access_token_env)
        elif deployment.credentials_file is not None:
            from google.oauth2 import service_account

            try:
                options["credentials"] = service_account.Credentials.from_service_account_file(
                    deployment.credentials_file, scopes=[GOOGLE_CLOUD_SCOPE]
                )
            except (OSError, ValueError) as exc:
                raise RoutingError(
                    f"{deployment.where('credentials_file')}: deployment {deployment.name!r}: "
                    f"{deployment.credentials_file} is not a service-account key "
                    f"({type(exc).__name__})"
                ) from None
        anthropic = anthropic_sdk()
        client = anthropic.AsyncAnthropicVertex(
            region=deployment.region or "",
            project_id=deployment.project_id or "",
            base_url=deployment.base_url,
            timeout=deployment.timeout_s,
            max_retries=0,
            http_client=sdk_http_client(anthropic),
            **options,
        )
        return cls(deployment, client)

    def _failure(self, exc: BaseException) -> BaseException:
        # google-auth's refresh failing (a revoked key, the token endpoint down) is a
        # credentials problem of this deployment, not the client's bad request.
        from google.auth import exceptions as google_errors

        if isinstance(exc, google_errors.GoogleAuthError):
            return missing_credential(self.deployment, RuntimeError(type(exc).__name__))
        return super()._failure(exc)
