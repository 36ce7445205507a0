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
