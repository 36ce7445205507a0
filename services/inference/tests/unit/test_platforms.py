"""The provider kinds on the wire, each through its official SDK client against a local
recording server: Azure OpenAI (deployment path, `api-version`, `api-key` or an Entra ID
token), AWS Bedrock (invoke paths, a valid SigV4 signature, the binary event-stream),
Google Vertex AI (rawPredict paths, an injected or service-account token, never Google
itself), and Gemini's OpenAI-compatible endpoint (its quirks mended). No credential
reaches a log line or a relayed error."""

from __future__ import annotations

import base64
import json
from typing import Any

import jwt
import orjson
import pytest
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from switchyard.common.events import ChatCompleted, ChatFailed, ClientAPI
from switchyard.common.routing import Deployment
from switchyard.inference.providers import ProviderPool
from switchyard.inference.testing import Scripted, chat_request

from .aws_wire import check_sigv4, chunk_frame, exception_frame

MESSAGES = ClientAPI.ANTHROPIC_MESSAGES
CHAT = ClientAPI.OPENAI_CHAT_COMPLETIONS
COUNT = ClientAPI.ANTHROPIC_COUNT_TOKENS

AZURE_KEY = "azure-key-0123456789abcdef"
ENTRA_TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOi.entra-token-payload.signature"
GEMINI_KEY = "AIzaSyGeminiKey0123456789"
AWS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
AWS_SESSION = "FwoGZXIvYXdzEBYaDSessionToken"
GOOGLE_TOKEN = "ya29.a0AfH6SMBvertex-access-token"
SECRETS = (AZURE_KEY, ENTRA_TOKEN, GEMINI_KEY, AWS_SECRET, AWS_SESSION, GOOGLE_TOKEN)
BEDROCK_MODEL = "anthropic.claude-haiku-4-5-20251001-v1:0"


@pytest.fixture(autouse=True)
def credentials(monkeypatch) -> None:
    monkeypatch.setenv("T_AZURE_KEY", AZURE_KEY)
    monkeypatch.setenv("T_ENTRA_TOKEN", ENTRA_TOKEN)
    monkeypatch.setenv("T_GEMINI_KEY", GEMINI_KEY)
    monkeypatch.setenv("T_AWS_KEY_ID", AWS_KEY_ID)
    monkeypatch.setenv("T_AWS_SECRET", AWS_SECRET)
    monkeypatch.setenv("T_AWS_SESSION", AWS_SESSION)
    monkeypatch.setenv("T_GOOGLE_TOKEN", GOOGLE_TOKEN)
    # The standard AWS chain and Google's default credentials must find nothing else here.
    for name in (
        "AWS_PROFILE",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_BEARER_TOKEN_BEDROCK",
        "GOOGLE_APPLICATION_CREDENTIALS",
    ):
        monkeypatch.delenv(name, raising=False)


def azure(recorder, **auth: Any) -> Deployment:
    return Deployment(
        name="azure",
        provider="azure_openai",
        model="gpt4o-prod",
        base_url=recorder.root,
        api_version="2024-10-21",
        max_retries=0,
        **(auth or {"api_key_env": "T_AZURE_KEY"}),
    )


def bedrock(recorder, **options: Any) -> Deployment:
    return Deployment(
        name="bedrock",
        provider="bedrock",
        model=BEDROCK_MODEL,
        region="eu-west-1",
        base_url=recorder.root,
        aws_access_key_id_env="T_AWS_KEY_ID",
        aws_secret_access_key_env="T_AWS_SECRET",
        aws_session_token_env="T_AWS_SESSION",
        max_retries=0,
        **options,
    )


def vertex(recorder, **credentials: Any) -> Deployment:
    return Deployment(
        name="vertex",
        provider="vertex",
        model="claude-sonnet-4-5@20250929",
        project_id="acme-prod",
        region="us-east5",
        base_url=f"{recorder.root}/v1",
        max_retries=0,
        **(credentials or {"access_token_env": "T_GOOGLE_TOKEN"}),
    )


