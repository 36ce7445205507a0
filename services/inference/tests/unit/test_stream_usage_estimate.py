"""A translated stream whose upstream reports no usage (a server that ignores
`stream_options.include_usage`): the client is told the estimate it is billed by, never
0 tokens. An Anthropic client's `message_delta.usage` said 0 in and 0 out (Claude Code
tracks its context by it) while the usage record billed an estimate; a Responses
client's `response.completed` did the same. A whole (not streamed) reply without usage
was billed 0 tokens: it is billed the same kind of estimate, and a translated one tells
its client so."""

from __future__ import annotations

import math
from typing import Any

import pytest

from switchyard.common.events import ChatCompleted, ClientAPI
from switchyard.common.routing import Deployment
from switchyard.inference.testing import Scripted, chat_request
from switchyard.inference.usage import estimate_prompt_tokens

from .test_translate import openai_chunk

PROMPT = "What is the weather in Paris today? " * 20


def _upstream(*, usage: bool) -> list[tuple[str | None, Any]]:
    chunks = [
        openai_chunk({"role": "assistant", "content": ""}),
        *(openai_chunk({"content": piece}) for piece in ("Sunny", " and", " mild", ".")),
        openai_chunk({}, "stop"),
    ]
    if usage:
        chunks.append(
            openai_chunk(
                None, usage={"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}
            )
        )
    return [(None, chunk) for chunk in chunks] + [(None, "[DONE]")]


def _deployment(recorder) -> Deployment:
    return Deployment(name="gpt", provider="openai", model="gpt-x", base_url=f"{recorder.root}/v1")


BODIES = {
    ClientAPI.ANTHROPIC_MESSAGES: {
        "model": "m",
        "max_tokens": 100,
        "stream": True,
        "messages": [{"role": "user", "content": PROMPT}],
    },
    ClientAPI.OPENAI_RESPONSES: {"model": "m", "stream": True, "input": PROMPT},
}


def _told(api: ClientAPI, events) -> dict[str, Any]:
    """The usage the client's stream ends with, as input and output tokens."""
    if api is ClientAPI.ANTHROPIC_MESSAGES:
        (delta,) = [e.data for e in events if e.event == "message_delta"]
        usage = delta["usage"]
        return {"input": usage["input_tokens"], "output": usage["output_tokens"]}
    (done,) = [e.data for e in events if e.event == "response.completed"]
    usage = done["response"]["usage"]
    return {"input": usage["input_tokens"], "output": usage["output_tokens"]}


@pytest.mark.parametrize("api", list(BODIES), ids=["messages", "responses"])
async def test_a_stream_without_usage_tells_the_client_the_estimate_it_is_billed(
    recorder, serve, api
):
    recorder.script(Scripted(events=_upstream(usage=False)))
    harness = await serve(_deployment(recorder))
    request = chat_request("m", api=api, body=BODIES[api], stream=True)

    reply = await harness.handle(request)

    assert isinstance(reply, ChatCompleted), reply
    told = _told(api, harness.stream_of(request.request_id))
    billed = (await harness.usage_of(request.request_id)).data.usage
    assert told == {"input": billed.input_tokens, "output": billed.output_tokens}
    assert told["input"] == estimate_prompt_tokens(BODIES[api]) > 100
    assert told["output"] >= 4  # a token for each piece of text at least
    assert reply.data.usage.output_tokens == told["output"]


@pytest.mark.parametrize("api", list(BODIES), ids=["messages", "responses"])
async def test_the_estimate_counts_the_text_of_long_deltas(recorder, serve, api):
    """A server whose deltas each carry many tokens (Gemini's, vLLM's batched ones): the
    estimate is the text's (4 characters a token), not a token a delta."""
    pieces = ["Sunny and mild all day, with a light breeze from the west. " * 4] * 3
    chunks = [
        openai_chunk({"role": "assistant", "content": ""}),
        *(openai_chunk({"content": piece}) for piece in pieces),
        openai_chunk({}, "stop"),
    ]
    recorder.script(Scripted(events=[(None, chunk) for chunk in chunks] + [(None, "[DONE]")]))
    harness = await serve(_deployment(recorder))
    request = chat_request("m", api=api, body=BODIES[api], stream=True)

    await harness.handle(request)

    told = _told(api, harness.stream_of(request.request_id))
    assert told["output"] == math.ceil(len("".join(pieces)) / 4) == 177
    billed = (await harness.usage_of(request.request_id)).data.usage
    assert billed.output_tokens == told["output"]


@pytest.mark.parametrize("api", list(BODIES), ids=["messages", "responses"])
async def test_a_stream_with_usage_tells_what_the_upstream_reported(recorder, serve, api):
    recorder.script(Scripted(events=_upstream(usage=True)))
    harness = await serve(_deployment(recorder))
    request = chat_request("m", api=api, body=BODIES[api], stream=True)

    await harness.handle(request)

    assert _told(api, harness.stream_of(request.request_id)) == {"input": 7, "output": 4}
    billed = (await harness.usage_of(request.request_id)).data.usage
    assert (billed.input_tokens, billed.output_tokens) == (7, 4)


COMPLETION_WITHOUT_USAGE = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-x",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Sunny and mild, about 21 degrees."},
            "finish_reason": "stop",
        }
    ],
}

