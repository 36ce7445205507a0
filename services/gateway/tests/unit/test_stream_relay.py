"""Streams relayed as inference sent them, in the client's API: named events with their
names, events the gateway has never heard of, records in order and once, never two runs
spliced, errors ending the stream in each API's format, and text with Unicode line
separators intact for every kind of client."""

from __future__ import annotations

import anthropic
import httpx2
import openai
import orjson
import pytest
from anthropic._streaming import SSEDecoder

from switchyard.common.events import StreamEvent

from .conftest import (
    API_KEY,
    anthropic_stream,
    chunk,
    completed_reply,
    failed_reply,
    record,
    text_delta_event,
)

AUTH = {"Authorization": f"Bearer {API_KEY}"}
CHAT = {
    "model": "sim-small",
    "messages": [{"role": "user", "content": "Hello"}],
    "stream": True,
}
MESSAGE = {
    "model": "sim-claude",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "Hello"}],
    "stream": True,
}
# Every line terminator a line reader may break JSON at (str.splitlines and httpx's
# iter_lines do; the SSE specification does not).
SEPARATORS = ["\u2028", "\u2029", "\u0085"]


def anthropic_client(harness) -> anthropic.AsyncAnthropic:
    transport = httpx2.ASGITransport(app=harness.app)
    return anthropic.AsyncAnthropic(
        api_key=API_KEY,
        base_url="http://gateway",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=transport),
    )


def openai_client(harness) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        api_key=API_KEY, base_url="http://gateway/v1", max_retries=0, http_client=harness.client
    )


async def raw_stream(harness, path: str, body: dict) -> tuple[int, bytes]:
    async with harness.client.stream("POST", path, json=body, headers=AUTH) as response:
        return response.status_code, b"".join([piece async for piece in response.aiter_bytes()])


async def parsed_events(raw: bytes) -> list[tuple[str | None, str]]:
    """(event name, data) of each Server-Sent Event, read by the SDK's own SSE parser."""

    async def pieces():
        yield raw

    return [(sse.event, sse.data) async for sse in SSEDecoder().aiter_bytes(pieces())]


async def test_named_events_are_relayed_with_their_names_in_order(harness):
    async def streamer(request):
        return [*anthropic_stream(request, ["Hel", "lo"]), completed_reply(request, "Hello")]

    harness.respond[0] = streamer
    status, raw = await raw_stream(harness, "/v1/messages", MESSAGE)

    assert status == 200
    events = await parsed_events(raw)
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert all(orjson.loads(data)["type"] == name for name, data in events)
    # Anthropic's stream ends with its own message_stop: nothing is added after it.
    assert raw.endswith(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
    assert b"[DONE]" not in raw


async def test_events_the_gateway_does_not_know_are_relayed_as_they_are(harness):
    unknown = [
        StreamEvent(event="ping", data={"type": "ping"}),
        StreamEvent(
            event="content_block_delta",
            data={
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "citations_delta", "citation": {"cited_text": "x"}},
            },
        ),
        StreamEvent(event="a_future_event", data={"type": "a_future_event", "payload": [1, 2]}),
    ]

    async def streamer(request):
        records = anthropic_stream(request, ["Hi"])
        # Several events in one record (inference batches them when the bus lags).
        extra = record(request, len(records) - 1, unknown + [records[-1].data.events[0]])
        return [*records[:-1], extra, completed_reply(request, "Hi")]

    harness.respond[0] = streamer
    status, raw = await raw_stream(harness, "/v1/messages", MESSAGE)

    events = await parsed_events(raw)
    relayed = [(name, orjson.loads(data)) for name, data in events[-4:]]
    assert relayed == [(event.event, event.data) for event in unknown] + [
        ("message_stop", {"type": "message_stop"})
    ]


async def test_records_arriving_early_wait_for_their_turn_and_repeats_are_dropped(harness):
    async def shuffled(request):
        return [
            chunk(request, 1, "lo"),
            chunk(request, 0, "Hel"),
            chunk(request, 0, "Hel"),
            chunk(request, 2, "!"),
            chunk(request, 1, "lo"),
            completed_reply(request, "Hello!"),
        ]

    harness.respond[0] = shuffled
    stream = await openai_client(harness).chat.completions.create(**CHAT)
    assert [c.choices[0].delta.content async for c in stream] == ["Hel", "lo", "!"]