def gemini(recorder) -> Deployment:
    return Deployment(
        name="gemini",
        provider="gemini",
        model="gemini-2.5-flash",
        base_url=f"{recorder.root}/v1beta/openai/",
        api_key_env="T_GEMINI_KEY",
        max_retries=0,
    )


def completion(text: str = "Hi") -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "upstream",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }


def message(text: str = "Hi") -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "upstream",
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 9, "output_tokens": 3},
    }


def message_events(text: str = "Hello") -> list[dict[str, Any]]:
    start = {**message(""), "content": [], "stop_reason": None}
    start["usage"] = {"input_tokens": 9, "output_tokens": 1}
    return [
        {"type": "message_start", "message": start},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": 4},
        },
        {"type": "message_stop"},
    ]


def count_request(**body: Any) -> Any:
    return chat_request(
        "m",
        api=COUNT,
        body={"model": "m", "messages": [{"role": "user", "content": "Count me"}], **body},
    )


# --------------------------------------------------------------------------- Azure OpenAI


async def test_azure_chat_reaches_the_deployment_path_with_api_version_and_api_key(recorder, serve):
    recorder.script(Scripted(json=completion("From Azure")))
    harness = await serve(azure(recorder))
    reply = await harness.handle(chat_request("m"))
    assert isinstance(reply, ChatCompleted), reply
    assert reply.data.response["choices"][0]["message"]["content"] == "From Azure"
    sent = recorder.last
    assert sent.path == "/openai/deployments/gpt4o-prod/chat/completions"
    assert sent.query == "api-version=2024-10-21"
    assert sent.headers["api-key"] == AZURE_KEY
    assert "authorization" not in sent.headers
    assert sent.body["model"] == "gpt4o-prod"
    assert reply.data.provider == "azure_openai"


