"""With tracing on, every service's HTTP request is ONE server span, Switchyard's own
(`TracingMiddleware`): FastAPI's built-in OpenTelemetry instrumentation, which turns itself
on whenever a global tracer provider is set, stays off in the gateway (console included),
auth, history and inference, so a trace holds no second SERVER span and none of FastAPI's
per-request INTERNAL spans."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import asyncio, importlib, json
    import httpx
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from switchyard.common import tracing

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    tracing._enabled = True  # what configure_tracing leaves behind

    async def spans(app, path):
        exporter.clear()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            await client.get(path)
        return [(s.kind.name, s.instrumentation_scope.name) for s in exporter.get_finished_spans()]

    async def main():
        seen = {}
        for service in ("gateway", "auth", "history", "inference"):
            app = importlib.import_module(f"switchyard.{service}.app").create_app()
            seen[service] = await spans(app, "/livez")
        gateway = importlib.import_module("switchyard.gateway.app").create_app()
        seen["console"] = await spans(gateway, "/ui/login")
        print(json.dumps(seen))

    asyncio.run(main())
""")


def test_each_request_is_one_server_span_of_switchyards_own(tmp_path) -> None:
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS")
    }
    # In a directory of its own: each service's default database is under `.switchyard/`
    # of the current directory.
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen == {
        name: [["SERVER", "switchyard"]]
        for name in ("gateway", "auth", "history", "inference", "console")
    }
