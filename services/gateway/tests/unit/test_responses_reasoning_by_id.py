"""Claude's thinking sent back to it through the Responses API: a reasoning item Switchyard
made from a thinking block goes back with its signature (`encrypted_content`) whether the
client sends it whole or, as clients of a stored conversation do (LangChain), by its id
alone, which the gateway completes from the stored response (`resolve_item_references`);
one that cannot be found is OpenAI's 404, never dropped unsaid. The real gateway,
inference, simulator (`sim-claude` over Anthropic's protocol, which refuses a tool loop's
thinking without its signature) and history, as in `test_responses_api`."""

from __future__ import annotations

from typing import Any

import pytest

from switchyard.common.responses import ENCRYPTED_REASONING, parse_response_id

from .test_responses_api import WEATHER_TOOL, auth_headers, error_of, post, system

__all__ = ["system"]  # the fixture, used by name

REASONING = {"effort": "low", "summary": "auto"}
QUESTION = {"role": "user", "content": "What is the weather in Paris?"}


async def ask(system, **extra: Any) -> dict[str, Any]:
    """The first turn of the tool loop: Claude thinks, then calls `get_weather`; the
    thinking's signature is asked for (`include`) unless `extra` says otherwise."""
    body = {
        "model": "sim-claude",
        "input": [QUESTION],
        "tools": [WEATHER_TOOL],
        "reasoning": REASONING,
        "include": [ENCRYPTED_REASONING],
        **extra,
    }
    answer = await post(system, body)
    assert answer.status_code == 200, answer.text
    first = answer.json()
    assert [item["type"] for item in first["output"]] == ["reasoning", "function_call"]
    if ENCRYPTED_REASONING in body["include"]:
        assert first["output"][0]["encrypted_content"]
    else:
        assert "encrypted_content" not in first["output"][0]
    return first


def by_id(reasoning: dict[str, Any]) -> dict[str, Any]:
    """A reasoning item as LangChain sends it back: its id and summary only."""
    return {"type": "reasoning", "id": reasoning["id"], "summary": reasoning["summary"]}


def continuation(first: dict[str, Any], reasoning: dict[str, Any], **extra: Any) -> dict:
    call = first["output"][1]
    return {
        "model": "sim-claude",
        "input": [
            QUESTION,
            reasoning,
            {k: call[k] for k in ("type", "call_id", "name", "arguments")},
            {"type": "function_call_output", "call_id": call["call_id"], "output": "18C sunny"},
        ],
        "tools": [WEATHER_TOOL],
        "reasoning": REASONING,
        **extra,
    }


async def chained(system, first: dict[str, Any]):
    """The tool loop's second turn by `previous_response_id`: the call's output only."""
    call = first["output"][1]
    output = {"type": "function_call_output", "call_id": call["call_id"], "output": "18C"}
    return await post(
        system,
        {
            "model": "sim-claude",
            "previous_response_id": first["id"],
            "input": [output],
            "tools": [WEATHER_TOOL],
            "reasoning": REASONING,
        },
    )


def kinds(response: dict[str, Any]) -> list[str]:
    return [item["type"] for item in response["output"]]


async def test_a_reasoning_item_sent_back_by_id_keeps_claudes_thinking(system):
    first = await ask(system)
    reasoning = first["output"][0]

    whole = await post(system, continuation(first, reasoning))
    answer = await post(system, continuation(first, by_id(reasoning)))

    assert whole.status_code == answer.status_code == 200, answer.text
    assert kinds(whole.json()) == ["reasoning", "message"]
    # The same as sent whole: Claude continued its turn with its thinking.
    second = answer.json()
    assert kinds(second) == ["reasoning", "message"]
    assert second["usage"]["output_tokens_details"]["reasoning_tokens"] > 0
    assert second["usage"]["input_tokens"] == whole.json()["usage"]["input_tokens"]
    published = await system.published_for(parse_response_id(second["id"]).request_id)
    sent = published.data.body["input"][1]
    assert sent["id"] == reasoning["id"]
    assert sent["encrypted_content"] == reasoning["encrypted_content"]
    assert sent["summary"] == reasoning["summary"]


async def test_a_streamed_reasoning_item_is_added_with_its_encrypted_content(system):
    body = {
        "model": "sim-claude",
        "input": [QUESTION],
        "tools": [WEATHER_TOOL],
        "reasoning": REASONING,
        "include": [ENCRYPTED_REASONING],
        "stream": True,
    }
    async with system.client.responses.stream(
        **{k: v for k, v in body.items() if k != "stream"}
    ) as stream:
        events = [event async for event in stream]
        final = await stream.get_final_response()

    added = [e for e in events if e.type == "response.output_item.added"]
    done = [e for e in events if e.type == "response.output_item.done"]
    assert added[0].item.type == "reasoning"
    # As OpenAI's: readable where clients such as langchain-openai read reasoning items.
    assert added[0].item.encrypted_content
    assert added[0].item.encrypted_content == done[0].item.encrypted_content
    assert added[0].item.id == done[0].item.id == final.output[0].id
    numbers = [e.sequence_number for e in events]
    assert numbers == list(range(len(numbers)))
    at = events.index(added[0])
    assert [e.type for e in events[at + 1 : at + 3]] == [
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
    ]
    assert all(e.output_index == 0 for e in events[at : events.index(done[0]) + 1])

    # Sent back by id (the stored response has the signature): Claude gets its thinking.
    first = final.model_dump(mode="json")
    answer = await post(system, continuation(first, by_id(first["output"][0])))
    assert answer.status_code == 200, answer.text
    assert kinds(answer.json()) == ["reasoning", "message"]


