"""The exact-match response cache: a request whose normalised body matches one answered
before, within the answer's time to live, is answered again without calling a model.

Opt-in, per request, API key, team or tenant; the narrowest that says decides:
request header > key > team > tenant > default (off).
- `X-Switchyard-Cache: on` asks for it on one request; `off` bypasses it (no lookup, no
  store) even where the key, team or tenant turned it on; `refresh` runs the request and
  replaces the stored answer. A refresh drops the answer from this replica's memory as it
  is sent, and until an answer made after it began is stored, the same request here is a
  miss, never the replaced answer still in the store (`ResponseCache._replacing`).
- A key's or team's `cache_enabled` (auth's admin API, `PATCH /v1/admin/api-keys/{id}` or
  `/v1/admin/teams/{id}`, or `switchyard keys|teams update --cache/--no-cache`) turns it on
  or off for every request made with that key or by that team's members; unset (null)
  leaves it to the next level. It arrives with the caller's policy (governance/policy.py),
  which admission has just read, so it costs no extra call.
- The tenant setting (`cache_enabled` in the history settings, or `switchyard
  tenant-settings set --cache`) turns it on for every request of the tenant.
- `X-Switchyard-Cache-TTL: <seconds>` sets how long a stored answer is reused, in whole
  seconds from 1 to `SWITCHYARD_GATEWAY_CACHE_MAX_TTL_S`; without it, the key's
  `cache_ttl_s`, else the team's, else the tenant's, else
  `SWITCHYARD_GATEWAY_CACHE_DEFAULT_TTL_S`; at most the maximum.
- Only deterministic requests are cached: `temperature` 0, or a `seed` (OpenAI's APIs).
  Both providers default `temperature` to 1, so a request without it is not deterministic.
  `X-Switchyard-Cache-Nondeterministic: true` caches the others too, explicitly.
  Embeddings are deterministic.
- Any other value of these headers is a 400 `invalid_cache_header` naming the header,
  whether or not the cache is on for the caller.
- A tenant storing metadata only (history's privacy setting) has nothing cached.
Every opted-in answer carries `X-Switchyard-Cache: hit`, `miss`, `refresh` or `bypass`
(not cacheable, or asked off; a background response, never cached, is a `bypass` too); a
hit carries `Age` (seconds since it was stored) too, and the headers describing the body
that its fresh answer carried (`x-switchyard-token-count` of a token count), stored with
it (`headers` in the entry). A token count stored without it (before they were kept, or
by a store that drops them) is answered as a miss, whose answer replaces it.

A Responses API hit is a new response (`CachedAnswer.as_new_response`): its own id and
creation time, each output item under a new id (the stored one and the request id), in
the JSON answer and in every stream event alike, and the request's own `metadata`,
`user`, `store`, `service_tier`, `prompt_cache_key` and `safety_identifier`.

The key (`cache_key`) is the SHA-256 of stable JSON (sorted keys) of: the tenant, the API,
the model, whether the request streams (and, for a stream, `stream_options.include_usage`,
which changes its events), the provider headers (`anthropic-version`, `anthropic-beta`,
`openai-beta`), and the body without what never changes the answer: `stream`,
`stream_options`, `user`, `metadata`, `store`, `service_tier`, `prompt_cache_key`,
`safety_identifier`, and the `cache_control` markers of Anthropic's prompt caching (top
level, on `system` and message content blocks, a tool result's blocks and `tools`; the
same key in a tool's input or a schema is the caller's data and counts).
Integral sampling parameters count as the same number as their float (`0` = `0.0`). The
tenant is part of the key, and entries are stored per tenant: never shared across tenants.

Where answers live: history's database (`/internal/v1/cache/entries/...`), shared by every
gateway replica, so a request answered on one replica is a hit on any other; in front of
it each replica keeps recent answers in memory (a time-aware LRU from `cachetools`, at
most `SWITCHYARD_GATEWAY_CACHE_LOCAL_TTL_S` each). A hit in memory costs no network call
at all. `switchyard cache purge` publishes `cache.purged` on the cache events topic, which
every replica reads (`listen`): each drops the purged answers from memory as it arrives
(a store lookup or a store overlapping it keeps nothing in memory), so no replica serves
them after the purge; were the event lost (the bus down while
purging; the command then says so), the local time to live still bounds it. Deleting a
Responses API response (`DELETE /v1/responses/{id}`) purges the answers it made the same
way: history deletes them from the store, and the deleting replica publishes
`cache.purged` naming the request (`forget`).

A hit is answered at once, then recorded like any request, off the answering path: a
`chat.requested` and a `chat.completed` on the replies topic (never on the request topics,
which are inference's work) and a `usage.recorded` with `cache_hit: true`, no tokens, no
cost, and `saved_cost_usd`, what the reused answer cost when it was made. Those events
never delay the answer; each is retried with backoff while the bus refuses it, and one
given up on is logged and counted (`switchyard_gateway_cache_hit_events_total`), never
dropped silently; the events of hits gather for a moment and are published together
(`hit_events`). A miss is
answered as usual; its completed answer (and, for a stream, its stream events) is stored
in the background once it has been sent. When history cannot be reached, requests are
answered as misses: the cache never fails a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

import httpx
import orjson
import structlog
from cachetools import TLRUCache
from prometheus_client import Counter
from starlette.requests import Request
from starlette.responses import Response

from switchyard.common import exactjson
from switchyard.common.backoff import Backoff
from switchyard.common.bus import Subscription
from switchyard.common.errors import APIError
from switchyard.common.events import (
    CachePurged,
    CachePurgedData,
    ChatCompleted,
    ChatCompletedData,
    ChatRequestData,
    ChatRequested,
    ClientAPI,
    Event,
    StreamEvent,
    TerminalStatus,
    TokenUsage,
    UsageData,
    UsageRecorded,
    derived_event_id,
    utcnow,
)
from switchyard.common.responses import (
    includes_encrypted_reasoning,
    response_id,
    upstream_named,
    without_encrypted_reasoning,
)
from switchyard.gateway.governance.policy import CacheOptIn, PolicyUnavailable
from switchyard.gateway.hit_events import HitEvents, HitRecord

if TYPE_CHECKING:
    from switchyard.gateway.api.body import ClientRequest
    from switchyard.gateway.auth import Principal
    from switchyard.gateway.bootstrap import Gateway
    from switchyard.gateway.dispatch import Dispatch

log = structlog.get_logger("switchyard.gateway.cache")

CACHE_HEADER = "x-switchyard-cache"
TTL_HEADER = "x-switchyard-cache-ttl"
NONDETERMINISTIC_HEADER = "x-switchyard-cache-nondeterministic"
# The values of `X-Switchyard-Cache` (any case) and what each does.
MODES = {"on": "use", "off": "off", "refresh": "refresh"}
# `X-Switchyard-Cache-TTL` is a whole number of seconds (at most 10 digits: a longer one is
# out of range anyway, and never parsed).
TTL_VALUE = re.compile(r"[0-9]{1,10}")
# How long storing an answer in history may take.
STORE_TIMEOUT_S = 10.0
# Body fields that never change the answer: who asked, logging, routing hints, streaming.
NON_OUTPUT_FIELDS = frozenset(
    {
        "stream",
        "stream_options",
        "user",
        "metadata",
        "store",
        "service_tier",
        "prompt_cache_key",
        "safety_identifier",
    }
)
# Sampling parameters compared as numbers (a client sending 0 or 0.0 asks the same).
NUMERIC_PARAMETERS = frozenset({"temperature", "top_p", "frequency_penalty", "presence_penalty"})
# 2: `cache_control` left out only where Anthropic takes it (1 left it out everywhere, so
# entries stored under 1 may answer requests that differ; they are never looked up again).
KEY_VERSION = 2
# The headers describing the body a fresh answer carries (`answer_headers`), stored with
# it and given back on a hit; and those every answer of an API carries, without which a
# stored answer is a miss (`CachedAnswer.complete`). Spelled here, as `dispatch` imports
# this module: they are `dispatch.TOKEN_COUNT_HEADER` and `COUNTING_APIS` (a test checks).
TOKEN_COUNT_HEADER = "x-switchyard-token-count"
COUNTING_APIS = frozenset(
    {ClientAPI.ANTHROPIC_COUNT_TOKENS, ClientAPI.OPENAI_RESPONSES_INPUT_TOKENS}
)
STORED_HEADERS = frozenset({TOKEN_COUNT_HEADER})
REQUIRED_HEADERS = {api: (TOKEN_COUNT_HEADER,) for api in COUNTING_APIS}
# The answers' provider and deployment, as history records them.
CACHE_PROVIDER = "switchyard"
CACHE_DEPLOYMENT = "response-cache"

LOOKUPS = Counter(
    "switchyard_gateway_cache_lookups_total",
    "Response cache lookups of opted-in requests, by result (hit, miss).",
    ["api", "result"],
)
SKIPPED = Counter(
    "switchyard_gateway_cache_bypassed_total",
    "Opted-in requests not looked up, by reason (off, refresh, nondeterministic, metadata_only, "
    "uncacheable: a background response).",
    ["reason"],
)
STORES = Counter(
    "switchyard_gateway_cache_stores_total",
    "Answers offered to the shared cache store, by outcome (stored, not_stored, failed).",
    ["outcome"],
)
PURGES = Counter(
    "switchyard_gateway_cache_purges_total",
    "`cache.purged` events this replica applied.",
)
PURGED = Counter(
    "switchyard_gateway_cache_purged_total",
    "Answers this replica dropped from memory on `cache.purged` events.",
)
# Between attempts to listen to the cache events topic while Kafka is away or it is missing.
LISTEN_BACKOFF = Backoff(initial_s=0.25, max_s=5.0)


# ------------------------------------------------------------------------------ keys


def _unmarked(block: Any) -> Any:
    """A content block or tool without its `cache_control` marker, and so the blocks of a
    `tool_result`'s content. Only where Anthropic takes the marker: the same key anywhere
    else (a tool's input, a JSON schema's property) is the caller's data and stays."""
    if not isinstance(block, dict):
        return block
    kept = {name: value for name, value in block.items() if name != "cache_control"}
    if isinstance(kept.get("content"), list):
        kept["content"] = [_unmarked(inner) for inner in kept["content"]]
    return kept


