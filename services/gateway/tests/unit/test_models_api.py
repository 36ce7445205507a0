"""`GET /v1/models[/{id}]` through both official SDKs: Anthropic's paged shape for the
`anthropic` SDK (which sends `anthropic-version`), OpenAI's for the `openai` SDK, and a
404 in each one's error format."""

from __future__ import annotations

from datetime import UTC, datetime

import anthropic
import httpx2
import openai
import pytest

from switchyard.common.routing import Deployment, ModelRoute, RoutingTable

from .conftest import API_KEY

AUTH = {"authorization": f"Bearer {API_KEY}"}
ANTHROPIC = {**AUTH, "anthropic-version": "2023-06-01"}


def anthropic_client(harness) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        api_key=API_KEY,
        base_url="http://gateway",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=httpx2.ASGITransport(app=harness.app)),
    )


def openai_client(harness) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        api_key=API_KEY, base_url="http://gateway/v1", max_retries=0, http_client=harness.client
    )


def route(name: str, created: datetime | None = None, display: str | None = None) -> ModelRoute:
    return ModelRoute(
        name=name,
        display_name=display,
        created_at=created,
        deployments=[
            Deployment(name="d", provider="anthropic", model=name, base_url="http://127.0.0.1:9")
        ],
    )


@pytest.fixture
def seven_models(harness):
    """m0 (newest) ... m6 (oldest), and one without a release date (listed last)."""
    routes = [route(f"m{i}", datetime(2025, 1, 20 - i, tzinfo=UTC)) for i in range(7)]
    routes.append(route("undated", display="Undated model"))
    routes[0] = route("m0", datetime(2025, 1, 20, tzinfo=UTC), display="Model Zero")
    harness.app.state.gateway.routing_source.table = RoutingTable(
        models={r.name: r for r in routes}
    )
    return [r.name for r in routes]


async def test_anthropic_sdk_lists_models_in_anthropics_shape(harness, seven_models):
    page = await anthropic_client(harness).models.list(limit=3)
    assert [model.id for model in page.data] == ["m0", "m1", "m2"]
    first = page.data[0]
    assert first.type == "model"
    assert first.display_name == "Model Zero"
    assert first.created_at == datetime(2025, 1, 20, tzinfo=UTC)
    assert page.has_more is True
    assert page.first_id == "m0" and page.last_id == "m2"


async def test_anthropic_sdk_pages_through_every_model_newest_first(harness, seven_models):
    client = anthropic_client(harness)
    seen = [model.id async for model in client.models.list(limit=3)]
    assert seen == seven_models  # newest first, the undated one last, each once
    last_page = await client.models.list(limit=3, after_id="m5")
    assert [m.id for m in last_page.data] == ["m6", "undated"]
    assert last_page.has_more is False
    assert last_page.data[1].created_at == datetime(1970, 1, 1, tzinfo=UTC)
    assert last_page.data[1].display_name == "Undated model"


async def test_anthropic_paging_backwards_with_before_id(harness, seven_models):
    page = await anthropic_client(harness).models.list(limit=2, before_id="m4")
    assert [m.id for m in page.data] == ["m2", "m3"]
    assert page.has_more is True
    first_page = await anthropic_client(harness).models.list(limit=5, before_id="m2")
    assert [m.id for m in first_page.data] == ["m0", "m1"]
    assert first_page.has_more is False


async def test_anthropic_sdk_retrieves_one_model(harness, seven_models):
    model = await anthropic_client(harness).models.retrieve("m3")
    assert model.id == "m3" and model.type == "model" and model.display_name == "m3"
    assert model.created_at == datetime(2025, 1, 17, tzinfo=UTC)


async def test_anthropic_sdk_gets_404_in_anthropics_format(harness):
    with pytest.raises(anthropic.NotFoundError) as raised:
        await anthropic_client(harness).models.retrieve("no-such-model")
    body = raised.value.body
    assert body["type"] == "error"
    assert body["error"]["type"] == "not_found_error"
    assert "no-such-model" in body["error"]["message"]


async def test_openai_sdk_lists_and_retrieves_models_in_openais_shape(harness, seven_models):
    client = openai_client(harness)
    models = [model async for model in client.models.list()]
    assert sorted(m.id for m in models) == sorted(seven_models)
    assert all(m.object == "model" and m.owned_by == "switchyard" for m in models)
    model = await client.models.retrieve("m1")
    assert model.id == "m1"
    assert model.created == int(datetime(2025, 1, 19, tzinfo=UTC).timestamp())


async def test_openai_sdk_gets_404_in_openais_format(harness):
    with pytest.raises(openai.NotFoundError) as raised:
        await openai_client(harness).models.retrieve("no-such-model")
    assert raised.value.code == "model_not_found"
    assert raised.value.body["type"] == "invalid_request_error"


async def test_model_ids_with_slashes_are_retrieved(harness):
    gateway = harness.app.state.gateway
    gateway.routing_source.table = RoutingTable(models={"org/llama-3": route("org/llama-3")})
    response = await harness.client.get("/v1/models/org/llama-3", headers=ANTHROPIC)
    assert response.status_code == 200
    assert response.json()["id"] == "org/llama-3"


async def test_models_a_key_may_not_use_are_neither_listed_nor_retrievable(harness):
    token = harness.auth.token(allowed_models=["sim-small"])
    headers = {"authorization": f"Bearer {token}", "anthropic-version": "2023-06-01"}
    listed = (await harness.client.get("/v1/models", headers=headers)).json()
    assert [m["id"] for m in listed["data"]] == ["sim-small"]
    hidden = await harness.client.get("/v1/models/sim-large", headers=headers)
    assert hidden.status_code == 404
    assert hidden.json()["error"]["type"] == "not_found_error"


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=many", "limit"),
        ("after_id=no-such-model", "after_id"),
        ("before_id=no-such-model", "before_id"),
        ("after_id=sim-small&before_id=sim-large", "before_id"),
    ],
)
async def test_bad_paging_parameters_get_400_in_anthropics_format(harness, query, param):
    response = await harness.client.get(f"/v1/models?{query}", headers=ANTHROPIC)
    assert response.status_code == 400
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["param"] == param


@pytest.mark.parametrize("path", ["/v1/models/%00", "/v1/models/a%00b", "/v1/models?after_id=%00"])
async def test_a_nul_in_a_models_url_is_a_400_in_the_callers_format(harness, path):
    """The URL check runs before any route, and answers as the route would: Anthropic's
    format to a caller sending `anthropic-version`, OpenAI's otherwise."""
    anthropic_style = await harness.client.get(path, headers=ANTHROPIC)
    assert anthropic_style.status_code == 400
    assert anthropic_style.json()["type"] == "error"
    assert anthropic_style.json()["error"]["type"] == "invalid_request_error"
    assert "NUL" in anthropic_style.json()["error"]["message"]
    openai_style = await harness.client.get(path, headers=AUTH)
    assert openai_style.status_code == 400
    assert "type" not in openai_style.json()
    assert openai_style.json()["error"]["code"] == "invalid_request"


async def test_missing_credentials_on_models_get_401_in_the_callers_format(harness):
    anthropic_style = await harness.client.get(
        "/v1/models", headers={"anthropic-version": "2023-06-01"}
    )
    assert anthropic_style.status_code == 401
    assert anthropic_style.json()["error"]["type"] == "authentication_error"
    assert anthropic_style.json()["type"] == "error"
    openai_style = await harness.client.get("/v1/models")
    assert openai_style.status_code == 401
    assert "type" not in openai_style.json()
    assert openai_style.json()["error"]["code"] == "invalid_api_key"
