"""Where the milliseconds of one Kafka-mode chat completion go, from its trace.

Run Kafka mode with OpenTelemetry's console exporter, keeping the process logs::

    OTEL_TRACES_EXPORTER=console python tests/bench/peers/run.py --modes kafka \\
        --cells c=1 --keep build/trace
    python tests/bench/peers/breakdown.py build/trace/kafka

Every service prints its finished spans (JSON) to its log. For each request, this joins
the gateway's HTTP server span, its ``<prefix>.requests.* publish`` span, inference's
``process`` span, the upstream call (``chat <model>``, a CLIENT span), inference's
``replies`` and ``usage`` publishes and the gateway's ``replies process`` span on the
trace id, and prints the median of each stretch between them (all processes share the
machine's clock). Tracing itself costs time on every hop: compare the traced total with
an untraced run's p50.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from datetime import datetime
from pathlib import Path


def spans_in(text: str) -> list[dict]:
    """Every JSON object that starts at the beginning of a line and is a span."""
    decoder = json.JSONDecoder()
    spans, index = [], 0
    while True:
        index = text.find("{\n", index)
        if index < 0:
            return spans
        try:
            value, end = decoder.raw_decode(text, index)
        except json.JSONDecodeError:
            index += 1
            continue
        if isinstance(value, dict) and "context" in value and "start_time" in value:
            spans.append(value)
        index = end


def seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def service(span: dict) -> str:
    return span["resource"]["attributes"].get("service.name", "").removeprefix("switchyard-")


STRETCHES = [
    ("gateway: HTTP parse, auth, admission, building the event", "server", 0, "req_pub", 0),
    ("produce the request (acks=all round trip)", "req_pub", 0, "req_pub", 1),
    ("broker → inference's fetch → handler starts", "req_pub", 1, "req_proc", 0),
    ("inference: decode, route, build the upstream call", "req_proc", 0, "upstream", 0),
    ("upstream call (nginx, instant)", "upstream", 0, "upstream", 1),
    ("inference: read the answer, build the reply event", "upstream", 1, "reply_pub", 0),
    ("produce the reply (acks=all round trip)", "reply_pub", 0, "reply_pub", 1),
    ("broker → gateway's reply fetch → listener", "reply_pub", 1, "reply_proc", 0),
    ("gateway: hand over, write the HTTP response", "reply_proc", 0, "server", 1),
]


def analyse(directory: Path) -> str:
    by_trace: dict[str, dict[str, tuple[float, float]]] = defaultdict(dict)
    usage_after_reply = []
    for log in sorted(directory.glob("*.log")):
        for span in spans_in(log.read_text(errors="replace")):
            name, who = span["name"], service(span)
            trace = span["context"]["trace_id"]
            window = (seconds(span["start_time"]), seconds(span["end_time"]))
            key = None
            if who == "gateway" and name == "POST /v1/chat/completions":
                key = "server"
            elif who == "gateway" and ".requests." in name and name.endswith(" publish"):
                key = "req_pub"
            elif who == "inference" and ".requests." in name and name.endswith(" process"):
                key = "req_proc"
            elif who == "inference" and name.startswith("chat "):
                key = "upstream"
            elif who == "inference" and name.endswith(".replies publish"):
                key = "reply_pub"
            elif who == "inference" and name.endswith(".usage publish"):
                key = "usage_pub"
            elif who == "gateway" and name.endswith(".replies process"):
                key = "reply_proc"
            if key is not None:
                by_trace[trace][key] = window
    complete = [
        t
        for t in by_trace.values()
        if all(k in t for k in ("server", "req_pub", "req_proc", "upstream", "reply_pub"))
        and "reply_proc" in t
    ]
    # Only requests that were alone in the gateway (the c=1 cell, not the warm-up at c=16).
    complete.sort(key=lambda t: t["server"][0])
    complete = [
        t
        for i, t in enumerate(complete)
        if (i == 0 or complete[i - 1]["server"][1] <= t["server"][0])
        and (i + 1 == len(complete) or t["server"][1] <= complete[i + 1]["server"][0])
    ]
    if not complete:
        return "no complete traces found (was OTEL_TRACES_EXPORTER=console set?)"
    lines = [
        f"{len(complete)} requests traced, each alone in the gateway; medians in ms.",
        "",
        "| stretch | p50 ms |",
        "|---|---:|",
    ]
    total = 0.0
    for label, a, ai, b, bi in STRETCHES:
        value = statistics.median((t[b][bi] - t[a][ai]) * 1000 for t in complete)
        total += value
        lines.append(f"| {label} | {value:.2f} |")
    server = statistics.median((t["server"][1] - t["server"][0]) * 1000 for t in complete)
    lines.append(f"| sum of the medians | {total:.2f} |")
    lines.append(f"| gateway server span (median) | {server:.2f} |")
    for t in complete:
        if "usage_pub" in t:
            usage_after_reply.append((t["usage_pub"][0] - t["reply_pub"][1]) * 1000)
    if usage_after_reply:
        lines.append(
            "",
        )
        lines.append(
            f"The usage event is published {statistics.median(usage_after_reply):+.2f} ms "
            "(median) after the reply's acknowledgement (negative: before it)."
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(analyse(Path(sys.argv[1] if len(sys.argv) > 1 else ".")))
