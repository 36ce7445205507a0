"""Tool calls of a Chat Completions stream translated for Anthropic and Responses clients:
a name sent in pieces, arguments that are not a JSON object, and text sent beside a call's
unfinished arguments. Each stream is read by the client's own SDK (the anthropic SDK's
`accumulate_event`, the openai SDK's `ResponseStreamState`), which checks the order of
the events and builds what an application gets."""

from __future__ import annotations

import json
from typing import Any

import pytest

from switchyard.inference.translate import (
    ChatChunksToMessageEvents,
    CompletionAccumulator,
    chat_completion_to_message,
)
from switchyard.inference.translate_responses import ChatChunksToResponseEvents

from .test_responses_reasoning_stream import CTX, sdk_final, usage
from .test_translate import STREAM_EVENT, block_deltas_between_start_and_stop, openai_chunk

anthropic = pytest.importorskip("anthropic")

from anthropic.lib.streaming._messages import accumulate_event  # noqa: E402


def call(index: int, *, arguments: str | None = None, name: str | None = None, **extra: Any):
    """One `tool_calls` entry of a delta: only the fields given."""
    function: dict[str, Any] = {}
    if name is not None:
        function["name"] = name
    if arguments is not None:
        function["arguments"] = arguments
    return {"index": index, "function": function, **extra}


def started(index: int, call_id: str, name: str, arguments: str = "") -> dict[str, Any]:
    return call(index, arguments=arguments, name=name, id=call_id, type="function")


def chunks_of(*deltas: dict[str, Any], finish: str = "tool_calls") -> list[dict[str, Any]]:
    return (
        [openai_chunk({"role": "assistant", "content": None})]
        + [openai_chunk(delta) for delta in deltas]
        + [openai_chunk({}, finish)]
    )


def anthropic_stream(chunks: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], Any]:
    """The Anthropic events of `chunks`, checked against Anthropic's event schema and the
    block order, and the message the anthropic SDK assembles from them."""
    converter = ChatChunksToMessageEvents("m")
    events = [event for chunk in chunks for event in converter.feed(chunk)]
    events += converter.finish()
    block_deltas_between_start_and_stop(events)
    snapshot, buffers = None, {}
    for event in events:
        STREAM_EVENT.validate_python(event)
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=buffers)
    return events, snapshot


def responses_stream(chunks: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], Any]:
    """The Responses events of `chunks` and the response the openai SDK assembles."""
    converter = ChatChunksToResponseEvents(CTX, usage)
    events = [event for chunk in chunks for event in converter.feed(chunk)]
    events += converter.finish()
    return events, sdk_final(events)


NAME_IN_PIECES = {
    "arguments after the name": chunks_of(
        {"tool_calls": [started(0, "call_a", "get_")]},
        {"tool_calls": [call(0, name="weather")]},
        {"tool_calls": [call(0, arguments='{"city": ')]},
        {"tool_calls": [call(0, arguments='"Oslo"}')]},
    ),
    "no arguments": chunks_of(
        {"tool_calls": [started(0, "call_a", "get_")]},
        {"tool_calls": [call(0, name="weather", arguments="")]},
    ),
    # Servers that send the whole name again in every delta (vLLM with some tool
    # parsers, models served through NVIDIA NIM), or the name so far.
    "the whole name in every delta": chunks_of(
        {"tool_calls": [started(0, "call_a", "get_weather")]},
        {"tool_calls": [call(0, name="get_weather", arguments="")]},
        {"tool_calls": [call(0, name="get_weather", arguments='{"city": ')]},
        {"tool_calls": [call(0, name="get_weather", arguments='"Oslo"}')]},
    ),
    "the name so far in every delta": chunks_of(
        {"tool_calls": [started(0, "call_a", "get_")]},
        {"tool_calls": [call(0, name="get_weather", arguments='{"city": "Oslo"}')]},
    ),
    "the second call's name in pieces": chunks_of(
        {"tool_calls": [started(0, "call_a", "get_time", '{"zone": "CET"}')]},
        {"tool_calls": [started(1, "call_b", "get_")]},
        {"tool_calls": [call(1, name="weather")]},
        {"tool_calls": [call(1, arguments='{"city": "Oslo"}')]},
    ),
}


@pytest.mark.parametrize("chunks", NAME_IN_PIECES.values(), ids=NAME_IN_PIECES.keys())
def test_a_name_streamed_in_pieces_reaches_an_anthropic_client_whole(chunks) -> None:
    # The openai SDK joins the pieces of a streamed name; the block opens with all of it.
    events, message = anthropic_stream(chunks)

    names = [
        event["content_block"]["name"] for event in events if event["type"] == "content_block_start"
    ]
    assert names[-1] == "get_weather"
    assert [block.name for block in message.content] == names


