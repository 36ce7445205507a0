"""The gateway follows edits of the routing file as inference does: both read it through
the same reloading source, so within the reload interval `/v1/models`, the gateway's
unknown-model check and inference's routing agree again, without a restart."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import pytest

from switchyard.common.bus import InMemoryBus
from switchyard.gateway.config import Settings
from switchyard.inference.bootstrap import build as build_inference
from switchyard.inference.config import Settings as InferenceSettings

from .conftest import API_KEY

AUTH = {"authorization": f"Bearer {API_KEY}"}
INTERVAL_S = 0.05
# Generous against a loaded machine; the poll ends as soon as both agree.
AGREE_WITHIN_S = 5.0


def routing_yaml(*models: str) -> str:
    lines = ["models:"]
    for name in models:
        lines += [
            f"  {name}:",
            "    deployments:",
            f"      - {{name: d, provider: openai, model: {name}, base_url: 'http://127.0.0.1:9/v1'}}",
        ]
    return "\n".join(lines) + "\n"


def write(path: Path, text: str) -> None:
    """Replace the file whole, as an editor or a ConfigMap update does."""
    staged = path.with_suffix(".new")
    staged.write_text(text, encoding="utf-8")
    os.replace(staged, path)


@pytest.fixture
def routing_file(tmp_path: Path) -> Path:
    path = tmp_path / "routing.yaml"
    write(path, routing_yaml("alpha"))
    return path


@pytest.fixture
def settings(routing_file: Path) -> Settings:
    return Settings(
        request_timeout_s=2.0,
        topic_prefix="unit",
        routing_file=str(routing_file),
        routing_reload_interval_s=INTERVAL_S,
    )


@pytest.fixture
async def inference(routing_file: Path):
    """Inference's runtime on the same file, polling it at the same interval."""

    runtime = build_inference(
        InferenceSettings(routing_file=str(routing_file), topic_prefix="unit"), InMemoryBus()
    )
    watcher = asyncio.create_task(runtime.watch(INTERVAL_S))
    try:
        yield runtime
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await runtime.aclose()


async def listed(harness) -> list[str]:
    answer = await harness.client.get("/v1/models", headers=AUTH)
    assert answer.status_code == 200
    return sorted(model["id"] for model in answer.json()["data"])


async def until_agreed(harness, inference, expected: list[str]) -> None:
    deadline = asyncio.get_running_loop().time() + AGREE_WITHIN_S
    while True:
        gateway_models = await listed(harness)
        inference_models = inference.routing.model_names()
        if gateway_models == inference_models == expected:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(
                f"not agreed on {expected}: gateway {gateway_models}, inference {inference_models}"
            )
        await asyncio.sleep(INTERVAL_S)


async def chat(harness, model: str):
    return await harness.client.post(
        "/v1/chat/completions",
        headers=AUTH,
        json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
    )


async def test_gateway_and_inference_agree_on_models_after_the_routing_file_is_edited(
    harness, inference, routing_file
):
    assert await listed(harness) == inference.routing.model_names() == ["alpha"]
    refused = await chat(harness, "beta")
    assert refused.status_code == 404
    assert refused.json()["error"]["code"] == "model_not_found"

    write(routing_file, routing_yaml("beta", "gamma"))
    await until_agreed(harness, inference, ["beta", "gamma"])

    accepted = await chat(harness, "beta")
    assert accepted.status_code == 200, accepted.text
    assert harness.requests[-1].data.model == "beta"
    gone = await chat(harness, "alpha")
    assert gone.status_code == 404
    assert gone.json()["error"]["code"] == "model_not_found"
    retrieved = await harness.client.get("/v1/models/gamma", headers=AUTH)
    assert retrieved.status_code == 200


async def test_an_invalid_routing_edit_keeps_the_previous_table_on_both_sides(
    harness, inference, routing_file
):
    write(routing_file, routing_yaml("beta"))
    await until_agreed(harness, inference, ["beta"])

    write(routing_file, "models: [this is not a routing table\n")
    # Several reload intervals: both have seen the bad file and kept what they had.
    await asyncio.sleep(INTERVAL_S * 10)
    assert await listed(harness) == inference.routing.model_names() == ["beta"]
    assert (await chat(harness, "beta")).status_code == 200


async def test_a_job_for_a_model_added_by_an_edit_is_accepted(harness, inference, routing_file):
    body = {"url": "/v1/chat/completions", "body": {"model": "delta", "messages": []}}
    body["body"]["messages"] = [{"role": "user", "content": "hi"}]
    assert (await harness.client.post("/v1/jobs", headers=AUTH, json=body)).status_code == 404

    write(routing_file, routing_yaml("alpha", "delta"))
    await until_agreed(harness, inference, ["alpha", "delta"])
    assert (await harness.client.post("/v1/jobs", headers=AUTH, json=body)).status_code == 202