async def test_the_count_of_input_tokens_resolves_the_reasoning_item_too(system):
    first = await ask(system)
    reasoning = first["output"][0]

    answer = await system.http.post(
        "/v1/responses/input_tokens",
        json=continuation(first, by_id(reasoning)),
        headers=auth_headers(),
    )

    assert answer.status_code == 200, answer.text
    published = await system.published_for(answer.headers["x-request-id"])
    sent = published.data.body["input"][1]
    assert sent["encrypted_content"] == reasoning["encrypted_content"]


@pytest.mark.parametrize(
    ("second_store", "hint"), [(True, False), (False, True)], ids=["store", "no-store"]
)
async def test_reasoning_of_a_response_not_stored_is_404_as_openai_answers(
    system, second_store, hint
):
    first = await ask(system, store=False)
    reasoning = first["output"][0]

    answer = await post(system, continuation(first, by_id(reasoning), store=second_store))

    assert answer.status_code == 404, answer.text
    error = error_of(answer)
    assert (error["param"], error["code"]) == ("input[1]", "item_not_found")
    assert error["message"].startswith(f"Item with id '{reasoning['id']}' not found.")
    assert ("`store` is set to false" in error["message"]) is hint
    # Sent whole, it goes as it always did: nothing needs the store.
    whole = await post(system, continuation(first, reasoning, store=second_store))
    assert whole.status_code == 200, whole.text
    assert kinds(whole.json()) == ["reasoning", "message"]


async def test_another_users_reasoning_item_is_not_found(system):
    first = await ask(system)
    other = system.auth.token(sub="user-other", scopes=["chat", "history:read"])

    answer = await system.http.post(
        "/v1/responses",
        json=continuation(first, by_id(first["output"][0])),
        headers=auth_headers(other),
    )

    assert answer.status_code == 404, answer.text
    assert error_of(answer)["code"] == "item_not_found"


async def test_a_credential_that_may_not_read_history_cannot_name_stored_thinking(system):
    first = await ask(system)
    chat_only = system.auth.token(sub="user-1", scopes=["chat"])

    answer = await system.http.post(
        "/v1/responses",
        json=continuation(first, by_id(first["output"][0])),
        headers=auth_headers(chat_only),
    )

    assert answer.status_code == 403, answer.text
    error = error_of(answer)
    assert (error["param"], error["code"]) == ("input", "insufficient_scope")


async def test_other_reasoning_items_without_encrypted_content_go_as_before(system):
    # A Chat Completions server's reasoning never had encrypted content, and an OpenAI
    # upstream's is its own to look up: neither needs the store, nor is refused.
    for item_id in ("rs_sy" + "0" * 32, "rs_0123456789abcdef"):
        answer = await post(
            system,
            {
                "model": "sim-claude",
                "input": [
                    {"role": "user", "content": "Hi"},
                    {"type": "reasoning", "id": item_id, "summary": []},
                    {"role": "assistant", "content": "Hello."},
                    {"role": "user", "content": "Bye"},
                ],
            },
        )
        assert answer.status_code == 200, (item_id, answer.text)


async def test_a_chained_tool_loop_keeps_claudes_thinking(system):
    # `previous_response_id`: the stored output items, with their encrypted content.
    first = await ask(system)

    answer = await chained(system, first)

    assert answer.status_code == 200, answer.text
    assert kinds(answer.json()) == ["reasoning", "message"]
    published = await system.published_for(parse_response_id(answer.json()["id"]).request_id)
    previous = published.data.previous_items
    assert previous is not None
    assert [i for i in previous if i["type"] == "reasoning"][0]["encrypted_content"] == (
        first["output"][0]["encrypted_content"]
    )


