"""`POST /v1/replays`: a body field the API does not know is refused, never ignored (a
misspelt `limit` would otherwise replay the whole selection)."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("field", ["limt", "bill-to", "to-model", "rates"])
async def test_an_unknown_field_is_400_naming_it_and_creates_nothing(service, field):
    body = {"since": "1h", "to_model": "sim-large", field: 1}
    response = await service.client.post("/v1/replays", json=body, headers=service.headers())
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == field
    listed = await service.client.get("/v1/replays", headers=service.headers())
    assert listed.json()["data"] == []
