"""OpenAI's Responses API through the gateway, driven by the official `openai` SDK
(`client.responses.create`, `.stream`, `.retrieve`, `.delete`, `.cancel`,
`.input_items.list`): the real gateway on the in-memory bus, the real inference handler
calling the provider simulator over HTTP, and the real history service (SQLite) keeping
the conversation state; auth is played by `FakeAuth`.

The default routing serves `sim-small` through a deployment offering the Responses API
(passed through), `sim-large` through one offering Chat Completions only, and
`sim-claude` over Anthropic's protocol (both translated): every test that can runs on
all three."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import httpx2
import openai
import orjson
import pytest

from switchyard.common.bus import InMemoryBus
from switchyard.common.db import upgrade
from switchyard.common.events import (
    ChatRequested,
    ClientAPI,
    Event,
    Priority,
    TerminalStatus,
    UsageRecorded,
)
from switchyard.common.responses import parse_response_id, response_id
from switchyard.common.routing import default_routing
from switchyard.common.testing.infra import async_wait_until
from switchyard.common.topics import Topics
from switchyard.gateway.app import create_app
from switchyard.gateway.config import Settings
from switchyard.history.app import create_app as create_history_app
from switchyard.history.config import MIGRATIONS_DIR, VERSION_TABLE
from switchyard.history.config import Settings as HistorySettings
from switchyard.inference.handlers import ChatRequestHandler
from switchyard.inference.providers import ProviderPool
from switchyard.simulator.testing import SimulatorHandle

from .conftest import API_KEY, FakeAuth

TOKEN = "responses-internal-token"
PREFIX = "responses"
MODELS = ["sim-small", "sim-large", "sim-claude"]
IDS = ["passed-through", "via-chat-completions", "via-anthropic"]
REPLY = "Simulated reply to: "
WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather of a city",
    "parameters": {
        "type": "object",
        "properties": {"location": {"type": "string"}},
        "required": ["location"],
    },
}


@dataclass
class System:
    client: openai.AsyncOpenAI
    http: httpx2.AsyncClient
    gateway_app: Any
    history_app: Any
    auth: FakeAuth
    inference: ChatRequestHandler
    published: list[ChatRequested] = field(default_factory=list)

    async def published_for(self, request_id: str) -> ChatRequested:
        """The `chat.requested` the gateway published for a request (delivered to an
        observer on the bus moments later)."""

        async def found() -> ChatRequested | None:
            return next((e for e in self.published if e.request_id == request_id), None)

        return await async_wait_until(found, timeout=5, interval=0.01, message="the request")


@pytest.fixture
async def system(tmp_path, simulator: SimulatorHandle) -> AsyncIterator[System]:
    bus = InMemoryBus()
    await bus.start()
    topics = Topics(PREFIX)
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'history.db'}"
    upgrade(MIGRATIONS_DIR, database_url, VERSION_TABLE)
    history_app = create_history_app(
        HistorySettings(
            database_url=database_url,
            internal_token=TOKEN,
            topic_prefix=PREFIX,
            sweep_interval_s=3600,
        ),
        bus=bus,
    )
    providers = ProviderPool()
    handler = ChatRequestHandler(
        publish=bus.publish,
        topics=topics,
        routing=default_routing(simulator.openai_url),
        providers=providers,
    )
    await bus.subscribe(
        [topics.requests_interactive, topics.requests_batch], "inference", handler, concurrency=8
    )
    await bus.listen(topics.control, handler.cancel)
    published: list[ChatRequested] = []

    async def observe(event: Event) -> None:
        if isinstance(event, ChatRequested):
            published.append(event)

    await bus.subscribe([topics.requests_interactive, topics.requests_batch], "observer", observe)
    settings = Settings(
        request_timeout_s=15,
        topic_prefix=PREFIX,
        internal_token=TOKEN,
        history_url="http://history",
        responses_state_wait_s=3,
        governance_store="memory",
    )
    auth = FakeAuth()
    gateway_http = httpx.AsyncClient(
        mounts={
            "http://history": httpx.ASGITransport(app=history_app),
            # `auth.handle` looked up per request, so a test replacing it re-routes auth.
            "all://": httpx.MockTransport(lambda request: auth.handle(request)),
        }
    )
    app = create_app(settings, bus=bus, http=gateway_http)
    async with history_app.router.lifespan_context(history_app), app.router.lifespan_context(app):
        http = httpx2.AsyncClient(
            transport=httpx2.ASGITransport(app=app), base_url="http://gateway", timeout=30
        )
        client = openai.AsyncOpenAI(
            base_url="http://gateway/v1", api_key=API_KEY, max_retries=0, http_client=http
        )
        yield System(client, http, app, history_app, auth, handler, published)
        await http.aclose()
    await providers.aclose()
    await bus.stop()


def auth_headers(token: str | None = None) -> dict[str, str]:
    return {"authorization": f"Bearer {token or API_KEY}"}


async def post(system: System, body: dict[str, Any], **headers: str) -> httpx2.Response:
    return await system.http.post("/v1/responses", json=body, headers={**auth_headers(), **headers})


def error_of(response: httpx2.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


# --------------------------------------------------------------------------- create


@pytest.mark.parametrize("model", MODELS, ids=IDS)
async def test_create_answers_a_response_on_every_kind_of_deployment(system, model):
    raw = await system.client.responses.with_raw_response.create(
        model=model, input="Hello there", instructions="Be brief.", metadata={"team": "qa"}
    )
    response = raw.parse()

    assert response.object == "response" and response.status == "completed"
    assert response.output_text == REPLY + "Hello there"
    assert response.model == model
    assert response.metadata == {"team": "qa"}
    assert response.instructions == "Be brief."
    ref = parse_response_id(response.id)
    assert ref is not None and ref.request_id == raw.headers["x-request-id"]
    assert response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    published = await system.published_for(ref.request_id)
    assert published.data.api is ClientAPI.OPENAI_RESPONSES
    assert published.data.body["input"] == "Hello there"  # as the client sent it


@pytest.mark.parametrize("model", MODELS, ids=IDS)
async def test_stream_delivers_the_complete_typed_event_sequence(system, model):
    async with system.client.responses.stream(model=model, input="Stream this") as stream:
        events = [event async for event in stream]
        final = await stream.get_final_response()

    kinds = [event.type for event in events]
    for expected in (
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ):
        assert expected in kinds, (expected, kinds)
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert final.output_text == REPLY + "Stream this"
    assert final.usage.total_tokens > 0
    retrieved = await system.client.responses.retrieve(final.id)
    assert retrieved.output_text == final.output_text


@pytest.mark.parametrize("model", MODELS, ids=IDS)
async def test_chaining_with_previous_response_id_works_on_every_model(system, model):
    first = await system.client.responses.create(model=model, input="My name is Ada.")
    second = await system.client.responses.create(
        model=model, input="What is my name?", previous_response_id=first.id
    )

    assert second.previous_response_id == first.id
    # The model saw the whole conversation: both inputs and the first answer, word counts
    # being the simulator's token counts (4 + 7 + 4).
    assert second.usage.input_tokens == 15
    items = await system.client.responses.input_items.list(second.id, order="asc")
    texts = [item.content[0].text for item in items.data]
    assert texts == ["My name is Ada.", REPLY + "My name is Ada.", "What is my name?"]
    request_id = parse_response_id(second.id).request_id
    published = await system.published_for(request_id)
    assert [item["type"] for item in published.data.previous_items] == ["message", "message"]
    assert published.data.body["previous_response_id"] == first.id


async def test_a_large_conversation_is_decoded_off_the_event_loop(system, monkeypatch):
    """Continuing a conversation of megabytes: neither the gateway (reading the items from
    history) nor history (reading the stored response) decodes a document of more than
    `OFF_LOOP_BYTES` on the event loop's thread."""
    import threading

    from switchyard.common import exactjson
    from switchyard.common.offloop import OFF_LOOP_BYTES

    decoded: list[tuple[int, bool]] = []
    real = exactjson.loads
    loop_thread = threading.current_thread()

    real_json = httpx.Response.json

    def recorded(raw):
        decoded.append((len(raw), threading.current_thread() is loop_thread))
        return real(raw)

    def recorded_json(response, **kwargs):  # a service's answer decoded by httpx
        decoded.append((len(response.content), threading.current_thread() is loop_thread))
        return real_json(response, **kwargs)

    prompt = "x" * OFF_LOOP_BYTES
    first = await system.client.responses.create(model="sim-small", input=prompt)
    monkeypatch.setattr(exactjson, "loads", recorded)
    monkeypatch.setattr(httpx.Response, "json", recorded_json)
    second = await system.client.responses.create(
        model="sim-small", input="How long was that?", previous_response_id=first.id
    )

    assert second.status == "completed"
    large = [on_loop for size, on_loop in decoded if size > OFF_LOOP_BYTES]
    assert large and not any(large), decoded