@pytest.mark.parametrize(
    ("path", "body", "error_line"),
    [
        ("/v1/chat/completions", CHAT, b'data: {"error":'),
        (
            "/v1/messages",
            MESSAGE,
            b'event: error\ndata: {"type":"error","error":{"type":"api_error"',
        ),
    ],
)
async def test_a_second_run_of_the_request_is_never_spliced_into_the_first(
    harness, path, body, error_line
):
    async def restarted(request):
        return [
            chunk(request, 0, "Hel"),
            chunk(request, 1, "lo"),
            chunk(request, 0, "A different answer", run="run-2"),  # already relayed: ignored
            chunk(request, 2, "A different answer", run="run-2"),
            completed_reply(request, "Hello"),
        ]

    harness.respond[0] = restarted
    _, raw = await raw_stream(harness, path, body)

    assert b"A different answer" not in raw
    assert error_line in raw
    assert b"stream_interrupted" in raw
    assert b"[DONE]" not in raw


async def test_an_openai_stream_failing_midway_ends_with_an_openai_error_object(harness):
    async def failing(request):
        return [
            chunk(request, 0, "Hel"),
            failed_reply(request, 500, "server_error", "The model crashed.", code="model_error"),
        ]

    harness.respond[0] = failing
    _, raw = await raw_stream(harness, "/v1/chat/completions", CHAT)
    last = raw.strip().split(b"\n\n")[-1]
    assert orjson.loads(last.removeprefix(b"data: ")) == {
        "error": {
            "message": "The model crashed.",
            "type": "server_error",
            "param": None,
            "code": "model_error",
        }
    }

    stream = await openai_client(harness).chat.completions.create(**CHAT)
    with pytest.raises(openai.APIError) as caught:
        async for _ in stream:
            pass
    assert "The model crashed." in str(caught.value)


async def test_an_anthropic_stream_failing_midway_ends_with_an_anthropic_error_event(harness):
    async def overloaded(request):
        return [
            *anthropic_stream(request, ["Hel"])[:3],
            failed_reply(request, 529, "overloaded_error", "Overloaded"),
        ]

    harness.respond[0] = overloaded
    _, raw = await raw_stream(harness, "/v1/messages", MESSAGE)
    name, data = (await parsed_events(raw))[-1]
    assert name == "error"
    assert orjson.loads(data) == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }

    with pytest.raises(anthropic.APIStatusError) as caught:
        async with anthropic_client(harness).messages.stream(
            **{k: v for k, v in MESSAGE.items() if k != "stream"}
        ) as stream:
            async for _ in stream:
                pass
    assert caught.value.body["error"]["type"] == "overloaded_error"


@pytest.mark.parametrize(
    ("path", "body"), [("/v1/chat/completions", CHAT), ("/v1/messages", MESSAGE)]
)
async def test_a_stream_failing_before_its_first_event_gets_an_http_error(harness, path, body):
    async def refused(request):
        return [failed_reply(request, 429, "rate_limit_error", "slow down", retry_after_s=2)]

    harness.respond[0] = refused
    async with harness.client.stream("POST", path, json=body, headers=AUTH) as response:
        await response.aread()
    assert response.status_code == 429
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["retry-after"] == "2"
    error = response.json()["error"]
    assert (error["type"], error["message"]) == ("rate_limit_error", "slow down")


async def test_a_stream_past_its_deadline_ends_with_a_timeout_error_event(harness):
    async def stalls(request):
        return anthropic_stream(request, ["Hel"])[:3]

    harness.respond[0] = stalls
    harness.settings.stream_timeout_s = 2.5  # a started stream's deadline
    _, raw = await raw_stream(harness, "/v1/messages", MESSAGE)
    name, data = (await parsed_events(raw))[-1]
    assert name == "error"
    assert orjson.loads(data)["error"]["type"] == "timeout_error"


@pytest.mark.parametrize("separator", SEPARATORS, ids=["U+2028", "U+2029", "U+0085"])
async def test_line_separators_inside_chat_completions_text_survive(harness, separator):
    text = f"one{separator}two"

    async def streamer(request):
        return [chunk(request, 0, text), completed_reply(request, text)]

    harness.respond[0] = streamer
    stream = await openai_client(harness).chat.completions.create(**CHAT)
    assert [c.choices[0].delta.content async for c in stream] == [text]

    # A client reading lines the way str.splitlines does still gets whole JSON lines.
    async with harness.client.stream(
        "POST", "/v1/chat/completions", json=CHAT, headers=AUTH
    ) as response:
        lines = [line async for line in response.aiter_lines() if line]
    assert orjson.loads(lines[0].removeprefix("data: "))["choices"][0]["delta"]["content"] == text
    assert lines[1:] == ["data: [DONE]"]


