"""`switchyard replay ...` as a user reads it: a report with pairs in every state (settled,
sent but not answered yet, pending, not replayable) printed as a table, CSV and JSON, and
the other commands, against a fake of the gateway's `/v1/replays` API."""

from __future__ import annotations

import copy
import csv
import io
import json
from typing import Any

import httpx
import pytest
import typer
from typer.testing import CliRunner

from switchyard.gateway.replay_cli import replay_app


def _side(request_id: str | None, model: str | None, status: str | None, **numbers: Any):
    return {
        "request_id": request_id,
        "model": model,
        "status": status,
        "latency_ms": numbers.get("latency_ms"),
        "input_tokens": numbers.get("input_tokens"),
        "output_tokens": numbers.get("output_tokens"),
        "cost_usd": numbers.get("cost_usd"),
    }


def _pair(position: int, state: str, original, replay, **rest: Any) -> dict[str, Any]:
    return {
        "position": position,
        "state": state,
        "replayable": state != "not_replayable",
        "reason": rest.get("reason"),
        "original": original,
        "replay": replay,
        "exact_match": rest.get("exact_match"),
        "similarity": rest.get("similarity"),
    }


REPORT: dict[str, Any] = {
    "id": "rp1",
    "object": "replay",
    "status": "completed",
    "to_model": "sim-large",
    "rate": "5/s",
    "bill_to": "caller",
    "total": 4,
    "created_at": "2026-01-01T00:00:00Z",
    "completed_at": "2026-01-01T00:00:05Z",
    "counts": {"pending": 1, "sending": 0, "sent": 1, "settled": 1, "not_replayable": 1},
    "totals": {
        "original": {
            "requests": 2,
            "completed": 2,
            "errors": 0,
            "pending": 0,
            "input_tokens": 6,
            "output_tokens": 12,
            "cost_usd": 0.000021,
            "latency_ms_mean": 1.5,
        },
        "replay": {
            "requests": 2,
            "completed": 0,
            "errors": 1,
            "pending": 1,
            "input_tokens": 3,
            "output_tokens": 0,
            "cost_usd": 0.000099,
            "latency_ms_mean": 23.25,
        },
        "cost_delta_usd": 0.000078,
        "latency_delta_ms": 21.75,
        "not_replayable": 1,
        "compared": 1,
        "exact_matches": 0,
        "similarity_mean": 0.25,
    },
    "data": [
        _pair(
            0,
            "settled",
            _side("orig-a", "sim-small", "completed", latency_ms=1.25, cost_usd=0.000012),
            _side("repl-a", "sim-large", "failed", latency_ms=23.25, cost_usd=0.000099),
            exact_match=False,
            similarity=0.25,
        ),
        _pair(
            1,
            "sent",
            _side("orig-b", "sim-small", "completed", latency_ms=1.75, cost_usd=0.0000105),
            _side("repl-b", None, None),
        ),
        _pair(2, "pending", _side("orig-c", "sim-claude", "completed", latency_ms=2.0), None),
        _pair(
            3,
            "not_replayable",
            _side("orig-d", "sim-small", "completed"),
            None,
            reason="stored metadata only",
        ),
    ],
    "next_after": None,
}


@pytest.fixture
def gateway(monkeypatch) -> list[httpx.Request]:
    """The CLI's HTTP client talks to a fake gateway serving REPORT; returns its requests."""
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        path = request.url.path
        if request.method == "POST" and path == "/v1/replays":
            return httpx.Response(201, json={**REPORT, "status": "running", "data": []})
        if path == "/v1/replays" and request.method == "GET":
            if request.url.params.get("status") == "expired":  # none in that state
                return httpx.Response(200, json={"object": "list", "data": [], "next_cursor": None})
            # Two pages: the second after the first's cursor.
            if request.url.params.get("cursor") == "page-2":
                later = {**REPORT, "id": "rp0", "status": "stopped"}
                return httpx.Response(
                    200, json={"object": "list", "data": [later], "next_cursor": None}
                )
            return httpx.Response(
                200, json={"object": "list", "data": [REPORT], "next_cursor": "page-2"}
            )
        if path.endswith(("/stop", "/resume")):
            status = "stopped" if path.endswith("/stop") else "running"
            return httpx.Response(200, json={**REPORT, "status": status, "data": []})
        if path == "/v1/replays/rp1":
            return httpx.Response(200, json=REPORT)
        return httpx.Response(404, json={"error": {"message": "Replay not found."}})

    client = httpx.Client

    def with_fake(*args: Any, **kwargs: Any) -> httpx.Client:
        return client(*args, transport=httpx.MockTransport(handle), **kwargs)

    monkeypatch.setattr(httpx, "Client", with_fake)  # the one the CLI builds
    monkeypatch.setenv("SWITCHYARD_API_KEY", "sk-sy-test")
    return seen