@pytest.mark.parametrize("model", MODELS, ids=IDS)
async def test_item_references_are_resolved_from_stored_responses_on_every_model(system, model):
    # As the Vercel AI SDK continues a stored conversation: earlier output items by id.
    first = await system.client.responses.create(model=model, input="My name is Ada.")
    references = [{"type": "item_reference", "id": item.id} for item in first.output]
    second = await system.client.responses.create(
        model=model,
        input=[
            {"role": "user", "content": "My name is Ada."},
            *references,
            {"role": "user", "content": "What is my name?"},
        ],
    )

    # The model saw the items themselves: the same counts as a chained turn (4 + 7 + 4).
    assert second.usage.input_tokens == 15
    published = await system.published_for(parse_response_id(second.id).request_id)
    sent = published.data.body["input"]
    assert [item.get("type") for item in sent[1:-1]] == [item.type for item in first.output]
    assert sent[1]["content"][0]["text"] == first.output_text
    assert not [item for item in sent if item.get("type") == "item_reference"]
    # Without the ids Switchyard gave them (an upstream would look those up), with the
    # ids a Responses upstream gave (it pairs reasoning with the item after it by id).
    stored_ids = {item.id for item in first.output}
    kept = [item["id"] for item in sent if item.get("id") in stored_ids]
    assert kept == ([item.id for item in first.output] if model == "sim-small" else [])
    assert not [item for item in sent[1:-1] if "status" in item and item.get("type") == "message"]


@pytest.mark.parametrize("item_id", ["msg_nowhere", "", "m" * 300])
async def test_an_unknown_item_reference_is_404_naming_the_item(system, item_id):
    answer = await post(
        system,
        {
            "model": "sim-small",
            "input": [
                {"role": "user", "content": "hi"},
                {"type": "item_reference", "id": item_id},
            ],
        },
    )

    assert answer.status_code == 404
    error = error_of(answer)
    assert (error["param"], error["code"]) == ("input[1]", "item_not_found")
    assert item_id[:256] in error["message"]
    assert system.published == []