@pytest.mark.parametrize("separator", SEPARATORS, ids=["U+2028", "U+2029", "U+0085"])
async def test_line_separators_inside_anthropic_text_survive(harness, separator):
    pieces = [f"one{separator}", f"two{separator}three"]

    async def streamer(request):
        return [*anthropic_stream(request, pieces), completed_reply(request, "".join(pieces))]

    harness.respond[0] = streamer
    async with anthropic_client(harness).messages.stream(
        **{k: v for k, v in MESSAGE.items() if k != "stream"}
    ) as stream:
        text = "".join([piece async for piece in stream.text_stream])
    assert text == "".join(pieces)

    async with harness.client.stream(
        "POST", "/v1/messages", json=MESSAGE, headers=AUTH
    ) as response:
        lines = [line async for line in response.aiter_lines() if line]
    data = [orjson.loads(line.removeprefix("data: ")) for line in lines if line.startswith("data:")]
    deltas = [item["delta"]["text"] for item in data if item["type"] == "content_block_delta"]
    assert deltas == pieces


async def test_text_delta_events_carry_exactly_what_inference_sent(harness):
    async def streamer(request):
        return [
            record(request, 0, [text_delta_event('quote " and \\ and \n newline')]),
            completed_reply(request),
        ]

    harness.respond[0] = streamer
    _, raw = await raw_stream(harness, "/v1/messages", MESSAGE)
    [(name, data)] = await parsed_events(raw)
    assert name == "content_block_delta"
    assert orjson.loads(data)["delta"]["text"] == 'quote " and \\ and \n newline'


async def test_records_waiting_for_a_missing_one_are_held_only_so_many(harness, monkeypatch):
    """A gap in a run's records (one lost, or records forged further on) does not make the
    relay hold what follows without bound: past the limit the stream ends as interrupted."""
    from switchyard.gateway import dispatch

    monkeypatch.setattr(dispatch, "MAX_HELD_STREAM_RECORDS", 5)

    async def gapped(request):
        after_a_gap = [chunk(request, n, f"held {n}") for n in range(2, 9)]
        return [chunk(request, 0, "Hel"), *after_a_gap, completed_reply(request, "Hello")]

    harness.respond[0] = gapped
    _, raw = await raw_stream(harness, "/v1/chat/completions", CHAT)

    assert b"Hel" in raw and b"held" not in raw
    assert b"stream_interrupted" in raw and b"[DONE]" not in raw


async def test_the_missing_record_arriving_at_the_limit_lets_the_stream_drain(harness, monkeypatch):
    from switchyard.gateway import dispatch

    monkeypatch.setattr(dispatch, "MAX_HELD_STREAM_RECORDS", 5)

    async def late(request):
        held = [chunk(request, n, f"<{n}>") for n in range(2, 7)]  # as many as may be held
        return [
            chunk(request, 0, "<0>"),
            *held,
            chunk(request, 1, "<1>"),
            completed_reply(request, "x"),
        ]

    harness.respond[0] = late
    _, raw = await raw_stream(harness, "/v1/chat/completions", CHAT)

    assert b"stream_interrupted" not in raw and b"[DONE]" in raw
    assert all(f"<{n}>".encode() in raw for n in range(7))


@pytest.mark.parametrize(
    ("path", "body"), [("/v1/chat/completions", CHAT), ("/v1/messages", MESSAGE)]
)
async def test_an_outcome_arriving_with_a_record_still_missing_ends_the_stream_as_lost(
    harness, path, body
):
    """A request's records travel ahead of its outcome on one partition: a record missing
    when the outcome arrives never will (one nobody could read, or lost by a producer other
    than inference). The client is told, not handed a whole-looking answer with a piece
    out of its middle."""

    async def gapped(request):
        return [chunk(request, 0, "A "), chunk(request, 2, "C"), completed_reply(request, "A B C")]

    harness.respond[0] = gapped
    _, raw = await raw_stream(harness, path, body)

    assert b"A " in raw and b'"C"' not in raw
    assert b"stream_interrupted" in raw and b"lost" in raw
    assert b"[DONE]" not in raw and b"message_stop" not in raw