async def test_azure_stream_is_relayed_with_usage(recorder, serve):
    chunk = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o",
        "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}],
    }
    # Azure opens with a chunk of content-filter results and no choices.
    filters = {
        "id": "",
        "object": "",
        "created": 0,
        "model": "",
        "choices": [],
        "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}],
    }
    done = {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    usage = {**chunk, "choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 1}}
    recorder.script(Scripted(events=[(None, filters), (None, chunk), (None, done), (None, usage)]))
    harness = await serve(azure(recorder))
    request = chat_request("m", stream=True)
    reply = await harness.handle(request)
    assert isinstance(reply, ChatCompleted), reply
    sent = recorder.last
    assert sent.path == "/openai/deployments/gpt4o-prod/chat/completions"
    assert sent.query == "api-version=2024-10-21"
    assert sent.headers["api-key"] == AZURE_KEY
    assert sent.body["stream"] is True and sent.body["stream_options"] == {"include_usage": True}
    texts = [
        choice["delta"].get("content")
        for event in harness.stream_of(request.request_id)
        for choice in event.data.get("choices", [])
    ]
    assert "Hi" in texts
    usage_event = await harness.usage_of(request.request_id)
    assert usage_event.data.usage.input_tokens == 4


async def test_azure_embeddings_reach_the_deployment_path(recorder, serve):
    recorder.script(
        Scripted(
            json={
                "object": "list",
                "data": [{"embedding": [0.1], "index": 0}],
                "model": "x",
                "usage": {"prompt_tokens": 2, "total_tokens": 2},
            }
        )
    )
    harness = await serve(azure(recorder))
    reply = await harness.handle(chat_request("m", api=ClientAPI.OPENAI_EMBEDDINGS))
    assert isinstance(reply, ChatCompleted), reply
    assert recorder.last.path == "/openai/deployments/gpt4o-prod/embeddings"
    assert recorder.last.query == "api-version=2024-10-21"


async def test_azure_entra_id_token_file_is_sent_as_bearer_and_reread_when_renewed(
    recorder, serve, tmp_path
):
    token_file = tmp_path / "entra-token"
    token_file.write_text("first-entra-token\n")
    recorder.script(Scripted(json=completion()))
    harness = await serve(azure(recorder, azure_ad_token_file=str(token_file)))
    await harness.handle(chat_request("m"))
    assert recorder.last.headers["authorization"] == "Bearer first-entra-token"
    assert "api-key" not in recorder.last.headers
    token_file.write_text("renewed-entra-token-longer\n")  # another size: seen as changed
    await harness.handle(chat_request("m"))
    assert recorder.last.headers["authorization"] == "Bearer renewed-entra-token-longer"


async def test_azure_entra_id_token_variable_is_sent_as_bearer(recorder, serve):
    recorder.script(Scripted(json=completion()))
    harness = await serve(azure(recorder, azure_ad_token_env="T_ENTRA_TOKEN"))
    await harness.handle(chat_request("m"))
    assert recorder.last.headers["authorization"] == f"Bearer {ENTRA_TOKEN}"


async def test_azure_missing_token_file_fails_as_a_credentials_problem(recorder, serve, tmp_path):
    harness = await serve(azure(recorder, azure_ad_token_file=str(tmp_path / "absent")))
    reply = await harness.handle(chat_request("m"))
    assert isinstance(reply, ChatFailed)
    assert reply.data.error.status == 502
    assert reply.data.error.code == "upstream_credentials_missing"
    assert recorder.requests == []  # nothing was sent without credentials


async def test_an_anthropic_client_reaches_azure_translated(recorder, serve):
    recorder.script(Scripted(json=completion("Translated")))
    harness = await serve(azure(recorder))
    reply = await harness.handle(chat_request("m", api=MESSAGES))
    assert isinstance(reply, ChatCompleted), reply
    assert reply.data.response["content"] == [{"type": "text", "text": "Translated"}]
    assert recorder.last.body["max_completion_tokens"] == 256
    assert reply.data.upstream_api is CHAT


# --------------------------------------------------------------------------- Bedrock


async def test_bedrock_invoke_is_signed_with_sigv4_and_carries_the_anthropic_body(recorder, serve):
    recorder.script(Scripted(json=message("From Bedrock")))
    harness = await serve(bedrock(recorder))
    request = chat_request(
        "m", api=MESSAGES, headers={"anthropic-version": "2023-06-01", "anthropic-beta": "b-1"}
    )
    reply = await harness.handle(request)
    assert isinstance(reply, ChatCompleted), reply
    assert reply.data.response["content"][0]["text"] == "From Bedrock"
    assert reply.data.response["model"] == "m"
    sent = recorder.last
    assert sent.path == f"/model/{BEDROCK_MODEL}/invoke"
    check_sigv4(
        sent,
        access_key=AWS_KEY_ID,
        secret_key=AWS_SECRET,
        region="eu-west-1",
        session_token=AWS_SESSION,
    )
    # The model is in the path, the version and betas in the body, not in headers.
    assert "model" not in sent.body and "stream" not in sent.body
    assert sent.body["anthropic_version"]
    assert sent.body["anthropic_beta"] == ["b-1"]
    assert sent.body["messages"] == [{"role": "user", "content": "Hello there"}]
    assert "anthropic-version" not in sent.headers
    assert "x-api-key" not in sent.headers


async def test_bedrock_stream_is_read_from_aws_event_stream_frames(recorder, serve):
    frames = [chunk_frame(event) for event in message_events("Streamed")]
    # Split a frame across two network reads: the decoder must reassemble it.
    wire = b"".join(frames)
    recorder.script(
        Scripted(chunks=[wire[:50], wire[50:]], media_type="application/vnd.amazon.eventstream")
    )
    harness = await serve(bedrock(recorder))
    request = chat_request("m", api=MESSAGES, stream=True)
    reply = await harness.handle(request)
    assert isinstance(reply, ChatCompleted), reply
    assert recorder.last.path == f"/model/{BEDROCK_MODEL}/invoke-with-response-stream"
    check_sigv4(
        recorder.last,
        access_key=AWS_KEY_ID,
        secret_key=AWS_SECRET,
        region="eu-west-1",
        session_token=AWS_SESSION,
    )
    events = harness.stream_of(request.request_id)
    assert [event.event for event in events] == [e["type"] for e in message_events()]
    assert events[2].data["delta"]["text"] == "Streamed"
    assert events[0].data["message"]["model"] == "m"
    usage = await harness.usage_of(request.request_id)
    assert usage.data.usage.input_tokens == 9 and usage.data.usage.output_tokens == 4


async def test_an_openai_client_streams_from_bedrock_translated(recorder, serve):
    recorder.script(
        Scripted(
            chunks=[b"".join(chunk_frame(e) for e in message_events("Via chat"))],
            media_type="application/vnd.amazon.eventstream",
        )
    )
    harness = await serve(bedrock(recorder))
    request = chat_request("m", stream=True)
    reply = await harness.handle(request)
    assert isinstance(reply, ChatCompleted), reply
    assert reply.data.response["choices"][0]["message"]["content"] == "Via chat"


async def test_bedrock_exception_frame_fails_the_stream_with_its_type(recorder, serve):
    wire = chunk_frame(message_events()[0]) + exception_frame(
        "throttlingException", "Too many tokens, please wait."
    )
    recorder.script(Scripted(chunks=[wire], media_type="application/vnd.amazon.eventstream"))
    harness = await serve(bedrock(recorder))
    reply = await harness.handle(chat_request("m", api=MESSAGES, stream=True))
    assert isinstance(reply, ChatFailed)
    assert reply.data.error.type == "throttlingException"
    assert "Too many tokens" in reply.data.error.message


async def test_bedrock_counts_tokens_with_its_count_tokens_operation(recorder, serve):
    recorder.script(Scripted(json={"inputTokens": 42}))
    harness = await serve(bedrock(recorder))
    reply = await harness.handle(count_request(system="Be brief."))
    assert isinstance(reply, ChatCompleted), reply
    assert reply.data.response == {"input_tokens": 42}
    assert reply.data.upstream_api is COUNT  # counted by the deployment, not estimated
    sent = recorder.last
    assert sent.path == f"/model/{BEDROCK_MODEL}/count-tokens"
    check_sigv4(
        sent,
        access_key=AWS_KEY_ID,
        secret_key=AWS_SECRET,
        region="eu-west-1",
        session_token=AWS_SESSION,
    )
    assert set(sent.body) == {"input"}
    invoke = json.loads(base64.b64decode(sent.body["input"]["invokeModel"]["body"]))
    assert invoke["messages"] == [{"role": "user", "content": "Count me"}]
    assert invoke["system"] == "Be brief."
    assert "model" not in invoke and invoke["anthropic_version"] and invoke["max_tokens"] >= 1


async def test_bedrock_api_key_is_sent_as_bearer_without_a_signature(recorder, serve, monkeypatch):
    monkeypatch.setenv("T_BEDROCK_API_KEY", "bedrock-api-key-abc")
    recorder.script(Scripted(json=message()))
    deployment = Deployment(
        name="bedrock",
        provider="bedrock",
        model=BEDROCK_MODEL,
        region="us-east-1",
        base_url=recorder.root,
        api_key_env="T_BEDROCK_API_KEY",
        max_retries=0,
    )
    harness = await serve(deployment)
    reply = await harness.handle(chat_request("m", api=MESSAGES))
    assert isinstance(reply, ChatCompleted), reply
    assert recorder.last.headers["authorization"] == "Bearer bedrock-api-key-abc"
    assert "x-amz-date" not in recorder.last.headers


def bedrock_without_named_credentials(recorder, **options: Any) -> Deployment:
    return Deployment(
        name="bedrock",
        provider="bedrock",
        model=BEDROCK_MODEL,
        region="us-west-2",
        base_url=recorder.root,
        max_retries=0,
        **options,
    )


async def test_bedrock_without_named_credentials_signs_with_the_standard_aws_chain(
    recorder, serve, monkeypatch
):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIACHAINEXAMPLE0001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "chain-secret-key-example")
    recorder.script(Scripted(json=message("Signed from the chain")))
    harness = await serve(bedrock_without_named_credentials(recorder))
    reply = await harness.handle(chat_request("m", api=MESSAGES))
    assert isinstance(reply, ChatCompleted), reply
    check_sigv4(
        recorder.last,
        access_key="AKIACHAINEXAMPLE0001",
        secret_key="chain-secret-key-example",
        region="us-west-2",
    )
    assert "x-amz-security-token" not in recorder.last.headers


async def test_bedrock_aws_profile_signs_with_that_profiles_keys(
    recorder, serve, monkeypatch, tmp_path
):
    shared = tmp_path / "credentials"
    shared.write_text(
        "[default]\naws_access_key_id = AKIADEFAULTEXAMPLE01\n"
        "aws_secret_access_key = default-secret\n\n"
        "[switchyard]\naws_access_key_id = AKIAPROFILEEXAMPLE01\n"
        "aws_secret_access_key = profile-secret\naws_session_token = profile-session\n"
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(shared))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    recorder.script(Scripted(json=message("Signed with a profile")))
    harness = await serve(bedrock_without_named_credentials(recorder, aws_profile="switchyard"))
    reply = await harness.handle(chat_request("m", api=MESSAGES))
    assert isinstance(reply, ChatCompleted), reply
    check_sigv4(
        recorder.last,
        access_key="AKIAPROFILEEXAMPLE01",
        secret_key="profile-secret",
        region="us-west-2",
        session_token="profile-session",
    )


# --------------------------------------------------------------------------- Vertex AI


async def test_vertex_raw_predict_path_token_and_body(recorder, serve):
    recorder.script(Scripted(json=message("From Vertex")))
    harness = await serve(vertex(recorder))
    reply = await harness.handle(
        chat_request("m", api=MESSAGES, headers={"anthropic-version": "2023-06-01"})
    )
    assert isinstance(reply, ChatCompleted), reply
    assert reply.data.response["content"][0]["text"] == "From Vertex"
    sent = recorder.last
    assert sent.path == (
        "/v1/projects/acme-prod/locations/us-east5/publishers/anthropic/models/"
        "claude-sonnet-4-5@20250929:rawPredict"
    )
    assert sent.headers["authorization"] == f"Bearer {GOOGLE_TOKEN}"
    assert "model" not in sent.body and sent.body["anthropic_version"]
    assert "anthropic-version" not in sent.headers


async def test_vertex_stream_uses_stream_raw_predict(recorder, serve):
    recorder.script(Scripted(events=[(e["type"], e) for e in message_events("Vertex stream")]))
    harness = await serve(vertex(recorder))
    request = chat_request("m", api=MESSAGES, stream=True)
    reply = await harness.handle(request)
    assert isinstance(reply, ChatCompleted), reply
    assert recorder.last.path.endswith("/models/claude-sonnet-4-5@20250929:streamRawPredict")
    assert recorder.last.headers["authorization"] == f"Bearer {GOOGLE_TOKEN}"
    assert recorder.last.body["stream"] is True and "model" not in recorder.last.body
    assert harness.stream_of(request.request_id)[2].data["delta"]["text"] == "Vertex stream"


async def test_vertex_counts_tokens_with_its_count_tokens_endpoint(recorder, serve):
    recorder.script(Scripted(json={"input_tokens": 17}))
    harness = await serve(vertex(recorder))
    reply = await harness.handle(count_request())
    assert isinstance(reply, ChatCompleted), reply
    assert reply.data.response == {"input_tokens": 17}
    assert recorder.last.path == (
        "/v1/projects/acme-prod/locations/us-east5/publishers/anthropic/models/"
        "count-tokens:rawPredict"
    )
    assert recorder.last.body["model"] == "claude-sonnet-4-5@20250929"


def service_account_file(path, token_uri: str) -> rsa.RSAPrivateKey:
    """Write a service-account key file whose `token_uri` is `token_uri`; returns its key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "acme-prod",
                "private_key_id": "kid-1",
                "private_key": pem,
                "client_email": "switchyard@acme-prod.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": token_uri,
            }
        )
    )
    return key


def script_token_then_message(recorder, token: str, text: str) -> None:
    recorder.script(
        Scripted(json={"access_token": token, "expires_in": 3600, "token_type": "Bearer"}),
        Scripted(json=message(text)),
    )


async def test_vertex_service_account_file_gets_its_token_from_the_token_uri(
    recorder, serve, tmp_path
):
    """The key file's `token_uri` points at the local server: google-auth signs a JWT
    assertion with the key and exchanges it there; Google is never reached."""
    key_file = tmp_path / "sa.json"
    key = service_account_file(key_file, f"{recorder.root}/token")
    script_token_then_message(recorder, "ya29.from-service-account", "With a service account")
    harness = await serve(vertex(recorder, credentials_file=str(key_file)))
    reply = await harness.handle(chat_request("m", api=MESSAGES))
    assert isinstance(reply, ChatCompleted), reply
    token_request, predict = recorder.requests
    assert token_request.path == "/token"
    form = dict(pair.split("=", 1) for pair in token_request.raw.decode().split("&"))
    assertion = jwt.decode(
        form["assertion"], key.public_key(), algorithms=["RS256"], options={"verify_aud": False}
    )
    assert assertion["iss"] == "switchyard@acme-prod.iam.gserviceaccount.com"
    assert "cloud-platform" in assertion["scope"]
    assert predict.headers["authorization"] == "Bearer ya29.from-service-account"


async def test_vertex_without_named_credentials_uses_application_default_credentials(
    recorder, serve, tmp_path, monkeypatch
):
    """Application Default Credentials as google-auth finds them, here through
    GOOGLE_APPLICATION_CREDENTIALS (the first place it looks)."""
    key_file = tmp_path / "adc.json"
    service_account_file(key_file, f"{recorder.root}/token")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    script_token_then_message(recorder, "ya29.from-adc", "With ADC")
    deployment = Deployment(
        name="vertex",
        provider="vertex",
        model="claude-sonnet-4-5@20250929",
        project_id="acme-prod",
        region="us-east5",
        base_url=f"{recorder.root}/v1",
        max_retries=0,
    )
    harness = await serve(deployment)
    reply = await harness.handle(chat_request("m", api=MESSAGES))
    assert isinstance(reply, ChatCompleted), reply
    assert reply.data.response["content"][0]["text"] == "With ADC"
    token_request, predict = recorder.requests
    assert token_request.path == "/token"
    assert predict.path.endswith("/models/claude-sonnet-4-5@20250929:rawPredict")
    assert predict.headers["authorization"] == "Bearer ya29.from-adc"


# --------------------------------------------------------------------------- Gemini


async def test_gemini_chat_uses_the_openai_compatible_path_and_bearer_key(recorder, serve):
    recorder.script(Scripted(json=completion("From Gemini")))
    harness = await serve(gemini(recorder))
    reply = await harness.handle(chat_request("m"))
    assert isinstance(reply, ChatCompleted), reply
    assert recorder.last.path == "/v1beta/openai/chat/completions"
    assert recorder.last.headers["authorization"] == f"Bearer {GEMINI_KEY}"
    assert recorder.last.body["model"] == "gemini-2.5-flash"


def gemini_tool_stream() -> list[tuple[None, dict[str, Any]]]:
    """Gemini's stream of two tool calls: no `index` on them, and `finish_reason: stop`."""

    def chunk(delta: dict[str, Any], finish: str | None = None, usage: Any = None) -> Any:
        data: dict[str, Any] = {
            "id": "g",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "gemini",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        if usage:
            data["usage"] = usage
        return (None, data)

    return [
        chunk(
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "call_a",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
                        "extra_content": {"google": {"thought_signature": "sig-a"}},
                    }
                ],
            }
        ),
        chunk(
            {
                "tool_calls": [
                    {
                        "id": "call_b",
                        "type": "function",
                        "function": {"name": "time", "arguments": '{"tz": "CET"}'},
                    }
                ]
            }
        ),
        chunk({}, "stop", {"prompt_tokens": 11, "total_tokens": 31}),
    ]