@pytest.mark.parametrize("chunks", NAME_IN_PIECES.values(), ids=NAME_IN_PIECES.keys())
def test_a_name_streamed_in_pieces_reaches_a_responses_client_whole(chunks) -> None:
    events, response = responses_stream(chunks)

    added = [e["item"]["name"] for e in events if e["type"] == "response.output_item.added"]
    assert added[-1] == "get_weather"
    assert [item.name for item in response.output] == added


@pytest.mark.parametrize(
    "arguments",
    ["[1, 2]", '"Oslo"', "42", "null", " \n[1,", "true"],
)
def test_arguments_that_are_not_an_object_stream_to_anthropic_as_an_empty_input(arguments):
    # Anthropic's `input` is an object: the reply not streamed gives `{}`, and so does its
    # stream (no piece of the value reaches the block).
    pieces = [arguments[:3], arguments[3:]]
    chunks = chunks_of(
        {"tool_calls": [started(0, "call_a", "get_weather", pieces[0])]},
        {"tool_calls": [call(0, arguments=pieces[1])]},
    )
    # The same chunks assembled into the reply not streamed.
    assembled = CompletionAccumulator()
    for chunk in chunks:
        assembled.add(chunk)
    whole = chat_completion_to_message(assembled.response(), "m")

    events, message = anthropic_stream(chunks)

    assert not [e for e in events if e["type"] == "content_block_delta"]
    assert message.content[0].input == whole["content"][0]["input"] == {}


def test_whitespace_before_an_objects_arguments_is_not_streamed_to_anthropic() -> None:
    chunks = chunks_of(
        {"tool_calls": [started(0, "call_a", "get_weather", " ")]},
        {"tool_calls": [call(0, arguments='\n{"city": ')]},
        {"tool_calls": [call(0, arguments='"Oslo"}')]},
    )

    events, message = anthropic_stream(chunks)

    pieces = [e["delta"]["partial_json"] for e in events if e["type"] == "content_block_delta"]
    assert pieces == ['{"city": ', '"Oslo"}']
    assert message.content[0].input == {"city": "Oslo"}


TEXT_BESIDE_A_CALL = {
    # Some servers send a whitespace `content` in the chunk that carries more arguments.
    "beside its arguments": chunks_of(
        {"tool_calls": [started(0, "call_a", "get_weather", '{"city":')]},
        {"content": "\n", "tool_calls": [call(0, arguments=' "Oslo"}')]},
        {"content": "Checking."},
    ),
    "between its name and its arguments": chunks_of(
        {"tool_calls": [started(0, "call_a", "get_weather")]},
        {"content": "\n"},
        {"tool_calls": [call(0, arguments='{"city": "Oslo"}')]},
        {"content": "Checking."},
    ),
}


@pytest.mark.parametrize("chunks", TEXT_BESIDE_A_CALL.values(), ids=TEXT_BESIDE_A_CALL.keys())
def test_text_beside_an_unfinished_call_waits_for_its_arguments_in_anthropic(chunks) -> None:
    # The call's block is closed only once its arguments are whole: no delta reaches it
    # after its `content_block_stop` (checked in `anthropic_stream`), none is lost.
    _, message = anthropic_stream(chunks)

    assert [block.type for block in message.content] == ["tool_use", "text"]
    assert message.content[0].input == {"city": "Oslo"}
    assert message.content[1].text == "\nChecking."


@pytest.mark.parametrize("chunks", TEXT_BESIDE_A_CALL.values(), ids=TEXT_BESIDE_A_CALL.keys())
def test_text_beside_an_unfinished_call_waits_for_its_arguments_in_responses(chunks) -> None:
    _, response = responses_stream(chunks)

    assert [item.type for item in response.output] == ["function_call", "message"]
    assert response.output[0].arguments == '{"city": "Oslo"}'
    assert response.output[1].content[0].text == "\nChecking."


@pytest.mark.parametrize("arguments", ['"Oslo"', "42", "[1, 2]"])
def test_text_after_a_call_whose_arguments_are_no_object_streams_live_to_anthropic(arguments):
    # Nothing more of such arguments is streamed (`input` stays `{}`), so the text after
    # them does not wait for the end of the stream.
    converter = ChatChunksToMessageEvents("m")
    converter.feed(openai_chunk({"tool_calls": [started(0, "call_a", "get_weather", arguments)]}))

    live = converter.feed(openai_chunk({"content": "Checking."}))

    texts = [e["delta"]["text"] for e in live if e["type"] == "content_block_delta"]
    assert texts == ["Checking."]


