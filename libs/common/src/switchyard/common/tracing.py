"""OpenTelemetry tracing for every service, off unless asked for.

Turned on by the standard variables: `OTEL_TRACES_EXPORTER=otlp` (or `console`), or an
`OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; the OTLP exporter
reads its own `OTEL_EXPORTER_OTLP_*` settings. While off, nothing is recorded and the
hot path pays one boolean check.

W3C trace context travels in Kafka headers (`traceparent`, `tracestate`), so one trace
runs gateway → Kafka → inference → provider call → Kafka → history write.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind

_enabled = False


def tracing_enabled() -> bool:
    """Whether `configure_tracing` turned OpenTelemetry tracing on in this process."""
    return _enabled


def configure_tracing(service: str) -> bool:
    """Install the SDK tracer provider if the environment asks for traces."""
    global _enabled
    if _enabled:
        return True
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if exporter_name in ("", "none") and not endpoint:
        return False
    if exporter_name == "none":
        return False

    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    if exporter_name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        exporter: Any = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    resource = Resource.create(
        {
            "service.name": os.environ.get("OTEL_SERVICE_NAME", f"switchyard-{service}"),
            "service.namespace": "switchyard",
        }
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
    trace.set_tracer_provider(provider)
    _enabled = True
    return True


def shutdown_tracing() -> None:
    """Flush spans still buffered (called when a service stops)."""
    provider = trace.get_tracer_provider()
    shutdown = getattr(provider, "shutdown", None)
    if callable(shutdown):
        shutdown()


def tracer(name: str = "switchyard") -> trace.Tracer:
    """The OpenTelemetry tracer called `name` (a no-op tracer while tracing is off)."""
    return trace.get_tracer(name)


def current_trace_headers() -> list[tuple[str, bytes]]:
    """The current trace context as Kafka headers (empty while tracing is off)."""
    if not _enabled:
        return []
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return [(key, value.encode()) for key, value in carrier.items()]


def current_trace_carrier() -> dict[str, str]:
    """The current trace context as a plain dict (for in-process queues and HTTP)."""
    if not _enabled:
        return {}
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def context_from_headers(
    headers: Iterable[tuple[str, bytes]] | None,
) -> otel_context.Context | None:
    """The trace context carried by Kafka record `headers` (name, bytes value pairs:
    W3C `traceparent` and `tracestate`), or None when tracing is off or there is none."""
    if not _enabled or not headers:
        return None
    carrier = {
        key: value.decode(errors="replace")
        for key, value in headers
        if key in ("traceparent", "tracestate")
    }
    return propagate.extract(carrier) if carrier else None


def context_from_carrier(carrier: dict[str, str] | None) -> otel_context.Context | None:
    """The trace context in `carrier` (header name to value, W3C `traceparent` and
    `tracestate`), or None when tracing is off or the carrier is empty."""
    if not _enabled or not carrier:
        return None
    return propagate.extract(carrier)


@contextmanager
def span(
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    parent: otel_context.Context | None = None,
    attributes: dict[str, Any] | None = None,
) -> Iterator[Span | None]:
    """A span made current for the block, or nothing at all while tracing is off."""
    if not _enabled:
        yield None
        return
    with tracer().start_as_current_span(
        name, context=parent, kind=kind, attributes=attributes
    ) as current:
        yield current


def process_span(
    topic: str,
    group: str | None,
    event: Any,
    parent: otel_context.Context | None,
    *,
    partition: int | None = None,
    offset: int | None = None,
) -> AbstractContextManager[Span | None]:
    """The CONSUMER span `<topic> process` of one event being handled, made current for
    the block: a child of `parent` (the trace context the event carried), with the
    attributes of `consumer_span_attributes`. Nothing at all while tracing is off. Used by
    every bus (Kafka, in-memory), so a handler's trace looks the same on either."""
    if not _enabled:
        return nullcontext()
    return span(
        f"{topic} process",
        kind=SpanKind.CONSUMER,
        parent=parent,
        attributes=consumer_span_attributes(topic, partition, offset, group, event),
    )


def consumer_span_attributes(
    topic: str, partition: int | None, offset: int | None, group: str | None, event: Any
) -> dict[str, Any]:
    """The attributes of a consumer's `process` span (OpenTelemetry messaging semantic
    conventions, `messaging.*`, plus the event's type and request id); partition, offset
    and group are included when known."""
    attributes: dict[str, Any] = {
        "messaging.system": "kafka",
        "messaging.operation.type": "process",
        "messaging.destination.name": topic,
        "switchyard.event.type": getattr(event, "type", ""),
        "switchyard.request_id": getattr(event, "request_id", ""),
    }
    if partition is not None:
        attributes["messaging.destination.partition.id"] = str(partition)
    if offset is not None:
        attributes["messaging.kafka.offset"] = offset
    if group is not None:
        attributes["messaging.consumer.group.name"] = group
    return attributes
