"""Reading stored requests: their documents (request body, response, input items, error)
are read as JSON text and decoded by history itself, in a worker thread when they are
large, never by the database driver on the event loop; what comes back is what was
stored, exactly."""

from __future__ import annotations

import threading

import pytest

from switchyard.common.offloop import OFF_LOOP_BYTES
from switchyard.history import queries as history_queries
from switchyard.history.queries import Caller

ALICE = Caller(tenant="acme", user_id="alice", role="user")


@pytest.fixture
def decoding_threads(monkeypatch) -> list[tuple[int, bool]]:
    """(documents' total characters, decoded on the loop's thread), one per decoding."""
    seen: list[tuple[int, bool]] = []
    real = history_queries._decode_documents
    loop_thread = threading.current_thread()

    def recorded(rows):
        size = sum(
            len(row[name])
            for row in rows
            for name in history_queries._DOCUMENTS
            if isinstance(row.get(name), str)
        )
        seen.append((size, threading.current_thread() is loop_thread))
        return real(rows)

    monkeypatch.setattr(history_queries, "_decode_documents", recorded)
    return seen


async def test_a_large_request_is_decoded_off_the_loop_and_a_small_one_on_it(
    recorder, queries, events, decoding_threads
):
    large = events.requested("large", prompt="x" * OFF_LOOP_BYTES)
    small = events.requested("small")
    await recorder.record([large, events.completed(large), small])

    row = await queries.get_request(ALICE, "large")
    assert row is not None
    assert row["request_body"] == large.data.body
    assert row["response"]["choices"][0]["message"]["content"] == "Hi there!"
    assert (await queries.get_request(ALICE, "small"))["response"] is None

    page = await queries.list_requests(ALICE, limit=10)
    assert [item["request_id"] for item in page.items] == ["small", "large"]
    assert page.items[1]["request_body"] == large.data.body

    assert [on_loop for size, on_loop in decoding_threads] == [False, True, False]
    assert decoding_threads[0][0] > OFF_LOOP_BYTES > decoding_threads[1][0]


async def test_documents_come_back_exactly_as_stored(recorder, queries, events):
    request = events.requested("exact")
    body = {
        **request.data.body,
        "metadata": {"big": str(2**70)},
        "seed": 2**70,
        "temperature": 0.1,
        "stop": ["\u00e9\U0001f680", 'a\\"b'],
    }
    request = request.model_copy(update={"data": request.data.model_copy(update={"body": body})})
    await recorder.record([request])
    row = await queries.get_request(ALICE, "exact")
    assert row["request_body"] == body
    assert row["request_body"]["seed"] == 2**70 and row["response"] is None
    assert row["input_items"] is None and row["error"] is None
