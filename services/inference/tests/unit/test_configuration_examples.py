"""The routing-file and prices-file examples of docs/configuration.md are valid and mean
what the page says."""

from __future__ import annotations

import re
from pathlib import Path

from switchyard.common.events import TokenUsage
from switchyard.common.routing import load_routing
from switchyard.inference.pricing import load_prices, request_cost

DOCS = Path(__file__).resolve().parents[4] / "docs" / "configuration.md"


def examples(tmp_path: Path) -> tuple[str, str]:
    blocks = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), re.S)
    routing = blocks[0]
    [prices] = [block for block in blocks if "input_per_1m" in block]
    (tmp_path / "routing.yaml").write_text(routing)
    (tmp_path / "prices.yaml").write_text(prices)
    return str(tmp_path / "routing.yaml"), str(tmp_path / "prices.yaml")


def test_documented_routing_and_prices_examples_load(tmp_path, monkeypatch):
    for variable in ("AZURE_OPENAI_API_KEY", "OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        monkeypatch.setenv(variable, "test-key")
    routing_file, prices_file = examples(tmp_path)
    routing = load_routing(routing_file, "http://127.0.0.1:8099/v1")
    groups = routing.models["gpt-4o-mini"].priority_groups()
    assert [[d.name for d in group] for group in groups] == [
        ["azure-east", "openai"],
        ["claude-fallback"],
    ]
    azure = groups[0][0]
    assert (azure.weight, azure.max_concurrency, azure.timeout_s, azure.max_retries) == (
        3,
        200,
        30,
        1,
    )
    prices = load_prices(prices_file)
    # 1M input and 1M output tokens of azure-east: its own entry wins over the model's.
    million_each = TokenUsage(input_tokens=1_000_000, output_tokens=1_000_000)
    assert request_cost(prices, "gpt-4o-mini", azure, million_each) == 0.75
    # Half of the input read from the prompt cache, at the cache-read price.
    cached = TokenUsage(
        input_tokens=1_000_000, output_tokens=1_000_000, cache_read_input_tokens=500_000
    )
    assert request_cost(prices, "gpt-4o-mini", azure, cached) == 0.7125


def test_documented_provider_kind_examples_load_one_per_kind(tmp_path, monkeypatch):
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "test-key")
    monkeypatch.setenv("GEMINI_API_KEY", "test-key")
    blocks = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), re.S)
    [kinds] = [block for block in blocks if "provider: bedrock" in block]
    (tmp_path / "kinds.yaml").write_text(kinds)
    routing = load_routing(str(tmp_path / "kinds.yaml"), "http://127.0.0.1:8099/v1")
    by_kind = {d.provider: d for d in routing.deployments()}
    assert sorted(by_kind) == ["azure_openai", "bedrock", "gemini", "vertex"]
    assert {kind: d.protocol for kind, d in by_kind.items()} == {
        "azure_openai": "openai",
        "bedrock": "anthropic",
        "gemini": "openai",
        "vertex": "anthropic",
    }
    assert by_kind["azure_openai"].api_version == "2024-10-21"
    assert routing.models["gpt-4o"].label == "GPT-4o (Azure)"
    assert routing.models["gpt-4o"].released.isoformat() == "2024-05-13T00:00:00+00:00"
