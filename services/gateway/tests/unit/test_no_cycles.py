"""A request answered leaves no cycle behind for the garbage collector: its dispatch (and
with it the request, its body and its reply) is freed by reference counting as it ends.
Garbage in cycles piles up between collections and makes each one long: at c=1, pauses
of tens of milliseconds in the p99."""

from __future__ import annotations

import gc

import pytest

from switchyard.gateway.dispatch import Dispatch

from .conftest import API_KEY

AUTH = {"authorization": f"Bearer {API_KEY}"}
BODY = {"model": "sim-small", "messages": [{"role": "user", "content": "Hi"}]}


@pytest.mark.parametrize("stream", [False, True])
async def test_an_answered_request_leaves_its_dispatch_to_reference_counting(harness, stream):
    async def answer(count: int) -> None:
        for _ in range(count):
            response = await harness.client.post(
                "/v1/chat/completions", json={**BODY, "stream": stream}, headers=AUTH
            )
            assert response.status_code == 200

    await answer(3)  # caches and state built at the first requests
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what the collector finds stays in gc.garbage
    try:
        await answer(20)
        gc.collect()
        in_cycles = [item for item in gc.garbage if isinstance(item, Dispatch)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert in_cycles == []
