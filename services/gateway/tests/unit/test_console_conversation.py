"""How the request log turns stored bodies and replies of every client API into text:
OpenAI Chat Completions (tool calls, tool results, content parts), Anthropic Messages
(system blocks, thinking, tool_use and tool_result blocks, images), embeddings; and that
a body or reply of any other shape renders too, as its JSON text."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switchyard.gateway.console.conversation import (
    Turn,
    declared_tools,
    finish_reasons,
    parameters,
    request_turns,
    response_turns,
)


def kinds(turns):
    return [(turn.role, [part.kind for part in turn.parts]) for turn in turns]


def test_an_openai_conversation_with_tool_calls_and_results():
    body = {
        "model": "gpt",
        "temperature": 0.3,
        "tools": [{"type": "function", "function": {"name": "lookup"}}],
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Find it"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": '{"q": "it"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "found"},
        ],
    }
    turns = request_turns(body)
    assert kinds(turns) == [
        ("system", ["text"]),
        ("user", ["text", "image"]),
        ("assistant", ["tool_call"]),
        ("tool", ["tool_result"]),
    ]
    call = turns[2].parts[0]
    assert (call.name, call.ref) == ("lookup", "c1") and '"q": "it"' in call.text
    assert turns[1].parts[1].text == "data:image/png;base64,…"  # never the whole image
    assert turns[3].parts[0].text == "found" and turns[3].parts[0].ref == "c1"
    assert declared_tools(body) == ["lookup"]
    assert parameters(body) == {"temperature": 0.3}


def test_an_anthropic_conversation_with_system_blocks_thinking_and_tools():
    body = {
        "system": [
            {"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}
        ],
        "tools": [{"name": "search", "input_schema": {}}],
        "messages": [
            {"role": "user", "content": "Search"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "I should search.", "signature": "sig"},
                    {"type": "tool_use", "id": "t1", "name": "search", "input": {"q": "x"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "content": [{"type": "text", "text": "hit"}],
                    }
                ],
            },
        ],
    }
    turns = request_turns(body)
    assert kinds(turns) == [
        ("system", ["text"]),
        ("user", ["text"]),
        ("assistant", ["thinking", "tool_call"]),
        ("user", ["tool_result"]),
    ]
    assert turns[3].parts[0].text == "hit" and declared_tools(body) == ["search"]
    reply = {"type": "message", "role": "assistant", "content": [{"type": "text", "text": "Done"}]}
    assert kinds(response_turns(reply)) == [("assistant", ["text"])]


def test_replies_of_chat_completions_and_embeddings_and_unknown_blocks():
    chat = {"choices": [{"message": {"role": "assistant", "content": "Hi", "refusal": None}}]}
    assert [part.text for part in response_turns(chat)[0].parts] == ["Hi"]
    assert response_turns({"object": "list", "data": [{}, {}]})[0].parts[0].text == "2 vectors"
    assert request_turns({"input": ["a", "b"]})[0].role == "input"
    odd = request_turns({"messages": [{"role": "user", "content": [{"type": "video", "x": 1}]}]})
    assert odd[0].parts[0].kind == "other" and '"video"' in odd[0].parts[0].text
    assert request_turns(None) == [] and response_turns(None) == []


# ---------------------------------------------------------------- bodies of odd shapes

ODD_VALUES = [5, 1.5, True, None, "x", [], {}, [5], ["x"], {"a": 1}, [{"function": "x"}]]


def rendered(body, reply=None) -> None:
    """Everything the request page reads from a body and a reply, as the page does."""
    for turn in [*request_turns(body), *response_turns(reply)]:
        assert isinstance(turn.role, str)
        for part in turn.parts:
            assert isinstance(part.text, str)
    assert all(isinstance(name, str) for name in declared_tools(body))
    assert isinstance(parameters(body), dict)
    assert all(isinstance(reason, str) for reason in finish_reasons(reply))


@pytest.mark.parametrize(
    "body",
    [
        {"messages": [{"role": "assistant", "tool_calls": 5}]},
        {"messages": [{"role": "assistant", "tool_calls": [{"function": "x"}]}]},
        {"messages": [{"role": "assistant", "tool_calls": ["x", 5, {"id": "c"}]}]},
        {"messages": [{"role": "assistant", "function_call": "x"}]},
        {"messages": [{"role": {"nested": True}, "content": 5}]},
        {"messages": 5},
        {"messages": {"role": "user"}},
        {"tools": 5},
        {"tools": "x"},
        {"tools": [5, {"function": "x"}, {"name": 5}]},
        {"messages": [{"role": "user", "content": [{"type": "document", "source": "abc"}]}]},
        {"messages": [{"role": "user", "content": [{"type": "document", "source": 5}]}]},
        {"messages": [{"role": "user", "content": [{"type": "image", "source": "abc"}]}]},
        {"messages": [{"role": "user", "content": [{"type": "image", "source": 5}]}]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": [1]}]}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": {"a": 1}}]}]},
        {"messages": [{"role": "user", "content": [{"type": "tool_result", "content": 5}]}]},
        {"system": 5, "input": {"a": 1}},
        [1, 2],
        "a string body",
    ],
)
def test_a_body_of_an_unexpected_shape_renders_as_json_text(body):
    rendered(body)


def test_unknown_shapes_are_shown_as_their_json_text():
    turns = request_turns({"messages": [{"role": "assistant", "tool_calls": 5}]})
    assert [(part.kind, part.text) for part in turns[0].parts] == [("other", "5")]
    bad_call = request_turns(
        {"messages": [{"role": "assistant", "tool_calls": [{"function": "x"}]}]}
    )
    assert bad_call[0].parts[0].kind == "other" and '"function": "x"' in bad_call[0].parts[0].text
    document = request_turns(
        {"messages": [{"role": "user", "content": [{"type": "document", "source": "abc"}]}]}
    )
    assert document[0].parts[0].text == "document: abc"
    assert declared_tools({"tools": 5}) == ["5"]
    assert response_turns({"type": "message"}) == [Turn("assistant", [])]
    assert kinds(response_turns({"choices": [5]})) == [("unknown", ["other"])]


@pytest.mark.parametrize(
    "reply",
    [
        {"choices": 5},
        {"choices": [5, {"message": 5}, {"message": {"tool_calls": 5}}]},
        {"type": "message"},
        {"type": "message", "content": 5, "role": 5},
        {"content": [{"type": "document", "source": "abc"}]},
        {"data": 5},
        [1],
    ],
)
def test_a_reply_of_an_unexpected_shape_renders(reply):
    rendered({}, reply)


# Any JSON value: what a stored body or reply may hold, at any depth.
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "type",
                    "role",
                    "content",
                    "text",
                    "thinking",
                    "source",
                    "image_url",
                    "url",
                    "media_type",
                    "title",
                    "input",
                    "name",
                    "id",
                    "tool_calls",
                    "function",
                    "arguments",
                    "function_call",
                    "refusal",
                    "tool_call_id",
                    "tool_use_id",
                    "messages",
                    "system",
                    "tools",
                    "choices",
                    "message",
                    "data",
                ]
            )
            | st.text(max_size=4),
            children,
            max_size=5,
        )
    ),
    max_leaves=30,
)
BLOCK_TYPES = st.sampled_from(
    [
        "text",
        "input_text",
        "output_text",
        "thinking",
        "redacted_thinking",
        "image_url",
        "image",
        "input_image",
        "document",
        "tool_use",
        "server_tool_use",
        "tool_result",
        "message",
    ]
)
# A content block of a known type with fields of any shape.
BLOCK = st.builds(
    lambda kind, rest: {**rest, "type": kind},
    BLOCK_TYPES,
    st.dictionaries(
        st.sampled_from(["text", "thinking", "source", "image_url", "title", "input", "content"]),
        JSON,
        max_size=3,
    ),
)
MESSAGE = st.dictionaries(
    st.sampled_from(["role", "content", "tool_calls", "function_call", "refusal"]),
    JSON | st.lists(BLOCK, max_size=3),
    max_size=5,
)


@settings(max_examples=300, deadline=None)
@given(
    body=st.dictionaries(
        st.sampled_from(["messages", "system", "tools", "input", "temperature"]),
        JSON | st.lists(MESSAGE | JSON, max_size=3) | st.lists(BLOCK, max_size=3),
        max_size=4,
    )
    | JSON,
    reply=st.dictionaries(
        st.sampled_from(["type", "role", "content", "choices", "data"]),
        JSON | st.lists(st.fixed_dictionaries({"message": MESSAGE}) | JSON, max_size=3),
        max_size=4,
    )
    | JSON,
)
def test_any_json_body_and_reply_render(body, reply):
    rendered(body, reply)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ({"choices": [{"finish_reason": "stop"}, {"finish_reason": "length"}]}, ["stop", "length"]),
        ({"stop_reason": "end_turn"}, ["end_turn"]),
        ({"choices": 5}, []),
        ({"choices": [5, {"finish_reason": {"x": 1}}]}, ['{\n  "x": 1\n}']),
        ({"stop_reason": 7}, ["7"]),
        ("a reply that is text", []),
    ],
)
def test_finish_reasons_of_any_reply(reply, expected):
    assert finish_reasons(reply) == expected


def test_a_huge_conversation_is_shown_cut_with_what_was_left_out():
    """A stored request may be tens of MB: the page shows a bounded part of it."""
    from switchyard.gateway.console.conversation import request_turns, shown
    from switchyard.gateway.console.views import MAX_JSON_CHARS, json_text

    body = {
        "messages": [{"role": "user", "content": "x" * 1_000_000}]
        + [{"role": "assistant", "content": "y" * 10_000} for _ in range(500)]
    }
    turns = shown(request_turns(body))
    text = sum(len(part.text) for turn in turns for part in turn.parts)
    assert text < 250_000
    assert "980,000 more characters not shown here" in turns[0].parts[0].text
    assert turns[-1].role == "…" and "more turn(s) not shown here" in turns[-1].parts[0].text
    raw = json_text(body)
    assert len(raw) < MAX_JSON_CHARS + 200 and "more characters not shown here" in raw
    small = {"messages": [{"role": "user", "content": "hi"}]}
    assert shown(request_turns(small)) == request_turns(small)
    assert "not shown" not in json_text(small)


def test_indented_json_is_written_by_orjson_and_falls_back_for_what_it_refuses():
    import json

    from switchyard.gateway.console.views import indented_json

    value = {"a": [1, 2.5, None, True], "b": {"c": "é"}, "d": [], "e": {}}
    assert indented_json(value) == json.dumps(value, indent=2, ensure_ascii=False)
    huge = {"n": 123456789012345678901234567890}  # beyond 64 bits: Python's json
    assert indented_json(huge) == json.dumps(huge, indent=2)
    deep: object = 1
    for _ in range(300):  # beyond orjson's 254 levels
        deep = [deep]
    assert indented_json(deep) == json.dumps(deep, indent=2)


def test_long_tool_arguments_are_shown_as_written_not_read(monkeypatch):
    from switchyard.gateway.console import conversation

    def never(_: str) -> None:
        raise AssertionError("read")

    arguments = '{"k": "' + "v" * conversation.INDENTED_CHARS + '"}'
    monkeypatch.setattr(conversation.json, "loads", never)
    body = {
        "messages": [
            {
                "role": "assistant",
                "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": arguments}}],
            }
        ]
    }
    [turn] = request_turns(body)
    assert turn.parts[0].text == arguments


def test_a_request_of_many_short_messages_builds_only_the_turns_shown():
    """330,000 messages of two characters each took 3 to 5 s of the event loop to build
    and render: only `MAX_SHOWN_TURNS` are built, and a last turn counts the rest."""
    from switchyard.gateway.console import conversation

    body = {"system": "s", "messages": [{"role": "user", "content": "hi"}] * 330_000}
    built = 0

    def counted():
        nonlocal built
        for turn in conversation.iter_request_turns(body):
            built += 1
            yield turn

    count = conversation.request_turn_count(body)
    assert count == len(conversation.request_turns(body)) == 330_001
    turns = conversation.shown(counted(), count=count)
    assert len(turns) == conversation.MAX_SHOWN_TURNS + 1
    assert built == conversation.MAX_SHOWN_TURNS + 1  # the one that found the bound
    assert turns[-1].parts[0].text == "329,501 more turn(s) not shown here"
    assert [turn.role for turn in turns[:2]] == ["system", "user"]


def test_a_turn_of_many_parts_and_a_request_of_many_tools_are_cut():
    from switchyard.gateway.console import conversation

    reply = {
        "type": "message",
        "role": "assistant",
        "content": [{"type": "text", "text": "a"}] * 50_000,
    }
    [turn] = conversation.shown(conversation.response_turns(reply))
    assert len(turn.parts) == conversation.MAX_SHOWN_PARTS + 1
    assert turn.parts[-1].text == "49,500 more part(s) not shown here"
    tools = [{"type": "function", "function": {"name": f"t{n}"}} for n in range(48_000)]
    names = conversation.declared_tools({"tools": tools})
    assert names[0] == "t0" and len(names) == conversation.MAX_SHOWN_TOOLS + 1
    assert names[-1] == "… 47,500 more"
    for count in (0, 1, 2):
        body = {"input": ["x"] * count} if count else {"input": "x"}
        assert conversation.request_turn_count(body) == len(conversation.request_turns(body))
