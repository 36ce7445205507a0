"""Embedded mode's defaults (`apply_dev_environment`): what `switchyard dev` sets unless
the caller set it, and what it leaves alone."""

from __future__ import annotations

import os

import pytest

from switchyard.common.dev import apply_dev_environment

WAIT = "SWITCHYARD_HISTORY_MAX_BATCH_WAIT_MS"
BATCH = "SWITCHYARD_HISTORY_MAX_BATCH"
INDEX = "SWITCHYARD_INFERENCE_REDELIVERY_INDEX_MAX_MB"


@pytest.fixture
def environ(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    # apply_dev_environment writes os.environ: give it a copy this test owns.
    copy = dict(os.environ)
    copy.pop(WAIT, None)
    copy.pop(BATCH, None)
    copy.pop(INDEX, None)
    monkeypatch.setattr(os, "environ", copy)
    return copy


def test_embedded_history_batches_wait_longer_than_the_services_default(
    environ: dict[str, str],
) -> None:
    apply_dev_environment(plugins=[])

    # One SQLite transaction per request or two would cost the answering loop more CPU
    # than answering; 200 ms gathers many requests' events per transaction.
    assert environ[WAIT] == "200"
    assert environ["SWITCHYARD_BUS"] == "memory"


def test_an_explicit_history_batch_wait_is_kept(environ: dict[str, str]) -> None:
    environ[WAIT] = "5"

    apply_dev_environment(plugins=[])

    assert environ[WAIT] == "5"


def test_embedded_history_batches_are_small_enough_not_to_stall_answers(
    environ: dict[str, str],
) -> None:
    apply_dev_environment(plugins=[])

    # A batch is written on the answering loop without a pause: after a burst, batches of
    # the services' default 1,000 events held the next requests for up to half a second.
    assert environ[BATCH] == "200"


def test_embedded_inference_keeps_a_small_redelivery_index(environ: dict[str, str]) -> None:
    apply_dev_environment(plugins=[])

    # The in-memory bus retries a handler within seconds; the service's 64 MiB is for
    # Kafka's redeliveries minutes later.
    assert environ[INDEX] == "8"
    environ[INDEX] = "32"
    apply_dev_environment(plugins=[])
    assert environ[INDEX] == "32"
