"""Replies reach the request waiting for them only: a reply naming another tenant than
the request's (not inference's: a bad producer's) is not relayed."""

from __future__ import annotations

from switchyard.common.events import ChatCompleted, ChatCompletedData, ClientAPI, TokenUsage
from switchyard.gateway.replies import PendingReplies


def completed(request_id: str, tenant: str, text: str) -> ChatCompleted:
    return ChatCompleted(
        source="inference",
        tenant=tenant,
        request_id=request_id,
        data=ChatCompletedData(
            api=ClientAPI.OPENAI_CHAT_COMPLETIONS,
            response={"text": text},
            provider="openai",
            deployment="d",
            usage=TokenUsage(),
            latency_ms=1,
        ),
    )


async def test_a_reply_naming_another_tenant_is_not_relayed() -> None:
    pending = PendingReplies()
    queue = pending.open("r1", "acme")

    await pending.deliver(completed("r1", "globex", "forged"))
    await pending.deliver(completed("r1", "acme", "real"))

    assert queue.qsize() == 1
    assert queue.get_nowait().data.response == {"text": "real"}
    pending.close("r1")
    await pending.deliver(completed("r1", "acme", "late"))  # nobody waits: dropped
    assert queue.qsize() == 0