def _unmarked_message(message: Any) -> Any:
    if isinstance(message, dict) and isinstance(message.get("content"), list):
        return {**message, "content": [_unmarked(block) for block in message["content"]]}
    return message


def normalised_body(body: dict[str, Any]) -> dict[str, Any]:
    """What of `body` decides the answer (see the module docstring)."""
    kept: dict[str, Any] = {}
    for name, value in body.items():
        if name in NON_OUTPUT_FIELDS or name == "cache_control":
            continue
        if name in NUMERIC_PARAMETERS and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, list) and name in ("system", "tools"):
            value = [_unmarked(item) for item in value]
        elif isinstance(value, list) and name in ("messages", "input"):
            value = [_unmarked_message(item) for item in value]
        kept[name] = value
    return kept


def cache_key(
    tenant: str,
    api: ClientAPI,
    body: dict[str, Any],
    headers: dict[str, str],
    stream: bool,
    user: str | None = None,
) -> str:
    """SHA-256 (hex) of the tenant, API, streaming and the normalised body and headers;
    with `user`, of that user's answers only (see `answer_owner`)."""
    include_usage = None
    if stream:
        options = body.get("stream_options")
        include_usage = bool(options.get("include_usage")) if isinstance(options, dict) else False
    document = {
        "v": KEY_VERSION,
        "tenant": tenant,
        "api": api.value,
        "stream": stream,
        "include_usage": include_usage,
        "headers": {name: headers[name] for name in sorted(headers)},
        "body": normalised_body(body),
    }
    if user is not None:
        document["user"] = user
    return hashlib.sha256(exactjson.dumps(document, option=orjson.OPT_SORT_KEYS)).hexdigest()