async def test_a_conversation_can_move_between_models_of_different_protocols(system):
    first = await system.client.responses.create(model="sim-claude", input="Remember 42.")
    second = await system.client.responses.create(
        model="sim-small", input="What did I ask?", previous_response_id=first.id
    )
    third = await system.client.responses.create(
        model="sim-large", input="And now?", previous_response_id=second.id
    )
    items = await system.client.responses.input_items.list(third.id, order="asc", limit=100)
    assert [item.content[0].text for item in items.data] == [
        "Remember 42.",
        REPLY + "Remember 42.",
        "What did I ask?",
        REPLY + "What did I ask?",
        "And now?",
    ]


@pytest.mark.parametrize("model", MODELS, ids=IDS)
async def test_function_tools_with_their_outputs(system, model):
    asked = await system.client.responses.create(
        model=model, input="What is the weather in Paris?", tools=[WEATHER_TOOL]
    )
    calls = [item for item in asked.output if item.type == "function_call"]
    assert len(calls) == 1
    call = calls[0]
    assert call.name == "get_weather"
    assert orjson.loads(call.arguments) == {"location": "Paris"}

    answered = await system.client.responses.create(
        model=model,
        previous_response_id=asked.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "18C sunny"}],
    )

    assert answered.status == "completed"
    assert answered.output[-1].type == "message"
    items = await system.client.responses.input_items.list(answered.id, order="asc")
    kinds = [item.type for item in items.data]
    assert kinds == ["message", "function_call", "function_call_output"]
    assert items.data[1].call_id == items.data[2].call_id == call.call_id
    if model != "sim-large":  # the Chat Completions simulator does not echo tool results
        assert "18C sunny" in answered.output_text


# --------------------------------------------------------------------------- retrieve


async def test_retrieve_input_items_and_delete(system):
    created = await system.client.responses.create(
        model="sim-claude", input=[{"role": "user", "content": f"item {n}"} for n in range(3)]
    )
    retrieved = await system.client.responses.retrieve(created.id)
    assert retrieved.id == created.id and retrieved.output_text == created.output_text

    page = await system.client.responses.input_items.list(created.id, limit=2)
    assert [item.content[0].text for item in page.data] == ["item 2", "item 1"]
    assert page.has_more is True
    everything = [
        item async for item in system.client.responses.input_items.list(created.id, limit=1)
    ]
    assert [item.content[0].text for item in everything] == ["item 2", "item 1", "item 0"]

    await system.client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError) as gone:
        await system.client.responses.retrieve(created.id)
    assert gone.value.body["code"] == "response_deleted"
    with pytest.raises(openai.BadRequestError) as continued:
        await system.client.responses.create(
            model="sim-small", input="again", previous_response_id=created.id
        )
    assert continued.value.body["code"] == "previous_response_not_found"
    assert "was deleted" in continued.value.message


async def test_a_deleted_response_is_neither_replayed_nor_answered_from_the_cache(system):
    # Deleted, its answer was still kept by its Idempotency-Key (replayed whole for 24 h)
    # and by the response cache (a hit for whoever asked the same again).
    body = {"model": "sim-large", "input": "DELETE-ME-PLEASE", "temperature": 0}
    cached = {**auth_headers(), "X-Switchyard-Cache": "on"}
    keyed = {**cached, "Idempotency-Key": "delete-key-1"}
    created = await system.http.post("/v1/responses", json=body, headers=keyed)
    assert created.status_code == 200, created.text
    assert (await system.http.post("/v1/responses", json=body, headers=keyed)).headers[
        "idempotent-replayed"
    ] == "true"
    # The cache stores the answer once it was sent; a request asked before that is a
    # miss, answered by a response of its own, which is cached too and deleted below.
    answered = [created.json()["id"]]
    for _ in range(100):
        again = await system.http.post("/v1/responses", json=body, headers=cached)
        if again.headers["x-switchyard-cache"] == "hit":
            break
        answered.append(again.json()["id"])
        await asyncio.sleep(0.05)
    assert again.headers["x-switchyard-cache"] == "hit"

    for answered_id in answered:
        deleted = await system.http.delete(f"/v1/responses/{answered_id}", headers=auth_headers())
        assert deleted.status_code == 200, deleted.text

    retried = await system.http.post("/v1/responses", json=body, headers=keyed)
    assert retried.status_code == 409, retried.text
    assert error_of(retried)["code"] == "idempotency_response_not_stored"
    assert "DELETE-ME-PLEASE" not in retried.text
    asked_again = await system.http.post("/v1/responses", json=body, headers=cached)
    assert asked_again.headers["x-switchyard-cache"] == "miss"


async def test_a_response_stored_with_store_false_cannot_be_retrieved_or_continued(system):
    created = await system.client.responses.create(model="sim-small", input="x", store=False)
    with pytest.raises(openai.NotFoundError) as missing:
        await system.client.responses.retrieve(created.id)
    assert "store: false" in missing.value.message
    # OpenAI's refusal (400 `previous_response_not_found`), which Codex recovers from by
    # sending the whole conversation; the message says why.
    with pytest.raises(openai.BadRequestError) as chained:
        await system.client.responses.create(
            model="sim-small", input="y", previous_response_id=created.id
        )
    assert chained.value.body["param"] == "previous_response_id"
    assert chained.value.body["code"] == "previous_response_not_found"
    assert chained.value.body["message"].startswith(
        f"Previous response with id '{created.id}' not found."
    )
    assert "store: false" in chained.value.message


