"""Anthropic's token counting and model list through every service on real Kafka and
PostgreSQL, with the official `anthropic` SDK: `count_tokens` on an Anthropic-protocol
model is counted by the deployment (the simulator's count equals the input a Messages
call reports), on an OpenAI-protocol model estimated by inference and marked so; both are
recorded in history, unbilled. `models.list()` pages through Anthropic's shape, and the
`openai` SDK gets OpenAI's shape from the same route."""

from __future__ import annotations

import anthropic
import openai
import pytest
from sqlalchemy import create_engine, text

from switchyard.common.db import sync_url
from switchyard.common.testing.infra import wait_until
from switchyard.simulator.testing import simulator_at

# The first test also starts the five services, which on two busy cores takes minutes.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

MESSAGES = [{"role": "user", "content": "How many tokens are in this short question?"}]


def anthropic_client(system) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=system.url("gateway"), api_key=system.api_key, max_retries=0, timeout=60
    )


def simulator_calls(system, route: str) -> int:
    with simulator_at(system.url("simulator")) as simulator:
        return simulator.stats()["routes"].get(route, 0)


def history_row(system, request_id: str) -> dict:
    def row():
        engine = create_engine(sync_url(system.database_url))
        try:
            with engine.connect() as connection:
                found = (
                    connection.execute(
                        text(
                            "SELECT status, api, upstream_api, response, input_tokens,"
                            " output_tokens FROM history_requests WHERE request_id = :id"
                        ),
                        {"id": request_id},
                    )
                    .mappings()
                    .first()
                )
        finally:
            engine.dispose()
        return dict(found) if found and found["status"] == "completed" else None

    return wait_until(row, timeout=30, message=f"request {request_id} completed in history")


def test_count_tokens_on_an_anthropic_model_is_the_deployments_own_count(system):
    client = anthropic_client(system)
    before = simulator_calls(system, "/v1/messages/count_tokens")
    raw = client.messages.with_raw_response.count_tokens(
        model="sim-claude", system="Be brief.", messages=MESSAGES
    )
    counted = raw.parse()
    assert raw.headers["x-switchyard-token-count"] == "exact"
    assert simulator_calls(system, "/v1/messages/count_tokens") == before + 1
    message = client.messages.create(
        model="sim-claude", max_tokens=16, system="Be brief.", messages=MESSAGES
    )
    assert counted.input_tokens == message.usage.input_tokens
    row = history_row(system, raw.headers["x-request-id"])
    assert row["api"] == "anthropic.count_tokens"
    assert row["upstream_api"] == "anthropic.count_tokens"
    assert row["response"] == {"input_tokens": counted.input_tokens}
    assert (row["input_tokens"], row["output_tokens"]) == (0, 0)  # counting is not billed


def test_count_tokens_on_an_openai_model_is_an_estimate_marked_as_such(system):
    before = simulator_calls(system, "/v1/chat/completions")
    raw = anthropic_client(system).messages.with_raw_response.count_tokens(
        model="sim-small", messages=MESSAGES
    )
    assert raw.headers["x-switchyard-token-count"] == "estimate"
    # 9 tokens of text in o200k_base, 3 for the message and 3 priming the reply.
    assert raw.parse().input_tokens == 15
    assert simulator_calls(system, "/v1/chat/completions") == before  # nothing called
    row = history_row(system, raw.headers["x-request-id"])
    assert row["api"] == "anthropic.count_tokens" and row["upstream_api"] is None


def test_count_tokens_bad_input_gets_anthropics_error_format(system):
    with pytest.raises(anthropic.BadRequestError) as raised:
        anthropic_client(system).messages.count_tokens(model="sim-claude", messages=[])
    assert raised.value.body["type"] == "error"
    assert raised.value.body["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.NotFoundError):
        anthropic_client(system).messages.count_tokens(model="no-such-model", messages=MESSAGES)


def test_anthropic_sdk_pages_through_the_model_list(system):
    client = anthropic_client(system)
    first = client.models.list(limit=2)
    assert len(first.data) == 2 and first.has_more is True
    assert first.first_id == first.data[0].id and first.last_id == first.data[1].id
    every = [model.id for model in client.models.list(limit=2)]
    assert sorted(every) == sorted(set(every))  # each once across pages
    assert {"sim-small", "sim-large", "sim-claude"} <= set(every)
    model = client.models.retrieve("sim-claude")
    assert model.type == "model" and model.display_name == "sim-claude"
    with pytest.raises(anthropic.NotFoundError) as raised:
        client.models.retrieve("no-such-model")
    assert raised.value.body["error"]["type"] == "not_found_error"


def test_openai_sdk_gets_openais_model_list_from_the_same_route(system):
    client = openai.OpenAI(
        base_url=system.url("gateway") + "/v1", api_key=system.api_key, max_retries=0
    )
    ids = [model.id for model in client.models.list()]
    assert {"sim-small", "sim-large", "sim-claude"} <= set(ids)
    assert client.models.retrieve("sim-small").owned_by == "switchyard"
    with pytest.raises(openai.NotFoundError) as raised:
        client.models.retrieve("no-such-model")
    assert raised.value.code == "model_not_found"
