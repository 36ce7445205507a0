"""The OpenTelemetry GenAI metrics inference exports, as a dashboard reads them: the
operation each client API is (`chat`, `embeddings`, `count_tokens`), the provider by its
well-known name, the model the client asked for as `gen_ai_request_model` and the
upstream model that answered as `gen_ai_response_model`, also after a fallback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import REGISTRY

from switchyard.common.events import ChatCompleted, ClientAPI
from switchyard.common.routing import Deployment, ModelRoute, RoutingTable
from switchyard.common.topics import Topics
from switchyard.inference import genai
from switchyard.inference.providers import ProviderPool
from switchyard.inference.reliability import Backoff
from switchyard.inference.testing import Harness, chat_request

TOPICS = Topics("genai")


def total(name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    return sum(
        sample.value
        for family in REGISTRY.collect()
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def sim(simulator: Any, name: str, upstream: str, provider: str) -> Deployment:
    base_url = simulator.openai_url if provider == "openai" else simulator.root
    return Deployment(
        name=name, provider=provider, model=upstream, base_url=base_url, max_retries=0
    )


@pytest.fixture
async def harness(simulator: Any) -> AsyncIterator[Harness]:
    routing = RoutingTable(
        models={
            "public-gpt": ModelRoute(
                name="public-gpt", deployments=[sim(simulator, "gpt", "up-gpt", "openai")]
            ),
            "public-claude": ModelRoute(
                name="public-claude",
                deployments=[sim(simulator, "claude", "up-claude", "anthropic")],
            ),
            "public-pair": ModelRoute(
                name="public-pair",
                deployments=[
                    sim(simulator, "first", "up-first", "openai"),
                    sim(simulator, "second", "up-second", "openai"),
                ],
            ),
        }
    )
    providers = ProviderPool()
    harness = await Harness.start(
        TOPICS, routing=routing, providers=providers, backoff=Backoff(0.01, 0.01)
    )
    yield harness
    await harness.stop()
    await providers.aclose()


CASES = [
    # (client API, public model, body, operation, provider, upstream model)
    (ClientAPI.OPENAI_CHAT_COMPLETIONS, "public-gpt", None, "chat", "openai", "up-gpt"),
    (ClientAPI.ANTHROPIC_MESSAGES, "public-claude", None, "chat", "anthropic", "up-claude"),
    (
        ClientAPI.OPENAI_RESPONSES,
        "public-gpt",
        {"model": "public-gpt", "input": "Hello there"},
        "chat",
        "openai",
        "up-gpt",
    ),
    (ClientAPI.OPENAI_EMBEDDINGS, "public-gpt", None, "embeddings", "openai", "up-gpt"),
    (
        ClientAPI.ANTHROPIC_COUNT_TOKENS,
        "public-claude",
        {"model": "public-claude", "messages": [{"role": "user", "content": "Hello there"}]},
        "count_tokens",
        "anthropic",
        "up-claude",
    ),
]


@pytest.mark.parametrize(("api", "model", "body", "operation", "provider", "upstream"), CASES)
async def test_genai_metrics_label_the_operation_the_public_model_and_the_upstream_model(
    harness: Harness,
    api: ClientAPI,
    model: str,
    body: dict[str, Any] | None,
    operation: str,
    provider: str,
    upstream: str,
) -> None:
    labels = {
        "gen_ai_operation_name": operation,
        "gen_ai_provider_name": provider,
        "gen_ai_request_model": model,
        "gen_ai_response_model": upstream,
    }
    duration = "gen_ai_client_operation_duration_seconds_count"
    tokens = "gen_ai_client_token_usage_count"
    before = (
        total(duration, error_type="", **labels),
        total(tokens, gen_ai_token_type="input", **labels),
    )

    reply = await harness.handle(chat_request(model, api=api, body=body))

    assert isinstance(reply, ChatCompleted), reply
    assert total(duration, error_type="", **labels) - before[0] == 1
    # No series names the upstream model as the requested one, or the public one as the
    # model that answered.
    assert total(duration, gen_ai_request_model=upstream) == 0
    assert total(duration, gen_ai_response_model=model) == 0
    if api is not ClientAPI.ANTHROPIC_COUNT_TOKENS:  # a count is not token usage
        assert total(tokens, gen_ai_token_type="input", **labels) - before[1] >= 1
    if operation == "embeddings":  # an embedding has no output tokens
        assert total(tokens, gen_ai_token_type="output", **labels) == 0


async def test_a_fallback_keeps_the_public_model_and_names_each_deployment_that_answered(
    harness: Harness, simulator: Any
) -> None:
    simulator.fault(status=500, model="up-first")
    duration = "gen_ai_client_operation_duration_seconds_count"
    common = {"gen_ai_operation_name": "chat", "gen_ai_request_model": "public-pair"}
    failed_before = total(duration, gen_ai_response_model="up-first", **common)
    served_before = total(duration, gen_ai_response_model="up-second", error_type="", **common)

    reply = await harness.handle(chat_request("public-pair"))

    assert isinstance(reply, ChatCompleted) and reply.data.deployment == "second"
    failed_now = [
        sample.labels["error_type"]
        for family in REGISTRY.collect()
        for sample in family.samples
        if sample.name == duration
        and sample.labels.get("gen_ai_response_model") == "up-first"
        and sample.labels.get("gen_ai_request_model") == "public-pair"
    ]
    assert total(duration, gen_ai_response_model="up-first", **common) - failed_before == 1
    assert failed_now and all(failed_now)  # the failed call carries its error type
    assert (
        total(duration, gen_ai_response_model="up-second", error_type="", **common) - served_before
        == 1
    )
    tokens = total(
        "gen_ai_client_token_usage_count",
        gen_ai_request_model="public-pair",
        gen_ai_response_model="up-second",
        gen_ai_token_type="output",
    )
    assert tokens >= 1


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        ("openai", "openai"),
        ("anthropic", "anthropic"),
        ("azure_openai", "azure.ai.openai"),
        ("bedrock", "aws.bedrock"),
        ("vertex", "gcp.vertex_ai"),
        ("gemini", "gcp.gemini"),
    ],
)
def test_provider_kinds_are_named_by_their_well_known_genai_values(kind: Any, name: str) -> None:
    assert genai.provider_name(kind) == name


def test_spans_carry_the_public_model_as_requested_and_the_upstream_model_as_responding() -> None:
    deployment = Deployment(
        name="east",
        provider="azure_openai",
        model="gpt-4o-east",
        base_url="https://x.test",
        api_version="2024-10-21",
        api_key_env="AZURE_KEY",
    )
    attributes = genai.span_attributes(ClientAPI.OPENAI_EMBEDDINGS, "embed", deployment)
    assert attributes == {
        "gen_ai.operation.name": "embeddings",
        "gen_ai.provider.name": "azure.ai.openai",
        "gen_ai.request.model": "embed",
        "gen_ai.response.model": "gpt-4o-east",
    }
    assert genai.span_name(ClientAPI.OPENAI_EMBEDDINGS, "embed") == "embeddings embed"
