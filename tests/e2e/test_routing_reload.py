"""An edit of the routing file reaches the gateway and inference alike, without a restart:
within the reload interval the gateway lists the new models, refuses the removed ones
with 404, and inference serves the new ones.

A gateway and an inference replica of their own (their own topic prefix, so the session's
services never see their traffic) read a routing file this test edits; auth and the
simulator are the session's."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest

from switchyard.common.testing.infra import unique_prefix
from switchyard.common.testing.processes import free_port

pytestmark = pytest.mark.e2e

RELOAD_INTERVAL_S = 0.5
# Both sides poll every RELOAD_INTERVAL_S; generous for two shared, loaded cores.
AGREE_WITHIN_S = 30.0


def routing_yaml(simulator_url: str, *names: str) -> str:
    lines = ["models:"]
    for name in names:
        lines += [
            f"  {name}:",
            "    deployments:",
            "      - name: simulator",
            "        provider: openai",
            "        model: sim-small",
            f"        base_url: {simulator_url}",
        ]
    return "\n".join(lines) + "\n"


def replace_file(path: Path, text: str) -> None:
    staged = path.with_suffix(".new")
    staged.write_text(text, encoding="utf-8")
    os.replace(staged, path)


@pytest.fixture(scope="module")
def edited(system, tmp_path_factory):
    """(gateway URL, routing file, simulator URL) of a gateway and inference pair that
    read the routing file this module edits."""
    simulator_url = system.url("simulator") + "/v1"
    routing = tmp_path_factory.mktemp("routing") / "routing.yaml"
    replace_file(routing, routing_yaml(simulator_url, "reload-a"))
    env = {
        "SWITCHYARD_TOPIC_PREFIX": unique_prefix("syreload"),
        "SWITCHYARD_ROUTING_FILE": str(routing),
        "SWITCHYARD_GATEWAY_ROUTING_RELOAD_INTERVAL_S": str(RELOAD_INTERVAL_S),
        "SWITCHYARD_INFERENCE_ROUTING_RELOAD_INTERVAL_S": str(RELOAD_INTERVAL_S),
    }
    system.cli("topics", "create", env=env)
    started = []
    try:
        started.append(
            system.start_service("inference-reload", "inference", port=free_port(), env=env)
        )
        gateway_port = free_port()
        started.append(
            system.start_service("gateway-reload", "gateway", port=gateway_port, env=env)
        )
        yield f"http://127.0.0.1:{gateway_port}", routing, simulator_url
    finally:
        for process in reversed(started):
            process.stop()
            system.processes.remove(process)


def models(client: httpx.Client) -> list[str]:
    answer = client.get("/v1/models")
    assert answer.status_code == 200, answer.text
    return sorted(model["id"] for model in answer.json()["data"])


def chat(client: httpx.Client, model: str) -> httpx.Response:
    return client.post(
        "/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hello"}]},
    )


def test_gateway_and_inference_follow_an_edit_of_the_routing_file(system, edited):
    gateway_url, routing, simulator_url = edited
    headers = {"Authorization": f"Bearer {system.api_key}"}
    with httpx.Client(base_url=gateway_url, headers=headers, timeout=60) as client:
        assert models(client) == ["reload-a"]
        assert chat(client, "reload-a").status_code == 200
        assert chat(client, "reload-b").json()["error"]["code"] == "model_not_found"

        replace_file(routing, routing_yaml(simulator_url, "reload-b"))
        deadline = time.monotonic() + AGREE_WITHIN_S
        while True:
            listed = models(client)
            answered = chat(client, "reload-b") if listed == ["reload-b"] else None
            if answered is not None and answered.status_code == 200:
                break
            assert time.monotonic() < deadline, (
                f"not agreed after {AGREE_WITHIN_S} s: gateway lists {listed}, "
                f"reload-b answered {answered.status_code if answered else None}: "
                f"{answered.text if answered else ''}"
            )
            time.sleep(RELOAD_INTERVAL_S / 2)

        assert answered.json()["choices"][0]["message"]["content"]
        removed = chat(client, "reload-a")
        assert removed.status_code == 404
        assert removed.json()["error"]["code"] == "model_not_found"