async def test_encrypted_content_is_shown_only_when_included_as_openai_does(system):
    # OpenAI fills `encrypted_content` only for `include: ["reasoning.encrypted_content"]`;
    # the stored response keeps it, so the item sent back by id still carries the thinking.
    first = await ask(system, include=[])
    reasoning = first["output"][0]
    path = f"/v1/responses/{first['id']}"

    retrieved = await system.http.get(path, headers=auth_headers())
    included = await system.http.get(
        path, params={"include[]": ENCRYPTED_REASONING}, headers=auth_headers()
    )
    answer = await post(system, continuation(first, by_id(reasoning)))

    assert retrieved.status_code == included.status_code == 200, retrieved.text
    assert "encrypted_content" not in retrieved.json()["output"][0]
    assert retrieved.json()["output"][0]["summary"] == reasoning["summary"]
    signature = included.json()["output"][0]["encrypted_content"]
    assert signature
    assert answer.status_code == 200, answer.text
    assert kinds(answer.json()) == ["reasoning", "message"]
    published = await system.published_for(parse_response_id(answer.json()["id"]).request_id)
    assert published.data.body["input"][1]["encrypted_content"] == signature


async def test_a_stream_shows_no_encrypted_content_unless_included(system):
    async with system.client.responses.stream(
        model="sim-claude", input=[QUESTION], tools=[WEATHER_TOOL], reasoning=REASONING
    ) as stream:
        events = [event.model_dump(mode="json", exclude_unset=True) async for event in stream]

    assert any(e["type"] == "response.output_item.added" for e in events)
    for event in events:
        for item in [event.get("item"), *(event.get("response") or {}).get("output", [])]:
            assert item is None or "encrypted_content" not in item, event["type"]
    final = next(e for e in events if e["type"] == "response.completed")["response"]
    answer = await post(system, continuation(final, by_id(final["output"][0])))
    assert answer.status_code == 200, answer.text
    assert kinds(answer.json()) == ["reasoning", "message"]


async def test_an_item_given_twice_is_refused_as_openai_refuses_it(system):
    # Once by `previous_response_id` and again by id in `input`: the model would read
    # the thinking twice. So is an item sent twice within `input`, or referenced twice.
    first = await ask(system)
    reasoning, call = first["output"]
    output = {"type": "function_call_output", "call_id": call["call_id"], "output": "18C"}
    bodies = [
        ({"previous_response_id": first["id"], "input": [by_id(reasoning), output]}, 0),
        ({"previous_response_id": first["id"], "input": [reasoning, output]}, 0),
        (
            {
                "previous_response_id": first["id"],
                "input": [{"type": "item_reference", "id": call["id"]}, output],
            },
            0,
        ),
        ({"input": [QUESTION, reasoning, reasoning, output]}, 2),
    ]
    published = len(system.published)

    for extra, position in bodies:
        body = {"model": "sim-claude", "tools": [WEATHER_TOOL], "reasoning": REASONING, **extra}
        answer = await post(system, body)
        assert answer.status_code == 400, answer.text
        error = error_of(answer)
        assert error["param"] == f"input[{position}]"
        assert error["message"].startswith("Duplicate item found with id ")
        assert error["type"] == "invalid_request_error"

    assert len(system.published) == published


async def test_a_continued_responses_input_items_show_no_encrypted_content_unless_included(
    system,
):
    # The items it continued are its input items: the earlier thinking among them.
    first = await ask(system)
    second = await chained(system, first)
    assert second.status_code == 200, second.text
    path = f"/v1/responses/{second.json()['id']}/input_items"

    plain = await system.http.get(path, headers=auth_headers())
    included = await system.http.get(
        path, params={"include": ENCRYPTED_REASONING}, headers=auth_headers()
    )

    assert plain.status_code == included.status_code == 200, plain.text

    def reasoning(page):
        return [item for item in page.json()["data"] if item["type"] == "reasoning"]

    assert reasoning(plain) and "encrypted_content" not in reasoning(plain)[0]
    assert reasoning(included)[0]["encrypted_content"] == first["output"][0]["encrypted_content"]


@pytest.mark.parametrize("suffix", ["", "/input_items"], ids=["retrieve", "input-items"])
@pytest.mark.parametrize(
    "params",
    [
        {"include": "reasoning.encrypted_contnet"},
        {"include[]": [ENCRYPTED_REASONING, "bogus"]},
        {"include": f"{ENCRYPTED_REASONING},bogus"},
    ],
    ids=["typo", "second-of-two", "comma-separated"],
)
async def test_a_read_with_an_include_value_openai_does_not_take_is_refused(system, suffix, params):
    # As a create request's `include` is refused: a typo would otherwise pass as a no-op,
    # and the client would never see the signature it asked for.
    first = await ask(system)
    path = f"/v1/responses/{first['id']}{suffix}"

    answer = await system.http.get(path, params=params, headers=auth_headers())
    known = await system.http.get(
        path,
        params={"include": ["message.output_text.logprobs", ENCRYPTED_REASONING, ""]},
        headers=auth_headers(),
    )

    assert answer.status_code == 400, answer.text
    error = error_of(answer)
    assert error["code"] == "invalid_value"
    assert error["param"] == "include"
    assert error["message"].startswith("Invalid value: '")
    assert f"'{ENCRYPTED_REASONING}'" in error["message"]
    assert known.status_code == 200, known.text
