"""The AsyncAPI document of every Switchyard topic, generated from the event models
(`events.py`) and the topic specs (`topics.py`), so it cannot drift from the code.

Format: AsyncAPI 3.0.0 (https://www.asyncapi.com/docs/reference/specification/v3.0.0).
Each topic is a channel whose address carries the deployment's prefix as a parameter;
each event type is a message whose payload schema is the event's JSON Schema and whose
Kafka headers are the ones every Switchyard producer sets. Operations describe what
Switchyard's services send; subscribers (analytics, billing, evaluation) receive from
the same channels. `switchyard events asyncapi` writes it (docs/events/asyncapi.json).
"""

from __future__ import annotations

from typing import Any, cast

from switchyard.common.events import EVENT_CLASSES, SCHEMA_VERSION, EnvelopeFields
from switchyard.common.topics import TOPIC_SPECS

_REF = "#/components/schemas/{model}"

# Headers on every record (bus/kafka.py), plus W3C trace context when tracing is on.
_HEADERS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "type": {"type": "string", "description": "The event's `type`."},
        "schema_version": {"type": "string", "description": "The event's `schema_version`."},
        "request_id": {"type": "string"},
        "source": {"type": "string", "description": "Service that published the event."},
        "traceparent": {"type": "string", "description": "W3C trace context, when traced."},
        "tracestate": {"type": "string"},
    },
    "required": ["type", "schema_version", "request_id", "source"],
}


def _event_type(cls: type[EnvelopeFields]) -> str:
    return cast(str, cls.model_fields["type"].default)


def _channel_id(suffix: str) -> str:
    head, *rest = suffix.replace("-", ".").split(".")
    return head + "".join(part.capitalize() for part in rest)


def asyncapi_document() -> dict[str, Any]:
    """The AsyncAPI 3.0 document (a JSON-ready dict) of every topic and event."""
    schemas: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    by_type: dict[str, str] = {}
    for cls in EVENT_CLASSES:
        schema = cls.model_json_schema(ref_template=_REF)
        schemas.update(schema.pop("$defs", {}))
        schemas[cls.__name__] = schema
        event_type = _event_type(cls)
        by_type[event_type] = cls.__name__
        messages[cls.__name__] = {
            "name": event_type,
            "title": cls.__name__,
            "summary": (cls.__doc__ or schema.get("description") or event_type).strip(),
            "contentType": "application/json",
            "headers": _HEADERS_SCHEMA,
            "payload": {"$ref": _REF.format(model=cls.__name__)},
        }

    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for spec in TOPIC_SPECS:
        channel_id = _channel_id(spec.suffix)
        channel_messages = {
            by_type[event_type]: {"$ref": f"#/components/messages/{by_type[event_type]}"}
            for event_type in spec.event_types
        }
        channels[channel_id] = {
            "address": "{prefix}." + spec.suffix,
            "title": spec.suffix,
            "description": f"{spec.description} Partitions: {spec.partitions}. "
            f"Record key: {spec.key}.",
            "parameters": {"prefix": {"$ref": "#/components/parameters/prefix"}},
            "messages": channel_messages,
            "bindings": {"kafka": {"topic": spec.suffix, "partitions": spec.partitions}},
        }
        if channel_messages:
            operations[f"send{channel_id[0].upper()}{channel_id[1:]}"] = {
                "action": "send",
                "channel": {"$ref": f"#/channels/{channel_id}"},
                "summary": f"Published by: {', '.join(spec.producers)}.",
                "messages": [
                    {"$ref": f"#/channels/{channel_id}/messages/{name}"}
                    for name in channel_messages
                ],
            }

    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Switchyard events",
            "version": f"{SCHEMA_VERSION}.0.0",
            "description": "Every topic of a Switchyard deployment and the events on it. "
            "Events are JSON envelopes (`id`, `type`, `source`, `time`, `tenant`, "
            "`request_id`, `schema_version`, `data`); consumers deduplicate on `id`. "
            "The JSON Schema of every event is in `components.schemas`.",
            "license": {"name": "Apache-2.0"},
        },
        "defaultContentType": "application/json",
        "servers": {
            "kafka": {
                "host": "127.0.0.1:9092",
                "protocol": "kafka",
                "description": "The broker given by KAFKA_BOOTSTRAP_SERVERS.",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": schemas,
            "messages": messages,
            "parameters": {
                "prefix": {
                    "default": "switchyard",
                    "description": "The deployment's SWITCHYARD_TOPIC_PREFIX.",
                }
            },
        },
    }
