"""Request parameters the real APIs honour and the simulator must honour too, driven by the
official `openai` and `anthropic` SDKs: structured outputs (`chat.completions.parse`,
`responses.parse`, `messages.parse` with a Pydantic model, JSON mode), `n` choices, output
token limits that cut a reply, and log probabilities."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from enum import Enum
from typing import Literal

import anthropic
import openai
import pytest
from pydantic import BaseModel, Field

from switchyard.simulator.app import REPLY_PREFIX


@pytest.fixture
def client(simulator) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=simulator.openai_url, api_key="sim", max_retries=0) as client:
        yield client


@pytest.fixture
def claude(simulator) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=simulator.root, api_key="sim", max_retries=0) as client:
        yield client


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


class Colour(Enum):
    RED = "red"
    BLUE = "blue"


class Address(BaseModel):
    city: str
    postcode: str | None


class Node(BaseModel):
    label: str
    child: Node | None


class Person(BaseModel):
    name: str = Field(max_length=5)
    age: int = Field(ge=18)
    height: float
    member: bool
    colour: Colour
    kind: Literal["customer"]
    tags: list[str] = Field(min_length=2)
    joined: datetime
    address: Address
    history: list[Address]
    tree: Node


# ------------------------------------------------------------------ structured outputs


def test_chat_completions_parse_gets_an_instance_of_the_pydantic_model(client):
    completion = client.chat.completions.parse(
        model="sim-small", messages=user("Ada Lovelace"), response_format=Person
    )

    person = completion.choices[0].message.parsed
    assert person is not None
    assert person.name == "Ada L"  # the user's words, cut to maxLength
    assert (person.age, person.colour, person.kind) == (18, Colour.RED, "customer")
    assert person.tags == ["Ada Lovelace", "Ada Lovelace"]
    assert person.address.city == "Ada Lovelace"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.completion_tokens == len(completion.choices[0].message.content.split())


def test_a_streamed_structured_output_parses_too(client):
    with client.chat.completions.stream(
        model="sim-small", messages=user("Grace"), response_format=Address
    ) as stream:
        final = stream.get_final_completion()

    assert final.choices[0].message.parsed == Address(city="Grace", postcode="Grace")


def test_json_mode_replies_with_a_json_object(client):
    completion = client.chat.completions.create(
        model="sim-small", messages=user("Hello in JSON"), response_format={"type": "json_object"}
    )
    assert json.loads(completion.choices[0].message.content) == {"text": "Hello in JSON"}


def test_json_mode_without_the_word_json_is_refused_as_openai_refuses_it(client):
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="sim-small", messages=user("Hello"), response_format={"type": "json_object"}
        )
    assert refused.value.body["param"] == "messages"
    assert "must contain the word 'json'" in refused.value.body["message"]
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(
            model="sim-small", input="Hello", text={"format": {"type": "json_object"}}
        )
    assert refused.value.body["param"] == "input"


def test_responses_parse_gets_an_instance_of_the_pydantic_model(client):
    response = client.responses.parse(model="sim-small", input="Ada Lovelace", text_format=Person)

    assert response.status == "completed"
    assert response.output_parsed is not None
    assert response.output_parsed.address.city == "Ada Lovelace"
    assert response.text.format.type == "json_schema"


def test_anthropic_messages_parse_gets_an_instance_of_the_pydantic_model(claude):
    message = claude.messages.parse(
        model="sim-small", max_tokens=1024, messages=user("Ada"), output_format=Address
    )

    assert message.parsed_output == Address(city="Ada", postcode="Ada")
    assert message.stop_reason == "end_turn"


def test_a_format_that_is_not_one_is_refused_naming_the_field(client):
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="sim-small", messages=user("Hi"), response_format={"type": "xml"}
        )
    assert refused.value.body["param"] == "response_format.type"


# ------------------------------------------------------------------ n choices


def test_n_choices_are_returned_and_counted_in_the_usage(client):
    one = client.chat.completions.create(model="sim-small", messages=user("Hello there"))
    three = client.chat.completions.create(model="sim-small", messages=user("Hello there"), n=3)

    assert [choice.index for choice in three.choices] == [0, 1, 2]
    assert {choice.message.content for choice in three.choices} == {REPLY_PREFIX + "Hello there"}
    assert three.usage.completion_tokens == 3 * one.usage.completion_tokens
    assert three.usage.prompt_tokens == one.usage.prompt_tokens


def test_n_choices_are_streamed_each_complete(client):
    stream = client.chat.completions.create(
        model="sim-small",
        messages=user("Hello there"),
        n=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    texts: dict[int, str] = {}
    finished: dict[int, str] = {}
    usage = None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                finished[choice.index] = choice.finish_reason

    assert texts == {0: REPLY_PREFIX + "Hello there", 1: REPLY_PREFIX + "Hello there"}
    assert finished == {0: "stop", 1: "stop"}
    assert usage is not None and usage.completion_tokens == 10


def test_n_out_of_range_is_refused(client):
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="sim-small", messages=user("Hi"), n=0)
    assert refused.value.body["param"] == "n"


# ------------------------------------------------------------------ output token limits


@pytest.mark.parametrize("limit", ["max_tokens", "max_completion_tokens"])
def test_a_chat_token_limit_cuts_the_reply_and_finishes_with_length(client, limit):
    completion = client.chat.completions.create(
        model="sim-small", messages=user("one two three four five"), **{limit: 3}
    )

    assert completion.choices[0].message.content == "Simulated reply to:"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 3

    whole = client.chat.completions.create(
        model="sim-small", messages=user("one two three four five"), **{limit: 8}
    )
    assert whole.choices[0].message.content == REPLY_PREFIX + "one two three four five"
    assert whole.choices[0].finish_reason == "stop"


def test_a_streamed_chat_reply_is_cut_too(client):
    stream = client.chat.completions.create(
        model="sim-small", messages=user("one two three"), max_tokens=4, stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Simulated reply to: one"
    assert chunks[-1].choices[0].finish_reason == "length"


def test_a_cut_structured_output_is_reported_by_the_sdk_as_too_long(client):
    with pytest.raises(openai.LengthFinishReasonError):
        client.chat.completions.parse(
            model="sim-small", messages=user("Ada"), response_format=Person, max_tokens=2
        )


def test_anthropic_max_tokens_cuts_the_reply_and_stops_with_max_tokens(claude):
    message = claude.messages.create(
        model="sim-small", max_tokens=3, messages=user("one two three")
    )
    assert message.content[0].text == "Simulated reply to:"
    assert (message.stop_reason, message.stop_sequence) == ("max_tokens", None)
    assert message.usage.output_tokens == 3

    with claude.messages.stream(
        model="sim-small", max_tokens=4, messages=user("one two three")
    ) as stream:
        final = stream.get_final_message()
    assert final.content[0].text == "Simulated reply to: one"
    assert final.stop_reason == "max_tokens"


# ------------------------------------------------------------------ log probabilities


def test_logprobs_give_one_entry_per_token_with_the_top_alternatives(client):
    completion = client.chat.completions.create(
        model="sim-small", messages=user("Hello there"), logprobs=True, top_logprobs=2
    )

    choice = completion.choices[0]
    entries = choice.logprobs.content
    assert "".join(entry.token for entry in entries) == choice.message.content
    assert len(entries) == completion.usage.completion_tokens
    for entry in entries:
        assert bytes(entry.bytes).decode() == entry.token
        assert entry.logprob <= 0
        assert [top.token for top in entry.top_logprobs][0] == entry.token
        assert len(entry.top_logprobs) == 2
        assert entry.top_logprobs[1].logprob < entry.logprob


def test_streamed_logprobs_follow_the_streamed_text(client):
    stream = client.chat.completions.create(
        model="sim-small", messages=user("Hello there"), logprobs=True, stream=True
    )
    text, tokens = "", ""
    for chunk in stream:
        choice = chunk.choices[0]
        text += choice.delta.content or ""
        entries = choice.logprobs.content or [] if choice.logprobs else []
        tokens += "".join(entry.token for entry in entries)
        assert all(entry.top_logprobs == [] for entry in entries)
    assert tokens == text == REPLY_PREFIX + "Hello there"


def test_without_logprobs_there_are_none_and_top_logprobs_alone_is_refused(client):
    completion = client.chat.completions.create(model="sim-small", messages=user("Hi"))
    assert completion.choices[0].logprobs is None

    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="sim-small", messages=user("Hi"), top_logprobs=2)
    assert refused.value.body["param"] == "top_logprobs"


# ------------------------------------------------------------------ embeddings


def test_embeddings_of_several_token_id_arrays_get_one_vector_each(client):
    result = client.embeddings.create(
        model="sim-embed", input=[[1, 2, 3], [4, 5]], dimensions=4, encoding_format="float"
    )

    assert [(item.index, len(item.embedding)) for item in result.data] == [(0, 4), (1, 4)]
    assert result.data[0].embedding != result.data[1].embedding
    assert result.usage.prompt_tokens == 5


@pytest.mark.parametrize(
    ("input_", "user_", "param"),
    [
        ("", None, "input"),
        (["a", ""], None, "input"),
        (["a"] * 2049, None, "input"),
        ("a", 5, "user"),
    ],
    ids=["empty-string", "empty-item", "too-many", "user-not-a-string"],
)
def test_embeddings_refuse_what_openai_refuses(client, input_, user_, param):
    extra = {} if user_ is None else {"user": user_}
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model="sim-embed", input=input_, extra_body=extra)
    assert refused.value.body["param"] == param


def test_embeddings_take_2048_inputs_and_a_user(client):
    result = client.embeddings.create(model="sim-embed", input=["a"] * 2048, user="u1")
    assert len(result.data) == 2048