def answer_owner(api: ClientAPI, body: dict[str, Any], user_id: str) -> str | None:
    """The user an answer is kept for alone, None when the tenant shares it. A Responses
    API answer that is stored (`store` is not false) is an object of its creator's, by its
    id (`GET /v1/responses/{id}`, `previous_response_id`), which another user cannot read:
    served to them it would hand out an id they cannot use, so it is shared with nobody."""
    if api is ClientAPI.OPENAI_RESPONSES and body.get("store") is not False:
        return user_id
    return None


def is_deterministic(api: ClientAPI, body: dict[str, Any]) -> bool:
    """Whether the same request gets the same answer: embeddings, `temperature` 0, or a
    `seed` (OpenAI's APIs). A missing temperature is the providers' default, 1."""
    if api is ClientAPI.OPENAI_EMBEDDINGS:
        return True
    temperature = body.get("temperature")
    if (
        isinstance(temperature, int | float)
        and not isinstance(temperature, bool)
        and temperature == 0
    ):
        return True
    seeded = api in (ClientAPI.OPENAI_CHAT_COMPLETIONS, ClientAPI.OPENAI_RESPONSES)
    return seeded and isinstance(body.get("seed"), int) and not isinstance(body["seed"], bool)


# ------------------------------------------------------------------------------ entries


