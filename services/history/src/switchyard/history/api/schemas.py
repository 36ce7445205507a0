"""Response models of the history API, and how a projection row becomes one."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field


class HistoryUsage(BaseModel):
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0


class HistoryItem(BaseModel):
    id: str = Field(description="The request id (as in the x-request-id response header).")
    object: Literal["chat.history"] = "chat.history"
    created_at: datetime
    completed_at: datetime | None = None
    model: str | None
    status: Literal["pending", "completed", "failed", "cancelled", "expired"]
    request: dict[str, Any] | None = Field(
        description="The chat request body as the gateway accepted it."
    )
    response: dict[str, Any] | None = Field(
        description="The chat.completion object, once completed."
    )
    error: dict[str, Any] | None = Field(
        description="Why the request failed, was cancelled or expired."
    )
    usage: HistoryUsage
    latency_ms: float | None
    provider: str | None
    deployment: str | None
    api_key_id: str | None
    user_id: str | None


class HistoryList(BaseModel):
    object: Literal["list"] = "list"
    data: list[HistoryItem]
    next_cursor: str | None = Field(
        description="Pass as `cursor` to get the next (older) page; null on the last."
    )


def history_item(row: dict[str, Any]) -> HistoryItem:
    input_tokens = row["input_tokens"] or 0
    output_tokens = row["output_tokens"] or 0
    return HistoryItem(
        id=row["request_id"],
        created_at=row["created_at"],
        completed_at=row["completed_at"],
        model=row["model"],
        status=row["status"],
        request=row["request_body"],
        response=row["response"],
        error=row["error"],
        usage=HistoryUsage(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            total_tokens=input_tokens + output_tokens,
        ),
        latency_ms=row["latency_ms"],
        provider=row["provider"],
        deployment=row["deployment"],
        api_key_id=row["api_key_id"],
        user_id=row["user_id"],
    )
