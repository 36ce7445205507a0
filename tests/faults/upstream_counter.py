"""A counting upstream for the fault suite: a pass-through proxy in front of the provider
simulator that counts the calls it receives per request, keyed by the text of the last user
message (the fault suite gives every request a unique text). The simulator's own
`/_sim/stats` only counts calls in total; these counts tell which request ran upstream how
many times.

    python tests/faults/upstream_counter.py PORT UPSTREAM_BASE_URL

`GET /_counts` answers `{"calls": {text: n, ...}, "total": N}`; every other request is
forwarded to `UPSTREAM_BASE_URL` unchanged, streams included. A stream whose text starts
with `hold:<seconds>:` is held that long after its first few events (a slow model, in
the middle of its answer), so that the suite can stop a replica while a client holds
part of a stream.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from collections.abc import AsyncIterator

import httpx
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

_HOP_BY_HOP = {"content-length", "transfer-encoding", "connection", "host"}


def _last_user_text(body: bytes) -> str | None:
    try:
        document = orjson.loads(body)
        messages = document.get("messages") or []
        for message in reversed(messages):
            if message.get("role") == "user" and isinstance(message.get("content"), str):
                return message["content"]
    except (orjson.JSONDecodeError, AttributeError, TypeError):
        return None
    return None


# A held stream pauses once this many SSE `data:` lines went through.
HOLD_AFTER_EVENTS = 3


def _hold_seconds(text: str | None) -> float:
    if text is None or not text.startswith("hold:"):
        return 0.0
    return float(text.split(":")[1])


async def _held(chunks: AsyncIterator[bytes], hold_s: float) -> AsyncIterator[bytes]:
    """The chunks, pausing `hold_s` once the first HOLD_AFTER_EVENTS events went through."""
    events = 0
    async for chunk in chunks:
        yield chunk
        if hold_s and events < HOLD_AFTER_EVENTS:
            events += chunk.count(b"data: ")
            if events >= HOLD_AFTER_EVENTS:
                await asyncio.sleep(hold_s)


def create_app(upstream: str) -> Starlette:
    calls: Counter[str] = Counter()
    client = httpx.AsyncClient(base_url=upstream, timeout=httpx.Timeout(120, connect=5))

    async def counts(_: Request) -> Response:
        return JSONResponse({"calls": dict(calls), "total": sum(calls.values())})

    async def forward(request: Request) -> Response:
        body = await request.body()
        text = None
        if request.method == "POST" and request.url.path.endswith("/chat/completions"):
            text = _last_user_text(body)
            if text is not None:
                calls[text] += 1
        outgoing = client.build_request(
            request.method,
            request.url.path,
            params=request.query_params,
            headers=[(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP],
            content=body,
        )
        response = await client.send(outgoing, stream=True)
        return StreamingResponse(
            _held(response.aiter_raw(), _hold_seconds(text)),
            status_code=response.status_code,
            headers={k: v for k, v in response.headers.items() if k.lower() not in _HOP_BY_HOP},
            background=BackgroundTask(response.aclose),
        )

    return Starlette(
        routes=[
            Route("/_counts", counts, methods=["GET"]),
            Route("/{path:path}", forward, methods=["GET", "POST", "PUT", "DELETE"]),
        ]
    )


if __name__ == "__main__":
    port, upstream = int(sys.argv[1]), sys.argv[2]
    uvicorn.run(create_app(upstream), host="127.0.0.1", port=port, log_level="warning")