@pytest.mark.parametrize("to", ["anthropic", "responses"])
def test_what_was_held_is_released_when_the_upstream_fails(to) -> None:
    # A call whose name came but not its arguments, and text beside an unfinished call:
    # the upstream's failure ends the stream, what it sent is given, the stream left open.
    converter: Any = (
        ChatChunksToMessageEvents("m")
        if to == "anthropic"
        else ChatChunksToResponseEvents(CTX, usage)
    )
    events = []
    for chunk in [
        openai_chunk({"role": "assistant", "content": None}),
        openai_chunk({"tool_calls": [started(0, "call_a", "get_weather", '{"city":')]}),
        openai_chunk({"content": "\n", "tool_calls": [started(1, "call_b", "get_time")]}),
    ]:
        events += converter.feed(chunk)
    held = converter.release()

    events += held
    if to == "anthropic":
        starts = [e["content_block"] for e in events if e["type"] == "content_block_start"]
        assert [(b["type"], b.get("name")) for b in starts] == [
            ("tool_use", "get_weather"),
            ("tool_use", "get_time"),
            ("text", None),
        ]
        assert events[-1]["type"] == "content_block_delta"  # the stream is left open
    else:
        added = [e["item"] for e in events if e["type"] == "response.output_item.added"]
        assert [(i["type"], i.get("name")) for i in added] == [
            ("function_call", "get_weather"),
            ("function_call", "get_time"),
            ("message", None),
        ]
        assert not [e for e in events if e["type"] == "response.completed"]
    assert converter.release() == []  # nothing twice


# Gemini's OpenAI-compatible stream: each call (or a piece of its arguments) without an
# `index`, a call ended by `finish_reason: "stop"`.
WITHOUT_INDEX = [
    openai_chunk({"role": "assistant", "content": None}),
    openai_chunk(
        {
            "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "get_weather"}},
                {
                    "id": "call_b",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": '{"zone": "CET"}'},
                },
            ]
        }
    ),
    openai_chunk({"tool_calls": [{"id": "call_a", "function": {"arguments": '{"city": '}}]}),
    openai_chunk({"tool_calls": [{"id": "", "function": {"arguments": '"Oslo"}'}}]}),
    openai_chunk({}, "stop"),
]


def test_calls_without_an_index_reach_an_anthropic_client_apart_and_stop_for_tool_use():
    events, message = anthropic_stream(WITHOUT_INDEX)

    calls = [(block.id, block.name, block.input) for block in message.content]
    assert calls == [
        ("call_a", "get_weather", {"city": "Oslo"}),
        ("call_b", "get_time", {"zone": "CET"}),
    ]
    # Agent loops (Claude Code's, the SDKs' tool runners) run a reply's tools when it
    # stopped for `tool_use` only.
    assert message.stop_reason == "tool_use"


def test_calls_without_an_index_reach_a_responses_client_apart():
    _, response = responses_stream(WITHOUT_INDEX)

    calls = [(item.call_id, item.name, item.arguments) for item in response.output]
    assert calls == [
        ("call_a", "get_weather", '{"city": "Oslo"}'),
        ("call_b", "get_time", '{"zone": "CET"}'),
    ]


def test_a_chat_client_gets_each_call_with_an_index() -> None:
    # Passed through, the stream is the one the client's API describes: the openai SDK's
    # stream reader refuses a call without an index.
    from openai.lib.streaming.chat import ChatCompletionStreamState
    from openai.types.chat import ChatCompletionChunk

    from switchyard.inference.adapters import _ChatPassThroughStream
    from switchyard.inference.upstream import SSE

    relay = _ChatPassThroughStream("m", include_usage=False)
    state = ChatCompletionStreamState()
    for chunk in WITHOUT_INDEX:
        for event in relay.feed(SSE(event=None, data=json.loads(json.dumps(chunk)))):
            state.handle_chunk(ChatCompletionChunk.model_validate(event.data))

    message = state.get_final_completion().choices[0].message
    calls = [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls or []]
    assert calls == [
        ("call_a", "get_weather", '{"city": "Oslo"}'),
        ("call_b", "get_time", '{"zone": "CET"}'),
    ]


# Parallel calls an upstream gives one index (Ollama gives each call of a turn index 0):
# a new id at an index starts a new call; a piece without an id continues the latest call
# at that index; an index the upstream uses afterwards is a call of its own too.
ONE_INDEX = chunks_of(
    {"tool_calls": [started(0, "call_a", "get_weather", '{"city": ')]},
    {"tool_calls": [call(0, arguments='"Oslo"}')]},
    {"tool_calls": [started(0, "call_b", "get_weather", '{"city": ')]},
    {"tool_calls": [call(0, arguments='"Rome"}')]},
    {"tool_calls": [started(1, "call_c", "get_time", '{"zone": "CET"}')]},
)
ONE_INDEX_CALLS = [
    ("call_a", "get_weather", '{"city": "Oslo"}'),
    ("call_b", "get_weather", '{"city": "Rome"}'),
    ("call_c", "get_time", '{"zone": "CET"}'),
]


