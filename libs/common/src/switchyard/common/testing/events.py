"""Events as tests and benchmarks build them, with the fields they do not care about
filled in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka.structs import ConsumerRecord

from switchyard.common.events import (
    ChatRequestData,
    ChatRequested,
    ClientAPI,
    Event,
    TokenUsage,
    UsageData,
    UsageRecorded,
    encode_event,
    new_id,
)


def chat_requested(
    *,
    tenant: str = "t",
    model: str = "m",
    body: dict[str, Any] | None = None,
    user_id: str = "u",
    api_key_id: str = "k",
    deadline_s: float = 60.0,
    request_id: str | None = None,
) -> ChatRequested:
    """A gateway's `chat.requested` event for `request_id` (default: a new one): a Chat
    Completions `body` (default: `model` and no messages) due within `deadline_s` seconds
    from now."""
    now = datetime.now(UTC)
    return ChatRequested(
        source="gateway",
        tenant=tenant,
        request_id=request_id or new_id(),
        time=now,
        data=ChatRequestData(
            api=ClientAPI.OPENAI_CHAT_COMPLETIONS,
            model=model,
            body={"model": model, "messages": []} if body is None else body,
            user_id=user_id,
            api_key_id=api_key_id,
            deadline=now + timedelta(seconds=deadline_s),
        ),
    )


def consumer_record(topic: str, partition: int, offset: int, event: Event) -> ConsumerRecord:
    """`event`, encoded as on the topic, as aiokafka's consumer hands it over from
    `offset` of `partition` of `topic` (no key, no headers)."""
    value = encode_event(event)
    # topic, partition, offset, timestamp, timestamp_type, key, value, checksum,
    # serialized_key_size, serialized_value_size, headers
    return ConsumerRecord(topic, partition, offset, 0, 0, None, value, None, 0, len(value), [])


def usage_recorded(
    request_id: str,
    cost_usd: float,
    *,
    tenant: str = "acme",
    user_id: str = "u1",
    api_key_id: str | None = "k1",
    model: str = "m",
    input_tokens: int = 5,
    output_tokens: int = 0,
    source: str = "inference",
) -> UsageRecorded:
    """The `usage.recorded` event of a completed request `request_id` that cost `cost_usd`
    (USD) for `input_tokens` and `output_tokens`."""
    return UsageRecorded(
        source=source,
        tenant=tenant,
        request_id=request_id,
        data=UsageData(
            model=model,
            user_id=user_id,
            api_key_id=api_key_id,
            status="completed",
            usage=TokenUsage(input_tokens=input_tokens, output_tokens=output_tokens),
            cost_usd=cost_usd,
        ),
    )
