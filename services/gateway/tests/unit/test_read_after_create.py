"""A client that creates something and reads it at once gets it: history records a
request from the bus, moments after the gateway answered, so the gateway waits (bounded)
for a response or job it may have just answered before relaying history's 404.

History is played by a fake that answers 404 for the first reads, as history does while
the request's events are still on their way."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
import pytest

from switchyard.common.events import new_id, utcnow
from switchyard.common.headers import RECORDED_HEADER
from switchyard.common.responses import response_id
from switchyard.gateway.config import Settings

from .conftest import API_KEY

AUTH = {"authorization": f"Bearer {API_KEY}"}
HISTORY = "http://history.test"
WAIT_S = 1.0


class LaggingHistory:
    """History that has not recorded anything for its first `lag` reads of each path."""

    def __init__(self, lag: int, code: str, headers: dict[str, str] | None = None) -> None:
        self.lag = lag
        self.code = code
        self.headers = headers
        self.reads: dict[str, list[httpx.Request]] = {}

    def handle(self, request: httpx.Request) -> httpx.Response:
        reads = self.reads.setdefault(request.url.path, [])
        reads.append(request)
        if len(reads) <= self.lag:
            return httpx.Response(
                404,
                json={"error": {"message": "not found", "type": "x", "code": self.code}},
                headers=self.headers,
            )
        if request.url.path.endswith("/input_items"):
            return httpx.Response(
                200, json={"object": "list", "data": [{"id": "msg_1"}], "has_more": False}
            )
        return httpx.Response(200, json={"id": request.url.path.rsplit("/", 1)[1]})


@pytest.fixture
def settings() -> Settings:
    return Settings(
        request_timeout_s=2.0,
        topic_prefix="unit",
        history_url=HISTORY,
        responses_state_wait_s=WAIT_S,
    )


def made_by_gateway(harness) -> str:
    """A request id as the gateway makes them (one whose responses it waits for)."""
    return harness.app.state.gateway.request_ids.new()


def with_history(harness, history: LaggingHistory) -> None:
    auth = harness.auth.handle

    def handle(request: httpx.Request) -> httpx.Response:
        if str(request.url).startswith(HISTORY):
            return history.handle(request)
        return auth(request)

    harness.upstreams.route = handle


@pytest.mark.parametrize("suffix", ["/input_items", ""], ids=["input_items", "retrieve"])
async def test_a_response_answered_moments_ago_is_read_once_history_records_it(harness, suffix):
    history = LaggingHistory(lag=3, code="response_not_found")
    with_history(harness, history)
    just_answered = response_id(made_by_gateway(harness), utcnow())

    answer = await harness.client.get(
        f"/v1/responses/{just_answered}{suffix}", params={"limit": "2"}, headers=AUTH
    )

    assert answer.status_code == 200, answer.text
    reads = history.reads[f"/v1/responses/{just_answered}{suffix}"]
    assert len(reads) == 4
    if suffix:  # the page the client asked for, on every read
        assert all(read.url.params["limit"] == "2" for read in reads)
        assert answer.json()["data"] == [{"id": "msg_1"}]


@pytest.mark.parametrize(
    "read", ["", "/input_items", "previous_response_id"], ids=["retrieve", "items", "chained"]
)
async def test_another_callers_response_is_not_found_at_once(harness, read):
    """History knows the id's request but not as the caller's (another tenant's or user's):
    404 at once, as for an id never made, never after the wait for a response still on
    its way (which would tell the two apart, and hold the client for nothing)."""
    history = LaggingHistory(lag=1000, code="response_not_found", headers={RECORDED_HEADER: "true"})
    with_history(harness, history)
    someone_elses = response_id(made_by_gateway(harness), utcnow())

    if read == "previous_response_id":
        answer = await harness.client.post(
            "/v1/responses",
            json={"model": "sim-small", "input": "hi", "previous_response_id": someone_elses},
            headers=AUTH,
        )
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["code"] == "previous_response_not_found"
    else:
        answer = await harness.client.get(f"/v1/responses/{someone_elses}{read}", headers=AUTH)
        assert answer.status_code == 404, answer.text
        assert answer.json()["error"]["code"] == "response_not_found"
    assert RECORDED_HEADER not in answer.headers
    assert sum(len(reads) for reads in history.reads.values()) == 1


class UnfinishedHistory:
    """History that has recorded a response but shows it `in_progress` for its first `lag`
    reads, as while the response's completion is still on its way."""

    def __init__(self, lag: int) -> None:
        self.lag = lag
        self.reads = 0

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.reads += 1
        status = "in_progress" if self.reads <= self.lag else "completed"
        return httpx.Response(
            200, json={"id": request.url.path.rsplit("/", 1)[1], "status": status}
        )


