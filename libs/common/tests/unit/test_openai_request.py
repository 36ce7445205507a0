"""`openai_request` finds the first tool call of a conversation that OpenAI refuses as
unanswered, or answer without its call, in Chat Completions and Responses. Pure functions:
no network."""

from __future__ import annotations

from switchyard.common.openai_request import (
    ToolMessageFault,
    function_call_fault,
    tool_message_fault,
)

USER = {"role": "user", "content": "hi"}
ASKED = {"role": "assistant", "tool_calls": [{"id": "a"}, {"id": "b"}]}


def tool(call_id: str) -> dict:
    return {"role": "tool", "tool_call_id": call_id, "content": "ok"}


def test_parallel_calls_each_answered_are_taken() -> None:
    assert tool_message_fault([USER, ASKED, tool("b"), tool("a"), USER]) is None


def test_a_call_left_unanswered_names_the_assistant_message() -> None:
    fault = tool_message_fault([USER, ASKED, tool("a"), USER])
    assert fault is not None
    assert (fault.index, fault.field) == (1, "role")
    assert fault.message.endswith("did not have response messages: b")


def test_a_tool_message_without_its_call_names_itself() -> None:
    assert tool_message_fault([USER, tool("a")]) == ToolMessageFault(
        "Invalid parameter: messages with role 'tool' must be a response to a preceeding "
        "message with 'tool_calls'.",
        1,
        "role",
    )
    fault = tool_message_fault([USER, ASKED, tool("a"), tool("c")])
    assert fault is not None and (fault.index, fault.field) == (3, "tool_call_id")


def test_responses_calls_and_outputs_pair_in_order() -> None:
    call = {"type": "function_call", "call_id": "c"}
    output = {"type": "function_call_output", "call_id": "c"}
    assert function_call_fault([USER, call, USER, output]) is None
    assert function_call_fault([USER, call]) == "No tool output found for function call c."
    assert function_call_fault([output, call]) == (
        "No tool call found for function call output with call_id c."
    )
    # Shapes judged elsewhere are skipped, never a crash.
    assert function_call_fault([5, {"type": "function_call", "call_id": 5}]) is None