# --------------------------------------------------------------------------- background


async def test_a_background_response_is_queued_then_completed(system):
    queued = await system.client.responses.create(
        model="sim-large", input="Take your time", background=True
    )
    assert queued.status == "queued" and queued.background is True
    request_id = parse_response_id(queued.id).request_id
    assert (await system.published_for(request_id)).data.priority is Priority.BATCH

    completed = await completed_in_background(system, queued.id)
    assert completed.output_text == REPLY + "Take your time"
    assert completed.background is True


async def completed_in_background(system: System, response_id: str):
    async def done():
        response = await system.client.responses.retrieve(response_id)
        return response if response.status == "completed" else None

    return await async_wait_until(done, timeout=15, message="background response")


async def test_a_background_response_can_be_cancelled_until_it_finishes(system, simulator):
    simulator.fault(hang=True, model="sim-claude")
    queued = await system.client.responses.create(
        model="sim-claude", input="Never mind", background=True
    )
    await async_wait_until(
        lambda: asyncio.to_thread(simulator.calls, "sim-claude"),
        timeout=10,
        message="the upstream call to start",
    )

    cancelled = await system.client.responses.cancel(queued.id)

    assert cancelled.status == "cancelled"
    assert (await system.client.responses.retrieve(queued.id)).status == "cancelled"
    # Inference stopped the upstream call it was waiting on.
    request_id = parse_response_id(queued.id).request_id

    async def stopped() -> bool:
        return request_id not in system.inference.running

    await async_wait_until(stopped, timeout=5, message="inference to stop the request")
    done = await system.client.responses.create(model="sim-small", input="quick", background=True)
    await completed_in_background(system, done.id)
    with pytest.raises(openai.ConflictError) as finished:
        await system.client.responses.cancel(done.id)
    assert finished.value.body["code"] == "response_not_cancellable"


@pytest.mark.parametrize(
    ("status", "model", "code"),
    [
        (400, "sim-claude", "invalid_prompt"),  # Anthropic's 400 carries no code
        (400, "sim-large", "invalid_prompt"),
        (429, "sim-large", "rate_limit_exceeded"),
        (500, "sim-claude", "server_error"),
    ],
)
async def test_a_background_response_the_upstream_refuses_fails_with_its_kind_of_error(
    system, simulator, status, model, code
):
    """OpenAI names a failed response's error with few codes: a refused prompt is
    `invalid_prompt`, never `server_error`, and the upstream's message stays."""
    simulator.fault(status=status, count=5, model=model)
    queued = await system.client.responses.create(model=model, input="refused", background=True)

    async def ended():
        response = await system.client.responses.retrieve(queued.id)
        return response if response.status not in ("queued", "in_progress") else None

    failed = await async_wait_until(ended, timeout=15, message="background response to fail")
    assert failed.status == "failed"
    assert failed.error is not None and failed.error.code == code
    assert failed.error.message


async def test_only_background_responses_can_be_cancelled(system):
    created = await system.client.responses.create(model="sim-small", input="now")
    with pytest.raises(openai.BadRequestError) as refused:
        await system.client.responses.cancel(created.id)
    assert "background" in refused.value.message


# --------------------------------------------------------------------------- bad input


# --------------------------------------------------------------------------- input tokens


@pytest.mark.parametrize("model", MODELS, ids=IDS)
async def test_input_tokens_are_counted_on_every_kind_of_deployment(system, model):
    raw = await system.client.responses.input_tokens.with_raw_response.count(
        model=model, input="How many tokens is this?", instructions="Be brief."
    )
    counted = raw.parse()

    assert counted.object == "response.input_tokens" and counted.input_tokens > 0
    created = await system.client.responses.create(
        model=model, input="How many tokens is this?", instructions="Be brief."
    )
    if model == "sim-large":
        # No counting endpoint on a Chat-Completions-only deployment: a tokenizer's estimate.
        assert raw.headers["x-switchyard-token-count"] == "estimate"
    else:
        assert raw.headers["x-switchyard-token-count"] == "exact"
        assert counted.input_tokens == created.usage.input_tokens
    published = await system.published_for(raw.headers["x-request-id"])
    assert published.data.api is ClientAPI.OPENAI_RESPONSES_INPUT_TOKENS
    assert published.data.stream is False