async def test_a_response_this_replica_finished_is_read_finished(harness):
    # The client has the completed response (this replica relayed it): reading it at once
    # waits for history to record the completion instead of showing it in progress.
    history = UnfinishedHistory(lag=3)
    with_history(harness, history)  # type: ignore[arg-type]
    finished_here = response_id(made_by_gateway(harness), utcnow())
    harness.app.state.gateway.answered_responses.add(finished_here)

    answer = await harness.client.get(f"/v1/responses/{finished_here}", headers=AUTH)

    assert answer.status_code == 200
    assert answer.json()["status"] == "completed"
    assert history.reads == 4


async def test_a_response_in_progress_elsewhere_is_shown_in_progress(harness):
    # Not finished by this replica (e.g. still streaming, or a background response): its
    # current state is the answer, at once.
    history = UnfinishedHistory(lag=3)
    with_history(harness, history)  # type: ignore[arg-type]
    running = response_id(made_by_gateway(harness), utcnow())

    answer = await harness.client.get(f"/v1/responses/{running}", headers=AUTH)

    assert answer.json()["status"] == "in_progress"
    assert history.reads == 1


async def test_an_old_response_is_not_waited_for(harness):
    history = LaggingHistory(lag=3, code="response_not_found")
    with_history(harness, history)
    long_ago = response_id(made_by_gateway(harness), utcnow() - timedelta(days=2))

    answer = await harness.client.get(f"/v1/responses/{long_ago}/input_items", headers=AUTH)

    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "response_not_found"
    assert len(history.reads[f"/v1/responses/{long_ago}/input_items"]) == 1


async def test_the_wait_for_a_response_history_never_records_is_bounded(harness):
    history = LaggingHistory(lag=10_000, code="response_not_found")
    with_history(harness, history)
    just_answered = response_id(made_by_gateway(harness), utcnow())

    answer = await harness.client.get(f"/v1/responses/{just_answered}/input_items", headers=AUTH)

    assert answer.status_code == 404
    reads = history.reads[f"/v1/responses/{just_answered}/input_items"]
    # Backoff from 5 ms doubling to 500 ms within WAIT_S: a handful of reads, not a flood.
    assert 2 <= len(reads) <= 10


async def test_only_a_few_reads_of_one_user_wait_at_once(harness):
    # Ids a gateway made, but history records none of them: the first reads wait their
    # bound, the ones beyond the user's share get history's answer at once, so one client
    # cannot hold any number of requests open (each asking history again and again).
    from switchyard.gateway.api.history import MAX_WAITING_READS_PER_USER

    history = LaggingHistory(lag=10_000, code="response_not_found")
    with_history(harness, history)
    ids = [
        response_id(made_by_gateway(harness), utcnow())
        for _ in range(MAX_WAITING_READS_PER_USER + 4)
    ]

    answers = await asyncio.gather(
        *(harness.client.get(f"/v1/responses/{value}", headers=AUTH) for value in ids)
    )

    assert all(answer.status_code == 404 for answer in answers)
    reads = [len(history.reads[f"/v1/responses/{value}"]) for value in ids]
    assert sum(1 for count in reads if count > 1) == MAX_WAITING_READS_PER_USER
    assert sum(1 for count in reads if count == 1) == 4
    assert not harness.app.state.gateway.waiting_reads  # every share given back


@pytest.mark.parametrize("suffix", ["/input_items", ""], ids=["input_items", "retrieve"])
async def test_a_made_up_response_id_is_not_waited_for(harness, suffix):
    # Stamped now, but its request id is none a gateway made: answered at once, so made-up
    # ids cannot hold requests open (and history busy) for the state wait.
    history = LaggingHistory(lag=3, code="response_not_found")
    with_history(harness, history)
    genuine = made_by_gateway(harness)
    tampered = genuine[:-1] + ("0" if genuine[-1] != "0" else "1")

    for request_id in (new_id(), tampered, "a" * 31):
        forged = response_id(request_id, utcnow())
        answer = await harness.client.get(f"/v1/responses/{forged}{suffix}", headers=AUTH)
        assert answer.status_code == 404
        assert len(history.reads[f"/v1/responses/{forged}{suffix}"]) == 1


async def test_a_job_read_right_after_it_was_created_is_found(harness):
    history = LaggingHistory(lag=2, code="job_not_found")
    with_history(harness, history)
    created = await harness.client.post(
        "/v1/jobs",
        headers=AUTH,
        json={"model": "sim-small", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]

    answer = await harness.client.get(f"/v1/jobs/{job_id}", headers=AUTH)

    assert answer.status_code == 200, answer.text
    assert answer.json()["id"] == job_id
    assert len(history.reads[f"/v1/jobs/{job_id}"]) == 3


async def test_a_job_not_accepted_here_is_not_waited_for(harness):
    history = LaggingHistory(lag=2, code="job_not_found")
    with_history(harness, history)
    unknown = new_id()

    answer = await harness.client.get(f"/v1/jobs/{unknown}", headers=AUTH)

    assert answer.status_code == 404
    assert len(history.reads[f"/v1/jobs/{unknown}"]) == 1
