"""Revocation state of one gateway replica, kept current by the auth events topic.

Every replica listens to `<prefix>.auth.events` (a broadcast `listen`, no consumer group)
and applies each event to in-memory sets within milliseconds of its publication: revoked
token ids (`jti`), revoked sign-ins (`sid`), revoked API key ids and disabled users. The
authenticator checks them on every request, so a revocation takes effect everywhere
without the gateway calling auth per request.

A listener only sees events published after it started, so at start-up the replica first
starts listening, then loads the current state from auth (`GET /internal/v1/revocations`),
retrying until auth answers. Events that arrive while the snapshot is being fetched are
applied at once (refusing early never hurts) and replayed on top of the snapshot, so an
event newer than the snapshot always wins and nothing falls between the two.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import structlog
from prometheus_client import Counter, Gauge

from switchyard.common.backoff import Backoff
from switchyard.common.bus import EventBus, Subscription
from switchyard.common.events import (
    ApiKeyRevoked,
    Event,
    LimitsChanged,
    SigningKeyRotated,
    TokenFamilyRevoked,
    TokenRevoked,
    UserDisabled,
    UserEnabled,
)
from switchyard.common.tasks import cancel_and_wait

log = structlog.get_logger("switchyard.gateway.revocations")

# The events of the auth topic this state hears: the revocations it keeps, and the others
# its hooks act on (a signing key rotated; a level's limits, models or team changed).
AUTH_EVENTS = (
    ApiKeyRevoked,
    UserDisabled,
    UserEnabled,
    TokenRevoked,
    TokenFamilyRevoked,
    SigningKeyRotated,
    LimitsChanged,
)
# The events that refuse a caller from then on (the rest allow, or change something else).
REVOKING_EVENTS = (ApiKeyRevoked, UserDisabled, TokenRevoked, TokenFamilyRevoked)
# What a request is ended with (403) when its caller is refused while it runs, by the
# code `RevocationState.refusal_code` gives: the codes its jobs are cancelled with.
REVOKED_MESSAGES = {
    "user_disabled": "The user of this request was disabled while it ran; it has been cancelled.",
    "credentials_revoked": "The credential of this request was revoked while it ran; it "
    "has been cancelled.",
}
EVENTS_APPLIED = Counter(
    "switchyard_gateway_auth_events_applied", "Auth events applied by this replica.", ["type"]
)
REVOCATION_LAG = Gauge(
    "switchyard_gateway_auth_event_lag_seconds",
    "Seconds between the last auth event's publication and its application here.",
)
STATE_LOADED = Gauge(
    "switchyard_gateway_revocation_state_loaded",
    "1 once this replica has loaded the revocation state from auth and listens for changes.",
)

# How far auth's clock may lag this replica's when the snapshot is asked for the keys
# revoked since an instant (s): a wider window only lists more keys.
SNAPSHOT_SKEW_S = 600.0

Snapshot = dict[str, Any]
Hook = Callable[[Event], None]


def _epoch(value: Any) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    return datetime.fromisoformat(str(value)).timestamp()


class RevocationState:
    """The sets the authenticator checks; mutated only by `apply` and `load_snapshot`."""

    prune_interval_s = 60.0

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        grace_s: float = 0.0,
        key_retention_s: float | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """`clock` gives the time (epoch seconds); `grace_s` is how long past its expiry a
        revoked token is still remembered: the clock skew the authenticator accepts on
        `exp` (its leeway), during which the token would otherwise be valid again.

        `key_retention_s` is how long a revoked API key is remembered (None: for good),
        counted on `monotonic` (seconds), as the key caches count, so a step of the wall
        clock cannot end it early. Every key is looked up at auth before it is trusted,
        auth refuses a revoked one, and no answer fetched before a revocation outlives its
        event in the authenticator's caches, so the set is a second line only: it has to
        outlive an answer looked up just before the revocation (the key cache's TTL, its
        stale-if-error bound and the lookup's timeout)."""
        self._clock = clock
        self._monotonic = monotonic
        self._grace_s = grace_s
        self._key_retention_s = key_retention_s
        self.revoked_tokens: dict[str, float] = {}  # jti -> when the token expires anyway
        self.revoked_sessions: dict[str, float] = {}  # sid -> when its tokens expire anyway
        # key id -> until when it is remembered (`monotonic` seconds; inf: for good)
        self.revoked_keys: dict[str, float] = {}
        self.disabled_users: set[str] = set()
        self.loaded = False
        # Events received before the snapshot, replayed on top of it.
        self._pending: list[Event] | None = []
        self._hooks: list[Hook] = []
        self._loaded_hooks: list[Callable[[], None]] = []
        self._pruned_at = clock()

    def add_hook(self, hook: Hook) -> None:
        """Call `hook(event)` after each applied event (e.g. to purge a cache)."""
        self._hooks.append(hook)

    def add_loaded_hook(self, hook: Callable[[], None]) -> None:
        """Call `hook()` once the snapshot is loaded (e.g. to drop answers cached before
        this replica could know of revocations)."""
        self._loaded_hooks.append(hook)

    def is_revoked(
        self,
        *,
        user_id: str,
        jti: str | None = None,
        session_id: str | None = None,
        api_key_id: str | None = None,
    ) -> bool:
        """Whether the user is disabled, or the token (`jti`), its session or the API key
        revoked."""
        return (
            user_id in self.disabled_users
            or (jti is not None and jti in self.revoked_tokens)
            or (session_id is not None and session_id in self.revoked_sessions)
            or (api_key_id is not None and api_key_id in self.revoked_keys)
        )

    def refusal_code(
        self,
        *,
        user_id: str,
        jti: str | None = None,
        session_id: str | None = None,
        api_key_id: str | None = None,
    ) -> str | None:
        """Why a caller is refused now, as the code a request of theirs is ended with
        (`REVOKED_MESSAGES`): `user_disabled`, `credentials_revoked` (the token, its
        sign-in or the API key revoked), or None when it is not."""
        if user_id in self.disabled_users:
            return "user_disabled"
        if self.is_revoked(user_id=user_id, jti=jti, session_id=session_id, api_key_id=api_key_id):
            return "credentials_revoked"
        return None

    def apply(self, event: Event) -> None:
        """Apply an auth event (others are ignored), record it while a snapshot is loading,
        update the metrics and run the hooks; prunes expired entries every `prune_interval_s`
        seconds."""
        if not isinstance(event, AUTH_EVENTS):
            return
        self._apply(event)
        if self._pending is not None:
            self._pending.append(event)
        EVENTS_APPLIED.labels(event.type).inc()
        REVOCATION_LAG.set(max(0.0, self._clock() - event.time.timestamp()))
        for hook in self._hooks:
            hook(event)
        if self._clock() - self._pruned_at >= self.prune_interval_s:
            self.prune()

    def _apply(self, event: Event) -> None:
        if isinstance(event, ApiKeyRevoked):
            # From when this replica learnt of it (an answer looked up before it may be
            # cached until then), or from the revocation if auth's clock runs ahead.
            ahead_s = max(0.0, event.time.timestamp() - self._clock())
            self._remember_key(event.data.key_id, ahead_s)
        elif isinstance(event, UserDisabled):
            self.disabled_users.add(event.data.user_id)
        elif isinstance(event, UserEnabled):
            self.disabled_users.discard(event.data.user_id)
        elif isinstance(event, TokenRevoked):
            self.revoked_tokens[event.data.jti] = event.data.expires_at.timestamp()
        elif isinstance(event, TokenFamilyRevoked):
            self.revoked_sessions[event.data.family_id] = event.data.expires_at.timestamp()

    def load_snapshot(self, snapshot: Snapshot) -> None:
        """Install auth's current state, then replay the events received meanwhile."""
        tokens = {item["jti"]: _epoch(item["expires_at"]) for item in snapshot["revoked_tokens"]}
        sessions = {
            item["sid"]: _epoch(item["expires_at"]) for item in snapshot["revoked_sessions"]
        }
        # Revocations only ever grow, so a union is right; disabled is a state, replaced.
        self.revoked_tokens.update(tokens)
        self.revoked_sessions.update(sessions)
        for key in snapshot["revoked_api_keys"]:
            self._remember_key(str(key))
        self.disabled_users = {str(user) for user in snapshot["disabled_users"]}
        for event in self._pending or ():
            self._apply(event)
        self._pending = None
        self.loaded = True
        STATE_LOADED.set(1)
        self.prune()
        for hook in self._loaded_hooks:
            hook()

    def api_keys_revoked_since(self) -> datetime | None:
        """How far back the snapshot must name revoked API keys (None: all of them): the
        key retention, and `SNAPSHOT_SKEW_S` or the JWT leeway, whichever is longer, for
        the clock skew between this replica and auth (auth compares on its own clock)."""
        if self._key_retention_s is None:
            return None
        skew_s = max(self._grace_s, SNAPSHOT_SKEW_S)
        return datetime.fromtimestamp(self._clock() - self._key_retention_s - skew_s, tz=UTC)

    def _remember_key(self, key_id: str, extra_s: float = 0.0) -> None:
        """Remember `key_id` as revoked for the retention from now, plus `extra_s`."""
        if self._key_retention_s is None:
            until = math.inf
        else:
            until = self._monotonic() + self._key_retention_s + extra_s
        self.revoked_keys[key_id] = max(until, self.revoked_keys.get(key_id, until))

    def prune(self) -> None:
        """Forget revoked tokens and sessions whose tokens have expired anyway, the grace
        for clock skew included, and revoked API keys past their retention."""
        now = self._clock()
        self._pruned_at = now
        for entries in (self.revoked_tokens, self.revoked_sessions):
            gone = [key for key, expires in entries.items() if expires + self._grace_s <= now]
            for key in gone:
                del entries[key]
        steady = self._monotonic()
        for key in [key for key, until in self.revoked_keys.items() if until <= steady]:
            del self.revoked_keys[key]


class RevocationSync:
    """Starts the auth events listener, then loads the snapshot; both retried until they
    succeed. `ready()` is true once both have."""

    def __init__(
        self,
        bus: EventBus,
        topic: str,
        state: RevocationState,
        fetch_snapshot: Callable[[], Awaitable[Snapshot]],
        *,
        on_signing_key_rotated: Callable[[], Awaitable[object]] | None = None,
        max_retry_delay_s: float = 5.0,
    ) -> None:
        self._bus = bus
        self._topic = topic
        self.state = state
        self._fetch_snapshot = fetch_snapshot
        self._on_rotation = on_signing_key_rotated
        self._backoff = Backoff(min(0.25, max_retry_delay_s), max_retry_delay_s)
        self.listener: Subscription | None = None
        self._background: set[asyncio.Task[Any]] = set()
        # One JWKS refresh at a time: rotations arriving during it (a burst of them, real
        # or forged by a producer on the topic) make one more fetch after it, not one each.
        self._refreshing = False
        self._rotated_since: str | None = None

    async def handle(self, event: Event) -> None:
        """Apply a consumed auth event; a signing key rotation also refreshes the JWKS in the
        background."""
        self.state.apply(event)
        if isinstance(event, SigningKeyRotated) and self._on_rotation is not None:
            if self._refreshing:
                self._rotated_since = event.data.kid
                return
            # Fetched beside the listener, so later events are not held up by it.
            self._refreshing = True
            task = asyncio.create_task(self._refresh_keys(event.data.kid))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _refresh_keys(self, kid: str) -> None:
        assert self._on_rotation is not None
        try:
            while True:
                await self._refresh_once(kid)
                if self._rotated_since is None:
                    return
                # Another rotation came during the fetch: its key may not have been in it.
                kid, self._rotated_since = self._rotated_since, None
        finally:
            self._refreshing = False

    async def _refresh_once(self, kid: str) -> None:
        assert self._on_rotation is not None
        for attempt in range(1, 6):
            try:
                await self._on_rotation()
                log.info("JWKS refreshed after a signing key rotation", kid=kid)
                return
            except Exception as exc:  # noqa: BLE001 - auth briefly unreachable: retried
                log.warning("cannot refresh JWKS yet", error=repr(exc), attempt=attempt)
                await asyncio.sleep(self._backoff.delay(attempt))

    async def run(self) -> None:
        """Listen, then load the snapshot; returns once the state is complete."""
        attempt = 0
        while self.listener is None:
            attempt += 1
            try:
                partitions = await self._bus.partition_count(self._topic)
                self.listener = await self._bus.listen(
                    self._topic, self.handle, partitions=list(range(partitions))
                )
            except Exception as exc:  # noqa: BLE001 - Kafka down or topic missing: retried
                delay = self._backoff.delay(attempt)
                log.warning("cannot listen for auth events yet", error=repr(exc), retry_in_s=delay)
                await asyncio.sleep(delay)
        attempt = 0
        while not self.state.loaded:
            attempt += 1
            try:
                snapshot = await self._fetch_snapshot()
                self.state.load_snapshot(snapshot)
            except Exception as exc:  # noqa: BLE001 - auth not reachable yet: retried
                delay = self._backoff.delay(attempt)
                log.warning(
                    "cannot load the revocation state from auth yet",
                    error=repr(exc),
                    retry_in_s=delay,
                )
                await asyncio.sleep(delay)
        log.info(
            "revocation state loaded",
            revoked_tokens=len(self.state.revoked_tokens),
            revoked_sessions=len(self.state.revoked_sessions),
            revoked_api_keys=len(self.state.revoked_keys),
            disabled_users=len(self.state.disabled_users),
        )

    async def ready(self) -> bool:
        """Whether the listener runs and the snapshot is loaded (authentication may rely on it)."""
        return self.listener is not None and self.state.loaded

    async def stop(self) -> None:
        """Stop the background refreshes and the listener."""
        for task in list(self._background):
            await cancel_and_wait(task)
        if self.listener is not None:
            await self.listener.stop()
            self.listener = None
