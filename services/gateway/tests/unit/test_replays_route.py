"""`POST /v1/replays` on the gateway: what it checks itself before history sees the body
(the target model's presence, type, existence and the caller's right to it)."""

from __future__ import annotations

import pytest

from .conftest import API_KEY

AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.mark.parametrize(
    ("to_model", "code"),
    [
        (None, "missing_required_parameter"),
        ("", "missing_required_parameter"),
        (5, "invalid_type"),
        (True, "invalid_type"),
        (["sim-large"], "invalid_type"),
    ],
)
async def test_a_missing_or_mistyped_target_model_is_400_naming_it(harness, to_model, code):
    body = {"since": "1h"} if to_model is None else {"since": "1h", "to_model": to_model}
    response = await harness.client.post("/v1/replays", json=body, headers=AUTH)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("to_model", code)
