"""Trace context crosses the bus: a handler runs in the trace of the publisher. Tracing
stays off (and free) unless the OTEL_* variables ask for it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from switchyard.common import tracing

SCRIPT = textwrap.dedent("""
    import asyncio
    from datetime import UTC, datetime, timedelta
    from opentelemetry import trace
    from switchyard.common import tracing
    from switchyard.common.bus import InMemoryBus
    from switchyard.common.events import ChatRequestData, ChatRequested

    async def main():
        assert tracing.configure_tracing("test")
        bus = InMemoryBus()
        seen = asyncio.get_running_loop().create_future()

        async def handler(event):
            seen.set_result(trace.get_current_span().get_span_context().trace_id)

        await bus.subscribe(["t"], "g", handler)
        event = ChatRequested(source="s", tenant="t", request_id="r", data=ChatRequestData(
            api="openai.chat_completions", model="m", body={}, user_id="u",
            deadline=datetime.now(UTC) + timedelta(seconds=5)))
        with tracing.tracer().start_as_current_span("client request") as span:
            sent = span.get_span_context().trace_id
            await bus.publish("t", event)
        received = await asyncio.wait_for(seen, 5)
        print("SAME" if received == sent and sent != 0 else f"DIFFERENT {sent} {received}")
        await bus.stop()
        tracing.shutdown_tracing()

    asyncio.run(main())
""")


def test_handler_runs_in_the_publishers_trace():
    env = {**os.environ, "OTEL_TRACES_EXPORTER": "console"}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60
    )
    assert "SAME" in result.stdout, result.stdout + result.stderr
    # The console exporter printed the consumer span, a child in the same trace.
    assert '"name": "t process"' in result.stdout
    assert '"kind": "SpanKind.CONSUMER"' in result.stdout
    assert '"messaging.consumer.group.name": "g"' in result.stdout


def test_tracing_is_off_without_otel_settings(monkeypatch):
    for name in (
        "OTEL_TRACES_EXPORTER",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ):
        monkeypatch.delenv(name, raising=False)
    assert tracing.configure_tracing("test") is False
    assert tracing.current_trace_headers() == []
    with tracing.span("nothing") as span:
        assert span is None
