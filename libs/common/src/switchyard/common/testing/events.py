"""Events as tests and benchmarks build them, with the fields they do not care about
filled in."""

from __future__ import annotations

from switchyard.common.events import TokenUsage, UsageData, UsageRecorded


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