@pytest.mark.parametrize("model", MODELS, ids=IDS)
async def test_input_tokens_count_the_conversation_a_response_continues(system, model):
    first = await system.client.responses.create(model=model, input="My name is Ada.")
    alone = await system.client.responses.input_tokens.count(model=model, input="What is my name?")
    chained = await system.client.responses.input_tokens.count(
        model=model, input="What is my name?", previous_response_id=first.id
    )

    assert chained.input_tokens > alone.input_tokens
    if model != "sim-large":
        # What the continued response itself reports (see the chaining test: 4 + 7 + 4).
        assert chained.input_tokens == 15


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [
        ({"input": "hi", "stream": True}, 400, "stream", "unknown_parameter"),
        ({"input": "hi", "store": False}, 400, "store", "unknown_parameter"),
        ({"input": "hi", "background": True}, 400, "background", "unknown_parameter"),
        ({"input": "hi", "temperature": 0.5}, 400, "temperature", "unknown_parameter"),
        ({"input": "hi", "max_output_tokens": 50}, 400, "max_output_tokens", "unknown_parameter"),
        ({"input": "hi", "metadata": {"a": "b"}}, 400, "metadata", "unknown_parameter"),
        ({"input": 5}, 400, "input", "invalid_type"),
        ({"input": [{"type": "message"}]}, 400, "input[0].role", "missing_required_parameter"),
        ({"input": "hi", "previous_response_id": 7}, 400, "previous_response_id", "invalid_type"),
        (
            {"input": "hi", "previous_response_id": "resp_unknown"},
            400,
            "previous_response_id",
            "previous_response_not_found",
        ),
        ({"input": [{"type": "item_reference", "id": "msg_x"}]}, 404, "input[0]", "item_not_found"),
    ],
)
async def test_invalid_input_token_counts_are_refused_naming_the_field(
    system, body, status, param, code
):
    answer = await system.http.post(
        "/v1/responses/input_tokens", json={"model": "sim-small", **body}, headers=auth_headers()
    )

    assert answer.status_code == status, answer.text
    error = error_of(answer)
    assert (error["param"], error["code"]) == (param, code)
    assert system.published == []


async def test_an_input_token_count_without_a_model_or_body_is_refused(system):
    for content, param, code in (
        (b'{"input": "hi"}', "model", "missing_required_parameter"),
        (b'{"model": "no-such-model", "input": "hi"}', "model", "model_not_found"),
        (b"[1]", None, "invalid_json"),
        (b"", None, "invalid_json"),
    ):
        answer = await system.http.post(
            "/v1/responses/input_tokens",
            content=content,
            headers={**auth_headers(), "content-type": "application/json"},
        )
        assert answer.status_code in (400, 404), answer.text
        assert (error_of(answer)["param"], error_of(answer)["code"]) == (param, code)
    unauthenticated = await system.http.post(
        "/v1/responses/input_tokens", json={"model": "sim-small", "input": "hi"}
    )
    assert unauthenticated.status_code == 401
    assert system.published == []


async def test_a_retried_count_is_replayed_with_its_estimate_header(system):
    # Through the real history service: the kept header survives the store and the replay.
    body = {"model": "sim-large", "input": "a b c"}
    headers = {**auth_headers(), "Idempotency-Key": "count-key-1"}
    first = await system.http.post("/v1/responses/input_tokens", json=body, headers=headers)
    retry = await system.http.post("/v1/responses/input_tokens", json=body, headers=headers)

    assert first.status_code == retry.status_code == 200, retry.text
    assert retry.headers["idempotent-replayed"] == "true"
    assert retry.headers["x-switchyard-token-count"] == "estimate"
    assert retry.content == first.content
    assert len(system.published) == 1


async def test_other_methods_on_the_count_route_are_405_not_a_missing_response(system):
    for method in ("GET", "DELETE", "HEAD", "PUT"):
        answer = await system.http.request(
            method, "/v1/responses/input_tokens", headers=auth_headers()
        )
        assert answer.status_code == 405, (method, answer.text)
        assert answer.headers["allow"] == "POST"
    # A response id is any other segment: still a 404 for one that does not exist.
    missing = await system.http.get(
        "/v1/responses/input_tokens/input_items", headers=auth_headers()
    )
    assert missing.status_code == 404
    assert error_of(missing)["code"] == "response_not_found"


@pytest.mark.parametrize("model", ["sim-large", "sim-claude"])
async def test_a_translated_count_refuses_what_the_response_would_refuse(system, model):
    with pytest.raises(openai.BadRequestError) as refused:
        await system.client.responses.input_tokens.count(
            model=model, input="Search the news", tools=[{"type": "web_search"}]
        )
    assert refused.value.body["param"] == "tools[0]"


def test_only_a_response_stamped_moments_ago_is_waited_for():
    # A response id carries the time it was made: one made by no replica (stamped in the
    # future, or long ago) is answered 404 at once, never held for the state wait.
    from types import SimpleNamespace

    from switchyard.gateway.api.responses import _may_still_arrive
    from switchyard.gateway.request_id import RequestIds

    settings = Settings(request_timeout_s=15, responses_state_wait_s=10)
    gateway = SimpleNamespace(settings=settings, request_ids=RequestIds(settings.request_id_key()))
    now = datetime.now(UTC)
    request_id = gateway.request_ids.new()
    stamped = {
        offset: response_id(request_id, now + timedelta(seconds=offset))
        for offset in (-3600, -5, 0, 2, 60, 3600 * 24 * 365 * 80)
    }
    assert [_may_still_arrive(gateway, stamped[o]) for o in sorted(stamped)] == [
        False,
        True,
        True,
        True,
        False,
        False,
    ]
    assert not _may_still_arrive(gateway, "resp_nothing-like-ours")
    assert not _may_still_arrive(gateway, response_id("a" * 32, now))  # no gateway made it