async def test_gemini_stream_quirks_are_mended_for_openai_clients(recorder, serve):
    recorder.script(Scripted(events=gemini_tool_stream()))
    harness = await serve(gemini(recorder))
    request = chat_request("m", stream=True, include_usage=True)
    reply = await harness.handle(request)
    assert isinstance(reply, ChatCompleted), reply
    sent = recorder.last
    assert sent.path == "/v1beta/openai/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {GEMINI_KEY}"
    assert sent.body["stream"] is True and sent.body["model"] == "gemini-2.5-flash"
    events = harness.stream_of(request.request_id)
    calls = [
        call for e in events for c in e.data["choices"] for call in c["delta"].get("tool_calls", [])
    ]
    assert [call["index"] for call in calls] == [0, 1]
    assert calls[0]["extra_content"] == {"google": {"thought_signature": "sig-a"}}
    finishes = [c["finish_reason"] for e in events for c in e.data["choices"] if c["finish_reason"]]
    assert finishes == ["tool_calls"]
    assert events[-1].data["usage"]["completion_tokens"] == 20  # total minus prompt
    message_ = reply.data.response["choices"][0]["message"]
    assert [call["function"]["name"] for call in message_["tool_calls"]] == ["weather", "time"]


async def test_gemini_tool_calls_reach_an_anthropic_client_as_tool_use(recorder, serve):
    recorder.script(Scripted(events=gemini_tool_stream()))
    harness = await serve(gemini(recorder))
    reply = await harness.handle(chat_request("m", api=MESSAGES, stream=True))
    assert isinstance(reply, ChatCompleted), reply
    blocks = reply.data.response["content"]
    assert [(b["type"], b["name"], b["input"]) for b in blocks] == [
        ("tool_use", "weather", {"city": "Oslo"}),
        ("tool_use", "time", {"tz": "CET"}),
    ]
    assert reply.data.response["stop_reason"] == "tool_use"


