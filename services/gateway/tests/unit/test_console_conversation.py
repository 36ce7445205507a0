"""How the request log turns stored bodies and replies of every client API into text:
OpenAI Chat Completions (tool calls, tool results, content parts), Anthropic Messages
(system blocks, thinking, tool_use and tool_result blocks, images), embeddings."""

from __future__ import annotations

from switchyard.gateway.console.conversation import (
    declared_tools,
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
