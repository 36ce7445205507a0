"""What a response cache hit carries besides the stored body: the headers describing the
body that its fresh answer carried (a token count's `x-switchyard-token-count`), a
Responses API hit's own output item ids and echoed parameters (JSON and streams), and the
`bypass` a background response gets when the caller opted in. History's cache store is
faked (history_fakes.py)."""

from __future__ import annotations

import pytest

from switchyard.common.events import (
    ChatCompleted,
    ChatCompletedData,
    ClientAPI,
    StreamEvent,
    TokenUsage,
)
from switchyard.common.responses import response_id, response_object
from switchyard.gateway import cache as cache_module
from switchyard.gateway import dispatch as dispatch_module

from .conftest import API_KEY, completed_reply, record
from .history_fakes import install
from .test_response_cache import async_wait_until

AUTH = {"Authorization": f"Bearer {API_KEY}"}
ON = AUTH | {"X-Switchyard-Cache": "on"}
# Token counts are not deterministic by `temperature` (they take none): asked explicitly.
COUNT_ON = ON | {"X-Switchyard-Cache-Nondeterministic": "true", "anthropic-version": "2023-06-01"}


@pytest.fixture
async def history(harness):
    return await install(harness)


def _counted(request, *, estimated: bool) -> ChatCompleted:
    api = request.data.api
    response: dict = {"input_tokens": 12}
    if api is ClientAPI.OPENAI_RESPONSES_INPUT_TOKENS:
        response = {"object": "response.input_tokens", "input_tokens": 12}
    return ChatCompleted(
        source="test",
        tenant=request.tenant,
        request_id=request.request_id,
        data=ChatCompletedData(
            api=api,
            response=response,
            provider="fake",
            deployment="fake",
            upstream_api=None if estimated else api,
            usage=TokenUsage(),
            latency_ms=1,
        ),
    )


COUNTS = [
    (
        "/v1/messages/count_tokens",
        {"model": "sim-claude", "messages": [{"role": "user", "content": "Hi"}]},
    ),
    ("/v1/responses/input_tokens", {"model": "sim-small", "input": "Hi"}),
]


# -- the headers describing the body ---------------------------------------------------


def test_the_cache_names_the_token_count_header_and_apis_as_dispatch_does():
    # Spelled in cache.py (dispatch imports it): they must stay the ones answers carry.
    assert cache_module.TOKEN_COUNT_HEADER == dispatch_module.TOKEN_COUNT_HEADER
    assert cache_module.COUNTING_APIS == frozenset(dispatch_module.COUNTING_APIS)


@pytest.mark.parametrize("estimated", [True, False])
@pytest.mark.parametrize(("path", "body"), COUNTS, ids=["count_tokens", "input_tokens"])
async def test_a_cached_token_count_keeps_its_token_count_header(
    harness, history, path, body, estimated
):
    async def answer(request):
        return [_counted(request, estimated=estimated)]

    harness.respond[0] = answer
    first = await harness.client.post(path, json=body, headers=COUNT_ON)
    await async_wait_until(lambda: history.cache, timeout=5)
    [entry] = history.cache.values()
    expected = "estimate" if estimated else "exact"
    assert entry["headers"] == {"x-switchyard-token-count": expected}

    # From this replica's memory, and from the shared store (memory dropped).
    again = await harness.client.post(path, json=body, headers=COUNT_ON)
    harness.app.state.gateway.cache._front.clear()
    stored = await harness.client.post(path, json=body, headers=COUNT_ON)

    assert first.headers["x-switchyard-cache"] == "miss"
    for hit in (again, stored):
        assert hit.headers["x-switchyard-cache"] == "hit"
        assert hit.headers["x-switchyard-token-count"] == expected
        assert hit.content == first.content
    assert first.headers["x-switchyard-token-count"] == expected
    assert len(harness.requests) == 1


async def test_a_token_count_stored_without_its_header_is_a_miss_and_replaced(harness, history):
    path, body = COUNTS[0]

    async def answer(request):
        return [_counted(request, estimated=True)]

    harness.respond[0] = answer
    await harness.client.post(path, json=body, headers=COUNT_ON)
    await async_wait_until(lambda: history.cache, timeout=5)
    # As an entry stored before the headers were kept (or by a store dropping them).
    [slot] = history.cache
    history.cache[slot].pop("headers")
    harness.app.state.gateway.cache._front.clear()

    old = await harness.client.post(path, json=body, headers=COUNT_ON)
    assert old.headers["x-switchyard-cache"] == "miss"  # never a count without its header
    assert old.headers["x-switchyard-token-count"] == "estimate"
    await async_wait_until(lambda: "headers" in history.cache[slot], timeout=5)
    harness.app.state.gateway.cache._front.clear()
    hit = await harness.client.post(path, json=body, headers=COUNT_ON)
    assert hit.headers["x-switchyard-cache"] == "hit"
    assert hit.headers["x-switchyard-token-count"] == "estimate"
    assert len(harness.requests) == 2


