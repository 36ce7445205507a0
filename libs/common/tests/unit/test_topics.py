"""Every topic is declared once, in TOPIC_SPECS: the deployment's topic names follow."""

from __future__ import annotations

import pytest

from switchyard.common.topics import TOPIC_SPECS, Topics


def test_every_spec_gives_a_prefixed_topic_attribute() -> None:
    topics = Topics("acme")
    for spec in TOPIC_SPECS:
        assert getattr(topics, spec.suffix.replace(".", "_")) == f"acme.{spec.suffix}"
    assert topics.requests_interactive == "acme.requests.interactive"
    assert topics.auth_events == "acme.auth.events"
    assert [name for name, _ in topics.all()] == [f"acme.{s.suffix}" for s in TOPIC_SPECS]


def test_a_topic_no_spec_declares_is_an_attribute_error_naming_the_known_ones() -> None:
    with pytest.raises(AttributeError, match="no topic spec gives 'request_interactive'") as err:
        _ = Topics("acme").request_interactive
    assert "requests_interactive" in str(err.value)


def test_topics_list_prints_a_header_row_or_json_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from typer.testing import CliRunner

    from switchyard.common import cli, kafka_admin
    from switchyard.common.testing.tables import table_cells

    async def listed(servers: str, prefix: str) -> dict[str, int]:
        return {f"{prefix}.requests.interactive": 6, f"{prefix}.dlq": 1}

    monkeypatch.setattr(kafka_admin, "list_topics", listed)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:18773")
    monkeypatch.setenv("SWITCHYARD_TOPIC_PREFIX", "sy")
    plain = CliRunner().invoke(cli.app, ["topics", "list"])
    assert plain.exit_code == 0, plain.output
    assert plain.stdout.splitlines()[0].split() == ["topic", "partitions"]
    assert table_cells(plain.stdout) == [
        {"topic": "sy.dlq", "partitions": "1"},
        {"topic": "sy.requests.interactive", "partitions": "6"},
    ]
    as_json = CliRunner().invoke(cli.app, ["topics", "list", "--json"])
    assert [json.loads(line) for line in as_json.stdout.splitlines()] == [
        {"topic": "sy.dlq", "partitions": 1},
        {"topic": "sy.requests.interactive", "partitions": 6},
    ]