WHOLE_BODIES = {
    ClientAPI.ANTHROPIC_MESSAGES: {
        "model": "m",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": PROMPT}],
    },
    ClientAPI.OPENAI_RESPONSES: {"model": "m", "input": PROMPT},
    ClientAPI.OPENAI_CHAT_COMPLETIONS: {
        "model": "m",
        "messages": [{"role": "user", "content": PROMPT}],
    },
}


@pytest.mark.parametrize(
    "api", list(WHOLE_BODIES), ids=["messages", "responses", "chat (relayed as sent)"]
)
async def test_a_whole_reply_without_usage_is_billed_an_estimate_not_nothing(recorder, serve, api):
    recorder.script(Scripted(json=dict(COMPLETION_WITHOUT_USAGE)))
    harness = await serve(_deployment(recorder))
    request = chat_request("m", api=api, body=WHOLE_BODIES[api])

    reply = await harness.handle(request)

    assert isinstance(reply, ChatCompleted), reply
    billed = (await harness.usage_of(request.request_id)).data.usage
    assert billed.input_tokens == estimate_prompt_tokens(WHOLE_BODIES[api]) > 100
    assert billed.output_tokens == 9  # 33 characters of text, 4 a token
    assert reply.data.usage == billed
    usage = reply.data.response.get("usage")
    if api is ClientAPI.ANTHROPIC_MESSAGES:
        # A translated reply tells its client the estimate it is billed by.
        assert (usage["input_tokens"], usage["output_tokens"]) == (
            billed.input_tokens,
            billed.output_tokens,
        )
    elif api is ClientAPI.OPENAI_RESPONSES:
        assert (usage["input_tokens"], usage["output_tokens"], usage["total_tokens"]) == (
            billed.input_tokens,
            billed.output_tokens,
            billed.input_tokens + billed.output_tokens,
        )
    else:
        assert usage is None  # a relayed reply stays as the upstream sent it


async def test_a_whole_reply_with_usage_is_billed_what_the_upstream_reported(recorder, serve):
    usage = {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}
    recorder.script(Scripted(json={**COMPLETION_WITHOUT_USAGE, "usage": usage}))
    harness = await serve(_deployment(recorder))
    body = WHOLE_BODIES[ClientAPI.ANTHROPIC_MESSAGES]
    request = chat_request("m", api=ClientAPI.ANTHROPIC_MESSAGES, body=body)

    reply = await harness.handle(request)

    assert isinstance(reply, ChatCompleted), reply
    told = reply.data.response["usage"]
    assert (told["input_tokens"], told["output_tokens"]) == (7, 4)
    billed = (await harness.usage_of(request.request_id)).data.usage
    assert (billed.input_tokens, billed.output_tokens) == (7, 4)


