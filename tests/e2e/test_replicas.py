"""Several gateway and inference replicas on real Kafka: every reply reaches the replica
holding its client's connection, and an inference replica that dies mid-request loses
nothing (the request is redelivered to another replica and answered once)."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import orjson
import pytest

from switchyard.common.testing.processes import free_port
from switchyard.simulator.testing import simulator_at

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def second_replicas(system):
    """A second gateway and a second inference replica beside the session's first ones."""
    gateway_port, inference_port = free_port(), free_port()
    system.start_service("gateway-2", "gateway", port=gateway_port)
    inference = system.start_service("inference-2", "inference", port=inference_port)
    yield {"gateway": f"http://127.0.0.1:{gateway_port}", "inference": inference}


async def ask(client: httpx.AsyncClient, base_url: str, key: str, text: str, stream: bool) -> str:
    body = {"model": "sim-small", "messages": [{"role": "user", "content": text}], "stream": stream}
    headers = {"Authorization": f"Bearer {key}"}
    if not stream:
        response = await client.post(f"{base_url}/v1/chat/completions", json=body, headers=headers)
        assert response.status_code == 200, response.text
        return response.json()["choices"][0]["message"]["content"]
    parts = []
    async with client.stream(
        "POST", f"{base_url}/v1/chat/completions", json=body, headers=headers
    ) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = orjson.loads(line[6:])
                if chunk["choices"]:
                    parts.append(chunk["choices"][0]["delta"].get("content") or "")
    return "".join(parts)


def test_200_concurrent_requests_across_two_gateways_each_get_their_own_answer(
    system, second_replicas
):
    gateways = [system.url("gateway"), second_replicas["gateway"]]

    async def run() -> list[tuple[str, str]]:
        limits = httpx.Limits(max_connections=250)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            texts = [f"request {i} {uuid.uuid4().hex}" for i in range(200)]
            answers = await asyncio.gather(
                *[
                    ask(client, gateways[i % 2], system.api_key, text, stream=i % 4 < 2)
                    for i, text in enumerate(texts)
                ]
            )
            return list(zip(texts, answers, strict=True))

    for text, answer in asyncio.run(run()):
        assert answer == f"Simulated reply to: {text}"


def test_inference_replica_killed_mid_request_loses_nothing(system, second_replicas):
    with simulator_at(system.url("simulator")) as simulator, simulator.slowed(3000):

        async def run() -> list[tuple[str, str]]:
            async with httpx.AsyncClient(timeout=90) as client:
                texts = [f"survivor {i} {uuid.uuid4().hex}" for i in range(24)]
                pending = [
                    asyncio.create_task(
                        ask(client, system.url("gateway"), system.api_key, text, stream=False)
                    )
                    for text in texts
                ]
                await asyncio.sleep(1.0)  # every request is now in some replica's hands
                second_replicas["inference"].popen.kill()  # SIGKILL: no commit, no goodbye
                answers = await asyncio.gather(*pending)
                return list(zip(texts, answers, strict=True))

        results = asyncio.run(run())
    for text, answer in results:
        assert answer == f"Simulated reply to: {text}"
