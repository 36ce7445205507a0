"""One execution of one request (`RequestRun`): what retries, a cancellation, the deadline
and the usage record need to know of it, and the token accounting of its upstream calls,
the one in flight included (what a cancelled or expired request is billed)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from switchyard.common.events import ChatRequested, StreamEvent, TokenUsage, new_id, utcnow
from switchyard.common.routing import Deployment
from switchyard.inference.adapters import Accumulator, StreamTranslation
from switchyard.inference.publishing import ChunkPublisher
from switchyard.inference.translate import CompletionAccumulator
from switchyard.inference.usage import (
    BILLED_APIS,
    add_usage,
    estimate_prompt_tokens,
    estimate_streamed_tokens,
)


def seconds_until(deadline: datetime) -> float:
    """Seconds from now until `deadline` (an aware UTC datetime); negative once it passed."""
    return (deadline - utcnow()).total_seconds()


@dataclass
class RequestRun:
    """One execution of one request: what retries, a cancellation, the deadline and the
    usage record need to know. `run_id` names the execution in its stream records."""

    request: ChatRequested
    run_id: str = field(default_factory=lambda: new_id()[:16])
    started: float = field(default_factory=time.perf_counter)
    cancel_requested: bool = False
    # Why, as the `chat.cancel_requested` said (`client_disconnected`, or the gateway's
    # `credentials_revoked` / `user_disabled` for a caller refused while it ran).
    cancel_reason: str = "client_disconnected"
    in_lane: bool = False
    deployment: Deployment | None = None
    ttft_ms: float | None = None
    publisher: ChunkPublisher | None = None
    # Tokens of the upstream calls that ended, and how many calls were made.
    spent: TokenUsage = field(default_factory=TokenUsage)
    upstream_calls: int = 0
    # The call in flight, if any (a stream's translation says what it reported so far).
    calling: bool = False
    translation: StreamTranslation | None = None
    accumulator: Accumulator | None = None
    # What the bus took of the call's stream, assembled: the client's part of it.
    delivered: Accumulator | None = None

    @property
    def events_sent(self) -> int:
        """How many client stream events were accepted for publishing: once any was, no retry or
        fallback may start the stream again."""
        return self.publisher.sent if self.publisher is not None else 0

    def given(self) -> dict[str, Any] | None:
        """The reply the client was given so far by the call in flight, in its API's shape
        (`Accumulator.response`: a Responses `response` holds the items given whole), or
        None when none of its stream was published: what a failure midway keeps of the
        stream. Only what the bus took counts; events still queued for it are dropped
        when the run ends."""
        if self.delivered is None or self.publisher is None or not self.publisher.published:
            return None
        if isinstance(self.delivered, CompletionAccumulator):
            # Cut short: a choice that had not finished says so (null), not "stop".
            return self.delivered.response(unfinished=None)
        return self.delivered.response()

    def note_published(self, events: list[StreamEvent]) -> None:
        """Take the events of a stream record the bus took (`ChunkPublisher.on_published`)."""
        if self.delivered is not None:
            for event in events:
                self.delivered.add(event.data)

    def end_call(self, usage: TokenUsage) -> None:
        """Close the call in flight: add its `usage` to the tokens spent and forget its
        stream state."""
        self.spent = add_usage(self.spent, usage)
        self.calling = False
        self.translation = None
        self.accumulator = None
        self.delivered = None

    def failed_call_usage(self) -> TokenUsage:
        """Tokens of a call that failed: none if it failed before answering anything (a
        refused call is not billed), else what it reported or streamed."""
        if self.translation is None:
            return TokenUsage()
        reported = self.translation.usage()
        streamed = self.accumulator.deltas if self.accumulator is not None else 0
        if reported.total_tokens or streamed:
            return self.in_flight_usage()
        return TokenUsage()

    def in_flight_usage(self) -> TokenUsage:
        """Tokens of the call in flight: what the upstream reported, else estimates; none
        for a call of an API not billed by its tokens (a token count, which costs
        nothing, and which budgets reserve nothing for)."""
        if not self.calling or self.request.data.api not in BILLED_APIS:
            return TokenUsage()
        reported = self.translation.usage() if self.translation is not None else TokenUsage()
        input_tokens = reported.input_tokens or estimate_prompt_tokens(self.request.data.body)
        output_tokens = reported.output_tokens
        if self.accumulator is not None and self.accumulator.deltas:
            # A stream stopped before its usage (the client gone, the upstream failed):
            # what the client got, by the text its deltas carried (4 characters a token,
            # at least a token a delta). What the upstream reported so far may be a
            # placeholder (Anthropic's `message_start` says 1 or a few tokens out).
            streamed = estimate_streamed_tokens(self.accumulator.chars, self.accumulator.deltas)
            output_tokens = max(output_tokens, streamed)
        return reported.model_copy(
            update={"input_tokens": input_tokens, "output_tokens": output_tokens}
        )

    def usage_so_far(self) -> TokenUsage:
        """Tokens of every call made so far, the one in flight included."""
        return add_usage(self.spent, self.in_flight_usage())