def run(*args: str):
    root = typer.Typer()
    root.add_typer(replay_app)
    return CliRunner().invoke(root, ["replay", *args], catch_exceptions=False)


def _table(output: str) -> tuple[list[str], list[dict[str, str]]]:
    """The table's titles and rows as a reader lines them up: each column starts where its
    title starts in the header line, and a rule of dashes under it starts every column."""
    lines = output.splitlines()
    header = lines[0]
    titles = [t for t in header.split("  ") if t.strip()]
    starts = []
    position = 0
    for title in titles:
        position = header.index(title.strip(), position)
        starts.append(position)
        position += len(title.strip())
    ends = [*starts[1:], None]
    rule = lines[1]
    assert set(rule.replace(" ", "")) == {"-"}, rule
    assert [rule.index("-", s) for s in starts] == starts, "a column starts off its rule"
    body = lines[2 : lines.index("")]
    rows = [
        {t.strip(): line[s:e].strip() for t, s, e in zip(titles, starts, ends, strict=True)}
        for line in body
    ]
    return [t.strip() for t in titles], rows


@pytest.mark.parametrize(
    "command", [("show", "rp1"), ("--since", "1h", "--to-model", "sim-large", "--wait")]
)
def test_the_table_shows_each_side_of_every_pair(gateway, command):
    result = run(*command)

    assert result.exit_code == 0, result.output
    titles, rows = _table(result.stdout)
    assert len(titles) == len(set(titles))  # every column named once
    for side in ("orig", "replay"):
        assert {f"{side} status", f"{side} ms", f"{side} cost"} <= set(titles)
    settled, sent, pending, not_replayable = rows
    assert (settled["orig status"], settled["replay status"]) == ("completed", "failed")
    assert (settled["orig ms"], settled["replay ms"]) == ("1.2", "23.2")
    assert (settled["orig cost"], settled["replay cost"]) == ("0.000012", "0.000099")
    assert (settled["orig model"], settled["replay model"]) == ("sim-small", "sim-large")
    assert (settled["exact"], settled["similarity"], settled["note"]) == ("no", "0.2500", "")
    assert (sent["original"], sent["replay status"], sent["note"]) == ("orig-b", "", "sent")
    assert (pending["orig model"], pending["replay model"], pending["note"]) == (
        "sim-claude",
        "",
        "pending",
    )
    assert not_replayable["note"] == "stored metadata only"
    summary = result.stdout.split("\n\n", 1)[1]
    assert "replay rp1 completed: 4 selected, 2 sent, 1 not replayable" in summary
    assert "cost: 0.000021 -> 0.000099 USD (delta +0.000078)" in summary
    assert "latency (mean): 1.5 -> 23.2 ms" in summary
    assert "exact matches 0/1; mean similarity 0.2500" in summary


