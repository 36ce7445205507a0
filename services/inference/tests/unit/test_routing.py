"""The routing table: built-in default, YAML files, and the errors operators read."""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from pathlib import Path

import pytest

from switchyard.common.routing import RoutingError, RoutingSource, load_routing
from switchyard.inference.bootstrap import check_credentials

SIM_URL = "http://127.0.0.1:8099/v1"


@pytest.fixture(autouse=True)
def _no_real_openai_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "routing.yaml"
    path.write_text(text)
    return str(path)


def test_default_routing_serves_the_simulator_models_only_without_an_openai_key() -> None:
    routing = load_routing(None, SIM_URL)

    assert routing.model_names() == ["sim-claude", "sim-large", "sim-small"]
    deployment = routing.route("sim-small").deployments[0]
    assert (deployment.provider, deployment.model, deployment.base_url) == (
        "openai",
        "sim-small",
        SIM_URL,
    )
    claude = routing.route("sim-claude").deployments[0]
    # The simulator's Anthropic protocol, at its root (the SDK adds /v1/messages).
    assert (claude.provider, claude.base_url) == ("anthropic", "http://127.0.0.1:8099")
    assert deployment.api_key()  # a placeholder: the SDK refuses to start without one
    assert routing.route("gpt-4o") is None


def test_default_routing_adds_openai_models_when_a_key_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_BASE_URL", "https://proxy.example/v1")

    routing = load_routing(None, SIM_URL)

    assert routing.model_names() == [
        "gpt-4.1-mini",
        "gpt-4o",
        "gpt-4o-mini",
        "sim-claude",
        "sim-large",
        "sim-small",
    ]
    deployment = routing.route("gpt-4o-mini").deployments[0]
    assert deployment.base_url == "https://proxy.example/v1"
    assert deployment.api_key() == "sk-test"


