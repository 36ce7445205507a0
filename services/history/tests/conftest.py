"""Fixtures shared by the history unit and integration suites: building events, and the
checks that migration 0003 carries version 1 rows over and that migration 0004 gives
requests their teams (run on SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest
from sqlalchemy import MetaData, null, text
from sqlalchemy import create_engine as create_sync_engine

from switchyard.common.db import downgrade, sync_url, upgrade
from switchyard.common.events import (
    ChatChunk,
    ChatChunkData,
    ChatCompleted,
    ChatCompletedData,
    ChatFailed,
    ChatFailedData,
    ChatRequestData,
    ChatRequested,
    ChatStarted,
    ChatStartedData,
    ClientAPI,
    ErrorInfo,
    Priority,
    StreamEvent,
    TerminalStatus,
    TokenUsage,
    UsageData,
    UsageRecorded,
    decode_event,
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
        team_id: str | None = None,
        priority: Priority = Priority.INTERACTIVE,
        webhook_url: str | None = None,
        timeout_s: float = 60,
        api: ClientAPI = ClientAPI.OPENAI_CHAT_COMPLETIONS,
    ) -> ChatRequested:
        time = at or self.tick()
        body = {"model": model, "messages": [{"role": "user", "content": prompt}]}
        if api == ClientAPI.ANTHROPIC_MESSAGES:
            body["max_tokens"] = 256
        return ChatRequested(
            source="gateway",
            tenant=tenant,
            request_id=request_id or new_id(),
            time=time,
            data=ChatRequestData(
                api=api,
                model=model,
                body=body,
                user_id=user_id,
                api_key_id=api_key_id,
                team_id=team_id,
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
        upstream_api: ClientAPI | None = None,
        **token_details: int,
    ) -> ChatCompleted:
        api = request.data.api
        if api == ClientAPI.ANTHROPIC_MESSAGES:
            response = {
                "id": f"msg_{request.request_id}",
                "type": "message",
                "role": "assistant",
                "model": request.data.model,
                "content": [{"type": "text", "text": answer}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
            }
        else:
            response = {
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
            }
        return ChatCompleted(
            source="inference",
            tenant=request.tenant,
            request_id=request.request_id,
            time=self.tick(),
            data=ChatCompletedData(
                api=api,
                response=response,
                provider="simulator",
                deployment="sim-small-1",
                upstream_api=upstream_api or api,
                usage=TokenUsage(
                    input_tokens=input_tokens, output_tokens=output_tokens, **token_details
                ),
                latency_ms=42.5,
            ),
        )

    def started(self, request: ChatRequested) -> ChatStarted:
        """Inference began to run `request` (the batch lane)."""
        return ChatStarted(
            source="inference",
            tenant=request.tenant,
            request_id=request.request_id,
            time=self.tick(),
            data=ChatStartedData(priority=Priority.BATCH),
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
        **token_details: int,
    ) -> UsageRecorded:
        return UsageRecorded(
            source="inference",
            tenant=request.tenant,
            request_id=request.request_id,
            time=self.tick(),
            data=UsageData(
                api=request.data.api,
                model=request.data.model,
                provider="simulator",
                deployment="sim-small-1",
                user_id=request.data.user_id,
                api_key_id=request.data.api_key_id,
                team_id=request.data.team_id,
                status=TerminalStatus.COMPLETED,
                usage=TokenUsage(
                    input_tokens=input_tokens, output_tokens=output_tokens, **token_details
                ),
                cost_usd=cost_usd,
                latency_ms=43.0,
            ),
        )

    def refusal(
        self,
        request_id: str | None = None,
        *,
        tenant: str = "acme",
        user_id: str = "alice",
        api_key_id: str | None = "key-1",
        team_id: str | None = "team-1",
        model: str = "sim-small",
        api: ClientAPI = ClientAPI.OPENAI_CHAT_COMPLETIONS,
    ) -> tuple[ChatFailed, UsageRecorded]:
        """What a gateway publishes for a request it refused at admission (no
        `chat.requested`: nothing ran): a `chat.failed` and a `usage.recorded`, both of
        status `refused`, as `switchyard.gateway.governance.refusals` builds them."""
        request_id = request_id or new_id()
        time = self.tick()
        failed = ChatFailed(
            source="gateway",
            tenant=tenant,
            request_id=request_id,
            time=time,
            data=ChatFailedData(
                status=TerminalStatus.REFUSED,
                error=ErrorInfo(
                    status=429,
                    type="insufficient_quota",
                    code="insufficient_quota",
                    message=f"Budget of $0.01 for the team {team_id} is used up; it resets "
                    "at 2025-03-02T00:00:00Z.",
                    retry_after_s=3600,
                ),
            ),
        )
        usage = UsageRecorded(
            source="gateway",
            tenant=tenant,
            request_id=request_id,
            time=time,
            data=UsageData(
                api=api,
                model=model,
                user_id=user_id,
                api_key_id=api_key_id,
                team_id=team_id,
                status=TerminalStatus.REFUSED,
                usage=TokenUsage(),
                upstream_calls=0,
            ),
        )
        return failed, usage

    def chunk(self, request: ChatRequested, sequence: int = 0) -> ChatChunk:
        return ChatChunk(
            source="inference",
            tenant=request.tenant,
            request_id=request.request_id,
            time=self.tick(0.01),
            data=ChatChunkData(
                sequence=sequence,
                run="run-1",
                events=[StreamEvent(data={"object": "chat.completion.chunk", "choices": []})],
            ),
        )


@pytest.fixture
def events() -> EventFactory:
    return EventFactory()


# --------------------------------------------------------------------------- migration 0003

# A v1 `chat.requested` event as the gateway published it before contract version 2 (an
# Anthropic client's request, translated to Chat Completions by the gateway of the time).
V1_ANTHROPIC_EVENT = {
    "id": "e-v1-anthropic",
    "type": "chat.requested",
    "source": "gateway",
    "time": "2025-02-01T12:00:00Z",
    "tenant": "acme",
    "request_id": "v1-anthropic",
    "schema_version": 1,
    "data": {
        "api": "anthropic",
        "operation": "chat",
        "model": "sim-small",
        "body": {
            "model": "sim-small",
            "max_tokens": 64,
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hello"},
            ],
        },
        "stream": False,
        "user_id": "alice",
        "api_key_id": "key-1",
        "priority": "interactive",
        "deadline": "2025-02-01T12:02:00Z",
        "reply_to": None,
    },
}


def _v1_rows() -> list[dict]:
    """history_requests rows as version 1 recorded them (the columns of migration 0002)."""
    at = datetime(2025, 2, 1, 12, 0, tzinfo=UTC)
    chat_reply = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "sim-small",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}}],
    }

    def row(request_id: str, api: str | None, body: dict | None, response: dict | None, minute):
        return {
            "request_id": request_id,
            "tenant": "acme",
            "user_id": "alice",
            "api_key_id": "key-1",
            "model": "sim-small",
            "api": api,
            "priority": "interactive",
            "status": "completed" if response is not None else "pending",
            # SQL NULL, not JSON null, as the service stores an absent document.
            "request_body": body if body is not None else null(),
            "response": response if response is not None else null(),
            "error": null(),
            "provider": "simulator",
            "deployment": "simulator",
            "input_tokens": 5 if response is not None else None,
            "output_tokens": 2 if response is not None else None,
            "cost_usd": 0.001 if response is not None else None,
            "latency_ms": 12.0,
            "created_at": at + timedelta(minutes=minute),
            "completed_at": at + timedelta(minutes=minute, seconds=1),
            "deadline": at + timedelta(minutes=minute + 2),
        }

    chat_body = {"model": "sim-small", "messages": [{"role": "user", "content": "Hello"}]}
    return [
        row("v1-openai", "openai", chat_body, chat_reply, 0),
        row("v1-anthropic", "anthropic", V1_ANTHROPIC_EVENT["data"]["body"], chat_reply, 1),
        row(
            "v1-embeddings",
            "openai",
            {"model": "sim-small", "input": ["a", "b"]},
            {"object": "list", "data": [], "model": "sim-small"},
            2,
        ),
        # Metadata-only tenants kept neither `messages` nor `input`; the reply says.
        row(
            "v1-embeddings-redacted",
            "openai",
            {"model": "sim-small", "redacted": True},
            {"object": "list", "data_count": 2, "redacted": True},
            3,
        ),
        row(
            "v1-chat-redacted",
            "openai",
            {"model": "sim-small", "message_count": 1, "message_roles": ["user"], "redacted": True},
            {"object": "chat.completion", "redacted": True},
            4,
        ),
        # A reply that overtook its request: no request fields yet.
        row("v1-orphan", None, None, chat_reply, 5),
    ]


EXPECTED_V1_APIS = {
    # request id: (api the stored body and reply are in, api the client called)
    "v1-openai": ("openai.chat_completions", "openai.chat_completions"),
    "v1-anthropic": ("openai.chat_completions", "anthropic.messages"),
    "v1-embeddings": ("openai.embeddings", "openai.embeddings"),
    "v1-embeddings-redacted": ("openai.embeddings", "openai.embeddings"),
    "v1-chat-redacted": ("openai.chat_completions", "openai.chat_completions"),
    "v1-orphan": (None, None),
}


def _apis(url: str) -> dict[str, tuple]:
    engine = create_sync_engine(sync_url(url))
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text("SELECT request_id, api, client_api FROM history_requests")
            ).all()
    finally:
        engine.dispose()
    return {request_id: (api, client_api) for request_id, api, client_api in rows}


async def check_v1_rows_migrate(url: str, events: EventFactory) -> None:
    """Migrate a database holding version 1 rows to head and back: the rows read as
    version 2 (like `decode_event` reads version 1 events), history serves them next to
    version 2 rows, and a downgrade restores what version 1 stored."""
    from switchyard.history.api.schemas import history_item
    from switchyard.history.bootstrap import history_engine
    from switchyard.history.config import MIGRATIONS_DIR, VERSION_TABLE
    from switchyard.history.handlers import EventRecorder
    from switchyard.history.queries import Caller, HistoryQueries

    upgrade(MIGRATIONS_DIR, url, VERSION_TABLE, "0002")
    engine = create_sync_engine(sync_url(url))
    try:
        metadata = MetaData()
        metadata.reflect(
            engine, only=["history_requests", "history_events", "history_usage_hourly"]
        )
        with engine.begin() as connection:
            connection.execute(metadata.tables["history_requests"].insert(), _v1_rows())
            connection.execute(
                metadata.tables["history_events"].insert(),
                [
                    {
                        "event_id": V1_ANTHROPIC_EVENT["id"],
                        "type": "chat.requested",
                        "request_id": "v1-anthropic",
                        "tenant": "acme",
                        "source": "gateway",
                        "time": datetime(2025, 2, 1, 12, 1, tzinfo=UTC),
                        "schema_version": 1,
                        "payload": V1_ANTHROPIC_EVENT,
                        "recorded_at": datetime(2025, 2, 1, 12, 1, tzinfo=UTC),
                    }
                ],
            )
            connection.execute(
                metadata.tables["history_usage_hourly"].insert(),
                [
                    {
                        "tenant": "acme",
                        "hour": datetime(2025, 2, 1, 12, tzinfo=UTC),
                        "user_id": "alice",
                        "api_key_id": "key-1",
                        "model": "sim-small",
                        "requests": 5,
                        "completed": 5,
                        "errors": 0,
                        "cancelled": 0,
                        "input_tokens": 25,
                        "output_tokens": 10,
                        "cost_usd": 0.005,
                    }
                ],
            )
    finally:
        engine.dispose()

    upgrade(MIGRATIONS_DIR, url, VERSION_TABLE)
    assert _apis(url) == EXPECTED_V1_APIS

    async_engine = history_engine(url)
    try:
        async with async_engine.connect() as connection:
            payload = (
                await connection.execute(
                    text("SELECT payload FROM history_events WHERE event_id = 'e-v1-anthropic'")
                )
            ).scalar_one()
            hourly = (
                await connection.execute(
                    text(
                        "SELECT cache_read_input_tokens, cache_creation_input_tokens, "
                        "reasoning_tokens, input_tokens FROM history_usage_hourly"
                    )
                )
            ).one()
        assert tuple(hourly) == (0, 0, 0, 25)
        # The event store still reads: a version 1 payload decodes as version 2.
        stored = payload if isinstance(payload, dict) else orjson.loads(payload)
        decoded = decode_event(orjson.dumps(stored))
        assert decoded.data.api == ClientAPI.OPENAI_CHAT_COMPLETIONS

        # Version 2 rows are recorded next to the migrated ones, and both are served.
        native = events.requested(api=ClientAPI.ANTHROPIC_MESSAGES, user_id="alice")
        await EventRecorder(async_engine).record(
            [
                native,
                events.completed(
                    native,
                    upstream_api=ClientAPI.OPENAI_CHAT_COMPLETIONS,
                    cache_read_input_tokens=3,
                    reasoning_tokens=1,
                ),
            ]
        )
        queries = HistoryQueries(async_engine)
        caller = Caller(tenant="acme", user_id="alice", role="user")
        page = await queries.list_requests(caller, limit=20)
        items = {row["request_id"]: history_item(row) for row in page.items}
        old = items["v1-anthropic"]
        assert (old.api, old.client_api, old.upstream_api) == (
            "openai.chat_completions",
            "anthropic.messages",
            None,
        )
        assert old.request == V1_ANTHROPIC_EVENT["data"]["body"]
        assert old.usage.model_dump() == {
            "input_tokens": 5,
            "output_tokens": 2,
            "total_tokens": 7,
            "cache_read_input_tokens": 0,
            "cache_creation_input_tokens": 0,
            "cache_creation_1h_input_tokens": 0,
            "reasoning_tokens": 0,
        }
        new = items[native.request_id]
        assert (new.api, new.client_api, new.upstream_api) == (
            "anthropic.messages",
            "anthropic.messages",
            "openai.chat_completions",
        )
        assert new.response["type"] == "message"
        assert (new.usage.cache_read_input_tokens, new.usage.reasoning_tokens) == (3, 1)
        assert "v1-orphan" not in items  # never shown before its request arrives
    finally:
        await async_engine.dispose()

    downgrade(MIGRATIONS_DIR, url, VERSION_TABLE, "0002")
    restored = _apis_v1(url)
    assert restored["v1-openai"] == "openai"
    assert restored["v1-anthropic"] == "anthropic"
    assert restored["v1-embeddings"] == "openai"
    assert restored[native.request_id] == "anthropic"
    assert restored["v1-orphan"] is None
    upgrade(MIGRATIONS_DIR, url, VERSION_TABLE)
    assert {key: _apis(url)[key] for key in EXPECTED_V1_APIS} == EXPECTED_V1_APIS


def _apis_v1(url: str) -> dict[str, str | None]:
    engine = create_sync_engine(sync_url(url))
    try:
        with engine.connect() as connection:
            rows = connection.execute(text("SELECT request_id, api FROM history_requests")).all()
    finally:
        engine.dispose()
    return dict(rows)


@pytest.fixture
def v1_migration_check():
    """`check_v1_rows_migrate(url, events)`, for the unit (SQLite) and integration
    (PostgreSQL) suites."""
    return check_v1_rows_migrate


# --------------------------------------------------------------------------- migration 0004


def _columns(url: str, table: str) -> set[str]:
    from sqlalchemy import inspect

    engine = create_sync_engine(sync_url(url))
    try:
        return {column["name"] for column in inspect(engine).get_columns(table)}
    finally:
        engine.dispose()


async def check_teams_migrate(url: str, events: EventFactory) -> None:
    """Migration 0004 down and up again on a database holding requests of teams (one of
    them refused at admission, recorded from its refusal alone): the downgrade drops the
    team everywhere, the upgrade gives every request its team back from the stored events,
    and usage by team is the same before and after the rollup recomputes the hours."""
    from switchyard.history import rollup
    from switchyard.history.bootstrap import history_engine
    from switchyard.history.config import MIGRATIONS_DIR, VERSION_TABLE
    from switchyard.history.handlers import EventRecorder
    from switchyard.history.queries import Caller, HistoryFilters, HistoryQueries, UsageQuery

    upgrade(MIGRATIONS_DIR, url, VERSION_TABLE)
    events.clock = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    batch, teams = [], {}
    for user, team in (("alice", "research"), ("bob", "research"), ("carol", None)):
        request = events.requested(user_id=user, team_id=team)
        batch += [request, events.completed(request), events.usage(request, cost_usd=0.5)]
        teams[request.request_id] = team
    refused = events.refusal(user_id="alice", team_id="research")
    batch += refused
    teams[refused[0].request_id] = "research"
    engine = history_engine(url)
    try:
        await EventRecorder(engine).record(batch)
        assert await rollup.refresh(engine, settle=timedelta(0)) > 0
    finally:
        await engine.dispose()

    downgrade(MIGRATIONS_DIR, url, VERSION_TABLE, "0005")
    assert "team_id" not in _columns(url, "history_requests")
    assert "team_id" not in _columns(url, "history_usage_hourly")
    upgrade(MIGRATIONS_DIR, url, VERSION_TABLE)

    engine = history_engine(url)
    try:
        queries = HistoryQueries(engine)
        admin = Caller(tenant="acme", user_id="root", role="admin")
        page = await queries.list_requests(admin, limit=20)
        assert {row["request_id"]: row["team_id"] for row in page.items} == teams
        research = await queries.list_requests(
            admin, limit=20, filters=HistoryFilters(team_id="research")
        )
        assert len(research.items) == 3
        report = UsageQuery(
            since=datetime(2025, 3, 1, tzinfo=UTC),
            until=datetime(2025, 3, 2, tzinfo=UTC),
            bucket=None,
            dimensions=("team",),
            tenant="acme",
        )
        from_requests = await queries.usage(report)
        assert await rollup.refresh(engine, settle=timedelta(0)) > 0
        from_rollup = await queries.usage(report)
        assert from_rollup == from_requests
        assert {row.groups["team"]: (row.requests, row.errors) for row in from_rollup} == {
            "research": (3, 1),
            None: (1, 0),
        }
    finally:
        await engine.dispose()


@pytest.fixture
def teams_migration_check():
    """`check_teams_migrate(url, events)`, for the unit (SQLite) and integration
    (PostgreSQL) suites."""
    return check_teams_migrate