def test_csv_has_one_column_per_field_of_each_side(gateway):
    result = run("show", "rp1", "--format", "csv")

    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    header = result.stdout.splitlines()[0].split(",")
    assert len(header) == len(set(header))
    assert [row["original_id"] for row in rows] == ["orig-a", "orig-b", "orig-c", "orig-d"]
    settled, sent, pending, not_replayable = rows
    assert (settled["original_status"], settled["replay_status"]) == ("completed", "failed")
    assert (settled["original_latency_ms"], settled["replay_latency_ms"]) == ("1.25", "23.25")
    assert (settled["replay_id"], settled["exact_match"], settled["similarity"]) == (
        "repl-a",
        "False",
        "0.25",
    )
    assert (sent["replay_id"], sent["replay_status"], sent["note"]) == ("repl-b", "", "sent")
    assert (pending["replay_id"], pending["replay_model"], pending["note"]) == ("", "", "pending")
    assert not_replayable["note"] == "stored metadata only"


def test_json_is_the_whole_report(gateway):
    result = run("show", "rp1", "--format", "json")

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == REPORT


def test_a_report_without_pairs_or_means_prints_the_table_header_and_totals(gateway, monkeypatch):
    empty = copy.deepcopy(REPORT)
    empty["data"] = []
    empty["totals"]["original"]["latency_ms_mean"] = None
    empty["totals"]["latency_delta_ms"] = None
    empty["totals"]["similarity_mean"] = None
    monkeypatch.setitem(REPORT, "data", [])
    monkeypatch.setitem(REPORT, "totals", empty["totals"])

    result = run("show", "rp1")

    assert result.exit_code == 0, result.output
    titles, rows = _table(result.stdout)
    assert "replay status" in titles and rows == []
    assert "latency (mean)" not in result.stdout
    assert "mean similarity -" in result.stdout


def test_list_asks_for_a_status(gateway):
    listed = run("list", "--status", "running,stopped")

    assert listed.exit_code == 0
    lists = [r for r in gateway if r.method == "GET" and r.url.path == "/v1/replays"]
    assert lists[0].url.params["status"] == "running,stopped"


def test_list_stop_and_resume(gateway):
    listed = run("list")
    stopped = run("stop", "rp1")
    resumed = run("resume", "rp1", "--format", "csv")

    assert listed.exit_code == stopped.exit_code == resumed.exit_code == 0
    titles, rows = _table(listed.stdout + "\n")
    assert titles == ["id", "status", "requests", "to_model", "created_at"]
    assert [list(row.values()) for row in rows] == [
        ["rp1", "completed", "4", "sim-large", "2026-01-01T00:00:00Z"],
        ["rp0", "stopped", "4", "sim-large", "2026-01-01T00:00:00Z"],
    ]
    assert stopped.stdout == "replay rp1 stopped\n"
    assert "replay rp1 running" in resumed.stderr
    assert resumed.stdout.splitlines()[0].startswith("original_id,")
    assert [r.method + " " + r.url.path for r in gateway][-2:] == [
        "POST /v1/replays/rp1/resume",
        "GET /v1/replays/rp1",
    ]


def test_an_empty_list_still_prints_its_header_row(gateway):
    listed = run("list", "--status", "expired")

    assert listed.exit_code == 0
    titles, rows = _table(listed.stdout + "\n")
    assert titles == ["id", "status", "requests", "to_model", "created_at"]
    assert rows == []


def test_an_unknown_replay_is_one_line_on_stderr_and_exit_1(gateway):
    result = run("show", "nope")

    assert result.exit_code == 1
    assert result.stderr == "error: Replay not found. (HTTP 404)\n"
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("command", "path"),
    [
        (("show", "../../v1/usage"), "/v1/replays/..%2F..%2Fv1%2Fusage"),
        (
            ("stop", "../../v1/jobs/job-1/cancel#"),
            "/v1/replays/..%2F..%2Fv1%2Fjobs%2Fjob-1%2Fcancel%23/stop",
        ),
        (("resume", "a/b?c"), "/v1/replays/a%2Fb%3Fc/resume"),
        (("show", "a\nb"), "/v1/replays/a%0Ab"),
    ],
)
def test_a_replay_id_stays_one_path_segment_whatever_it_holds(gateway, command, path):
    run(*command)

    # Percent-encoded: one segment after /v1/replays/, never another route of the gateway.
    assert gateway[0].url.raw_path.decode().split("?")[0] == path
