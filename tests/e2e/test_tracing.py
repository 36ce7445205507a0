"""One trace across all four services: the gateway's request span, the auth key lookup,
the inference consumer and provider call spans and the history write, linked through
W3C trace context in HTTP and Kafka headers, exported with OTLP to a collector that this
test runs on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from switchyard.common.testing.infra import unique_prefix, wait_until
from switchyard.common.testing.processes import free_port

pytestmark = pytest.mark.e2e


class Collector:
    """Receives OTLP/HTTP protobuf exports; keeps (service, span name, kind) per trace id."""

    def __init__(self) -> None:
        self.spans: dict[str, list[tuple[str, str, int, dict]]] = defaultdict(list)
        self.lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                collector.add(request)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *_args) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, request: ExportTraceServiceRequest) -> None:
        with self.lock:
            for resource_spans in request.resource_spans:
                service = next(
                    a.value.string_value
                    for a in resource_spans.resource.attributes
                    if a.key == "service.name"
                )
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        attributes = {a.key: _value(a.value) for a in span.attributes}
                        self.spans[span.trace_id.hex()].append(
                            (service, span.name, span.kind, attributes)
                        )

    def close(self) -> None:
        self.server.shutdown()


def _value(value):
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


@pytest.fixture(scope="module")
def traced(system):
    """Auth, history, inference and gateway exporting traces, on their own topics."""
    collector = Collector()
    prefix = unique_prefix("sytrace")
    env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "SWITCHYARD_TOPIC_PREFIX": prefix,
        "SWITCHYARD_HISTORY_GROUP": "history-traced",
        "SWITCHYARD_INFERENCE_GROUP": "inference-traced",
        "SWITCHYARD_INFERENCE_BATCH_GROUP": "inference-batch-traced",
    }
    ports = {name: free_port() for name in ("auth", "history", "inference", "gateway")}
    env["SWITCHYARD_AUTH_URL"] = f"http://127.0.0.1:{ports['auth']}"
    env["SWITCHYARD_HISTORY_URL"] = f"http://127.0.0.1:{ports['history']}"
    system.cli("topics", "create", env=env)
    for name in ("auth", "history", "inference", "gateway"):
        system.start_service(f"{name}-traced", name, port=ports[name], env=env)
    # A key no gateway has seen: its first use makes the gateway ask auth, inside the trace.
    key = json.loads(system.cli("keys", "create", "--email", system.email, "--json"))["key"]
    yield {"gateway": f"http://127.0.0.1:{ports['gateway']}", "collector": collector, "key": key}
    collector.close()


def test_one_trace_links_spans_from_all_four_services(traced):
    client = openai.OpenAI(base_url=traced["gateway"] + "/v1", api_key=traced["key"], max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="sim-small", messages=[{"role": "user", "content": "trace me"}]
    )
    assert raw.parse().choices[0].message.content == "Simulated reply to: trace me"
    collector: Collector = traced["collector"]

    def trace_with_every_service():
        # Each service exports its spans in its own batches, so history's HTTP span can
        # arrive before its Kafka consumer span: wait for the whole trace, not its first part.
        with collector.lock:
            candidates = list(collector.spans)
        for trace_id in candidates:
            with collector.lock:
                spans = list(collector.spans[trace_id])
            services = {service for service, _, _, _ in spans}
            history_consumed = any(
                service == "switchyard-history" and attrs.get("messaging.system") == "kafka"
                for service, _, _, attrs in spans
            )
            provider_called = any(
                service == "switchyard-inference" and name.startswith("chat ")
                for service, name, _, _ in spans
            )
            if (
                services
                >= {
                    "switchyard-gateway",
                    "switchyard-auth",
                    "switchyard-inference",
                    "switchyard-history",
                }
                and history_consumed
                and provider_called
            ):
                return trace_id
        return None

    trace_id = wait_until(
        trace_with_every_service,
        timeout=30,
        message="one trace with spans from gateway, auth, inference and history",
    )
    spans = collector.spans[trace_id]
    provider_calls = [
        attrs
        for service, name, _, attrs in spans
        if service == "switchyard-inference" and name.startswith("chat ")
    ]
    assert provider_calls, spans
    assert provider_calls[0]["gen_ai.provider.name"] == "openai"
    assert provider_calls[0]["gen_ai.request.model"] == "sim-small"
    assert provider_calls[0]["gen_ai.response.model"]
    assert provider_calls[0]["gen_ai.usage.input_tokens"] >= 1
    consumer_spans = [
        attrs
        for service, _, _, attrs in spans
        if service == "switchyard-history" and attrs.get("messaging.system") == "kafka"
    ]
    assert consumer_spans