async def test_gemini_list_shaped_error_reaches_the_client_with_its_message(recorder, serve):
    recorder.script(
        Scripted(
            status=400,
            json=[
                {
                    "error": {
                        "code": 400,
                        "status": "INVALID_ARGUMENT",
                        "message": 'Invalid JSON payload received. Unknown name "foo".',
                    }
                }
            ],
        )
    )
    harness = await serve(gemini(recorder))
    reply = await harness.handle(
        chat_request(
            "m", body={"model": "m", "foo": 1, "messages": [{"role": "user", "content": "x"}]}
        )
    )
    assert isinstance(reply, ChatFailed)
    assert reply.data.error.status == 400
    assert 'Unknown name "foo"' in reply.data.error.message
    assert reply.data.error.code == "INVALID_ARGUMENT"
    assert reply.data.error.type == "invalid_request_error"


async def test_gemini_reply_without_message_or_completion_tokens_is_completed(recorder, serve):
    reply_body = completion()
    del reply_body["choices"][0]["message"]
    reply_body["usage"] = {"prompt_tokens": 5, "total_tokens": 5}
    recorder.script(Scripted(json=reply_body))
    harness = await serve(gemini(recorder))
    reply = await harness.handle(chat_request("m", api=MESSAGES))
    assert isinstance(reply, ChatCompleted), reply
    assert reply.data.usage.output_tokens == 0 and reply.data.usage.input_tokens == 5