def test_calls_given_one_index_reach_an_anthropic_client_apart() -> None:
    _, message = anthropic_stream(ONE_INDEX)

    calls = [(block.id, block.name, json.dumps(block.input)) for block in message.content]
    assert calls == ONE_INDEX_CALLS


def test_calls_given_one_index_reach_a_responses_client_apart() -> None:
    _, response = responses_stream(ONE_INDEX)

    calls = [(item.call_id, item.name, item.arguments) for item in response.output]
    assert calls == ONE_INDEX_CALLS


def _passed_through(chunks: list[dict[str, Any]]) -> tuple[list[Any], list[Any]]:
    """The calls a Chat Completions client's openai SDK assembles from `chunks` relayed,
    and those of the reply recorded for history: (id, name, arguments) each."""
    from openai.lib.streaming.chat import ChatCompletionStreamState
    from openai.types.chat import ChatCompletionChunk

    from switchyard.inference.adapters import _ChatPassThroughStream
    from switchyard.inference.upstream import SSE

    relay = _ChatPassThroughStream("m", include_usage=False)
    state = ChatCompletionStreamState()
    assembled = CompletionAccumulator()
    for chunk in chunks:
        for event in relay.feed(SSE(event=None, data=json.loads(json.dumps(chunk)))):
            assembled.add(event.data)
            state.handle_chunk(ChatCompletionChunk.model_validate(event.data))
    message = state.get_final_completion().choices[0].message
    sdk = [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls or []]
    recorded = assembled.response()["choices"][0]["message"]["tool_calls"]
    record = [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in recorded]
    return sdk, record


def test_calls_given_one_index_reach_a_chat_client_and_its_record_apart() -> None:
    # Passed through: the openai SDK's stream reader joins what one index gets into one
    # call, as does the reply assembled for the record.
    sdk, record = _passed_through(ONE_INDEX)
    assert sdk == record == ONE_INDEX_CALLS


def test_a_call_whose_id_comes_again_at_its_index_stays_one_call() -> None:
    # Some servers repeat a call's id in each of its deltas.
    chunks = chunks_of(
        {"tool_calls": [started(0, "call_a", "get_weather", '{"city": ')]},
        {"tool_calls": [call(0, arguments='"Oslo"}', id="call_a")]},
        {"tool_calls": [started(0, "call_b", "get_time", '{"zone": ')]},
        {"tool_calls": [call(0, arguments='"CET"}', id="call_b")]},
    )
    expected = [
        ("call_a", "get_weather", '{"city": "Oslo"}'),
        ("call_b", "get_time", '{"zone": "CET"}'),
    ]

    _, message = anthropic_stream(chunks)
    _, response = responses_stream(chunks)

    assert [(b.id, b.name, json.dumps(b.input)) for b in message.content] == expected
    assert [(i.call_id, i.name, i.arguments) for i in response.output] == expected


ONE_CALL_SHAPES = {
    # An id that changes from chunk to chunk (some servers'): one call, its first id.
    "a new id without a name": chunks_of(
        {"tool_calls": [started(0, "call_a", "get_weather", '{"city": ')]},
        {"tool_calls": [call(0, arguments='"Oslo"}', id="call_z")]},
    ),
    # vLLM repeats the id in every delta.
    "the id in every delta": chunks_of(
        {"tool_calls": [started(0, "call_a", "get_weather", '{"city": ')]},
        {"tool_calls": [call(0, arguments='"Oslo"}', id="call_a", type="function")]},
    ),
    # A server giving the first delta no index and the next ones one.
    "no index, then an index": chunks_of(
        {"tool_calls": [{"id": "call_a", "type": "function",
                         "function": {"name": "get_weather", "arguments": '{"city": '}}]},
        {"tool_calls": [call(0, arguments='"Oslo"}')]},
    ),
}  # fmt: skip


@pytest.mark.parametrize("chunks", ONE_CALL_SHAPES.values(), ids=ONE_CALL_SHAPES.keys())
def test_the_deltas_of_one_call_stay_one_call_for_every_client(chunks) -> None:
    expected = [("call_a", "get_weather", '{"city": "Oslo"}')]

    _, message = anthropic_stream(chunks)
    _, response = responses_stream(chunks)
    sdk, record = _passed_through(chunks)

    assert [(b.id, b.name, json.dumps(b.input)) for b in message.content] == expected
    assert [(i.call_id, i.name, i.arguments) for i in response.output] == expected
    assert sdk == record == expected
