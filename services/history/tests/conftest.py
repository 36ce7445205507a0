"""Fixtures shared by the history unit and integration suites: building events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from switchyard.common.events import (
    ChatChunk,
    ChatChunkData,
    ChatCompleted,
    ChatCompletedData,
    ChatFailed,
    ChatFailedData,
    ChatRequestData,
    ChatRequested,
    ErrorInfo,
    Priority,
    TerminalStatus,
    TokenUsage,
    UsageData,
    UsageRecorded,
    new_id,
)


class EventFactory:
    """Events of one or more requests, with realistic contents and controllable times."""

    def __init__(self) -> None:
        self.clock = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)

    def tick(self, seconds: float = 1.0) -> datetime:
        self.clock += timedelta(seconds=seconds)
        return self.clock

    def requested(
        self,
        request_id: str | None = None,
        *,
        tenant: str = "acme",
        user_id: str = "alice",
        model: str = "sim-small",
        prompt: str = "Hello",
        at: datetime | None = None,
        api_key_id: str | None = "key-1",
        priority: Priority = Priority.INTERACTIVE,
        webhook_url: str | None = None,
        timeout_s: float = 60,
    ) -> ChatRequested:
        time = at or self.tick()
        return ChatRequested(
            source="gateway",
            tenant=tenant,
            request_id=request_id or new_id(),
            time=time,
            data=ChatRequestData(
                model=model,
                body={"model": model, "messages": [{"role": "user", "content": prompt}]},
                user_id=user_id,
                api_key_id=api_key_id,
                priority=priority,
                deadline=time + timedelta(seconds=timeout_s),
                webhook_url=webhook_url,
            ),
        )

    def completed(
        self,
        request: ChatRequested,
        *,
        answer: str = "Hi there!",
        input_tokens: int = 5,
        output_tokens: int = 3,
    ) -> ChatCompleted:
        return ChatCompleted(
            source="inference",
            tenant=request.tenant,
            request_id=request.request_id,
            time=self.tick(),
            data=ChatCompletedData(
                response={
                    "id": f"chatcmpl-{request.request_id}",
                    "object": "chat.completion",
                    "model": request.data.model,
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": answer},
                        }
                    ],
                },
                provider="simulator",
                deployment="sim-small-1",
                usage=TokenUsage(input_tokens=input_tokens, output_tokens=output_tokens),
                latency_ms=42.5,
            ),
        )

    def failed(
        self, request: ChatRequested, *, status: TerminalStatus = TerminalStatus.FAILED
    ) -> ChatFailed:
        return ChatFailed(
            source="inference",
            tenant=request.tenant,
            request_id=request.request_id,
            time=self.tick(),
            data=ChatFailedData(
                status=status,
                error=ErrorInfo(
                    status=502,
                    type="upstream_error",
                    code="provider_down",
                    message="The provider did not answer.",
                ),
                provider="simulator",
                deployment="sim-small-1",
                latency_ms=100,
            ),
        )

    def usage(
        self,
        request: ChatRequested,
        *,
        input_tokens: int = 5,
        output_tokens: int = 3,
        cost_usd: float = 0.0021,
    ) -> UsageRecorded:
        return UsageRecorded(
            source="inference",
            tenant=request.tenant,
            request_id=request.request_id,
            time=self.tick(),
            data=UsageData(
                model=request.data.model,
                provider="simulator",
                deployment="sim-small-1",
                user_id=request.data.user_id,
                api_key_id=request.data.api_key_id,
                status=TerminalStatus.COMPLETED,
                usage=TokenUsage(input_tokens=input_tokens, output_tokens=output_tokens),
                cost_usd=cost_usd,
                latency_ms=43.0,
            ),
        )

    def chunk(self, request: ChatRequested, sequence: int = 0) -> ChatChunk:
        return ChatChunk(
            source="inference",
            tenant=request.tenant,
            request_id=request.request_id,
            time=self.tick(0.01),
            data=ChatChunkData(
                sequence=sequence, chunk={"object": "chat.completion.chunk", "choices": []}
            ),
        )


@pytest.fixture
def events() -> EventFactory:
    return EventFactory()