# --------------------------------------------------------------------------- credentials


OWN_SECRETS = {
    "azure": (AZURE_KEY,),
    "azure-entra": (ENTRA_TOKEN,),
    "bedrock": (AWS_SECRET, AWS_SESSION),
    "vertex": (GOOGLE_TOKEN,),
    "gemini": (GEMINI_KEY,),
}


@pytest.mark.parametrize("kind", sorted(OWN_SECRETS))
async def test_credentials_never_reach_logs_or_relayed_errors(recorder, serve, kind, caplog):
    """An upstream that echoes the credentials it got (as some do in error messages)."""
    deployment = {
        "azure": azure,
        "azure-entra": lambda r: azure(r, azure_ad_token_env="T_ENTRA_TOKEN"),
        "bedrock": bedrock,
        "vertex": vertex,
        "gemini": gemini,
    }[kind](recorder)
    secrets = OWN_SECRETS[kind]
    echoed = " and ".join(secrets)
    api = MESSAGES if kind in ("bedrock", "vertex") else CHAT
    error = (
        {"type": "error", "error": {"type": "api_error", "message": f"bad: {echoed}"}}
        if api is MESSAGES
        else {"error": {"message": f"bad: {echoed}", "type": "server_error"}}
    )
    recorder.script(Scripted(status=500, json=error))
    harness = await serve(deployment)
    caplog.set_level("DEBUG")
    with structlog.testing.capture_logs() as logs:
        reply = await harness.handle(chat_request("m", api=api))
    assert isinstance(reply, ChatFailed)
    assert reply.data.error.status == 500
    relayed = orjson.dumps(reply.model_dump(mode="json")).decode()
    logged = repr(logs) + caplog.text
    for secret in secrets:
        assert secret not in relayed, (kind, secret)
        assert secret not in logged, (kind, secret)
    assert "bad:" in reply.data.error.message  # the rest of the message is kept


