"""Gateway settings (`SWITCHYARD_GATEWAY_*`, plus the shared `SWITCHYARD_*` ones)."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from switchyard.common.db import (
    DATABASE_URL_ADVICE,
    database_kind,
    database_url_problem,
    database_variables,
)
from switchyard.common.egress import networks_setting
from switchyard.common.events import MAX_JWT_LEEWAY_S, ClientAPI
from switchyard.common.routing import DEFAULT_ANTHROPIC_MAX_TOKENS
from switchyard.common.settings import (
    DAY_S,
    GIB,
    HOUR_S,
    MAX_BYTES,
    MAX_CONCURRENCY,
    YEAR_S,
    CheckedSettings,
    Environment,
    ServiceSettings,
    env,
    http_url,
)

MIB = 1024 * 1024

# What `make run` (development) allows when no CORS origins are configured.
DEVELOPMENT_CORS_ORIGINS = ["*"]
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///.switchyard/gateway.db"


def database_url_field() -> Any:
    """The `database_url` setting: `SWITCHYARD_GATEWAY_DATABASE_URL`, else `DATABASE_URL`."""
    return Field(
        default=DEFAULT_DATABASE_URL,
        validation_alias=AliasChoices(
            "SWITCHYARD_GATEWAY_DATABASE_URL", "DATABASE_URL", "database_url"
        ),
        description="Database of the fleet's limit ledger (PostgreSQL in a real deployment).",
    )


def ledger_kind(governance_store: str, database_url: str) -> str:
    """Where the gateway keeps its limit ledger, `postgres`, `sqlite` or `memory`, with
    `SWITCHYARD_GATEWAY_GOVERNANCE_STORE` = `governance_store` and the database URL
    `database_url` (`auto`: the kind of the URL, its `postgres://` and `postgresql://`
    aliases included). Memory only when asked for, never in place of a database the URL
    cannot give: raises ValueError of one line naming the variables and the cause for a
    URL that is not usable, of another kind, or of a kind other than the store asked."""
    if governance_store == "memory":
        return "memory"
    variables = database_variables("gateway")
    problem = database_url_problem(database_url)
    if problem is not None:
        raise ValueError(
            f"{variables} is not a usable database URL for the limit ledger ({problem}); "
            f"{DATABASE_URL_ADVICE}, or set SWITCHYARD_GATEWAY_GOVERNANCE_STORE=memory to "
            "count limits in each gateway process's memory"
        )
    kind = database_kind(database_url)
    assert kind is not None  # a URL of another kind is a problem above
    if governance_store not in ("auto", kind):
        raise ValueError(
            f"SWITCHYARD_GATEWAY_GOVERNANCE_STORE is {governance_store} but {variables} "
            f"names a {'PostgreSQL' if kind == 'postgres' else 'SQLite'} database; set it "
            "to auto (the database's kind) or to a URL of that kind"
        )
    return kind


class DatabaseSettings(CheckedSettings):
    """Just the ledger's database: what `switchyard db upgrade` and `switchyard spend` need
    (no internal token or other secrets)."""

    model_config = SettingsConfigDict(
        env_prefix="SWITCHYARD_GATEWAY_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    database_url: str = database_url_field()


class Settings(ServiceSettings):
    """The gateway's settings, from `SWITCHYARD_GATEWAY_*` variables (and the shared
    `SWITCHYARD_*` ones named on each field) or a `.env` file."""

    model_config = SettingsConfigDict(env_prefix="SWITCHYARD_GATEWAY_")

    port: int = Field(default=8000, ge=1, le=65535)
    # The other services' ports on this machine, which their URLs below default to when
    # those are not set, so that services run apart find each other at the ports set.
    auth_port: int = Field(
        default=8001, ge=1, le=65535, validation_alias=env("SWITCHYARD_AUTH_PORT")
    )
    history_port: int = Field(
        default=8002, ge=1, le=65535, validation_alias=env("SWITCHYARD_HISTORY_PORT")
    )
    inference_port: int = Field(
        default=8003, ge=1, le=65535, validation_alias=env("SWITCHYARD_INFERENCE_PORT")
    )
    # Declared after the ports, which their defaults read (pydantic passes the fields
    # validated so far to a default factory that takes them).
    auth_url: str = Field(
        default_factory=lambda data: f"http://127.0.0.1:{data['auth_port']}",
        validation_alias=env("SWITCHYARD_AUTH_URL"),
    )
    history_url: str = Field(
        default_factory=lambda data: f"http://127.0.0.1:{data['history_port']}",
        validation_alias=env("SWITCHYARD_HISTORY_URL"),
    )
    routing_file: str | None = Field(default=None, validation_alias=env("SWITCHYARD_ROUTING_FILE"))
    anthropic_default_max_tokens: int = Field(
        default=DEFAULT_ANTHROPIC_MAX_TOKENS,
        ge=1,
        le=1_000_000,
        validation_alias=env("SWITCHYARD_INFERENCE_ANTHROPIC_DEFAULT_MAX_TOKENS"),
        description="Inference's setting, read by the gateway too: the max_tokens inference "
        "sends Anthropic deployments for a request without one, which budgets and token "
        "limits reserve for such a request.",
    )
    routing_reload_interval_s: float = Field(
        default=5.0,
        ge=0,
        le=DAY_S,
        description="How often the routing and prices files are checked for changes, as "
        "inference does (0: never after start-up): /v1/models, the unknown-model check and "
        "the prices budgets reserve by follow an edit within this interval.",
    )
    simulator_url: str = Field(
        default="http://127.0.0.1:8099/v1", validation_alias=env("SWITCHYARD_SIMULATOR_URL")
    )

    _urls = field_validator("auth_url", "history_url", "simulator_url")(http_url)
    jwt_issuer: str = Field(
        default="switchyard-auth", validation_alias=env("SWITCHYARD_JWT_ISSUER")
    )
    jwt_audience: str = Field(default="switchyard", validation_alias=env("SWITCHYARD_JWT_AUDIENCE"))
    request_timeout_s: float = Field(
        default=120.0,
        gt=0,
        le=DAY_S,
        description="Deadline of a request; the client gets 504 after it. A stream must "
        "start (its first event) within it, then has `stream_timeout_s`.",
    )
    stream_timeout_s: float = Field(
        default=600.0,
        gt=0,
        # Inference remembers a cancellation of a request it has not seen for an hour: a
        # stream cancelled before it started must not outlive that memory.
        le=3600,
        description="Deadline of a streamed request that has started (OpenAI's and "
        "Anthropic's SDKs wait 10 minutes by default): a long generation keeps streaming "
        "past `request_timeout_s`; at this deadline the stream ends with a "
        "`deadline_exceeded` error event. At most 3600.",
    )
    batch_accept_when_recorded: bool = Field(
        default=False,
        description="Answer a job or a background response (202) only once history shows it "
        "(waiting at most `responses_state_wait_s`). Embedded mode turns it on: its "
        "in-memory bus keeps nothing across a crash, so history's database is the only "
        "copy of an accepted job. On Kafka the broker's acknowledgement (acks=all) already "
        "keeps it.",
    )
    shutdown_drain_s: float = Field(
        default=140.0,
        ge=0,
        le=DAY_S,
        description="On SIGTERM (or Ctrl+C), how long the gateway waits for the requests it "
        "holds before ending those still waiting with 503 `gateway_shutting_down` (a stream "
        "with that error event in its API's format), so each client learns its answer was "
        "cut instead of seeing its connection drop at the kill. Keep it below the "
        "orchestrator's grace period (150 s in the manifests). The requests still run to "
        "their end in inference and are recorded in history.",
    )
    max_body_bytes: int = Field(
        default=1024 * 1024,
        gt=0,
        le=MAX_BYTES,
        description="Largest request body of the routes without a limit of their own "
        "(history settings, job cancellation...); larger ones get 413.",
    )
    # Model requests follow the limits of the API they speak (a client that works against
    # the provider must work here). Anthropic documents 32 MB for the Messages API; OpenAI
    # documents 50 MB per request (images and vision guide) and no other limit, so its
    # Embeddings API gets the same. The event bus must carry them (see `kafka_max_message_bytes`).
    chat_completions_max_body_bytes: int = Field(
        default=50 * MIB,
        gt=0,
        le=MAX_BYTES,
        description="Largest body of POST /v1/chat/completions.",
    )
    messages_max_body_bytes: int = Field(
        default=32 * MIB, gt=0, le=MAX_BYTES, description="Largest body of POST /v1/messages."
    )
    embeddings_max_body_bytes: int = Field(
        default=50 * MIB, gt=0, le=MAX_BYTES, description="Largest body of POST /v1/embeddings."
    )
    max_in_flight: int = Field(
        default=2048,
        gt=0,
        le=100_000,
        description="Requests in progress beyond this get 429, never a queue.",
    )
    job_timeout_s: float = Field(
        default=86_400.0,
        gt=0,
        le=YEAR_S,
        description="Deadline of an async job (POST /v1/jobs): after it, the job expires.",
    )
    responses_state_wait_s: float = Field(
        default=10.0,
        ge=0,
        le=HOUR_S,
        description="How long a Responses request naming a `previous_response_id` (and "
        "GET /v1/responses/{id}) waits for history to record a response just answered "
        "(its events may still be on the bus) before answering 404 or 409.",
    )
    idempotency_wait_s: float | None = Field(
        default=None,
        gt=0,
        le=DAY_S,
        description="How long a retry with the Idempotency-Key of a request still running "
        "waits for its result before 409 (default: the request timeout).",
    )
    idempotency_max_response_bytes: int = Field(
        default=4 * 1024 * 1024,
        gt=0,
        le=MAX_BYTES,
        description="Responses larger than this are not kept for Idempotency-Key replays.",
    )
    on_client_disconnect: Literal["cancel", "complete"] = Field(
        default="cancel",
        description="When a client goes away, or its stream is cut because it reads too "
        "slowly: stop the upstream call, or let it finish (usage is recorded either way).",
    )
    stream_max_buffered_events: int = Field(
        default=1024,
        ge=16,
        le=10_000_000,
        description="Stream events that may wait for one client that reads more slowly than "
        "its stream arrives (each a few KiB in memory). Past it the stream is cut: what "
        "waits is dropped, the client gets its API's error event (408 `client_too_slow`) "
        "when it reads again, and the request is handled as one whose client went away "
        "(`SWITCHYARD_GATEWAY_ON_CLIENT_DISCONNECT`).",
    )
    api_key_cache_ttl_s: float = Field(
        default=30.0,
        ge=0,
        le=YEAR_S,
        description="How long a looked-up API key is trusted without asking auth again "
        "(revocations apply at once through the auth events; this bounds a missed one).",
    )
    api_key_negative_cache_ttl_s: float = Field(default=5.0, ge=0, le=YEAR_S)
    auth_stale_if_error_s: float = Field(
        default=3600.0,
        ge=0,
        le=YEAR_S,
        description="While auth cannot be reached (no connection, a timeout, 429 or 5xx), "
        "how long past its TTL a cached answer for an API key, a user or a policy still "
        "admits its caller (revocations and expiry still apply; a key auth did not know "
        "waits for auth). 0: none. A gateway remembers a revoked API key this long plus the "
        "key cache's TTL and about a minute, then forgets it (auth refuses it at every "
        "lookup).",
    )
    api_key_lookup_concurrency: int = Field(
        default=32,
        gt=0,
        le=MAX_CONCURRENCY,
        description="API key lookups at auth in flight at once, at most.",
    )
    api_key_failed_lookups_per_address: int = Field(
        default=30,
        ge=0,
        le=1_000_000,
        description="Keys auth did not know that one client address (an IPv6 client: its "
        "/64) may send in `api_key_failed_lookups_window_s` before any further key it would "
        "need auth for is refused with 429 without asking auth (keys already known to be "
        "valid still pass). Counted per gateway process. 0: no limit.",
    )
    api_key_failed_lookups_window_s: float = Field(default=60.0, gt=0, le=DAY_S)
    jwks_refresh_min_interval_s: float = Field(default=30.0, ge=0, le=DAY_S)
    jwks_refresh_interval_s: float = Field(
        default=60.0,
        gt=0,
        le=DAY_S,
        description="How often auth's signing keys (its JWKS) are fetched again: a key auth "
        "stops publishing (retired, or removed after a leak) stops verifying tokens "
        "within this time.",
    )
    jwt_leeway_s: float = Field(
        default=10.0,
        ge=0,
        le=MAX_JWT_LEEWAY_S,
        description="Clock skew tolerated on exp, nbf and iat.",
    )
    jwt_cache_size: int = Field(
        default=10_000,
        ge=0,
        le=10_000_000,
        description="Verified access tokens remembered (skips RSA).",
    )
    forwarded_allow_ips: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated addresses or networks (CIDR) of the proxies in front of "
        "the gateway (an Ingress, a load balancer) whose X-Forwarded-For and "
        "X-Forwarded-Proto are believed: a request from one of them is taken as from the "
        "address its proxy names, for sign-in limits and logs. Empty: none, every request "
        "is from its TCP peer (behind a proxy, all clients share its address).",
    )
    cors_allow_origins: Annotated[list[str] | None, NoDecode] = Field(
        default=None,
        description="Comma-separated origins browsers may call the API from ('*' for any). "
        "Unset: any origin in development, none otherwise. Never the console (`/ui`), which "
        "serves its own origin only.",
    )
    cors_allow_origin_regex: str | None = Field(
        default=None, description="Origins matching this regular expression are allowed too."
    )
    cors_allow_methods: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
        description="Methods browsers may use (default: every method a route serves).",
    )
    cors_allow_headers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["*"], description="Request headers browsers may send."
    )
    cors_expose_headers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [
            "x-request-id",
            "request-id",
            "retry-after",
            "retry-after-ms",
            "x-should-retry",
            # The rate limits an answer carries (OpenAI's and Anthropic's names), and
            # whether a token count is exact.
            *(
                f"x-ratelimit-{field}-{kind}"
                for kind in ("requests", "tokens")
                for field in ("limit", "remaining", "reset")
            ),
            *(
                f"anthropic-ratelimit-{kind}-{field}"
                for kind in ("requests", "tokens")
                for field in ("limit", "remaining", "reset")
            ),
            "x-switchyard-token-count",
        ],
        description="Response headers browser code may read.",
    )
    cors_allow_credentials: bool = Field(
        default=False, description="Allow cookies and HTTP auth (never with '*' origins)."
    )
    cors_max_age_s: int = Field(
        default=600, ge=0, le=YEAR_S, description="How long preflights are cached."
    )
    database_url: str = database_url_field()
    governance_store: Literal["auto", "postgres", "sqlite", "memory"] = Field(
        default="auto",
        description="Where budgets and rate limits are counted: PostgreSQL (exact for the "
        "whole fleet), SQLite (exact for the gateway processes of one machine, and kept "
        "across restarts) or this process's memory (one process only, forgotten at exit). "
        "auto: the kind of the database URL.",
    )
    governance_store_timeout_s: float = Field(
        default=0.5,
        gt=0,
        le=HOUR_S,
        description="A grant from the limit store (the call on a request's path) slower "
        "than this counts as the store being down (then each tenant's failure mode decides: "
        "refuse or admit); on PostgreSQL the database ends the grant at the same deadline.",
    )
    governance_lease_idle_s: float = Field(
        default=2.0,
        gt=0,
        le=DAY_S,
        description="Unused allowance a replica has not touched for this long goes back "
        "to the fleet.",
    )
    governance_heartbeat_s: float = Field(
        default=2.0, gt=0, le=DAY_S, description="How often a replica tells the ledger it is alive."
    )
    governance_reap_after_s: float = Field(
        default=15.0,
        gt=0,
        le=DAY_S,
        description="A replica silent this long loses its leases to the others.",
    )
    governance_settled_remembered: int = Field(
        default=10_000,
        ge=0,
        le=1_000_000,
        description="How many settled requests with token or spend limits a replica "
        "remembers (the most recent, about 0.5 KB each), so the usage of another run of one "
        "of them (a run taken over from an inference replica that stalled, which then "
        "finished) still counts against budgets; 0 forgets them at once.",
    )
    policy_cache_ttl_s: float = Field(
        default=60.0,
        ge=0,
        le=YEAR_S,
        description="How long the limits of a caller are trusted without asking auth "
        "(changes apply at once through the auth events; this bounds a missed one).",
    )
    prices_file: str | None = Field(
        default=None,
        validation_alias=env("SWITCHYARD_PRICES_FILE", "prices_file"),
        description="YAML price table (see switchyard.common.pricing); the gateway reserves "
        "budgets with it, inference charges with it.",
    )
    governance_preload_tokenizer: bool = Field(
        default=False,
        description="Load the o200k_base vocabulary (about 140 MiB, 1 to 2 s in a thread) at "
        "start-up. By default it loads on the first request under a token rate limit or a "
        "budget (that request waits for it; the event loop does not), so a gateway without "
        "such limits never holds it.",
    )
    budget_day_s: float = Field(
        default=86_400.0,
        gt=0,
        le=DAY_S,
        validation_alias=env("SWITCHYARD_BUDGET_DAY_S", "budget_day_s"),
        description="Length of a day for budget periods (tests shorten it).",
    )
    console_enabled: bool = Field(
        default=True, description="Serve the web console at /ui on the gateway's port."
    )
    console_secret_key: str | None = Field(
        default=None,
        description="Encrypts the console's session cookie and signs its CSRF tokens; the "
        "same on every replica. "
        "Unset: derived from the internal token (itself required outside development).",
    )
    console_session_ttl_s: int = Field(
        default=12 * 3600,
        gt=0,
        le=30 * 24 * 3600,
        description="A console sign-in ends after this long, however active.",
    )
    console_inference_metrics_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda data: [f"http://127.0.0.1:{data['inference_port']}/metrics"],
        description="Comma-separated /metrics URLs of inference replicas, read by the "
        "console for circuit-breaker states (unreachable ones show as unknown).",
    )

    cache_default_ttl_s: float = Field(
        default=3600.0,
        gt=0,
        le=7 * DAY_S,
        description="How long a cached answer is reused when neither the request nor the "
        "tenant says.",
    )
    cache_max_ttl_s: float = Field(
        default=86_400.0,
        gt=0,
        le=7 * 86_400,
        description="Longest time to live a request or tenant may ask for a cached answer.",
    )
    cache_local_ttl_s: float = Field(
        default=10.0,
        ge=0,
        le=DAY_S,
        description="How long a replica serves a cached answer from memory before asking "
        "the shared store again (a purge reaches every replica at once through the bus; "
        "were that event lost, within this).",
    )
    cache_local_max_bytes: int = Field(
        default=64 * MIB,
        ge=0,
        le=64 * GIB,
        description="Memory for cached answers per gateway process.",
    )
    cache_settings_ttl_s: float = Field(
        default=10.0, gt=0, le=DAY_S, description="How long a tenant's cache settings are trusted."
    )
    cache_lookup_timeout_s: float = Field(
        default=1.0,
        gt=0,
        le=HOUR_S,
        description="A lookup in the shared store taking longer is answered as a miss.",
    )
    cache_hit_events_linger_ms: float = Field(
        default=50.0,
        ge=0,
        le=1000,
        description="How long the events of cache hits gather before they are published "
        "together (fewer produce requests, and no publishing between most answers); 0 "
        "publishes each hit's events at once. A replica killed meanwhile loses that "
        "window's hits from history (a clean stop publishes them).",
    )

    @field_validator(
        "cors_allow_origins",
        "cors_allow_methods",
        "cors_allow_headers",
        "cors_expose_headers",
        "console_inference_metrics_urls",
        mode="before",
    )
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        """Accept 'a,b' as well as a JSON list from the environment."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("forwarded_allow_ips", mode="before")
    @classmethod
    def _proxy_networks(cls, value: Any) -> Any:
        """Each entry an address or a network, validated ('*' is not taken: a client
        could then name any address it likes)."""
        return networks_setting(value)

    @field_validator("console_inference_metrics_urls")
    @classmethod
    def _metrics_urls(cls, value: list[str]) -> list[str]:
        """Each replica's /metrics URL is checked as the other service URLs are."""
        return [http_url(url) for url in value]

    @model_validator(mode="after")
    def _usable_ledger(self) -> Settings:
        # Refused here, before the server starts: a URL the ledger cannot use must never
        # leave limits silently counted in one process's memory.
        ledger_kind(self.governance_store, self.database_url)
        return self

    @model_validator(mode="after")
    def _check_cors(self) -> Settings:
        if self.cors_allow_credentials and "*" in self.effective_cors_origins():
            raise ValueError(
                "SWITCHYARD_GATEWAY_CORS_ALLOW_CREDENTIALS needs explicit origins, not '*': "
                "any website could otherwise call the API with the user's credentials"
            )
        return self

    def console_signing_key(self) -> bytes:
        """The key of the console's cookies: the configured one, or one derived from the
        internal token (HMAC-SHA256 with a fixed label), so replicas agree without a new
        secret to distribute."""
        if self.console_secret_key:
            return self.console_secret_key.encode()
        return self._derived_key(b"switchyard.gateway.console")

    def request_id_key(self) -> bytes:
        """The key of the HMAC in request ids (`request_id.RequestIds`): derived from the
        internal token with a fixed label, so every replica recognises the others' ids."""
        return self._derived_key(b"switchyard.gateway.request-id")

    def _derived_key(self, label: bytes) -> bytes:
        """A key of its own for `label`'s use (32 bytes): HMAC-SHA256 of the label under the
        internal token, which every replica shares, so no new secret is distributed."""
        return hmac.new(self.internal_token.encode(), label, hashlib.sha256).digest()

    def effective_cors_origins(self) -> list[str]:
        """The configured origins; unset means any in development and none otherwise
        (deny by default: browsers then refuse cross-origin calls)."""
        if self.cors_allow_origins is not None:
            return self.cors_allow_origins
        if self.environment == Environment.DEVELOPMENT:
            return list(DEVELOPMENT_CORS_ORIGINS)
        return []

    def timeout_for(self, stream: bool) -> float:
        """A request's deadline in seconds from its arrival: `stream_timeout_s` for a stream
        (never shorter than `request_timeout_s`), `request_timeout_s` otherwise."""
        return (
            max(self.request_timeout_s, self.stream_timeout_s)
            if stream
            else (self.request_timeout_s)
        )

    @property
    def longest_request_s(self) -> float:
        """The longest a request of either kind can run, in seconds."""
        return self.timeout_for(stream=True)

    def max_body_bytes_for(self, api: ClientAPI) -> int:
        """The largest request body accepted for `api`, in bytes."""
        if api in (ClientAPI.ANTHROPIC_MESSAGES, ClientAPI.ANTHROPIC_COUNT_TOKENS):
            return self.messages_max_body_bytes
        if api is ClientAPI.OPENAI_EMBEDDINGS:
            return self.embeddings_max_body_bytes
        return self.chat_completions_max_body_bytes