def test_an_entry_stored_without_headers_is_read_as_before():
    entry = {
        "api": "openai.chat_completions",
        "model": "sim-small",
        "response": {"id": "x"},
        "stream_events": None,
        "source_request_id": "r1",
        "created_at": "2025-01-01T00:00:00+00:00",
        "expires_at": "2025-01-02T00:00:00+00:00",
    }
    answer = cache_module.CachedAnswer.from_store(entry)
    assert answer.headers == {} and answer.complete  # nothing a chat answer needs
    odd = cache_module.CachedAnswer.from_store(
        {**entry, "headers": {"X-Switchyard-Token-Count": "exact", "set-cookie": "a", "n": 1}}
    )
    assert odd.headers == {"x-switchyard-token-count": "exact"}  # only headers it keeps


# -- a Responses API hit is a new response ---------------------------------------------


OUTPUT = [
    {"type": "reasoning", "id": "rs_sy1", "summary": []},
    {
        "type": "function_call",
        "id": "fc_1",
        "call_id": "call_1",
        "name": "lookup",
        "arguments": "{}",
        "status": "completed",
    },
    {
        "type": "message",
        "id": "msg_1",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": "Hello!", "annotations": []}],
    },
]
RESPONSES_BODY = {"model": "sim-small", "temperature": 0, "input": "Hello"}


def _responses_answer(request, status: str = "completed", output: list | None = None) -> dict:
    return response_object(
        request.data.body,
        id=response_id(request.request_id, request.time),
        created_at=request.time,
        completed_at=request.time if status == "completed" else None,
        model=request.data.model,
        status=status,
        output=OUTPUT if output is None else output,
    )


async def test_a_responses_hit_gives_its_items_new_ids_and_echoes_its_own_parameters(
    harness, history
):
    async def answer(request):
        return [completed_reply(request, response=_responses_answer(request))]

    harness.respond[0] = answer
    asked = {
        "service_tier": "flex",
        "prompt_cache_key": "k1",
        "safety_identifier": "s1",
    }
    first = await harness.client.post("/v1/responses", json={**RESPONSES_BODY, **asked}, headers=ON)
    await async_wait_until(lambda: history.cache, timeout=5)
    again = await harness.client.post(
        "/v1/responses",
        json={
            **RESPONSES_BODY,
            "service_tier": "priority",
            "prompt_cache_key": "k2",
            "safety_identifier": "s2",
        },
        headers=ON,
    )
    plain = await harness.client.post("/v1/responses", json=RESPONSES_BODY, headers=ON)

    assert again.headers["x-switchyard-cache"] == plain.headers["x-switchyard-cache"] == "hit"
    made, reused, bare = first.json(), again.json(), plain.json()
    assert made["service_tier"] == "flex"
    assert (reused["service_tier"], reused["prompt_cache_key"], reused["safety_identifier"]) == (
        "priority",
        "k2",
        "s2",
    )
    assert (bare["service_tier"], bare["prompt_cache_key"], bare["safety_identifier"]) == (
        "default",
        None,
        None,
    )
    ids = [item["id"] for response in (made, reused, bare) for item in response["output"]]
    assert len(set(ids)) == len(ids) == 9  # no two responses share an item id
    for item, original in zip(reused["output"], made["output"], strict=True):
        assert item["id"].startswith(original["id"])  # its kind prefix kept (rs_sy...)
        assert {**item, "id": original["id"]} == original  # nothing else changed
    assert reused["output"][1]["call_id"] == "call_1"  # what a tool result answers