@dataclass
class CachedAnswer:
    """A stored answer, ready to send: the JSON body, and for a stream its events as SSE."""

    api: ClientAPI
    model: str
    response: dict[str, Any]
    body: bytes
    stream: bytes | None
    source_request_id: str
    source_cost_usd: float | None
    created_at: datetime
    expires_at: datetime
    # monotonic instant after which this replica asks history again
    local_until: float = 0.0
    # whose answer it is (set when kept in memory; a purge names tenants)
    tenant: str = ""
    # The headers describing the body that the fresh answer carried (`answer_headers`),
    # given back with it; empty for an answer stored before they were kept.
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Whether this answer carries every header a fresh answer of its API carries; one
        that does not (stored before they were kept) is answered as a miss, and replaced."""
        return all(name in self.headers for name in REQUIRED_HEADERS.get(self.api, ()))

    @property
    def size(self) -> int:
        """Bytes this answer holds in memory (JSON body plus the stream, if kept)."""
        return len(self.body) + len(self.stream or b"")

    def as_new_response(self, request_id: str, body: dict[str, Any], now: datetime) -> CachedAnswer:
        """This Responses API answer as the new response that request `request_id` (with
        request `body`) creates at `now`: a `responses.create` makes a new object every
        time, so the reused output goes out under the request's own response id and
        creation time, each output item under an id of its own (`_new_item_id`), echoing
        the request's parameters the key leaves out (`metadata`, `user`, `store`,
        `service_tier`, `prompt_cache_key`, `safety_identifier`), in the JSON answer and
        in every stream event (the `response` it carries, its `item` and its `item_id`).
        History records it under that id, which `GET /v1/responses/{id}`,
        `previous_response_id` and `item_reference` then find: never the original's
        items, which keep their own ids. The answer (`body`, `stream`) shows reasoning items
        without `encrypted_content` unless the request includes
        `reasoning.encrypted_content`; `response`, which history records, keeps it."""
        from switchyard.gateway.dispatch import sse_event

        hides = not includes_encrypted_reasoning(body.get("include"))

        new_id = response_id(request_id, now)
        metadata = body.get("metadata")
        output = self.response.get("output")
        # Stream events name an item by its id alone: the output says of which type it is.
        kinds = {
            value.get("id"): value.get("type")
            for value in (output if isinstance(output, list) else ())
            if isinstance(value, dict)
        }

        def item(value: Any) -> Any:
            if isinstance(value, dict) and _renamed_item(value.get("type"), value.get("id")):
                return {**value, "id": _new_item_id(value["id"], request_id)}
            return value

        def renamed(response: dict[str, Any]) -> dict[str, Any]:
            response = {**response, "id": new_id, "created_at": int(now.timestamp())}
            if response.get("completed_at") is not None:
                response["completed_at"] = int(now.timestamp())
            if isinstance(response.get("output"), list):
                response["output"] = [item(value) for value in response["output"]]
            response["metadata"] = metadata if isinstance(metadata, dict) else {}
            response["store"] = body.get("store") is not False
            if "service_tier" in response or "service_tier" in body:
                # No upstream served a hit: the tier asked for, as `response_object` says
                # when the upstream names none.
                response["service_tier"] = body.get("service_tier") or "default"
            for name in ("user", "prompt_cache_key", "safety_identifier"):
                if name in response or name in body:
                    response[name] = body.get(name)
            return response

        def event_data(data: dict[str, Any]) -> dict[str, Any]:
            data = dict(data)
            if isinstance(inner := data.get("response"), dict):
                data["response"] = renamed(inner)
            if "item" in data:  # response.output_item.added / done
                data["item"] = item(data["item"])
            item_id = data.get("item_id")
            if isinstance(item_id, str) and _renamed_item(kinds.get(item_id, "reasoning"), item_id):
                data["item_id"] = _new_item_id(item_id, request_id)
            return data

        response = renamed(self.response)
        stream = self.stream
        if stream is not None:
            # Read back from the bytes kept (`sse_event`'s own `event:` / `data:` lines):
            # keeping the parsed events too would hold several times the stream's size.
            pieces = []
            for block in stream.split(b"\n\n"):
                if not block:
                    continue
                name = None
                if block.startswith(b"event: "):  # then one `data:` line: JSON has no newline
                    head, _, block = block.partition(b"\n")
                    name = head[len(b"event: ") :].decode()
                data = exactjson.loads(block[len(b"data: ") :])
                if isinstance(data, dict):
                    data = event_data(data)
                    if hides:
                        data = without_encrypted_reasoning(data)
                pieces.append(sse_event(StreamEvent(event=name, data=data)))
            stream = b"".join(pieces)
        shown = without_encrypted_reasoning(response) if hides else response
        return replace(self, response=response, body=exactjson.dumps(shown), stream=stream)

    @classmethod
    def from_store(cls, data: dict[str, Any]) -> CachedAnswer:
        """An answer from history's stored form (a dict with `api`, `body`, `stream_events`,
        timestamps, and `headers` when it was stored with them); the stream is rebuilt as
        SSE bytes. Raises KeyError or ValidationError on a malformed record."""
        from switchyard.gateway.dispatch import DONE, sse_event

        api = ClientAPI(data["api"])
        stream = None
        if data.get("stream_events") is not None:
            events = [StreamEvent.model_validate(event) for event in data["stream_events"]]
            stream = b"".join(sse_event(event) for event in events)
            if api is ClientAPI.OPENAI_CHAT_COMPLETIONS:
                stream += DONE
        return cls(
            api=api,
            model=data["model"],
            response=data["response"],
            body=exactjson.dumps(data["response"]),
            stream=stream,
            source_request_id=data["source_request_id"],
            source_cost_usd=data.get("source_cost_usd"),
            created_at=datetime.fromisoformat(data["created_at"]),
            expires_at=datetime.fromisoformat(data["expires_at"]),
            headers=_kept_headers(data.get("headers")),
        )


# The id prefix of reasoning items Switchyard makes when it translates another API's
# reply (`switchyard.inference.translate_responses.TRANSLATED_REASONING_PREFIX`).
_SWITCHYARD_REASONING_PREFIX = "rs_sy"


def _renamed_item(kind: Any, item_id: Any) -> bool:
    """Whether a reused output item of type `kind` gets a new id: every one but those
    whose id an OpenAI upstream gave and requires back (`upstream_named`: a reasoning item
    it made, `rs_` not Switchyard's `rs_sy`; its built-in tools' calls), which a later
    turn may send back to that upstream by id, where only the original id is known."""
    if not isinstance(item_id, str) or not item_id:
        return False
    if kind == "reasoning":
        return item_id.startswith(_SWITCHYARD_REASONING_PREFIX) or not item_id.startswith("rs_")
    return not upstream_named(kind)


def _new_item_id(item_id: str, request_id: str) -> str:
    """The id a reused output item gets in the response of request `request_id`: the
    stored one (so its kind prefix stays: `msg_`, `fc_`, `rs_`, Switchyard's `rs_sy` of a
    translated reasoning item) and the request id, unique as response ids are. A function
    of both, so the JSON answer, every stream event and history name the item alike."""
    return f"{item_id}_{request_id}"


def _kept_headers(value: Any) -> dict[str, str]:
    """The stored headers of an entry that are `STORED_HEADERS` (lowercase names, string
    values); none for an entry stored without them."""
    if not isinstance(value, dict):
        return {}
    return {
        str(name).lower(): text
        for name, text in value.items()
        if str(name).lower() in STORED_HEADERS and isinstance(text, str)
    }


def answer_headers(api: ClientAPI, reply: ChatCompleted) -> dict[str, str]:
    """The headers describing the body that `Dispatch.answer` sets on the fresh answer of
    `reply` (besides the request id, rate limits and the cache's own): stored with it, so
    that a hit carries them too. A token count's `x-switchyard-token-count` (`exact`: a
    deployment counted; `estimate`: no upstream API, inference estimated it)."""
    if api in COUNTING_APIS:
        return {TOKEN_COUNT_HEADER: "exact" if reply.data.upstream_api is not None else "estimate"}
    return {}


@dataclass(frozen=True)
class TenantCacheSettings:
    """Whether the cache is on for a caller and its TTL (seconds; None: the default), and
    whether their tenant keeps content at all: the tenant's settings, or (see
    `ResponseCache.caller_settings`) those with the caller's key and team opt-ins applied."""

    enabled: bool = False
    ttl_s: int | None = None
    store_content: bool = True

    def with_opt_ins(self, opt_ins: tuple[CacheOptIn, ...]) -> TenantCacheSettings:
        """These settings overridden by the narrowest level that sets each one (`opt_ins`
        are ordered key first, then team)."""
        if not opt_ins:
            return self
        enabled = next((o.enabled for o in opt_ins if o.enabled is not None), self.enabled)
        ttl_s = next((o.ttl_s for o in opt_ins if o.ttl_s is not None), self.ttl_s)
        return replace(self, enabled=enabled, ttl_s=ttl_s)


@dataclass
class CacheTicket:
    """The cache's part in one opted-in request: its key and what to do."""

    key: str | None
    mode: str  # use, refresh, off
    status: str  # hit, miss, refresh, bypass
    ttl_s: float = 0.0
    hit: CachedAnswer | None = None
    # A miss's stream events, kept to store with its answer: each as its JSON (bytes hold
    # no references, so a long stream leaves the garbage collector nothing to walk).
    events: list[bytes] | None = None
    principal: Principal | None = None
    client: ClientRequest | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # `ResponseCache._drops` when this request was decided: its answer, once stored, ends
    # the hold of every refresh of its key begun up to then (it was made after them).
    sequence: int = 0

    @property
    def stores(self) -> bool:
        """True when this request's answer is to be stored (a miss or a forced refresh)."""
        return self.key is not None and self.status in ("miss", "refresh")

    def response_headers(self) -> dict[str, str]:
        """The headers telling the client what the cache did: `x-switchyard-cache` and, on a
        hit, `age` in whole seconds since the answer was stored."""
        headers = {CACHE_HEADER: self.status}
        if self.hit is not None:
            age = (utcnow() - self.hit.created_at).total_seconds()
            headers["age"] = str(max(0, int(age)))
        return headers

    def collect(self, events: list[StreamEvent]) -> None:
        """Keep a miss's stream events (in the order relayed) to store with its answer."""
        if self.stores:
            if self.events is None:
                self.events = []
            self.events.extend(event.model_dump_json().encode() for event in events)

    def stream_events(self) -> list[dict[str, Any]]:
        """The stream events `collect` kept, as `StreamEvent` dicts (`event`, `data`)."""
        # One document, read at once: far cheaper than one read per event.
        return cast(
            list[dict[str, Any]], exactjson.loads(b"[" + b",".join(self.events or ()) + b"]")
        )


