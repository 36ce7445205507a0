"""What the gateway checks itself on the Responses API before (or instead of) asking
history: a background response in a tenant keeping metadata only is refused (its result
could never be retrieved), the cancellation of a response accepted moments ago vouches
only for the exact id it was answered with, and `stream` on retrieval must be a boolean.
History is played by `FakeHistory`; nothing reaches a network."""

from __future__ import annotations

import pytest

from switchyard.common.responses import parse_response_id

from .conftest import API_KEY
from .history_fakes import install

AUTH = {"authorization": f"Bearer {API_KEY}"}
BACKGROUND = {"model": "sim-small", "input": "long task", "background": True}


def error_of(answer) -> dict:
    body = answer.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def restamped(value: str, stamp: str) -> str:
    """`value` (a response id) with other leading hex digits: its creation time."""
    return value[: len("resp_")] + stamp + value[len("resp_") + len(stamp) :]


async def test_a_background_response_is_refused_in_a_metadata_only_tenant(harness):
    history = await install(harness)
    history.metadata_only.add("acme")

    answer = await harness.client.post("/v1/responses", json=BACKGROUND, headers=AUTH)

    assert answer.status_code == 400, answer.text
    error = error_of(answer)
    assert (error["param"], error["code"]) == ("background", "invalid_value")
    assert "metadata only" in error["message"]
    assert harness.app.state.gateway.recent_jobs._jobs == {}  # nothing was accepted


async def test_a_background_response_is_accepted_where_content_is_kept(harness):
    await install(harness)
    answer = await harness.client.post("/v1/responses", json=BACKGROUND, headers=AUTH)
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "queued"


async def test_a_background_response_is_accepted_when_history_cannot_say(harness):
    # Not refused for a reason that may not hold: accepted, as it was before the check.
    history = await install(harness)
    history.down = True
    answer = await harness.client.post("/v1/responses", json=BACKGROUND, headers=AUTH)
    assert answer.status_code == 200, answer.text


async def test_cancelling_an_id_never_issued_vouches_for_no_accepted_response(harness):
    history = await install(harness)
    queued = (await harness.client.post("/v1/responses", json=BACKGROUND, headers=AUTH)).json()
    real = queued["id"]
    forged = restamped(real, "ffffffff")
    ref = parse_response_id(forged)
    assert ref is not None and ref.request_id == parse_response_id(real).request_id
    history.answers[f"/v1/responses/{forged}/cancel"] = (
        404,
        b'{"error": {"message": "not found", "type": "invalid_request_error",'
        b' "param": "response_id", "code": "response_not_found"}}',
        "application/json",
    )

    answer = await harness.client.post(f"/v1/responses/{forged}/cancel", headers=AUTH)

    assert answer.status_code == 404, answer.text
    assert error_of(answer)["code"] == "response_not_found"
    # History was never told that the gateway accepted this id moments ago.
    assert not [call for call in history.calls if "accepted=true" in str(call.url)]


@pytest.mark.parametrize("value", ["abc", "yes", "", "2", "truee"])
async def test_a_stream_flag_that_is_not_a_boolean_is_400_naming_it(harness, value):
    history = await install(harness)
    answer = await harness.client.get(
        f"/v1/responses/resp_6b126c75ca344faa25e742329442c875200e4337?stream={value}",
        headers=AUTH,
    )
    assert answer.status_code == 400, answer.text
    error = error_of(answer)
    assert (error["param"], error["code"]) == ("stream", "invalid_value")
    assert not [call for call in history.calls if call.url.path.startswith("/v1/responses")]


@pytest.mark.parametrize(("value", "refused"), [("true", True), ("1", True), ("false", False)])
async def test_a_boolean_stream_flag_is_read_as_before(harness, value, refused):
    await install(harness)
    answer = await harness.client.get(
        f"/v1/responses/resp_6b126c75ca344faa25e742329442c875200e4337?stream={value}",
        headers=AUTH,
    )
    if refused:
        assert answer.status_code == 400
        assert error_of(answer)["code"] == "unsupported_parameter"
    else:
        assert answer.status_code == 200, answer.text  # what FakeHistory answers
