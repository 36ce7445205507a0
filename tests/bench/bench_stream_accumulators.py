"""What assembling a long stream costs inference: CPU per stream length; prints a table.

Inference assembles every streamed reply into the whole answer it records (the
`chat.completed` event and its usage), on its event loop, one event at a time: Anthropic's
protocol in `MessageAccumulator` (every `/v1/messages` client, whichever protocol its
deployment speaks), OpenAI's in `CompletionAccumulator`. Each is fed N text deltas of 5
bytes, then asked for the answer; the cost should grow with N, not with N², since a
stream of 200,000 deltas is a few megabytes of text and every millisecond here is one the
loop serves nothing else.

Pure CPU, no network; results go to bench-results/stream-accumulators.md. Usage:
`uv run python tests/bench/bench_stream_accumulators.py [--sizes 10000,50000,200000]`.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable
from typing import Any

from benchkit import markdown_table, write_results

from switchyard.inference.translate import CompletionAccumulator, MessageAccumulator

PIECE = "word "


def feed_message(count: int) -> tuple[float, int]:
    """Seconds to feed `count` Anthropic text deltas and read the message; its text length."""
    accumulator = MessageAccumulator()
    accumulator.add(
        {
            "type": "message_start",
            "message": {"id": "msg_1", "type": "message", "role": "assistant", "content": []},
        }
    )
    accumulator.add(
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    )
    delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta"}}
    began = time.perf_counter()
    for _ in range(count):
        accumulator.add({**delta, "delta": {"type": "text_delta", "text": PIECE}})
    text = accumulator.response()["content"][0]["text"]
    return time.perf_counter() - began, len(text)


def feed_completion(count: int) -> tuple[float, int]:
    """Seconds to feed `count` OpenAI chunks and read the completion; its text length."""
    accumulator = CompletionAccumulator()
    began = time.perf_counter()
    for _ in range(count):
        accumulator.add(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": "m",
                "choices": [{"index": 0, "delta": {"content": PIECE}, "finish_reason": None}],
            }
        )
    text = accumulator.response()["choices"][0]["message"]["content"]
    return time.perf_counter() - began, len(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,50000,200000")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    kinds: list[tuple[str, Callable[[int], tuple[float, int]]]] = [
        ("Anthropic `MessageAccumulator`", feed_message),
        ("OpenAI `CompletionAccumulator`", feed_completion),
    ]
    rows: list[list[str]] = []
    for name, feed in kinds:
        for size in sizes:
            best: float | None = None
            length = 0
            for _ in range(args.repeats):
                gc.collect()
                seconds, length = feed(size)
                best = seconds if best is None else min(best, seconds)
            assert best is not None and length == size * len(PIECE), (name, size, length)
            rows.append([name, f"{size:,}", f"{best * 1000:,.1f}", f"{best / size * 1e6:.2f}"])
    lines: list[Any] = [
        "# Stream accumulators (`tests/bench/bench_stream_accumulators.py`)",
        "",
        f"Each fed N deltas of {len(PIECE)} bytes, then read; the best of {args.repeats}.",
        "",
        *markdown_table(["accumulator", "deltas", "ms", "µs per delta"], rows),
        "",
    ]
    write_results("stream-accumulators.md", "\n".join(lines))


if __name__ == "__main__":
    main()