async def test_a_streamed_responses_hit_renames_every_item_consistently(harness, history):
    message = OUTPUT[2]

    async def stream(request):
        started = _responses_answer(request, status="in_progress", output=[])
        done = _responses_answer(request, output=[message])
        events = [
            ("response.created", {"response": started}),
            ("response.output_item.added", {"output_index": 0, "item": {**message, "content": []}}),
            (
                "response.output_text.delta",
                {"item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": "Hello!"},
            ),
            ("response.output_item.done", {"output_index": 0, "item": message}),
            ("response.completed", {"response": done}),
        ]
        return [
            record(
                request,
                0,
                [
                    StreamEvent(event=name, data={"type": name, "sequence_number": n, **data})
                    for n, (name, data) in enumerate(events)
                ],
            ),
            completed_reply(request, response=done),
        ]

    harness.respond[0] = stream
    body = {**RESPONSES_BODY, "stream": True, "service_tier": "flex"}
    first = await harness.client.post("/v1/responses", json=body, headers=ON)
    await async_wait_until(lambda: history.cache, timeout=5)
    again = await harness.client.post(
        "/v1/responses", json={**body, "service_tier": "priority"}, headers=ON
    )
    assert again.headers["x-switchyard-cache"] == "hit"

    def events(content: bytes) -> list[dict]:
        import orjson

        return [
            orjson.loads(line[len(b"data: ") :])
            for line in content.split(b"\n")
            if line.startswith(b"data: ")
        ]

    made, reused = events(first.content), events(again.content)
    named = {
        reused[1]["item"]["id"],
        reused[2]["item_id"],
        reused[3]["item"]["id"],
        reused[4]["response"]["output"][0]["id"],
    }
    assert len(named) == 1 and named != {"msg_1"}
    assert made[2]["item_id"] == "msg_1"  # the stored stream keeps its own
    assert reused[2]["delta"] == made[2]["delta"]
    assert all(e["response"]["service_tier"] == "priority" for e in reused if "response" in e)


# -- background responses --------------------------------------------------------------


BACKGROUND = {**RESPONSES_BODY, "background": True}


@pytest.mark.parametrize(
    ("headers", "tenant_on", "expected"),
    [
        (ON, False, "bypass"),
        (AUTH | {"X-Switchyard-Cache": "refresh"}, False, "bypass"),
        (AUTH | {"X-Switchyard-Cache": "off"}, True, "bypass"),
        (AUTH, True, "bypass"),  # opted in by the tenant's setting
        (AUTH, False, None),  # not opted in: nothing to say
    ],
)
async def test_a_background_response_says_the_cache_was_bypassed(
    harness, history, headers, tenant_on, expected
):
    if tenant_on:
        history.cache_enabled.add("acme")
    answer = await harness.client.post("/v1/responses", json=BACKGROUND, headers=headers)

    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "queued"
    assert answer.headers.get("x-switchyard-cache") == expected
    assert not [call for call in history.calls if call.method == "PUT"]
    assert not history.cache


WEB_SEARCH = {
    "type": "web_search_call",
    "id": "ws_67c9",
    "status": "completed",
    "action": {"type": "search", "query": "weather"},
}


async def test_a_reasoning_item_an_upstream_made_keeps_its_id_on_a_hit(harness, history):
    """An OpenAI upstream finds its reasoning items and its built-in tools' calls by id
    when a later turn sends them back: a renamed one would be unknown there. Switchyard's
    own reasoning items (`rs_sy`) are renamed."""
    output = [
        {"type": "reasoning", "id": "rs_upstream1", "summary": []},
        {"type": "reasoning", "id": "rs_sy0123", "summary": []},
        *OUTPUT[-1:],
        WEB_SEARCH,
    ]

    async def answer(request):
        return [completed_reply(request, response=_responses_answer(request, output=output))]

    harness.respond[0] = answer
    first = await harness.client.post("/v1/responses", json=RESPONSES_BODY, headers=ON)
    await async_wait_until(lambda: history.cache, timeout=5)
    again = await harness.client.post("/v1/responses", json=RESPONSES_BODY, headers=ON)
    assert again.headers["x-switchyard-cache"] == "hit"
    made, reused = first.json()["output"], again.json()["output"]
    assert reused[0]["id"] == made[0]["id"] == "rs_upstream1"
    assert reused[1]["id"] != made[1]["id"] and reused[1]["id"].startswith("rs_sy0123")
    assert reused[2]["id"] != made[2]["id"]
    assert reused[3]["id"] == made[3]["id"] == "ws_67c9"


async def test_a_streamed_hit_keeps_a_built_in_call_s_id_in_every_event(harness, history):
    async def stream(request):
        done = _responses_answer(request, output=[WEB_SEARCH])
        events = [
            ("response.output_item.added", {"output_index": 0, "item": WEB_SEARCH}),
            ("response.web_search_call.completed", {"output_index": 0, "item_id": "ws_67c9"}),
            ("response.completed", {"response": done}),
        ]
        return [
            record(
                request,
                0,
                [
                    StreamEvent(event=name, data={"type": name, "sequence_number": n, **data})
                    for n, (name, data) in enumerate(events)
                ],
            ),
            completed_reply(request, response=done),
        ]

    harness.respond[0] = stream
    body = {**RESPONSES_BODY, "stream": True}
    await harness.client.post("/v1/responses", json=body, headers=ON)
    await async_wait_until(lambda: history.cache, timeout=5)
    again = await harness.client.post("/v1/responses", json=body, headers=ON)
    assert again.headers["x-switchyard-cache"] == "hit"
    assert again.content.count(b'"ws_67c9"') == 3, again.text