# ------------------------------------------------------------------------------ the cache


class ResponseCache:
    """The gateway side of the response cache: decisions, the in-memory front, the shared
    store in history, answering hits and recording them."""

    def __init__(self, gateway: Gateway) -> None:
        settings = gateway.settings
        self.gateway = gateway
        self._base = settings.history_url.rstrip("/") + "/internal/v1/cache"
        self._local_ttl_s = settings.cache_local_ttl_s
        self._local_max_entry = max(1, settings.cache_local_max_bytes // 16)
        self._front: TLRUCache[str, CachedAnswer] = TLRUCache(
            maxsize=settings.cache_local_max_bytes,
            ttu=lambda _key, value, _now: value.local_until,
            getsizeof=lambda value: value.size,
        )
        self._settings: dict[str, tuple[float, TenantCacheSettings]] = {}
        self._refreshing: dict[str, asyncio.Task[TenantCacheSettings]] = {}
        # Purges applied so far.
        self.purges_applied = 0
        # Bumped by every purge and every refresh as it starts: a store lookup or a store
        # that overlapped one keeps nothing in memory, since what it read or wrote may be
        # the very answer they dropped.
        self._drops = 0
        # Keys a refresh sent from this process is replacing: key -> {the refresh's
        # sequence: the monotonic instant its hold lapses}. While held, no request here is
        # answered with what is stored under the key (they are misses); the hold ends once
        # an answer made after the refresh began is stored (the refresh's own, or a miss's
        # when the refresh failed), or at its request's deadline plus the time its store
        # may take.
        self._replacing: dict[str, dict[int, float]] = {}
        self.listener: Subscription | None = None
        self.hit_events = HitEvents(
            lambda topic, event, key: gateway.bus.publish(topic, event, key=key),
            settings.cache_hit_events_linger_ms / 1000,
        )

    def _headers(self, principal: Principal) -> dict[str, str]:
        return principal.internal_headers(self.gateway.settings.internal_token)

    # -- tenant settings ------------------------------------------------------------------

    async def tenant_settings(self, principal: Principal) -> TenantCacheSettings:
        """The tenant's cache settings, kept `cache_settings_ttl_s`; once known, a stale
        value is used while it is refreshed in the background."""
        cached = self._settings.get(principal.tenant)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        task = self._refreshing.get(principal.tenant)
        if task is None:
            task = asyncio.ensure_future(self._fetch_settings(principal))
            self._refreshing[principal.tenant] = task
            task.add_done_callback(lambda _: self._refreshing.pop(principal.tenant, None))
        if cached is not None:
            return cached[1]
        return await asyncio.shield(task)

    async def _fetch_settings(self, principal: Principal) -> TenantCacheSettings:
        ttl = self.gateway.settings.cache_settings_ttl_s
        try:
            response = await self.gateway.http.get(
                self._base + "/settings", headers=self._headers(principal), timeout=2.0
            )
            response.raise_for_status()
            data = response.json()
            found = TenantCacheSettings(
                enabled=bool(data.get("cache_enabled")),
                ttl_s=data.get("cache_ttl_s"),
                store_content=bool(data.get("store_content", True)),
            )
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("cache settings unavailable; not caching for now", error=repr(exc))
            # Tried again soon; meanwhile nothing is cached (content may not be kept).
            found, ttl = TenantCacheSettings(store_content=False), min(ttl, 2.0)
        self._settings[principal.tenant] = (time.monotonic() + ttl, found)
        return found

    def forget_tenant(self, tenant: str) -> None:
        """Drop the tenant's cached cache settings, so that the next request reads them again."""
        self._settings.pop(tenant, None)

    async def caller_settings(self, principal: Principal) -> TenantCacheSettings:
        """The settings that apply to this caller: the tenant's, overridden by their team's
        and then their key's opt-in. Those come with the caller's policy, cached by
        admission (which read it for this request already); when auth cannot say, the
        tenant's settings apply."""
        tenant = await self.tenant_settings(principal)
        admission = self.gateway.admission
        if admission is None:
            return tenant
        try:
            policy = await admission.policies.get(principal.user_id, principal.api_key_id)
        except PolicyUnavailable:
            return tenant
        return tenant.with_opt_ins(policy.cache)

    # -- deciding and looking up ----------------------------------------------------------

    async def ticket(
        self,
        request: Request,
        principal: Principal,
        client: ClientRequest,
        forwarded: dict[str, str],
    ) -> CacheTicket | None:
        """What the cache does for this request: None when it is not opted in (nothing
        to do); otherwise a ticket, with the stored answer on a hit. A refresh drops the
        answer it replaces from memory at once, and until an answer made after it began is
        stored, no request here is answered from the store under its key (they are
        misses; see `_replacing`). Raises
        APIError 400 (`invalid_cache_header`) for an unreadable cache header, whether or
        not the cache is on for this caller."""
        mode, asked_ttl, nondeterministic = self._read_headers(request)
        if mode == "off":
            SKIPPED.labels("off").inc()
            return CacheTicket(None, "off", "bypass")
        settings = await self.caller_settings(principal)
        if mode is None:
            if not settings.enabled:
                return None
            mode = "use"
        if not settings.store_content:
            SKIPPED.labels("metadata_only").inc()
            return CacheTicket(None, mode, "bypass")
        if not nondeterministic and not is_deterministic(client.api, client.body):
            SKIPPED.labels("nondeterministic").inc()
            return CacheTicket(None, mode, "bypass")
        ttl_s = float(asked_ttl) if asked_ttl is not None else self._default_ttl(settings)
        key = cache_key(
            principal.tenant,
            client.api,
            client.body,
            forwarded,
            client.stream,
            user=answer_owner(client.api, client.body, principal.user_id),
        )
        ticket = CacheTicket(
            key,
            mode,
            "refresh" if mode == "refresh" else "miss",
            ttl_s,
            principal=principal,
            client=client,
            headers=forwarded,
        )
        if mode == "refresh":
            SKIPPED.labels("refresh").inc()
            ticket.sequence = self._begin_refresh(key)
            return ticket
        ticket.sequence = self._drops
        ticket.hit = await self.lookup(principal, key)
        if ticket.hit is not None and ticket.hit.api is not client.api:
            ticket.hit = None  # cannot happen with the API in the key; never answer wrongly
        if ticket.hit is not None and client.stream and ticket.hit.stream is None:
            ticket.hit = None
        if ticket.hit is not None and not ticket.hit.complete:
            # Stored without a header its fresh answer carries (before they were kept, or
            # by a store that does not keep them): a miss, whose answer replaces it.
            ticket.hit = None
        ticket.status = "hit" if ticket.hit is not None else "miss"
        LOOKUPS.labels(client.api.value, ticket.status).inc()
        return ticket

    def check_headers(self, request: Request) -> None:
        """Raise APIError 400 (`invalid_cache_header`) for an unreadable cache header on a
        request the cache does not answer (a job): the same mistake is the same error on
        every route."""
        self._read_headers(request)

    async def bypass(self, request: Request, principal: Principal) -> CacheTicket | None:
        """The ticket of a request the cache never answers nor stores (a background
        response, whose result is read later): None when the caller did not opt in (no
        header, and their key, team and tenant leave it off), else a `bypass`, which
        every opted-in answer carries. Raises APIError 400 as `check_headers` does."""
        mode, _, _ = self._read_headers(request)
        if mode is None:
            if not (await self.caller_settings(principal)).enabled:
                return None
            mode = "use"
        SKIPPED.labels("off" if mode == "off" else "uncacheable").inc()
        return CacheTicket(None, mode, "bypass")

    def _read_headers(self, request: Request) -> tuple[str | None, int | None, bool]:
        """The cache headers of `request`: the mode (`use`, `off`, `refresh`; None when
        not asked), the TTL asked for (whole seconds; None when not asked) and whether a
        non-deterministic request is to be cached. Raises APIError 400 for a value other
        than those the error message (and docs/replay-and-cache.md) lists."""
        mode = None
        asked = _header(request, CACHE_HEADER)
        if asked is not None:
            mode = MODES.get(asked.strip().lower())
            if mode is None:
                raise _bad_header(CACHE_HEADER, "must be on, off or refresh")
        ttl = None
        asked = _header(request, TTL_HEADER)
        if asked is not None:
            # Whole seconds, like the keys', teams' and tenants' `cache_ttl_s`.
            limit = int(self.gateway.settings.cache_max_ttl_s)
            text = asked.strip()
            if TTL_VALUE.fullmatch(text) is None or not 1 <= int(text) <= limit:
                raise _bad_header(
                    TTL_HEADER, f"must be a whole number of seconds from 1 to {limit}"
                )
            ttl = int(text)
        nondeterministic = False
        asked = _header(request, NONDETERMINISTIC_HEADER)
        if asked is not None:
            value = asked.strip().lower()
            if value not in ("true", "false"):
                raise _bad_header(NONDETERMINISTIC_HEADER, "must be true or false")
            nondeterministic = value == "true"
        return mode, ttl, nondeterministic

    def _default_ttl(self, settings: TenantCacheSettings) -> float:
        """The TTL when the request asks none: the caller's key's, team's or tenant's,
        else the default; at most the maximum."""
        limit = self.gateway.settings.cache_max_ttl_s
        if settings.ttl_s:
            return float(min(settings.ttl_s, limit))
        return float(min(self.gateway.settings.cache_default_ttl_s, limit))

    # -- refreshes ------------------------------------------------------------------------

    def _begin_refresh(self, key: str) -> int:
        """Hold `key` for a refresh sent now, and drop what memory holds under it; returns
        the refresh's sequence."""
        now = time.monotonic()
        # Holds of refreshes never followed by a stored answer lapse at their deadline;
        # swept here so that the table stays small.
        for held, marks in list(self._replacing.items()):
            for begun, deadline in list(marks.items()):
                if deadline <= now:
                    del marks[begun]
            if not marks:
                del self._replacing[held]
        self._drops += 1
        deadline = now + self.gateway.settings.longest_request_s + STORE_TIMEOUT_S
        self._replacing.setdefault(key, {})[self._drops] = deadline
        self._front.pop(key, None)
        return self._drops

    def _replaced(self, key: str, sequence: int) -> None:
        """An answer to a request decided at `sequence` is stored under `key`: the
        refreshes of `key` begun up to then hold it no longer."""
        marks = self._replacing.get(key)
        if marks is None:
            return
        for begun in [begun for begun in marks if begun <= sequence]:
            del marks[begun]
        if not marks:
            del self._replacing[key]

    def _being_replaced(self, key: str) -> bool:
        """Whether a refresh sent from this process is replacing `key` now."""
        marks = self._replacing.get(key)
        if not marks:
            return False
        now = time.monotonic()
        return any(deadline > now for deadline in marks.values())

    # -- lookups --------------------------------------------------------------------------

    async def lookup(self, principal: Principal, key: str) -> CachedAnswer | None:
        """The live answer for `key`: from memory, else from the shared store; None while
        a refresh from this process replaces it (the store still holds the old answer)."""
        if self._being_replaced(key):
            return None
        answer = self._front.get(key)
        if answer is not None and answer.expires_at > utcnow():
            return answer
        drops = self._drops
        try:
            response = await self.gateway.http.get(
                f"{self._base}/entries/{key}",
                headers=self._headers(principal),
                timeout=self.gateway.settings.cache_lookup_timeout_s,
            )
        except httpx.HTTPError as exc:
            log.warning("cache store unreachable: answered as a miss", error=repr(exc))
            return None
        if response.status_code != 200:
            if response.status_code != 404:
                log.warning("cache lookup failed", status=response.status_code)
            return None
        try:
            answer = CachedAnswer.from_store(await exactjson.loads_off_loop(response.content))
        except (ValueError, KeyError) as exc:
            log.warning("unreadable cache entry: answered as a miss", error=repr(exc))
            return None
        if drops == self._drops:  # else it may be purged or refreshed already: not kept
            self._remember(key, answer, principal.tenant)
        return answer

    def _remember(self, key: str, answer: CachedAnswer, tenant: str) -> None:
        answer.tenant = tenant
        if answer.size > self._local_max_entry:
            return
        remaining = (answer.expires_at - utcnow()).total_seconds()
        answer.local_until = time.monotonic() + max(0.0, min(self._local_ttl_s, remaining))
        with contextlib.suppress(ValueError):  # larger than the whole front: not kept
            self._front[key] = answer

    # -- answering a hit ------------------------------------------------------------------

    def answer(self, dispatch: Dispatch) -> Response:
        """The hit's HTTP answer; its events are published in the background."""
        ticket = dispatch.cache
        assert ticket is not None and ticket.hit is not None and ticket.client is not None
        # The hit's request is recorded as accepted at this moment, the creation time its
        # response id carries: history finds the response by that id as soon as it
        # records the request, and until its reply is recorded too, a read or a
        # `previous_response_id` waits for it (`answered_responses`) as for any answer.
        dispatch.accepted_at = utcnow()
        if ticket.hit.api is ClientAPI.OPENAI_RESPONSES:
            # Its events (`_record_hit`) carry the same new response as the answer.
            ticket.hit = ticket.hit.as_new_response(
                dispatch.request_id, ticket.client.body, dispatch.accepted_at
            )
            self.gateway.answered_responses.add(
                response_id(dispatch.request_id, dispatch.accepted_at)
            )
        hit = ticket.hit
        headers = {
            "x-request-id": dispatch.request_id,
            **dispatch.rate_limit_headers(),
            **hit.headers,
            **ticket.response_headers(),
        }
        dispatch.finished = True
        dispatch.observe(200)
        self._background(self._record_hit(dispatch, ticket, time.perf_counter()))
        if dispatch.stream:
            assert hit.stream is not None
            # The whole stream is in memory: one body with its length, which SSE clients
            # read like any stream, without a streaming response's disconnect watcher.
            return Response(
                hit.stream,
                media_type="text/event-stream",
                headers={**headers, "cache-control": "no-cache"},
            )
        return Response(hit.body, media_type="application/json", headers=headers)

    async def _record_hit(self, dispatch: Dispatch, ticket: CacheTicket, answered: float) -> None:
        """A hit as events: the request and its reply on the replies topic, and its usage
        (`cache_hit`, no cost, what it saved) on the usage topic."""
        hit, principal, client = ticket.hit, ticket.principal, ticket.client
        assert hit is not None and principal is not None and client is not None
        latency_ms = (answered - dispatch.started) * 1000
        saved = hit.source_cost_usd
        if saved is None and ticket.key is not None:
            # The answer's own usage was not recorded yet when it was kept here: ask again.
            self._front.pop(ticket.key, None)
            fresh = await self.lookup(principal, ticket.key)
            saved = fresh.source_cost_usd if fresh is not None else None
        team_id = dispatch.ticket.team_id if dispatch.ticket is not None else None
        now = dispatch.accepted_at or utcnow()
        envelope = {
            "source": "gateway",
            "tenant": principal.tenant,
            "request_id": dispatch.request_id,
        }
        topics = self.gateway.topics
        events = [
            (
                topics.replies,
                ChatRequested(
                    **envelope,
                    id=derived_event_id(dispatch.request_id, "request"),
                    time=now,
                    data=ChatRequestData(
                        api=client.api,
                        model=client.model,
                        body=client.body,
                        headers=ticket.headers,
                        stream=client.stream,
                        user_id=principal.user_id,
                        api_key_id=principal.api_key_id,
                        team_id=team_id,
                        deadline=now,
                        reply_to=None,
                    ),
                ),
            ),
            (
                topics.replies,
                ChatCompleted(
                    **envelope,
                    id=derived_event_id(dispatch.request_id, "reply"),
                    time=now,
                    data=ChatCompletedData(
                        api=client.api,
                        response=hit.response,
                        provider=CACHE_PROVIDER,
                        deployment=CACHE_DEPLOYMENT,
                        usage=TokenUsage(),
                        latency_ms=0,
                    ),
                ),
            ),
            (
                topics.usage,
                UsageRecorded(
                    **envelope,
                    id=derived_event_id(dispatch.request_id, "usage"),
                    time=now,
                    data=UsageData(
                        api=client.api,
                        model=client.model,
                        provider=CACHE_PROVIDER,
                        deployment=CACHE_DEPLOYMENT,
                        user_id=principal.user_id,
                        api_key_id=principal.api_key_id,
                        status=TerminalStatus.COMPLETED,
                        usage=TokenUsage(),
                        cost_usd=0,
                        latency_ms=latency_ms,
                        upstream_calls=0,
                        cache_hit=True,
                        saved_cost_usd=saved or 0,
                    ),
                ),
            ),
        ]
        self.hit_events.add(HitRecord(dispatch.request_id, events[0], events[1], events[2]))

    async def stop(self) -> None:
        """Stop listening for purges; publish the hits' events still gathering."""
        if self.listener is not None:
            await self.listener.stop()
            self.listener = None
        await self.hit_events.stop()

    # -- storing a miss -------------------------------------------------------------------

    def completed(self, dispatch: Dispatch, reply: ChatCompleted) -> None:
        """A miss (or refresh) completed: store its answer in the background."""
        ticket = dispatch.cache
        if ticket is None or not ticket.stores or reply.data.api is not dispatch.api:
            return
        if dispatch.stream and not ticket.events:
            return  # a stream whose events were not all seen is not kept
        self._background(self._store(ticket, reply, dispatch.request_id))

    async def _store(self, ticket: CacheTicket, reply: ChatCompleted, request_id: str) -> None:
        principal, client = ticket.principal, ticket.client
        assert principal is not None and client is not None and ticket.key is not None
        entry = {
            "api": client.api.value,
            "model": client.model,
            "response": reply.data.response,
            "stream_events": ticket.stream_events() if client.stream else None,
            "source_request_id": request_id,
            "ttl_s": ticket.ttl_s,
        }
        # Only where there are some: other entries are stored as they always were.
        if headers := answer_headers(client.api, reply):
            entry["headers"] = headers
        drops = self._drops
        try:
            response = await self.gateway.http.put(
                f"{self._base}/entries/{ticket.key}",
                content=exactjson.dumps(entry),
                headers={**self._headers(principal), "content-type": "application/json"},
                timeout=STORE_TIMEOUT_S,
            )
            response.raise_for_status()
            stored = bool(response.json().get("stored"))
        except (httpx.HTTPError, ValueError) as exc:
            STORES.labels("failed").inc()
            log.warning("could not store an answer in the cache", error=repr(exc))
            return
        STORES.labels("stored" if stored else "not_stored").inc()
        if not stored:
            return
        self._replaced(ticket.key, ticket.sequence)
        # Not kept in memory when a purge or another refresh came meanwhile: the store may
        # have deleted or replaced it since.
        if drops == self._drops:
            now = utcnow()
            self._remember(
                ticket.key,
                CachedAnswer.from_store(
                    {
                        **entry,
                        "source_cost_usd": None,
                        "created_at": now.isoformat(),
                        "expires_at": (now + timedelta(seconds=ticket.ttl_s)).isoformat(),
                    }
                ),
                principal.tenant,
            )

    # -- purges ---------------------------------------------------------------------------

    async def forget(self, tenant: str, request_id: str) -> None:
        """Drop from every replica's memory the answers request `request_id` of `tenant`
        made (its response was deleted; history deleted them from the shared store): here
        at once, elsewhere on `cache.purged` naming the request. Were that event not
        published (the bus down), the local time to live still bounds what another replica
        serves; logged."""
        data = CachePurgedData(tenant=tenant, source_request_id=request_id)
        self.purge(data)
        event = CachePurged(source="gateway", tenant=tenant, request_id=request_id, data=data)
        try:
            await self.gateway.bus.publish(self.gateway.topics.cache_events, event, key=tenant)
        except Exception as exc:  # noqa: BLE001 - the local time to live bounds it
            log.warning(
                "cache purge of a deleted response not announced",
                request_id=request_id,
                error=repr(exc),
                local_ttl_s=self._local_ttl_s,
            )

    def purge(self, purge: CachePurgedData) -> int:
        """Drop the answers kept in memory that `purge` deleted from the shared store (its
        tenant or every tenant's, its model or every model's, only expired ones if it says
        so, only one request's if it names one); returns how many were dropped."""
        self.purges_applied += 1
        self._drops += 1
        now = utcnow()
        dropped = 0
        for key, answer in list(self._front.items()):
            if (
                (purge.tenant is None or answer.tenant == purge.tenant)
                and (purge.model is None or answer.model == purge.model)
                and (not purge.expired_only or answer.expires_at <= now)
                and (
                    purge.source_request_id is None
                    or answer.source_request_id == purge.source_request_id
                )
            ):
                self._front.pop(key, None)
                dropped += 1
        PURGES.inc()
        PURGED.inc(dropped)
        return dropped

    async def on_event(self, event: Event) -> None:
        """Bus listener of the cache events topic."""
        if isinstance(event, CachePurged):
            dropped = self.purge(event.data)
            log.info(
                "cache purge applied",
                tenant=event.data.tenant,
                model=event.data.model,
                expired_only=event.data.expired_only,
                source_request_id=event.data.source_request_id,
                dropped=dropped,
            )

    async def listen(self) -> None:
        """Listen to every partition of the cache events topic, retrying until it works
        (Kafka down, or the topic not created yet)."""
        attempt = 0
        while self.listener is None:
            attempt += 1
            try:
                self.listener = await self.gateway.bus.listen(
                    self.gateway.topics.cache_events, self.on_event
                )
            except Exception as exc:  # noqa: BLE001 - Kafka down or topic missing: retried
                delay = LISTEN_BACKOFF.delay(attempt)
                log.warning("cannot listen for cache purges yet", error=repr(exc), retry_in_s=delay)
                await asyncio.sleep(delay)

    def _background(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coroutine)
        self.gateway.background.add(task)
        task.add_done_callback(self.gateway.background.discard)


def _header(request: Request, name: str) -> str | None:
    """The value of header `name`, None when absent. A header sent on several lines is
    their values joined with ", ", as HTTP defines it (RFC 9110, 5.3): `on` and `off` on
    two lines is refused like `on, off` on one, not read as its first line."""
    values = request.headers.getlist(name)
    return ", ".join(values) if values else None


def _bad_header(name: str, problem: str) -> APIError:
    return APIError(
        400,
        f"Invalid value for the {name} header: {problem}.",
        param=name,
        code="invalid_cache_header",
    )