async def test_an_unknown_previous_response_id_is_refused_as_openai_does(system):
    """400 `previous_response_not_found` naming the parameter, OpenAI's own refusal."""
    for unknown in (
        "resp_nothing-like-ours",
        response_id("0" * 32, datetime(2020, 1, 1, tzinfo=UTC)),
    ):
        answer = await post(
            system, {"model": "sim-small", "input": "hi", "previous_response_id": unknown}
        )
        assert answer.status_code == 400
        error = error_of(answer)
        assert error == {
            "message": f"Previous response with id '{unknown}' not found.",
            "type": "invalid_request_error",
            "param": "previous_response_id",
            "code": "previous_response_not_found",
        }
    assert system.published == []


async def test_another_tenants_response_is_not_found(system):
    created = await system.client.responses.create(model="sim-small", input="acme's secret")
    other = system.auth.token(tenant="globex", sub="intruder", scopes=["chat", "history:read"])

    chained = await system.http.post(
        "/v1/responses",
        json={"model": "sim-small", "input": "tell me", "previous_response_id": created.id},
        headers=auth_headers(other),
    )
    retrieved = await system.http.get(f"/v1/responses/{created.id}", headers=auth_headers(other))

    assert (chained.status_code, retrieved.status_code) == (400, 404)
    assert error_of(chained)["code"] == "previous_response_not_found"
    assert error_of(retrieved)["code"] == "response_not_found"
    # The same answer as for an id that never existed: nothing says it does elsewhere.
    assert error_of(chained)["message"] == f"Previous response with id '{created.id}' not found."
    assert "acme's secret" not in chained.text + retrieved.text


async def test_a_response_purged_by_retention_is_not_found_saying_so(system):
    await system.history_app.state.history.tenants.update("acme", retention_days=30)
    purged = response_id("f" * 32, datetime.now(UTC) - timedelta(days=45))

    answer = await post(
        system, {"model": "sim-large", "input": "continue", "previous_response_id": purged}
    )

    assert answer.status_code == 400
    error = error_of(answer)
    assert error["code"] == "previous_response_not_found"
    assert "retention period (30 days)" in error["message"]


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"input": 42}, "input", "invalid_type"),
        ({"input": [{"role": "wizard", "content": "hi"}]}, "input[0].role", "invalid_value"),
        ({"input": [{"role": "user"}]}, "input[0].content", "missing_required_parameter"),
        ({"input": ["hello"]}, "input[0]", "invalid_type"),
        ({"input": [{"content": "no role"}]}, "input[0].type", "missing_required_parameter"),
        (
            {"input": [{"role": "user", "content": [{"text": "no type"}]}]},
            "input[0].content[0].type",
            "missing_required_parameter",
        ),
        (
            {"input": [{"type": "function_call_output", "output": "18C"}]},
            "input[0].call_id",
            "missing_required_parameter",
        ),
        (
            {"input": [{"type": "function_call_output", "call_id": "c1", "output": 18}]},
            "input[0].output",
            "invalid_type",
        ),
        ({"input": [{"type": "item_reference"}]}, "input[0].id", "missing_required_parameter"),
        # A part of the other side of the conversation, refused for every deployment as
        # OpenAI's API refuses it (a translating one took it before).
        (
            {"input": [{"role": "user", "content": [{"type": "output_text", "text": "x"}]}]},
            "input[0].content[0]",
            "invalid_value",
        ),
        (
            {"input": [{"role": "developer", "content": [{"type": "refusal", "refusal": "x"}]}]},
            "input[0].content[0]",
            "invalid_value",
        ),
        (
            {"input": [{"role": "assistant", "content": [{"type": "input_text", "text": "x"}]}]},
            "input[0].content[0]",
            "invalid_value",
        ),
        (
            {
                "input": [
                    {
                        "type": "function_call_output",
                        "call_id": "c1",
                        "output": [{"type": "input_text", "text": "a"}, {"type": "output_text"}],
                    }
                ]
            },
            "input[0].output[1]",
            "invalid_value",
        ),
        (
            {"input": [{"type": "function_call_output", "call_id": "c1", "output": ["18C"]}]},
            "input[0].output[0]",
            "invalid_type",
        ),
        (
            {"input": [{"role": "user", "content": "hi", "status": "done"}]},
            "input[0].status",
            "invalid_value",
        ),
        (
            {"input": [{"role": "user", "content": "hi", "status": 1}]},
            "input[0].status",
            "invalid_type",
        ),
        ({"input": "hi", "previous_response_id": 7}, "previous_response_id", "invalid_type"),
        # Resolved by the gateway, so the provider would never see the pair OpenAI refuses.
        (
            {"input": "hi", "previous_response_id": "resp_1", "conversation": "conv_1"},
            None,
            "mutually_exclusive_parameters",
        ),
        ({"input": "hi", "store": "yes"}, "store", "invalid_type"),
        ({"input": "hi", "background": True, "store": False}, "background", "invalid_value"),
        ({"input": "hi", "background": True, "stream": True}, "background", "invalid_value"),
        ({"input": "hi", "stream": "true"}, "stream", "invalid_type"),
        ({"input": "hi", "stream": True, "stream_options": "x"}, "stream_options", "invalid_type"),
        (
            {"input": "hi", "stream": True, "stream_options": {"include_obfuscation": "no"}},
            "stream_options.include_obfuscation",
            "invalid_type",
        ),
        # Switchyard keeps and echoes `metadata` on every deployment: checked here.
        ({"input": "hi", "metadata": "x"}, "metadata", "invalid_type"),
        ({"input": "hi", "metadata": {"a": 1}}, "metadata.a", "invalid_type"),
        ({"input": "hi", "metadata": {"a": "x" * 513}}, "metadata.a", "string_above_max_length"),
        ({"input": "hi", "metadata": {"k" * 65: "x"}}, "metadata", "string_above_max_length"),
        (
            {"input": "hi", "metadata": {str(n): "x" for n in range(17)}},
            "metadata",
            "object_above_max_properties",
        ),
    ],
)
async def test_invalid_requests_are_400_naming_the_field(system, body, param, code):
    answer = await post(system, {"model": "sim-small", **body})

    assert answer.status_code == 400
    error = error_of(answer)
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")
    assert system.published == []


