"""Response models of the history API, and how a projection row becomes one."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field


class HistoryUsage(BaseModel):
    """Token counts of a recorded request, in tokens."""

    input_tokens: int = Field(default=0, description="All input tokens, cached included.")
    output_tokens: int = 0
    total_tokens: int = 0
    cache_read_input_tokens: int = Field(
        default=0, description="Input tokens read from the provider's prompt cache."
    )
    cache_creation_input_tokens: int = Field(
        default=0, description="Input tokens written to the provider's prompt cache."
    )
    cache_creation_1h_input_tokens: int = Field(
        default=0,
        description="The part of cache_creation_input_tokens kept in the cache for an hour "
        '(Anthropic\'s `ttl: "1h"`, priced apart; 0 on requests recorded before it was kept).',
    )
    reasoning_tokens: int = Field(
        default=0, description="Output tokens spent on reasoning (a part of output_tokens)."
    )


def history_usage(row: dict[str, Any]) -> HistoryUsage:
    """The usage of a projection row (a token count not recorded counts as 0)."""
    input_tokens = row.get("input_tokens") or 0
    output_tokens = row.get("output_tokens") or 0
    return HistoryUsage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        total_tokens=input_tokens + output_tokens,
        cache_read_input_tokens=row.get("cache_read_input_tokens") or 0,
        cache_creation_input_tokens=row.get("cache_creation_input_tokens") or 0,
        cache_creation_1h_input_tokens=row.get("cache_creation_1h_input_tokens") or 0,
        reasoning_tokens=row.get("reasoning_tokens") or 0,
    )


class HistoryItem(BaseModel):
    """One recorded request: what was asked, what came back, its outcome and usage."""

    id: str = Field(description="The request id (as in the x-request-id response header).")
    object: Literal["chat.history"] = "chat.history"
    created_at: datetime
    completed_at: datetime | None = None
    model: str | None
    status: Literal["pending", "completed", "failed", "cancelled", "expired", "refused"]
    api: str | None = Field(
        description="The API `request` and `response` are shaped in (`openai.chat_completions`, "
        "`anthropic.messages`, `openai.embeddings`...)."
    )
    client_api: str | None = Field(
        description="The API the client called. Equal to `api`, except for requests of "
        "Anthropic clients recorded before event contract version 2, whose request and "
        "response were recorded translated to Chat Completions."
    )
    upstream_api: str | None = Field(
        description="The API the model's deployment was called with: `api` when the request "
        "was passed through, another when it was translated."
    )
    request: dict[str, Any] | None = Field(
        description="The request body as the client sent it, in `api`'s shape; null for a "
        "request refused at admission (it never ran, and is recorded without its body)."
    )
    response: dict[str, Any] | None = Field(
        description="The reply body once completed, in `api`'s shape (a `chat.completion`, "
        "an Anthropic `message`, an embeddings `list`); for a stream that failed, expired "
        "or was cancelled after it began, what the client had been given of it; else null."
    )
    error: dict[str, Any] | None = Field(
        description="Why the request failed, was cancelled, expired or was refused (for a "
        "refusal: `code` `rate_limit_exceeded` or `insufficient_quota`, and a `message` "
        "naming the level, the limit and when it resets)."
    )
    usage: HistoryUsage
    latency_ms: float | None
    provider: str | None
    deployment: str | None
    api_key_id: str | None
    user_id: str | None
    cache_hit: bool = Field(
        default=False, description="Answered from the response cache (no upstream call)."
    )
    replay_of: str | None = Field(
        default=None, description="For a replayed request: the recorded request it replays."
    )
    team_id: str | None = Field(description="The caller's team when the request was made.")


class HistoryList(BaseModel):
    """A page of recorded requests, newest first."""

    object: Literal["list"] = "list"
    data: list[HistoryItem]
    next_cursor: str | None = Field(
        description="Pass as `cursor` to get the next (older) page; null on the last."
    )


def history_item(row: dict[str, Any]) -> HistoryItem:
    """The API view of a `requests` row (a mapping of its columns)."""
    return HistoryItem(
        id=row["request_id"],
        created_at=row["created_at"],
        completed_at=row["completed_at"],
        model=row["model"],
        status=row["status"],
        api=row["api"],
        client_api=row["client_api"] or row["api"],
        upstream_api=row["upstream_api"],
        request=row["request_body"],
        response=row["response"],
        error=row["error"],
        usage=history_usage(row),
        latency_ms=row["latency_ms"],
        provider=row["provider"],
        deployment=row["deployment"],
        api_key_id=row["api_key_id"],
        user_id=row["user_id"],
        cache_hit=bool(row.get("cache_hit")),
        replay_of=row.get("replay_of"),
        team_id=row["team_id"],
    )