def test_yaml_file_keeps_deployment_order_and_names_routes_after_their_keys(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
models:
  chat:
    deployments:
      - {name: primary, provider: openai, model: gpt-4o-mini, timeout_s: 5, max_concurrency: 10}
      - {name: backup, provider: anthropic, model: claude-haiku, max_retries: 0}
""",
    )
    routing = load_routing(path, SIM_URL)

    route = routing.route("chat")
    assert route.name == "chat"
    assert [d.name for d in route.deployments] == ["primary", "backup"]
    assert route.deployments[0].timeout_s == 5 and route.deployments[0].max_concurrency == 10
    assert routing.model_names() == ["chat"]  # the file replaces the default entirely


@pytest.mark.parametrize(
    ("content", "expected_field"),
    [
        (
            "models:\n  chat:\n    deployments:\n      - {name: a, provider: cohere, model: x}\n",
            "models.chat.deployments.0.provider",
        ),
        ("models:\n  chat:\n    deployments: []\n", "models.chat.deployments"),
        (
            "models:\n  chat:\n    deployments:\n      - {name: a, provider: openai}\n",
            "models.chat.deployments.0.model",
        ),
        (
            "models:\n  chat:\n    deployments:\n"
            "      - {name: a, provider: openai, model: x, timeout: 3}\n",
            "models.chat.deployments.0.timeout",
        ),
    ],
)
def test_invalid_file_error_names_the_file_and_the_field(
    tmp_path: Path, content: str, expected_field: str
) -> None:
    path = write(tmp_path, content)

    with pytest.raises(RoutingError) as caught:
        load_routing(path, SIM_URL)

    assert path in str(caught.value)
    assert expected_field in str(caught.value)


def test_duplicate_deployment_names_are_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "models:\n  chat:\n    deployments:\n"
        "      - {name: a, provider: openai, model: x}\n"
        "      - {name: a, provider: openai, model: y}\n",
    )
    with pytest.raises(RoutingError, match="unique"):
        load_routing(path, SIM_URL)


def test_missing_or_unparsable_file_is_reported_with_its_path(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(RoutingError, match="nope.yaml: cannot be read"):
        load_routing(missing, SIM_URL)
    with pytest.raises(RoutingError, match="not valid YAML"):
        load_routing(write(tmp_path, "models: [unclosed"), SIM_URL)
    with pytest.raises(RoutingError, match="expected a mapping"):
        load_routing(write(tmp_path, "- just a list"), SIM_URL)


def test_unset_api_key_variable_is_a_start_up_error_naming_it(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "models:\n  chat:\n    deployments:\n"
        "      - {name: a, provider: openai, model: x, api_key_env: MY_MISSING_KEY}\n",
    )
    routing = load_routing(path, SIM_URL)

    with pytest.raises(RoutingError, match="MY_MISSING_KEY"):
        check_credentials(routing)


def route_of(tmp_path: Path, deployments: str):
    path = write(tmp_path, f"models:\n  chat:\n    deployments:\n{deployments}")
    return load_routing(path, SIM_URL).route("chat")


def test_without_priorities_the_list_is_an_ordered_fallback_chain(tmp_path: Path) -> None:
    route = route_of(
        tmp_path,
        "      - {name: a, provider: openai, model: x, weight: 1}\n"
        "      - {name: b, provider: openai, model: x, weight: 100}\n",
    )
    orders = {tuple(d.name for d in route.attempt_order(random.Random(seed))) for seed in range(50)}
    assert orders == {("a", "b")}  # weights only matter within a priority group


def test_equal_priority_shares_first_attempts_by_weight(tmp_path: Path) -> None:
    route = route_of(
        tmp_path,
        "      - {name: a, provider: openai, model: x, priority: 0, weight: 3}\n"
        "      - {name: b, provider: openai, model: x, priority: 0, weight: 1}\n"
        "      - {name: standby, provider: openai, model: x, priority: 0, weight: 0}\n"
        "      - {name: last, provider: openai, model: x, priority: 1}\n",
    )
    rng = random.Random(7)
    orders = [[d.name for d in route.attempt_order(rng)] for _ in range(4000)]

    firsts = Counter(order[0] for order in orders)
    assert 0.70 < firsts["a"] / 4000 < 0.80  # 3 : 1
    assert firsts["standby"] == 0
    assert all(order[2:] == ["standby", "last"] for order in orders)  # then standby, then next


def test_priority_must_be_set_on_all_deployments_or_none(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "models:\n  chat:\n    deployments:\n"
        "      - {name: a, provider: openai, model: x, priority: 0}\n"
        "      - {name: b, provider: openai, model: x}\n",
    )
    with pytest.raises(RoutingError, match="priority"):
        load_routing(path, SIM_URL)


def test_routing_source_reloads_a_changed_file_and_keeps_the_old_table_on_errors(
    tmp_path: Path,
) -> None:
    path = Path(
        write(
            tmp_path,
            "models:\n  one:\n    deployments:\n      - {name: a, provider: openai, model: x}\n",
        )
    )
    source = RoutingSource(str(path), SIM_URL)
    changes: list = []
    source.on_change(changes.append)
    assert not source.reload_if_changed()  # nothing changed

    path.write_text(
        "models:\n  two:\n    deployments:\n      - {name: a, provider: openai, model: x}\n"
    )
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    assert source.reload_if_changed()
    assert source.table.model_names() == ["two"] and source.version == 2
    assert [table.model_names() for table in changes] == [["two"]]

    path.write_text("models: [broken")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 2_000_000))
    assert not source.reload_if_changed()
    assert source.table.model_names() == ["two"]  # still serving
    assert not source.changed()  # the bad file is reported once, not at every poll


def test_routing_source_validation_refuses_a_table(tmp_path: Path) -> None:
    path = Path(
        write(
            tmp_path,
            "models:\n  one:\n    deployments:\n      - {name: a, provider: openai, model: x}\n",
        )
    )
    source = RoutingSource(str(path), SIM_URL, validate=check_credentials)
    path.write_text(
        "models:\n  two:\n    deployments:\n"
        "      - {name: a, provider: openai, model: x, api_key_env: NOPE_KEY}\n"
    )
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))

    assert not source.reload()
    assert source.table.model_names() == ["one"]


# --------------------------------------------------------------------------- provider kinds


@pytest.mark.parametrize(
    ("deployment", "message"),
    [
        (
            "{name: a, provider: azure_openai, model: d, api_version: v, api_key_env: K}",
            "needs 'base_url'",
        ),
        (
            "{name: a, provider: azure_openai, model: d, base_url: 'https://r', api_key_env: K}",
            "needs 'api_version'",
        ),
        (
            "{name: a, provider: azure_openai, model: d, base_url: 'https://r', api_version: v}",
            "exactly one of 'api_key_env', 'azure_ad_token_env' and 'azure_ad_token_file'",
        ),
        (
            "{name: a, provider: azure_openai, model: d, base_url: 'https://r', api_version: v,"
            " api_key_env: K, azure_ad_token_env: T}",
            "exactly one of",
        ),
        ("{name: a, provider: bedrock, model: m}", "a bedrock deployment needs 'region'"),
        (
            "{name: a, provider: bedrock, model: m, region: r, aws_access_key_id_env: A}",
            "set both 'aws_access_key_id_env' and 'aws_secret_access_key_env'",
        ),
        (
            "{name: a, provider: bedrock, model: m, region: r, api_key_env: K, aws_profile: p}",
            "either a Bedrock API key",
        ),
        ("{name: a, provider: vertex, model: m, region: r}", "needs 'project_id'"),
        ("{name: a, provider: vertex, model: m, project_id: p}", "needs 'region'"),
        (
            "{name: a, provider: vertex, model: m, project_id: p, region: r, api_key_env: K}",
            "'api_key_env' does not apply to vertex",
        ),
        (
            "{name: a, provider: vertex, model: m, project_id: p, region: r,"
            " credentials_file: f, access_token_env: T}",
            "not both",
        ),
        ("{name: a, provider: gemini, model: m}", "a gemini deployment needs 'api_key_env'"),
        (
            "{name: a, provider: openai, model: m, region: r}",
            "'region' applies only to bedrock and vertex",
        ),
        (
            "{name: a, provider: anthropic, model: m, api_version: v}",
            "'api_version' applies only to azure_openai",
        ),
        ("{name: a, provider: watsonx, model: m}", "provider"),
    ],
)
def test_provider_kind_settings_are_checked_naming_the_field(
    tmp_path: Path, deployment: str, message: str
) -> None:
    path = write(tmp_path, f"models:\n  chat:\n    deployments:\n      - {deployment}\n")
    with pytest.raises(RoutingError) as caught:
        load_routing(path, SIM_URL)
    assert message in str(caught.value)
    assert "models.chat.deployments.0" in str(caught.value)


def test_each_provider_kind_speaks_its_protocol(tmp_path: Path) -> None:
    route = route_of(
        tmp_path,
        "      - {name: o, provider: openai, model: m}\n"
        "      - {name: a, provider: anthropic, model: m}\n"
        "      - {name: z, provider: azure_openai, model: d, base_url: 'https://r',"
        " api_version: v, azure_ad_token_file: /t}\n"
        "      - {name: b, provider: bedrock, model: m, region: us-east-1}\n"
        "      - {name: v, provider: vertex, model: m, project_id: p, region: global}\n"
        "      - {name: g, provider: gemini, model: m, api_key_env: G}\n",
    )
    assert [(d.provider, d.protocol) for d in route.deployments] == [
        ("openai", "openai"),
        ("anthropic", "anthropic"),
        ("azure_openai", "openai"),
        ("bedrock", "anthropic"),
        ("vertex", "anthropic"),
        ("gemini", "openai"),
    ]


def test_every_credential_variable_must_be_set_at_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SET_KEY_ID", "AKIA")
    path = write(
        tmp_path,
        "models:\n  chat:\n    deployments:\n"
        "      - {name: b, provider: bedrock, model: m, region: r,"
        " aws_access_key_id_env: SET_KEY_ID, aws_secret_access_key_env: UNSET_SECRET}\n"
        "      - {name: v, provider: vertex, model: m, project_id: p, region: r,"
        " access_token_env: UNSET_TOKEN}\n",
    )
    with pytest.raises(RoutingError) as caught:
        check_credentials(load_routing(path, SIM_URL))
    assert "UNSET_SECRET" in str(caught.value) and "UNSET_TOKEN" in str(caught.value)
    assert "SET_KEY_ID" not in str(caught.value)


@pytest.mark.parametrize(
    "simulator_url", ["http://127.0.0.1:8099/v1", "http://127.0.0.1:8099", "http://127.0.0.1:8099/"]
)
def test_the_simulators_url_with_or_without_v1_serves_every_simulated_model(simulator_url):
    """The OpenAI SDK adds its routes to `/v1`, Anthropic's SDK `/v1/messages` to the root:
    either spelling of `SWITCHYARD_SIMULATOR_URL` gives each the right base."""
    table = load_routing(None, simulator_url)
    bases = {name: table.route(name).deployments[0].base_url for name in table.model_names()}
    assert bases["sim-small"] == bases["sim-large"] == "http://127.0.0.1:8099/v1"
    assert bases["sim-claude"] == "http://127.0.0.1:8099"