@pytest.mark.parametrize("model", ["sim-small", "sim-large", "sim-claude"])
@pytest.mark.parametrize(
    ("role", "part", "message"),
    [
        (
            "user",
            {"type": "output_text", "text": "x"},
            "Invalid value: 'output_text'. Supported values are: 'input_text', "
            "'input_image', and 'input_file'.",
        ),
        (
            "assistant",
            {"type": "input_text", "text": "x"},
            "Invalid value: 'input_text'. Supported values are: 'output_text' and 'refusal'.",
        ),
        # Chat Completions' part types, kept by a client moving to the Responses API.
        (
            "user",
            {"type": "text", "text": "x"},
            "Invalid value: 'text'. Supported values are: 'input_text', "
            "'input_image', and 'input_file'.",
        ),
        (
            "user",
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
            "Invalid value: 'image_url'. Supported values are: 'input_text', "
            "'input_image', and 'input_file'.",
        ),
        (
            "assistant",
            {"type": "text", "text": "x"},
            "Invalid value: 'text'. Supported values are: 'output_text' and 'refusal'.",
        ),
    ],
)
async def test_a_part_of_the_other_side_is_refused_alike_on_every_deployment(
    system, model, role, part, message
):
    # OpenAI's words; before, a deployment translating to Anthropic took both.
    body = {
        "model": model,
        "input": [{"role": role, "content": [part]}, {"role": "user", "content": "hi"}],
    }

    answer = await post(system, body)

    assert answer.status_code == 400
    assert error_of(answer)["message"] == message
    assert system.published == []


@pytest.mark.parametrize("model", ["sim-large", "sim-claude"])
async def test_a_wrongly_typed_parallel_tool_calls_is_refused_on_translated_models(system, model):
    answer = await post(system, {"model": model, "input": "hi", "parallel_tool_calls": "x"})
    assert answer.status_code == 400
    assert (error_of(answer)["param"], error_of(answer)["code"]) == (
        "parallel_tool_calls",
        "invalid_type",
    )


@pytest.mark.parametrize("model", ["sim-large", "sim-claude"])
async def test_a_function_tool_option_is_refused_on_translated_models(system, model):
    tool = {**WEATHER_TOOL, "defer_loading": True}
    with pytest.raises(openai.BadRequestError) as refused:
        await system.client.responses.create(model=model, input="Weather?", tools=[tool])
    assert refused.value.body["param"] == "tools[0].defer_loading"
    # At OpenAI's defaults the options ask for nothing: served.
    quiet = {**WEATHER_TOOL, "defer_loading": False, "allowed_callers": ["direct"]}
    served = await system.client.responses.create(model=model, input="Weather?", tools=[quiet])
    assert served.status == "completed"


@pytest.mark.parametrize("model", ["sim-large", "sim-claude"])
async def test_built_in_tools_are_refused_naming_the_tool_on_translated_models(system, model):
    with pytest.raises(openai.BadRequestError) as refused:
        await system.client.responses.create(
            model=model, input="Search the news", tools=[WEATHER_TOOL, {"type": "web_search"}]
        )
    assert refused.value.body["param"] == "tools[1]"
    assert "web_search" in refused.value.message
    # A deployment offering the Responses API gets it as sent.
    passed = await system.client.responses.create(
        model="sim-small", input="Search the news", tools=[{"type": "web_search"}]
    )
    assert passed.status == "completed"


async def test_unknown_model_and_streamed_retrieval_are_refused(system):
    unknown = await post(system, {"model": "no-such-model", "input": "hi"})
    assert unknown.status_code == 404 and error_of(unknown)["param"] == "model"
    created = await system.client.responses.create(model="sim-small", input="hi")
    streamed = await system.http.get(
        f"/v1/responses/{created.id}?stream=true", headers=auth_headers()
    )
    assert streamed.status_code == 400 and error_of(streamed)["param"] == "stream"
    bad_id = await system.http.get("/v1/responses/not%20an%20id", headers=auth_headers())
    assert bad_id.status_code == 404


async def test_a_stream_failing_midway_ends_with_response_failed(system, simulator):
    simulator.fault(stream_error_after=3, model="sim-large")

    async with system.http.stream(
        "POST",
        "/v1/responses",
        json={"model": "sim-large", "input": "Tell me a long story", "stream": True},
        headers=auth_headers(),
    ) as answer:
        assert answer.status_code == 200
        events = [
            orjson.loads(line[len("data: ") :])
            async for line in answer.aiter_lines()
            if line.startswith("data: ")
        ]

    assert events[0]["type"] == "response.created"
    last = events[-1]
    assert last["type"] == "response.failed"
    assert last["response"]["id"] == events[0]["response"]["id"]
    assert last["response"]["status"] == "failed"
    assert last["response"]["error"]["code"] == "server_error"
    assert [event["sequence_number"] for event in events] == list(range(len(events)))