def _open_item_events(api: ClientAPI, pieces: list[str]) -> list[dict[str, Any]]:
    """The client events of a stream cut while its one item is still open: every piece a
    content delta, no item or stream end."""
    if api is ClientAPI.OPENAI_RESPONSES:
        return [
            {"type": "response.output_text.delta", "item_id": "m", "output_index": 0, "delta": p}
            for p in pieces
        ]
    if api is ClientAPI.ANTHROPIC_MESSAGES:
        start = {
            "type": "message_start",
            "message": {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "content": [],
                "usage": {"input_tokens": 9, "output_tokens": 1},
            },
        }
        block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text"}}
        return [start, block] + [
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}
            for p in pieces
        ]
    return [
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}],
        }
        for p in pieces
    ]


@pytest.mark.parametrize(
    "api",
    [ClientAPI.OPENAI_RESPONSES, ClientAPI.ANTHROPIC_MESSAGES, ClientAPI.OPENAI_CHAT_COMPLETIONS],
    ids=["responses", "messages", "chat"],
)
def test_a_stream_cut_while_its_item_is_open_is_billed_the_text_streamed(api) -> None:
    """Cut (the client gone) after 30 deltas of 40 characters, before the item ended: the
    output billed is the text's 300 tokens, whatever the accumulated reply holds yet (a
    Responses item counts only once done) and whatever the upstream said so far (an
    Anthropic `message_start` says 1)."""
    from switchyard.inference.runs import RequestRun
    from switchyard.inference.translate import CompletionAccumulator, MessageAccumulator
    from switchyard.inference.translate_responses import ResponseAccumulator

    run = RequestRun(chat_request("m", api=api, body=BODIES.get(api, {"model": "m"})))
    run.accumulator = {
        ClientAPI.OPENAI_RESPONSES: ResponseAccumulator,
        ClientAPI.ANTHROPIC_MESSAGES: MessageAccumulator,
        ClientAPI.OPENAI_CHAT_COMPLETIONS: CompletionAccumulator,
    }[api]()
    run.calling = True
    for event in _open_item_events(api, ["x" * 40] * 30):
        run.accumulator.add(event)

    assert run.in_flight_usage().output_tokens == 300


@pytest.mark.parametrize(
    "api",
    [ClientAPI.ANTHROPIC_COUNT_TOKENS, ClientAPI.OPENAI_RESPONSES_INPUT_TOKENS],
    ids=["count_tokens", "input_tokens"],
)
def test_a_token_count_cut_short_bills_nothing(api) -> None:
    """A token count is free (budgets reserve nothing for it): one cut short (the client
    gone, the deadline) was billed its prompt's estimate in history, priced, without the
    budget ever seeing it."""
    from switchyard.inference.runs import RequestRun

    body = {"model": "m", "messages": [{"role": "user", "content": "x" * 400_000}]}
    run = RequestRun(chat_request("m", api=api, body=body))
    run.calling = True

    assert run.in_flight_usage().total_tokens == 0
    billed = RequestRun(chat_request("m", api=ClientAPI.ANTHROPIC_MESSAGES, body=body))
    billed.calling = True
    assert billed.in_flight_usage().input_tokens > 0


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m", "messages": [{"role": "user", "content": " " * 400_000 + "hi"}]},
        {"model": "m", "input": "\n" * 400_000 + "hi"},
        {"model": "m", "input": ["\t " * 200_000 + "hi"]},
    ],
    ids=["messages", "responses", "input-list"],
)
def test_white_space_padding_is_not_estimated_as_words(body) -> None:
    """A prompt padded with white space, cut short before the upstream reported usage, is
    billed about what a tokenizer counts (a run of white space is a token or a few), not a
    token per 4 characters: 400,000 spaces were billed as 100,000 tokens where the
    gateway reserved about 3,000."""
    from switchyard.inference.usage import estimate_prompt_tokens

    assert estimate_prompt_tokens(body) < 20
    # Text without such runs is estimated as before.
    words = {"model": "m", "input": "word " * 1000}
    assert estimate_prompt_tokens(words) == 1250
