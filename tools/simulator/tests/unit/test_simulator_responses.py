"""The simulator's `/v1/responses`, driven by the official `openai` SDK as a client of
OpenAI itself would drive it: JSON and streamed responses the SDK's own stream reader
accepts, function calls and their outputs, reasoning summaries, `max_output_tokens`
cutting a reply short, log probabilities asked for with `include`, mid-stream failures, and
no state kept between calls."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from switchyard.simulator.app import REPLY_PREFIX

TOOL = {
    "type": "function",
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
}


@pytest.fixture
def client(simulator) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=simulator.openai_url, api_key="sim", max_retries=0) as client:
        yield client


def test_a_response_answers_the_last_user_message(client, simulator):
    response = client.responses.create(
        model="sim-small",
        instructions="Be brief.",
        input=[
            {"role": "user", "content": "First question"},
            {"role": "assistant", "content": "First answer"},
            {"role": "user", "content": [{"type": "input_text", "text": "Second question"}]},
        ],
    )

    assert response.status == "completed"
    assert response.output_text == REPLY_PREFIX + "Second question"
    assert response.id.startswith("resp_")
    assert response.usage.input_tokens == 8  # words of every input item and instructions
    assert response.usage.output_tokens == 5
    assert simulator.stats()["routes"]["/v1/responses"] == 1


def test_a_streamed_response_is_the_complete_typed_event_sequence(client):
    with client.responses.stream(
        model="sim-small", input="Stream it", reasoning={"effort": "low", "summary": "auto"}
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()

    assert [event.sequence_number for event in events] == list(range(len(events)))
    kinds = [event.type for event in events]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert "response.reasoning_summary_text.delta" in kinds
    assert kinds[-1] == "response.completed"
    assert final.output_text == REPLY_PREFIX + "Stream it"
    assert final.output[0].type == "reasoning"
    assert final.usage.output_tokens_details.reasoning_tokens == 8


def test_logprobs_asked_for_come_with_each_streamed_text_event_and_the_final_text(client):
    with client.responses.stream(
        model="sim-small",
        input="Weigh every word",
        include=["message.output_text.logprobs"],
        top_logprobs=3,
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()

    deltas = [event for event in events if event.type == "response.output_text.delta"]
    assert deltas
    for delta in deltas:
        assert "".join(logprob.token for logprob in delta.logprobs) == delta.delta
        assert all(len(logprob.top_logprobs) == 3 for logprob in delta.logprobs)
    (done,) = [event for event in events if event.type == "response.output_text.done"]
    assert [p.token for p in done.logprobs] == [p.token for d in deltas for p in d.logprobs]
    text = final.output[0].content[0]
    assert "".join(logprob.token for logprob in text.logprobs) == text.text
    assert [p.logprob for p in text.logprobs] == [p.logprob for p in done.logprobs]


def test_a_function_call_and_its_output(client):
    asked = client.responses.create(
        model="sim-small", input="What is the weather in Oslo?", tools=[TOOL]
    )
    call = asked.output[0]
    assert (call.type, call.name, call.arguments) == (
        "function_call",
        "get_weather",
        '{"location":"Oslo"}',
    )

    answered = client.responses.create(
        model="sim-small",
        tools=[TOOL],
        input=[
            {"role": "user", "content": "What is the weather in Oslo?"},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "-3C"},
        ],
    )
    assert answered.output_text == REPLY_PREFIX + "-3C"


def test_max_output_tokens_cuts_the_reply_and_the_response_is_incomplete(client):
    response = client.responses.create(
        model="sim-small",
        input="one two three four five six seven eight nine ten eleven twelve thirteen fourteen",
        max_output_tokens=16,
    )
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 16


def test_the_simulator_keeps_no_state(client):
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(
            model="sim-small", input="continue", previous_response_id="resp_123"
        )
    assert refused.value.body["param"] == "previous_response_id"


def test_invalid_items_are_refused_naming_the_field(client):
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(
            model="sim-small", input=[{"type": "function_call_output", "output": "x"}]
        )
    assert refused.value.body["param"] == "input[0].call_id"
    assert refused.value.body["code"] == "missing_required_parameter"


def test_a_failure_mid_stream_is_a_response_failed_event(client, simulator):
    simulator.fault(stream_error_after=4, error_type="server_error")

    stream = client.responses.create(model="sim-small", input="Fail midway", stream=True)
    events = list(stream)

    assert [event.type for event in events][-1] == "response.failed"
    assert events[-1].response.error.code == "server_error"
    assert len(events) == 5