async def test_a_failed_stream_keeps_in_its_output_the_items_it_gave_whole(system, simulator):
    # A reasoning item, then a function call cut off by the upstream's failure.
    simulator.fault(stream_error_after=5, model="sim-small")

    async with system.http.stream(
        "POST",
        "/v1/responses",
        json={
            "model": "sim-small",
            "input": "What is the weather in Paris?",
            "tools": [WEATHER_TOOL],
            "reasoning": {"effort": "low"},
            "stream": True,
        },
        headers=auth_headers(),
    ) as answer:
        events = [
            orjson.loads(line[len("data: ") :])
            async for line in answer.aiter_lines()
            if line.startswith("data: ")
        ]

    done = [event["item"] for event in events if event["type"] == "response.output_item.done"]
    assert [item["type"] for item in done] == ["reasoning"]
    failed = events[-1]
    assert failed["type"] == "response.failed"
    # As the client saw them (no encrypted_content: the request did not include it); the
    # function call it never got whole is not there.
    assert failed["response"]["output"] == done

    # The stored response keeps them too, as the stream's last event showed it.
    async def stored() -> dict | None:
        answer = await system.http.get(
            f"/v1/responses/{failed['response']['id']}", headers=auth_headers()
        )
        return answer.json() if answer.status_code == 200 else None

    retrieved = await async_wait_until(stored, timeout=5, message="the failed response")
    assert retrieved["status"] == "failed"
    assert retrieved["error"]["code"] == failed["response"]["error"]["code"]
    assert retrieved["output"] == done


# --------------------------------------------------------------------------- governance


def limit_key(system: System, **limits: Any) -> None:
    """Make auth answer these limits for the test key (history stays reachable)."""
    original = system.auth.handle

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/internal/v1/policy":
            return httpx.Response(
                200,
                json={
                    "tenant": "acme",
                    "team_id": None,
                    "levels": {
                        "api_key": {"id": "key-1", "limits": limits, "budget_anchor_at": None},
                        "user": {"id": "user-1", "limits": {}, "budget_anchor_at": None},
                        "tenant": {"id": "acme", "limits": {}, "budget_anchor_at": None},
                    },
                    "rate_limit_failure_mode": "open",
                    "budget_failure_mode": "closed",
                },
            )
        return original(request)

    system.auth.handle = handle  # what the gateway's client reaches for auth


async def test_responses_count_against_rate_limits_and_are_refused_in_openai_shape(system):
    limit_key(system, rpm_limit=2)
    usage: list[UsageRecorded] = []

    async def observe(event: Event) -> None:
        if isinstance(event, UsageRecorded):
            usage.append(event)

    await system.gateway_app.state.gateway.bus.subscribe(
        [Topics(PREFIX).usage], "usage-observer", observe
    )
    first = await system.client.responses.with_raw_response.create(model="sim-small", input="one")
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    queued = await post(system, {"model": "sim-large", "input": "two", "background": True})
    assert queued.status_code == 200, queued.text
    assert queued.headers["x-ratelimit-remaining-requests"] == "0"

    refused = await post(system, {"model": "sim-small", "input": "three"})
    assert refused.status_code == 429
    error = error_of(refused)
    assert error["code"] == "rate_limit_exceeded" and "key key-1" in error["message"]
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert int(refused.headers["retry-after"]) >= 1
    with pytest.raises(openai.RateLimitError):
        await system.client.responses.create(model="sim-large", input="four", background=True)
    # Refused before publishing: only the two admitted requests reached the bus.
    assert len(system.published) <= 2

    # The refusal is recorded like any request's outcome: usage with the status `refused`.
    request_id = refused.headers["x-request-id"]

    async def recorded() -> UsageRecorded | None:
        return next((e for e in usage if e.request_id == request_id), None)

    record = await async_wait_until(recorded, timeout=5, message="the refusal's usage")
    assert record.data.status is TerminalStatus.REFUSED
    assert record.data.api is ClientAPI.OPENAI_RESPONSES


async def test_an_exhausted_budget_refuses_responses_as_insufficient_quota(system):
    limit_key(system, max_budget_usd=0.0)
    with pytest.raises(openai.RateLimitError) as refused:
        await system.client.responses.create(model="sim-small", input="hello")
    assert refused.value.body["code"] == "insufficient_quota"
    with pytest.raises(openai.RateLimitError):
        await system.client.responses.create(model="sim-small", input="hi", background=True)
    assert system.published == []


def test_a_continued_conversation_reserves_tokens_for_its_previous_items():
    from switchyard.gateway.api.body import ClientRequest
    from switchyard.gateway.governance.estimate import prompt_tokens

    body = {"model": "sim-small", "input": "And then?"}
    earlier = [
        {"role": "user", "content": "Tell me a long story. " * 50},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Once upon a time " * 50}],
        },
    ]
    alone = ClientRequest(ClientAPI.OPENAI_RESPONSES, body, "sim-small", False)
    continued = ClientRequest(ClientAPI.OPENAI_RESPONSES, body, "sim-small", False, earlier)
    assert prompt_tokens(continued.admission_body) > prompt_tokens(alone.admission_body) + 300
    assert continued.body == body  # what is published stays as the client sent it
