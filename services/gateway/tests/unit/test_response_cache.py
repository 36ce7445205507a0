"""The exact-match response cache: what makes two requests the same (keys), what is
cacheable (determinism, privacy, tenant scope, TTL), and what a client and history see
(hits answered without inference, streams replayed, hits recorded as events). History's
cache store is faked (history_fakes.py)."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from prometheus_client import REGISTRY

from switchyard.common.backoff import Backoff
from switchyard.common.bus import BusUnavailableError
from switchyard.common.events import (
    CachePurged,
    CachePurgedData,
    ChatCompleted,
    ChatRequested,
    ClientAPI,
    TokenUsage,
    UsageData,
    UsageRecorded,
    new_id,
)
from switchyard.common.testing.infra import async_wait_until as wait_for
from switchyard.common.topics import Topics
from switchyard.gateway import hit_events as hit_events_module
from switchyard.gateway.cache import cache_key, is_deterministic, normalised_body

from .conftest import API_KEY, chunk, completed_reply, failed_reply
from .history_fakes import install

AUTH = {"Authorization": f"Bearer {API_KEY}"}
ON = AUTH | {"X-Switchyard-Cache": "on"}
BODY = {
    "model": "sim-small",
    "temperature": 0,
    "messages": [{"role": "user", "content": "Hello"}],
}
OPENAI = ClientAPI.OPENAI_CHAT_COMPLETIONS
ANTHROPIC = ClientAPI.ANTHROPIC_MESSAGES


@pytest.fixture
async def history(harness):
    return await install(harness)


@pytest.fixture
async def recorded(harness):
    """Every event published on the replies and usage topics."""
    topics = Topics(harness.settings.topic_prefix)
    events: list = []

    async def keep(event) -> None:
        events.append(event)

    await harness.bus.subscribe([topics.replies, topics.usage], "recorder", keep)
    return events


async def async_wait_until(check, timeout: float = 5.0) -> None:
    async def checked():
        return check()

    await wait_for(checked, timeout=timeout, interval=0.02)


# -- keys ------------------------------------------------------------------------------


def test_key_ignores_field_order_identity_streaming_options_and_prompt_cache_markers():
    body = {
        "model": "m",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Hi", "cache_control": {}}]}
        ],
        "temperature": 0,
    }
    same = {
        "temperature": 0.0,
        "messages": [{"content": [{"text": "Hi", "type": "text"}], "role": "user"}],
        "model": "m",
        "user": "someone",
        "metadata": {"trace": "1"},
    }
    assert cache_key("acme", OPENAI, body, {}, False) == cache_key("acme", OPENAI, same, {}, False)
    assert "user" not in normalised_body(same) and "metadata" not in normalised_body(same)


def test_every_prompt_caching_marker_is_left_out_of_the_key():
    marker = {"type": "ephemeral"}
    marked = {
        "model": "m",
        "cache_control": marker,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": marker}],
        "tools": [{"name": "t", "input_schema": {"type": "object"}, "cache_control": marker}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Hi", "cache_control": marker}]},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "c1", "name": "t", "input": {}}],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "c1",
                        "content": [{"type": "text", "text": "r", "cache_control": marker}],
                        "cache_control": marker,
                    }
                ],
            },
        ],
    }

    def unmarked(value):
        if isinstance(value, dict):
            return {k: unmarked(v) for k, v in value.items() if k != "cache_control"}
        return [unmarked(item) for item in value] if isinstance(value, list) else value

    assert cache_key("acme", ANTHROPIC, marked, {}, False) == cache_key(
        "acme", ANTHROPIC, unmarked(marked), {}, False
    )


@pytest.mark.parametrize(
    "body",
    [
        # A JSON schema property, a tool call's input and a tool's schema named like the
        # marker: the caller's data, which changes the answer.
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": "h",
                    "schema": {"type": "object", "properties": {"cache_control": {"type": "X"}}},
                },
            }
        },
        {
            "messages": [
                {
                    "role": "assistant",
                    "content": [
                        {
                            "type": "tool_use",
                            "id": "c",
                            "name": "t",
                            "input": {"cache_control": "X"},
                        }
                    ],
                }
            ]
        },
        {"tools": [{"name": "t", "input_schema": {"properties": {"cache_control": "X"}}}]},
    ],
)
def test_a_key_named_cache_control_in_the_callers_data_counts(body):
    def variant(value):
        return orjson.loads(orjson.dumps(value).replace(b'"X"', b'"Y"'))

    assert cache_key("acme", OPENAI, body, {}, False) != cache_key(
        "acme", OPENAI, variant(body), {}, False
    )


@pytest.mark.parametrize(
    "change",
    [
        {"model": "other"},
        {"temperature": 0.5},
        {"max_tokens": 5},
        {"messages": [{"role": "user", "content": "Hello!"}]},
    ],
)
def test_key_changes_with_anything_that_changes_the_answer(change):
    assert cache_key("acme", OPENAI, BODY, {}, False) != cache_key(
        "acme", OPENAI, {**BODY, **change}, {}, False
    )


def test_key_is_scoped_by_tenant_api_streaming_and_provider_headers():
    key = cache_key("acme", OPENAI, BODY, {}, False)
    assert key != cache_key("globex", OPENAI, BODY, {}, False)
    assert key != cache_key("acme", ClientAPI.ANTHROPIC_MESSAGES, BODY, {}, False)
    assert key != cache_key("acme", OPENAI, BODY, {}, True)
    assert cache_key("acme", OPENAI, BODY, {}, True) != cache_key(
        "acme", OPENAI, {**BODY, "stream_options": {"include_usage": True}}, {}, True
    )
    assert key != cache_key("acme", OPENAI, BODY, {"anthropic-beta": "x"}, False)


@pytest.mark.parametrize(
    ("api", "body", "deterministic"),
    [
        (OPENAI, {}, False),  # the providers' default temperature is 1
        (OPENAI, {"temperature": 0}, True),
        (OPENAI, {"temperature": 0.7}, False),
        (OPENAI, {"temperature": 0.7, "seed": 42}, True),
        (ClientAPI.ANTHROPIC_MESSAGES, {"temperature": 0}, True),
        (ClientAPI.ANTHROPIC_MESSAGES, {"seed": 42}, False),  # Anthropic has no seed
        (ClientAPI.OPENAI_EMBEDDINGS, {}, True),
    ],
)
def test_only_deterministic_requests_are_cacheable_by_default(api, body, deterministic):
    assert is_deterministic(api, body) is deterministic


# -- hits and misses -------------------------------------------------------------------


async def test_a_repeated_request_is_answered_from_the_cache_without_inference(
    harness, history, recorded
):
    first = await harness.client.post("/v1/chat/completions", json=BODY, headers=ON)
    await async_wait_until(lambda: history.cache, timeout=5)
    again = await harness.client.post(
        "/v1/chat/completions", json={**BODY, "user": "another-end-user"}, headers=ON
    )

    assert first.status_code == again.status_code == 200
    assert first.headers["x-switchyard-cache"] == "miss"
    assert again.headers["x-switchyard-cache"] == "hit"
    assert "age" in again.headers
    assert again.content == first.content
    assert len(harness.requests) == 1  # the hit never reached inference
    hit_id = again.headers["x-request-id"]
    await async_wait_until(
        lambda: sum(1 for event in recorded if event.request_id == hit_id) == 3, timeout=5
    )
    kinds = {type(event): event for event in recorded if event.request_id == hit_id}
    usage = kinds[UsageRecorded].data
    assert (usage.cache_hit, usage.cost_usd, usage.upstream_calls) == (True, 0, 0)
    assert usage.saved_cost_usd == 0.25  # what the reused answer cost
    assert kinds[ChatRequested].data.body["messages"] == BODY["messages"]
    assert kinds[ChatCompleted].data.response == first.json()


async def test_the_gateway_does_not_decode_its_own_hits_events(harness, history, recorded):
    # The gateway listens to the replies and usage topics for its pending requests; a hit
    # is not pending, so its three events are skipped by key, undecoded. Only the
    # recorder (history's stand-in) decodes them.
    decoded: list[tuple[str, bytes]] = []
    decode = harness.bus._decode

    def counting(topic, raw):
        decoded.append((topic, raw))
        return decode(topic, raw)

    harness.bus._decode = counting
    await harness.client.post("/v1/chat/completions", json=BODY, headers=ON)
    await async_wait_until(lambda: history.cache, timeout=5)
    again = await harness.client.post("/v1/chat/completions", json=BODY, headers=ON)
    assert again.headers["x-switchyard-cache"] == "hit"
    hit_id = again.headers["x-request-id"]
    await async_wait_until(
        lambda: sum(1 for event in recorded if event.request_id == hit_id) == 3, timeout=5
    )
    await asyncio.sleep(0.1)  # a listener that decodes would have done so by now

    of_the_hit = [topic for topic, raw in decoded if hit_id.encode() in raw]
    assert len(of_the_hit) == 3  # the recorder's, one per event


async def test_a_streamed_hit_replays_the_stored_stream_events(harness, history):
    async def stream(request):
        return [chunk(request, 0, "Hel"), chunk(request, 1, "lo"), completed_reply(request)]

    harness.respond[0] = stream
    body = {**BODY, "stream": True}
    first = await harness.client.post("/v1/chat/completions", json=body, headers=ON)
    await async_wait_until(lambda: history.cache, timeout=5)
    again = await harness.client.post("/v1/chat/completions", json=body, headers=ON)

    assert again.headers["x-switchyard-cache"] == "hit"
    assert again.headers["content-type"].startswith("text/event-stream")
    assert again.content == first.content
    assert again.content.endswith(b"data: [DONE]\n\n")
    assert len(harness.requests) == 1
    # A JSON request is another key: it is not answered with the stream's entry.
    plain = await harness.client.post("/v1/chat/completions", json=BODY, headers=ON)
    assert plain.headers["x-switchyard-cache"] == "miss"


async def test_anthropic_stream_hit_ends_with_message_stop_and_no_done(harness, history):
    from .conftest import anthropic_stream

    async def stream(request):
        return [*anthropic_stream(request, ["Hi"]), completed_reply(request)]

    harness.respond[0] = stream
    body = {**BODY, "max_tokens": 10, "stream": True}
    first = await harness.client.post("/v1/messages", json=body, headers=ON)
    await async_wait_until(lambda: history.cache, timeout=5)
    again = await harness.client.post("/v1/messages", json=body, headers=ON)

    assert again.headers["x-switchyard-cache"] == "hit"
    assert again.content == first.content
    assert b"event: message_stop" in again.content and b"[DONE]" not in again.content


async def test_both_sdks_read_a_streamed_hit_as_a_stream(harness, history):
    """A streamed hit is sent as one body with its length: the official SDKs still read
    it event by event, to the same text as the stream it was stored from."""
    import anthropic
    import httpx2
    import openai

    from .conftest import anthropic_stream

    async def stream(request):
        if request.data.api is ClientAPI.ANTHROPIC_MESSAGES:
            return [*anthropic_stream(request, ["Hi", " there"]), completed_reply(request)]
        return [chunk(request, 0, "Hel"), chunk(request, 1, "lo"), completed_reply(request)]

    harness.respond[0] = stream
    oai = openai.AsyncOpenAI(
        api_key=API_KEY, base_url="http://gateway/v1", max_retries=0, http_client=harness.client
    )
    ant = anthropic.AsyncAnthropic(
        api_key=API_KEY,
        base_url="http://gateway",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.ASGITransport(app=harness.app)),
    )
    cache_on = {"X-Switchyard-Cache": "on"}

    async def openai_text() -> str:
        chunks = await oai.chat.completions.create(
            model="sim-small",
            temperature=0,
            messages=[{"role": "user", "content": "Hello"}],
            stream=True,
            extra_headers=cache_on,
        )
        return "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])

    async def anthropic_text() -> str:
        async with ant.messages.stream(
            model="sim-small",
            max_tokens=10,
            messages=[{"role": "user", "content": "Hello"}],
            extra_body={"temperature": 0},
            extra_headers=cache_on,
        ) as events:
            return "".join([text async for text in events.text_stream])

    for read in (openai_text, anthropic_text):
        stored = len(history.cache)
        first = await read()
        await async_wait_until(lambda stored=stored: len(history.cache) > stored, timeout=5)
        calls = len(harness.requests)
        assert await read() == first and first
        assert len(harness.requests) == calls  # the second one was a hit


async def test_nondeterministic_requests_are_cached_only_when_asked(harness, history):
    body = {**BODY, "temperature": 0.9}
    for _ in range(2):
        response = await harness.client.post("/v1/chat/completions", json=body, headers=ON)
        assert response.headers["x-switchyard-cache"] == "bypass"
    assert len(harness.requests) == 2 and not history.cache

    asked = ON | {"X-Switchyard-Cache-Nondeterministic": "true"}
    await harness.client.post("/v1/chat/completions", json=body, headers=asked)
    await async_wait_until(lambda: history.cache, timeout=5)
    again = await harness.client.post("/v1/chat/completions", json=body, headers=asked)
    assert again.headers["x-switchyard-cache"] == "hit"
    assert len(harness.requests) == 3


async def test_tenant_setting_turns_it_on_and_the_header_bypasses_or_refreshes(harness, history):
    history.cache_enabled.add("acme")
    await harness.client.post("/v1/chat/completions", json=BODY, headers=AUTH)
    await async_wait_until(lambda: history.cache, timeout=5)

    hit = await harness.client.post("/v1/chat/completions", json=BODY, headers=AUTH)
    bypassed = await harness.client.post(
        "/v1/chat/completions", json=BODY, headers=AUTH | {"X-Switchyard-Cache": "off"}
    )
    harness.respond[0] = _answer("fresh answer")
    refreshed = await harness.client.post(
        "/v1/chat/completions", json=BODY, headers=AUTH | {"X-Switchyard-Cache": "refresh"}
    )
    assert hit.headers["x-switchyard-cache"] == "hit"
    assert bypassed.headers["x-switchyard-cache"] == "bypass"
    assert refreshed.headers["x-switchyard-cache"] == "refresh"
    assert len(harness.requests) == 3  # the first, the bypass and the refresh
    await async_wait_until(
        lambda: "fresh answer" in str(next(iter(history.cache.values()))["response"]), timeout=5
    )
    # The refreshed answer replaced the old one, here and in the replica's memory.
    after = await harness.client.post("/v1/chat/completions", json=BODY, headers=AUTH)
    assert after.headers["x-switchyard-cache"] == "hit"
    assert after.json()["choices"][0]["message"]["content"] == "fresh answer"


async def test_entries_expire_after_their_ttl(harness, history):
    ttl = ON | {"X-Switchyard-Cache-TTL": "1"}
    await harness.client.post("/v1/chat/completions", json=BODY, headers=ttl)
    await async_wait_until(lambda: history.cache, timeout=5)
    assert (await harness.client.post("/v1/chat/completions", json=BODY, headers=ttl)).headers[
        "x-switchyard-cache"
    ] == "hit"
    await asyncio.sleep(1.2)
    late = await harness.client.post("/v1/chat/completions", json=BODY, headers=ttl)
    assert late.headers["x-switchyard-cache"] == "miss"
    assert len(harness.requests) == 2


async def test_answers_are_never_shared_across_tenants(harness, history):
    await harness.client.post("/v1/chat/completions", json=BODY, headers=ON)
    await async_wait_until(lambda: history.cache, timeout=5)
    other = {
        "Authorization": f"Bearer {harness.auth.token(tenant='globex')}",
        "X-Switchyard-Cache": "on",
    }
    response = await harness.client.post("/v1/chat/completions", json=BODY, headers=other)
    assert response.headers["x-switchyard-cache"] == "miss"
    assert len(harness.requests) == 2


async def test_metadata_only_tenants_get_nothing_cached(harness, history):
    history.metadata_only.add("acme")
    for _ in range(2):
        response = await harness.client.post("/v1/chat/completions", json=BODY, headers=ON)
        assert response.headers["x-switchyard-cache"] == "bypass"
    await asyncio.sleep(0.1)
    assert not history.cache
    assert not [call for call in history.calls if call.method == "PUT"]
    assert len(harness.requests) == 2


MESSAGE = {
    "model": "sim-small",
    "max_tokens": 8,
    "temperature": 0,
    "messages": [{"role": "user", "content": "Hello"}],
}
TTL_ERROR = "must be a whole number of seconds from 1 to 86400"


@pytest.mark.parametrize(
    ("header", "value", "problem"),
    [
        ("X-Switchyard-Cache", "sometimes", "must be on, off or refresh"),
        ("X-Switchyard-Cache", "true", "must be on, off or refresh"),
        ("X-Switchyard-Cache-TTL", "0", TTL_ERROR),
        ("X-Switchyard-Cache-TTL", "0.001", TTL_ERROR),
        ("X-Switchyard-Cache-TTL", "1.5", TTL_ERROR),
        ("X-Switchyard-Cache-TTL", "-5", TTL_ERROR),
        ("X-Switchyard-Cache-TTL", "1e3", TTL_ERROR),
        ("X-Switchyard-Cache-TTL", "86401", TTL_ERROR),
        ("X-Switchyard-Cache-TTL", "9" * 5000, TTL_ERROR),
        ("X-Switchyard-Cache-TTL", "soon", TTL_ERROR),
        ("X-Switchyard-Cache-Nondeterministic", "yes please", "must be true or false"),
    ],
)
@pytest.mark.parametrize("api", ["openai", "anthropic"])
async def test_unreadable_cache_headers_are_400_in_the_apis_format(
    harness, history, header, value, problem, api
):
    if api == "openai":
        path, body, headers = "/v1/chat/completions", BODY, ON | {header: value}
    else:
        path, body = "/v1/messages", MESSAGE
        headers = {"x-api-key": API_KEY, "X-Switchyard-Cache": "on", header: value}
    response = await harness.client.post(path, json=body, headers=headers)

    assert response.status_code == 400
    message = f"Invalid value for the {header.lower()} header: {problem}."
    if api == "openai":
        assert response.json() == {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": header.lower(),
                "code": "invalid_cache_header",
            }
        }
    else:
        body = response.json()
        assert body["type"] == "error"
        assert (body["error"]["type"], body["error"]["message"]) == (
            "invalid_request_error",
            message,
        )
    assert not harness.requests


async def test_a_cache_header_is_checked_even_where_the_cache_is_not_on(harness, history):
    headers = AUTH | {"X-Switchyard-Cache-TTL": "0.5"}
    response = await harness.client.post("/v1/chat/completions", json=BODY, headers=headers)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "x-switchyard-cache-ttl"


async def test_a_jobs_unreadable_cache_header_is_the_same_400(harness, history):
    # Jobs are not cached; the same mistake is still the same error, and no job is made.
    headers = AUTH | {"X-Switchyard-Cache": "yes"}
    response = await harness.client.post(
        "/v1/jobs", json={"url": "/v1/chat/completions", "body": BODY}, headers=headers
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_cache_header"
    assert harness.requests == []


@pytest.mark.parametrize("ttl", ["1", " 86400 ", "007"])
async def test_whole_seconds_from_1_to_the_maximum_are_taken_as_the_ttl(harness, history, ttl):
    headers = ON | {"X-Switchyard-Cache-TTL": ttl, "X-Switchyard-Cache-Nondeterministic": "FALSE"}
    response = await harness.client.post("/v1/chat/completions", json=BODY, headers=headers)
    assert response.status_code == 200
    assert response.headers["x-switchyard-cache"] == "miss"
    await async_wait_until(lambda: history.cache, timeout=5)
    put = next(call for call in history.calls if call.method == "PUT")
    assert orjson.loads(put.content)["ttl_s"] == int(ttl)


class Held:
    """Holds the gateway's calls to history's cache store that `matches` (method, and
    whether to hold before or after history handled the call) until `release()`."""

    def __init__(self, harness, method: str, *, after: bool = False) -> None:
        self.method, self.after = method, after
        self.gate = asyncio.Event()
        self.seen = asyncio.Event()
        route = harness.upstreams.route

        async def held(request):
            hold = request.method == self.method and "/cache/entries/" in request.url.path
            if hold and not self.after:
                self.seen.set()
                await self.gate.wait()
            answer = await route(request)
            if hold and self.after:
                self.seen.set()
                await self.gate.wait()
            return answer

        harness.upstreams.route = held

    def release(self) -> None:
        self.gate.set()


def _text(response) -> str:
    return response.json()["choices"][0]["message"]["content"]


async def _stored(harness, history, text: str) -> None:
    """Wait until history stores `text` and this gateway has finished storing it."""
    gateway = harness.app.state.gateway
    await async_wait_until(
        lambda: (
            text in str(next(iter(history.cache.values()))["response"]) and not gateway.background
        ),
        timeout=5,
    )


async def test_a_request_right_after_a_refresh_never_gets_the_answer_it_replaced(harness, history):
    await harness.client.post("/v1/chat/completions", json=BODY, headers=ON)
    await _stored(harness, history, "hi there")
    old = await harness.client.post("/v1/chat/completions", json=BODY, headers=ON)
    assert old.headers["x-switchyard-cache"] == "hit"  # answered from this replica's memory

    held = Held(harness, "PUT")  # the refresh's answer is not stored yet
    harness.respond[0] = _answer("fresh answer")
    refreshed = await harness.client.post(
        "/v1/chat/completions", json=BODY, headers=AUTH | {"X-Switchyard-Cache": "refresh"}
    )
    racing = await harness.client.post("/v1/chat/completions", json=BODY, headers=ON)

    assert (refreshed.headers["x-switchyard-cache"], _text(refreshed)) == (
        "refresh",
        "fresh answer",
    )
    # While the refresh is being stored, a request is a miss, never the replaced answer.
    assert (racing.headers["x-switchyard-cache"], _text(racing)) == ("miss", "fresh answer")
    held.release()
    await _stored(harness, history, "fresh answer")
    after = await harness.client.post("/v1/chat/completions", json=BODY, headers=ON)
    assert (after.headers["x-switchyard-cache"], _text(after)) == ("hit", "fresh answer")
    assert len(harness.requests) == 3  # the first, the refresh and the one racing it


async def test_a_lookup_that_overlapped_a_refresh_does_not_put_the_old_answer_back(
    harness, history
):
    await harness.client.post("/v1/chat/completions", json=BODY, headers=ON)
    await _stored(harness, history, "hi there")
    gateway = harness.app.state.gateway
    gateway.cache._front.clear()  # as when this replica's memory of it lapsed

    held = Held(harness, "GET", after=True)  # a lookup that read the old answer
    earlier = asyncio.create_task(
        harness.client.post("/v1/chat/completions", json=BODY, headers=ON)
    )
    await held.seen.wait()
    held.method = "none"  # the calls after it go through
    harness.respond[0] = _answer("fresh answer")
    await harness.client.post(
        "/v1/chat/completions", json=BODY, headers=AUTH | {"X-Switchyard-Cache": "refresh"}
    )
    await _stored(harness, history, "fresh answer")
    held.release()
    assert _text(await earlier) == "hi there"  # it was asked before the refresh began

    after = await harness.client.post("/v1/chat/completions", json=BODY, headers=ON)
    assert (after.headers["x-switchyard-cache"], _text(after)) == ("hit", "fresh answer")


async def test_after_a_failed_refresh_the_next_answer_stored_ends_its_hold(harness, history):
    await harness.client.post("/v1/chat/completions", json=BODY, headers=ON)
    await _stored(harness, history, "hi there")

    async def fail(request):
        return [failed_reply(request, 502, "api_error", "upstream down")]

    harness.respond[0] = fail
    refreshed = await harness.client.post(
        "/v1/chat/completions", json=BODY, headers=AUTH | {"X-Switchyard-Cache": "refresh"}
    )
    assert refreshed.status_code == 502
    # The answer it meant to replace is not served again: the next request is a miss...
    harness.respond[0] = _answer("fresh answer")
    after = await harness.client.post("/v1/chat/completions", json=BODY, headers=ON)
    assert (after.headers["x-switchyard-cache"], _text(after)) == ("miss", "fresh answer")
    # ...whose answer, once stored, is what the requests after it get.
    await _stored(harness, history, "fresh answer")
    again = await harness.client.post("/v1/chat/completions", json=BODY, headers=ON)
    assert (again.headers["x-switchyard-cache"], _text(again)) == ("hit", "fresh answer")
    assert len(harness.requests) == 3


async def test_a_store_that_overlapped_a_purge_keeps_nothing_in_memory(harness, history):
    held = Held(harness, "PUT", after=True)  # stored in history; the answer not back yet
    await harness.client.post("/v1/chat/completions", json=BODY, headers=ON)
    await held.seen.wait()
    history.cache.clear()  # the purge: history's part, then the event
    await _purge_event(harness, tenant="acme")
    held.release()
    gateway = harness.app.state.gateway
    await async_wait_until(lambda: not gateway.background, timeout=5)

    again = await harness.client.post("/v1/chat/completions", json=BODY, headers=ON)
    assert again.headers["x-switchyard-cache"] == "miss"


async def test_history_down_means_a_miss_never_a_failure(harness, history):
    history.down = True
    response = await harness.client.post("/v1/chat/completions", json=BODY, headers=ON)
    assert response.status_code == 200
    assert len(harness.requests) == 1


async def test_requests_without_the_header_on_a_tenant_without_the_cache_are_untouched(
    harness, history
):
    response = await harness.client.post("/v1/chat/completions", json=BODY, headers=AUTH)
    assert response.status_code == 200
    assert "x-switchyard-cache" not in response.headers
    await asyncio.sleep(0.05)
    assert not [call for call in history.calls if "/entries/" in call.url.path]


def _answer(text: str):
    async def respond(request):
        return [completed_reply(request, text)]

    return respond


# -- budgets and rate limits -------------------------------------------------------------


async def test_a_hit_counts_against_requests_per_minute_but_costs_nothing_against_budgets(
    harness,
):
    from .test_governance import limited_auth

    limited_auth(
        harness, rpm_limit=3, max_parallel_requests=1, max_budget_usd=5.0, budget_period="30d"
    )
    history = await install(harness)
    gateway = harness.app.state.gateway
    miss = await harness.client.post("/v1/chat/completions", json=BODY, headers=ON)
    assert miss.status_code == 200, miss.text
    assert miss.headers["x-switchyard-cache"] == "miss"
    await async_wait_until(lambda: history.cache, timeout=5)
    # Inference's usage event of the miss settles it (0.25 USD) and frees its slot.
    await harness.bus.publish(
        Topics(harness.settings.topic_prefix).usage,
        UsageRecorded(
            source="inference",
            tenant="acme",
            request_id=miss.headers["x-request-id"],
            data=UsageData(
                model="sim-small",
                user_id="user-1",
                api_key_id="key-1",
                status="completed",
                usage=TokenUsage(input_tokens=2, output_tokens=2),
                cost_usd=0.25,
            ),
        ),
        key=miss.headers["x-request-id"],
    )

    async def miss_counted() -> bool:
        counters = await gateway.admission.ledger.counters()
        return any(c.kind == "spend" and c.spent == 0.25 for c in counters)

    # The usage topic is read in batches and settlements reach the ledger in the
    # background: the hits go once the miss's cost is counted there.
    await wait_for(miss_counted, timeout=10, interval=0.02, message="the miss's cost counted")
    assert not gateway.admission._pending

    first_hit = await harness.client.post("/v1/chat/completions", json=BODY, headers=ON)
    # One request in progress at most: a hit holds no slot once answered.
    second_hit = await harness.client.post("/v1/chat/completions", json=BODY, headers=ON)
    over = await harness.client.post("/v1/chat/completions", json=BODY, headers=ON)

    assert [first_hit.status_code, second_hit.status_code] == [200, 200], second_hit.text
    assert first_hit.headers["x-switchyard-cache"] == second_hit.headers["x-switchyard-cache"]
    assert first_hit.headers["x-switchyard-cache"] == "hit"
    assert first_hit.headers["x-ratelimit-remaining-requests"] == "1"
    assert second_hit.headers["x-ratelimit-remaining-requests"] == "0"
    assert over.status_code == 429  # hits are requests: the fourth is over 3 a minute
    assert over.json()["error"]["code"] == "rate_limit_exceeded"
    assert len(harness.requests) == 1
    await gateway.admission.flush()
    spend = await harness.client.get("/v1/spend", headers=AUTH)
    [budget] = spend.json()["data"]
    assert budget["spent_usd"] == 0.25  # the miss only: hits spend nothing


# -- purges ----------------------------------------------------------------------------


async def _purge_event(harness, **data) -> None:
    """What `switchyard cache purge` publishes, once this replica listens for it."""
    gateway = harness.app.state.gateway
    await async_wait_until(lambda: gateway.cache.listener is not None, timeout=5)
    tenant = data.get("tenant") or "*"
    event = CachePurged(
        source="history", tenant=tenant, request_id=new_id(), data=CachePurgedData(**data)
    )
    before = gateway.cache.purges_applied
    await harness.bus.publish(Topics(harness.settings.topic_prefix).cache_events, event)
    await async_wait_until(lambda: gateway.cache.purges_applied > before, timeout=5)


async def test_a_purge_reaches_this_replicas_memory_at_once(harness, history):
    other = {
        "Authorization": f"Bearer {harness.auth.token(tenant='globex')}",
        "X-Switchyard-Cache": "on",
    }
    for headers in (ON, other):
        await harness.client.post("/v1/chat/completions", json=BODY, headers=headers)
    await async_wait_until(lambda: len(history.cache) == 2, timeout=5)
    history.cache.clear()  # the shared store purged (history's part of the purge)

    # Kept in memory, an answer outlives its deletion until the purge event arrives...
    still = await harness.client.post("/v1/chat/completions", json=BODY, headers=ON)
    assert still.headers["x-switchyard-cache"] == "hit"

    await _purge_event(harness, tenant="acme")
    purged = await harness.client.post("/v1/chat/completions", json=BODY, headers=ON)
    assert purged.headers["x-switchyard-cache"] == "miss"
    assert len(harness.requests) == 3  # answered by inference again
    # ...and another tenant's answers are not touched by it.
    kept = await harness.client.post("/v1/chat/completions", json=BODY, headers=other)
    assert kept.headers["x-switchyard-cache"] == "hit"


async def test_a_purge_of_another_model_or_of_expired_answers_keeps_live_ones(harness, history):
    await harness.client.post("/v1/chat/completions", json=BODY, headers=ON)
    await async_wait_until(lambda: history.cache, timeout=5)
    history.cache.clear()
    await _purge_event(harness, model="another-model")
    await _purge_event(harness, expired_only=True)
    again = await harness.client.post("/v1/chat/completions", json=BODY, headers=ON)
    assert again.headers["x-switchyard-cache"] == "hit"
    await _purge_event(harness, model="sim-small")  # every tenant's answers of the model
    gone = await harness.client.post("/v1/chat/completions", json=BODY, headers=ON)
    assert gone.headers["x-switchyard-cache"] == "miss"


async def test_a_deleted_responses_answers_leave_every_replicas_memory(harness, history):
    # DELETE /v1/responses/{id}: history deletes the entries made from it; the replicas'
    # memory drops them on `cache.purged` naming the request, and keeps every other.
    gateway = harness.app.state.gateway
    await async_wait_until(lambda: gateway.cache.listener is not None, timeout=5)
    other_body = {**BODY, "messages": [{"role": "user", "content": "another question"}]}
    first = await harness.client.post("/v1/chat/completions", json=BODY, headers=ON)
    await harness.client.post("/v1/chat/completions", json=other_body, headers=ON)
    await async_wait_until(lambda: len(history.cache) == 2, timeout=5)
    history.cache.clear()
    before = gateway.cache.purges_applied

    await gateway.cache.forget("acme", first.headers["x-request-id"])

    # Applied here at once, and published for the others (heard here too).
    await async_wait_until(lambda: gateway.cache.purges_applied >= before + 2, timeout=5)
    gone = await harness.client.post("/v1/chat/completions", json=BODY, headers=ON)
    assert gone.headers["x-switchyard-cache"] == "miss"
    kept = await harness.client.post("/v1/chat/completions", json=other_body, headers=ON)
    assert kept.headers["x-switchyard-cache"] == "hit"


async def test_other_events_on_the_cache_topic_change_nothing(harness, history):
    await harness.client.post("/v1/chat/completions", json=BODY, headers=ON)
    await async_wait_until(lambda: history.cache, timeout=5)
    history.cache.clear()
    gateway = harness.app.state.gateway
    await gateway.cache.on_event(
        UsageRecorded(
            source="inference",
            tenant="acme",
            request_id=new_id(),
            data=UsageData(
                api=OPENAI,
                model="sim-small",
                provider="p",
                deployment="d",
                user_id="u",
                status="completed",
                usage=TokenUsage(),
                cost_usd=0,
                latency_ms=1,
            ),
        )
    )
    again = await harness.client.post("/v1/chat/completions", json=BODY, headers=ON)
    assert again.headers["x-switchyard-cache"] == "hit"


# -- a hit's events when the bus refuses them -----------------------------------------


def _hit_events(outcome: str) -> float:
    return (
        REGISTRY.get_sample_value("switchyard_gateway_cache_hit_events_total", {"outcome": outcome})
        or 0.0
    )


async def test_a_hits_events_are_retried_until_the_bus_takes_them(
    harness, history, recorded, monkeypatch
):
    monkeypatch.setattr(hit_events_module, "HIT_EVENT_BACKOFF", Backoff(initial_s=0.01, max_s=0.02))
    await harness.client.post("/v1/chat/completions", json=BODY, headers=ON)
    await async_wait_until(lambda: history.cache, timeout=5)
    publish, refusals = harness.bus.publish, {"left": 2}

    async def flaky(topic, event, **kwargs):
        if refusals["left"] > 0:  # the first two offers of the hit's events
            refusals["left"] -= 1
            raise BusUnavailableError("Kafka is not reachable")
        await publish(topic, event, **kwargs)

    monkeypatch.setattr(harness.bus, "publish", flaky)
    retried, published = _hit_events("retried"), _hit_events("published")
    hit = await harness.client.post("/v1/chat/completions", json=BODY, headers=ON)

    assert hit.headers["x-switchyard-cache"] == "hit"  # answered before any of it
    hit_id = hit.headers["x-request-id"]
    await async_wait_until(
        lambda: sum(1 for event in recorded if event.request_id == hit_id) == 3, timeout=5
    )
    assert refusals["left"] == 0
    assert _hit_events("retried") - retried >= 1
    assert _hit_events("published") - published == 3


async def test_a_hits_events_given_up_on_are_counted_and_logged_never_raised(
    harness, history, recorded, monkeypatch
):
    monkeypatch.setattr(hit_events_module, "HIT_EVENT_BACKOFF", Backoff(initial_s=0.01, max_s=0.02))
    await harness.client.post("/v1/chat/completions", json=BODY, headers=ON)
    await async_wait_until(lambda: history.cache, timeout=5)

    async def down(topic, event, **kwargs):
        raise BusUnavailableError("Kafka is not reachable")

    monkeypatch.setattr(harness.bus, "publish", down)
    failed = _hit_events("failed")
    hit = await harness.client.post("/v1/chat/completions", json=BODY, headers=ON)

    assert hit.status_code == 200 and hit.headers["x-switchyard-cache"] == "hit"
    # The request, its reply (never published without it) and the usage event.
    await async_wait_until(lambda: _hit_events("failed") - failed == 3, timeout=5)


async def test_a_hit_waits_for_room_where_the_bus_keeps_events_in_memory(harness, history):
    # Embedded mode's bus holds what history has not written yet in memory: a hit's events
    # count like a new request's, so a history far behind gets 503, never more memory.
    await harness.client.post("/v1/chat/completions", json=BODY, headers=ON)
    await async_wait_until(lambda: history.cache, timeout=5)
    topics = Topics(harness.settings.topic_prefix)
    release = asyncio.Event()

    async def store(events) -> None:
        await release.wait()

    await harness.bus.subscribe_batch([topics.replies], "store", store, max_batch=1)
    harness.bus.max_pending, harness.bus.publish_wait_s = 1, 0.2
    for _ in range(2):  # the first is taken and written for ever; the second waits behind
        other = CachePurged(
            source="test", tenant="other", request_id=new_id(), data=CachePurgedData()
        )
        await harness.bus.publish(topics.replies, other)
    refused = await harness.client.post("/v1/chat/completions", json=BODY, headers=ON)
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "bus_unavailable"

    release.set()
    answered = await harness.client.post("/v1/chat/completions", json=BODY, headers=ON)
    assert answered.status_code == 200
    assert answered.headers["x-switchyard-cache"] == "hit"


@pytest.mark.parametrize(
    "lines",
    [
        [("X-Switchyard-Cache", "on"), ("X-Switchyard-Cache", "off")],
        [
            ("X-Switchyard-Cache", "on"),
            ("X-Switchyard-Cache-TTL", "10"),
            ("X-Switchyard-Cache-TTL", "20"),
        ],
        [("X-Switchyard-Cache", "on"), ("X-Switchyard-Cache-Nondeterministic", "true")] * 2,
    ],
)
async def test_a_cache_header_on_several_lines_is_read_as_one_joined_value(harness, history, lines):
    # HTTP reads two lines of one header as their values joined with a comma, so two
    # lines that disagree ("on" then "off") are refused like "on, off", not read as "on".
    await harness.client.post("/v1/chat/completions", json=BODY, headers=ON)
    await async_wait_until(lambda: history.cache, timeout=5)
    headers = [("Authorization", f"Bearer {API_KEY}"), *lines]
    response = await harness.client.post("/v1/chat/completions", json=BODY, headers=headers)

    assert response.status_code == 400, response.headers.get("x-switchyard-cache")
    assert response.json()["error"]["code"] == "invalid_cache_header"


@pytest.mark.parametrize(("store", "second"), [(None, "miss"), (True, "miss"), (False, "hit")])
async def test_a_stored_responses_answer_is_never_served_to_another_user(
    harness, history, store, second
):
    # A stored Responses API answer is its creator's object (GET /v1/responses/{id},
    # previous_response_id): served to another user it would hand out an id they cannot
    # use. With store false there is no such object, and the tenant shares the answer.
    body = {"model": "sim-small", "temperature": 0, "input": "Hello"}
    if store is not None:
        body["store"] = store

    def as_user(user: str) -> dict[str, str]:
        token = harness.auth.token(sub=user, scopes=["chat", "history:read"])
        return {"Authorization": f"Bearer {token}", "X-Switchyard-Cache": "on"}

    first = await harness.client.post("/v1/responses", json=body, headers=as_user("bob"))
    await async_wait_until(lambda: history.cache, timeout=5)
    again = await harness.client.post("/v1/responses", json=body, headers=as_user("bob"))
    other = await harness.client.post("/v1/responses", json=body, headers=as_user("alice"))

    assert first.status_code == again.status_code == other.status_code == 200
    assert first.headers["x-switchyard-cache"] == "miss"
    assert again.headers["x-switchyard-cache"] == "hit"  # its own user's answer
    assert other.headers["x-switchyard-cache"] == second


def _responses_answer(request, status: str = "completed") -> dict:
    """The response object inference shapes for a Responses API request."""
    from switchyard.common.responses import response_id, response_object

    return response_object(
        request.data.body,
        id=response_id(request.request_id, request.time),
        created_at=request.time,
        completed_at=request.time if status == "completed" else None,
        model=request.data.model,
        status=status,
        output=[
            {
                "type": "message",
                "id": "msg_1",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": "Hello!", "annotations": []}],
            }
        ],
    )


RESPONSES_BODY = {"model": "sim-small", "temperature": 0, "input": "Hello"}


async def test_a_responses_hit_is_a_new_response_echoing_its_own_request(
    harness, history, recorded
):
    from switchyard.common.responses import parse_response_id

    async def answer(request):
        return [completed_reply(request, response=_responses_answer(request))]

    harness.respond[0] = answer
    first = await harness.client.post(
        "/v1/responses",
        json={**RESPONSES_BODY, "metadata": {"a": "1"}, "user": "u1"},
        headers=ON,
    )
    await async_wait_until(lambda: history.cache, timeout=5)
    again = await harness.client.post(
        "/v1/responses",
        json={**RESPONSES_BODY, "metadata": {"a": "2"}, "user": "u2", "store": True},
        headers=ON,
    )

    assert again.headers["x-switchyard-cache"] == "hit"
    assert len(harness.requests) == 1
    made, reused = first.json(), again.json()
    # responses.create makes a new object every time: its own id, time and parameters.
    assert reused["id"] != made["id"]
    hit_id = again.headers["x-request-id"]
    ref = parse_response_id(reused["id"])
    assert ref is not None and ref.request_id == hit_id
    assert reused["created_at"] >= made["created_at"]
    assert (reused["metadata"], reused["user"], reused["store"]) == ({"a": "2"}, "u2", True)
    # The stored output, each item under an id of its own (test_response_cache_answers.py).
    assert [{**item, "id": None} for item in reused["output"]] == [
        {**item, "id": None} for item in made["output"]
    ]
    # History records the hit under that id, with that object.
    await async_wait_until(
        lambda: sum(1 for event in recorded if event.request_id == hit_id) == 3, timeout=5
    )
    kinds = {type(event): event for event in recorded if event.request_id == hit_id}
    assert kinds[ChatCompleted].data.response == reused


async def test_a_responses_hit_is_found_by_its_id_as_soon_as_its_request_is_recorded(
    harness, history, recorded
):
    """The hit's request event carries the creation time its response id names, so history
    finds the response by that id once it records the request; and the id is one this
    replica answered, so a read or a `previous_response_id` right after the answer waits
    for its reply to be recorded instead of a 404."""
    from switchyard.common.responses import response_id

    async def answer(request):
        return [completed_reply(request, response=_responses_answer(request))]

    harness.respond[0] = answer
    await harness.client.post("/v1/responses", json=RESPONSES_BODY, headers=ON)
    await async_wait_until(lambda: history.cache, timeout=5)
    again = await harness.client.post("/v1/responses", json=RESPONSES_BODY, headers=ON)

    assert again.headers["x-switchyard-cache"] == "hit"
    hit_id = again.headers["x-request-id"]
    await async_wait_until(
        lambda: any(
            isinstance(event, ChatRequested) and event.request_id == hit_id for event in recorded
        ),
        timeout=5,
    )
    [requested] = [
        event
        for event in recorded
        if isinstance(event, ChatRequested) and event.request_id == hit_id
    ]
    issued = response_id(hit_id, requested.time)
    [completed] = [
        event
        for event in recorded
        if isinstance(event, ChatCompleted) and event.request_id == hit_id
    ]
    assert completed.data.response["id"] == again.json()["id"] == issued
    assert issued in harness.app.state.gateway.answered_responses


async def test_a_streamed_responses_hit_names_its_own_response_in_every_event(harness, history):
    from switchyard.common.events import StreamEvent

    from .conftest import record

    async def stream(request):
        started = _responses_answer(request, status="in_progress")
        started["output"] = []
        done = _responses_answer(request)
        events = [
            StreamEvent(
                event="response.created",
                data={"type": "response.created", "sequence_number": 0, "response": started},
            ),
            StreamEvent(
                event="response.output_text.delta",
                data={
                    "type": "response.output_text.delta",
                    "sequence_number": 1,
                    "item_id": "msg_1",
                    "output_index": 0,
                    "content_index": 0,
                    "delta": "Hello!\n\ndata: event: not an event",
                },
            ),
            StreamEvent(
                event="response.completed",
                data={"type": "response.completed", "sequence_number": 2, "response": done},
            ),
        ]
        return [
            record(request, 0, events),
            completed_reply(request, response=done),
        ]

    harness.respond[0] = stream
    body = {**RESPONSES_BODY, "stream": True}
    first = await harness.client.post(
        "/v1/responses", json={**body, "metadata": {"a": "1"}}, headers=ON
    )
    await async_wait_until(lambda: history.cache, timeout=5)
    again = await harness.client.post(
        "/v1/responses", json={**body, "metadata": {"a": "2"}}, headers=ON
    )

    assert again.headers["x-switchyard-cache"] == "hit"

    def events(content: bytes) -> list[dict]:
        return [
            orjson.loads(line[len(b"data: ") :])
            for line in content.split(b"\n")
            if line.startswith(b"data: ")
        ]

    made, reused = events(first.content), events(again.content)
    assert [event["type"] for event in reused] == [event["type"] for event in made]
    ids = {event["response"]["id"] for event in reused if "response" in event}
    assert len(ids) == 1 and ids != {made[0]["response"]["id"]}
    assert all(
        event["response"]["metadata"] == {"a": "2"} for event in reused if "response" in event
    )
    # The deltas are the stored ones, naming the hit's own item (a new id).
    assert {**reused[1], "item_id": None} == {**made[1], "item_id": None}
    assert reused[1]["item_id"] != made[1]["item_id"]


def test_a_streamed_miss_keeps_its_events_as_bytes_the_collector_never_walks():
    # A stream of many events, kept whole to store with its answer: as their JSON, not as
    # an object graph per event that every garbage collection would walk while it lasts.
    import gc

    from switchyard.common.events import StreamEvent
    from switchyard.gateway.cache import CacheTicket

    ticket = CacheTicket(key="k", mode="use", status="miss")
    events = [
        StreamEvent(event="content_block_delta", data={"delta": {"text": f"{n} "}, "n": n})
        for n in range(10_000)
    ]
    huge = StreamEvent(data={"id": 2**70})  # beyond 64 bits: kept exact
    for start in range(0, len(events), 100):
        ticket.collect(events[start : start + 100])
    ticket.collect([huge])

    assert ticket.events is not None and not any(gc.is_tracked(raw) for raw in ticket.events)
    assert ticket.stream_events() == [event.model_dump() for event in [*events, huge]]


def test_an_item_a_hit_renamed_goes_back_to_its_upstream_under_its_first_id():
    """An upstream's item reused by a hit is renamed for the new response; chained later
    (`previous_response_id`, `item_reference`), it goes back to the upstream under the id
    the upstream gave it, which the upstream knows (and pairs reasoning by); an item whose
    first id Switchyard made goes back without one."""
    from switchyard.common.responses import upstream_item
    from switchyard.gateway.cache import _new_item_id

    request_id = "0123456789abcdef0123456789abcdef"
    call = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}
    upstreams = {**call, "id": _new_item_id("fc_" + "0b" * 25, request_id)}
    translated = {**call, "id": _new_item_id("fc_" + "e" * 32, request_id)}

    assert upstream_item(upstreams)["id"] == "fc_" + "0b" * 25
    assert "id" not in upstream_item(translated)