async def test_every_upstream_client_shares_the_one_tls_context(monkeypatch) -> None:
    """A TLS context loads the CA bundle (20 to 30 ms on the event loop, about 0.8 MiB):
    the clients of every deployment, whatever its kind, are built on one, not one each."""
    import httpcore2

    from switchyard.inference import upstream

    built: list[object] = []
    default_ssl_context = httpcore2.default_ssl_context

    def counting(*args: Any, **kwargs: Any) -> Any:
        context = default_ssl_context(*args, **kwargs)
        built.append(context)
        return context

    monkeypatch.setattr(httpcore2, "default_ssl_context", counting)
    upstream.tls_context.cache_clear()
    monkeypatch.setenv("T_OPENAI_KEY", "sk-openai")
    monkeypatch.setenv("T_ANTHROPIC_KEY", "sk-ant")
    recorder = type("Recorder", (), {"root": "https://127.0.0.1:9"})()
    deployments = [
        Deployment(name="o", provider="openai", model="x", api_key_env="T_OPENAI_KEY"),
        Deployment(name="a", provider="anthropic", model="x", api_key_env="T_ANTHROPIC_KEY"),
        azure(recorder),
        bedrock(recorder),
        vertex(recorder),
        gemini(recorder),
    ]
    providers = ProviderPool()
    try:
        for index, deployment in enumerate(deployments * 3):
            providers.get(f"model-{index}", deployment)
        assert len(built) == 1
    finally:
        await providers.aclose()
        upstream.tls_context.cache_clear()


def test_a_credentials_file_that_is_no_key_is_named_where_it_is_configured(tmp_path):
    from switchyard.common.routing import RoutingError
    from switchyard.inference.platforms import VertexUpstream

    bad = tmp_path / "not-a-key.json"
    bad.write_text("{}")
    deployment = Deployment(
        name="vertex",
        provider="vertex",
        model="m",
        project_id="p",
        region="us-east5",
        credentials_file=str(bad),
    )
    with pytest.raises(RoutingError) as refused:
        VertexUpstream.create(deployment)
    assert str(refused.value).startswith(deployment.where("credentials_file"))
    assert str(bad) in str(refused.value)


async def test_an_api_a_deployment_does_not_offer_is_no_deployment_failure(recorder, serve):
    # Embeddings on a model served by Anthropic: the client's 400 unsupported_operation,
    # logged as what the deployment cannot take, never as a failing deployment (a
    # warning an operator would chase).
    deployment = Deployment(
        name="claude", provider="anthropic", model="claude-x", base_url=recorder.root
    )
    harness = await serve(deployment)
    with structlog.testing.capture_logs() as logs:
        reply = await harness.handle(chat_request("m", api=ClientAPI.OPENAI_EMBEDDINGS))

    assert isinstance(reply, ChatFailed)
    assert (reply.data.error.status, reply.data.error.code) == (400, "unsupported_operation")
    assert not [entry for entry in logs if entry["log_level"] == "warning"], logs
    assert any(entry["event"] == "deployment cannot take the request" for entry in logs)
    assert recorder.requests == []
