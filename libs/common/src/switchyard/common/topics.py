"""Topic names and their partition counts, and the default consumer group names. Topics
are created explicitly (`switchyard topics create`), never by broker auto-creation.

Both carry the deployment's prefix (`SWITCHYARD_TOPIC_PREFIX`), so deployments sharing a
cluster never read each other's topics nor join each other's consumer groups."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TopicSpec:
    """One topic: its name after the prefix, its partition count, what it is for, which
    event types travel on it, which services publish them and how records are keyed."""

    suffix: str
    partitions: int
    description: str
    event_types: tuple[str, ...] = ()
    producers: tuple[str, ...] = ()
    key: str = "request_id"
    # Topic configs beyond the shared ones (`switchyard topics create` sets them).
    configs: tuple[tuple[str, str], ...] = ()

    @property
    def attribute(self) -> str:
        """The name of this topic's attribute on `Topics` (`requests.interactive` ->
        `requests_interactive`)."""
        return self.suffix.replace(".", "_")


TOPIC_SPECS: tuple[TopicSpec, ...] = (
    TopicSpec(
        "requests.interactive",
        12,
        "Model requests from interactive clients.",
        ("chat.requested",),
        ("gateway",),
    ),
    TopicSpec(
        "requests.batch",
        6,
        "Model requests from the jobs API and replays (lower priority lane). History's "
        "replay runner publishes the replayed requests, and `chat.cancel_requested` probes "
        "(reason `replay_probe`) that inference ignores.",
        ("chat.requested", "chat.cancel_requested"),
        ("gateway", "history"),
    ),
    TopicSpec(
        "replies",
        12,
        "Replies and stream chunks, partitioned by the gateway replica waiting for them; "
        "also the terminal state of requests nobody waits for (jobs), and the request and "
        "reply of a request the gateway answered from its response cache (never on the "
        "request topics, which are inference's work). Inference's terminal records carry "
        "the request's usage event in their `usage` header, and a replica that receives a "
        "request again (its previous replica died before committing the offset) reads the "
        "request's partition back to answer it from there instead of calling the upstream "
        "again: keep it at least `SWITCHYARD_INFERENCE_REDELIVERY_LOOKBACK_S` (the broker's "
        "default retention, a week, is far more). `chat.started` marks when a request of "
        "the batch lane began to run.",
        ("chat.chunk", "chat.completed", "chat.failed", "chat.requested", "chat.started"),
        ("inference", "gateway"),
    ),
    TopicSpec(
        "usage",
        6,
        "One usage record per request that reached its terminal state.",
        ("usage.recorded",),
        ("inference", "gateway"),
    ),
    TopicSpec(
        "control",
        3,
        "Cancellations; every inference replica reads all of it.",
        ("chat.cancel_requested",),
        ("gateway",),
    ),
    TopicSpec(
        "deadletter",
        3,
        "Events no consumer could decode or handle, as they were, with their coordinates in "
        "the headers `deadletter.topic`, `.partition`, `.offset`, `.group`, `.reason`.",
        (),
        ("gateway", "inference", "history", "auth"),
        key="the original record's key",
    ),
    TopicSpec(
        "auth.events",
        1,
        "Revocations and limit changes from auth (keys, users, tokens, signing keys, budgets"
        " and rate limits); one partition keeps them"
        " in order, and every gateway replica reads all of it.",
        (
            "auth.api_key_revoked",
            "auth.user_disabled",
            "auth.user_enabled",
            "auth.token_revoked",
            "auth.token_family_revoked",
            "auth.signing_key_rotated",
            "auth.limits_changed",
        ),
        ("auth",),
        key="user id",
    ),
    TopicSpec(
        "cache.events",
        1,
        "Response cache purges (`switchyard cache purge`); every gateway replica reads all "
        "of it and drops the purged answers it keeps in memory.",
        ("cache.purged",),
        ("history",),
        key="tenant",
    ),
)


class Topics:
    """Full topic names for one deployment (prefix from settings): one attribute per
    `TOPIC_SPECS` entry, named after its suffix with dots as underscores
    (`topics.requests_interactive == "<prefix>.requests.interactive"`). Reading a name no
    spec gives raises AttributeError."""

    def __init__(self, prefix: str = "switchyard") -> None:
        self.prefix = prefix
        for spec in TOPIC_SPECS:
            setattr(self, spec.attribute, self.name(spec.suffix))

    def __getattr__(self, attribute: str) -> str:
        # Only reached for a name `__init__` did not set: a topic no spec declares. Typed
        # `str` so that type checkers accept the attributes derived from the specs.
        known = ", ".join(spec.attribute for spec in TOPIC_SPECS)
        raise AttributeError(f"no topic spec gives {attribute!r} (known: {known})")

    def name(self, suffix: str) -> str:
        """The full topic name of `suffix` in this deployment: `<prefix>.<suffix>`."""
        return f"{self.prefix}.{suffix}"

    def group(self, name: str) -> str:
        """The default name of consumer group `name` in this deployment, e.g.
        `switchyard.history`."""
        return f"{self.prefix}.{name}"

    def all(self) -> list[tuple[str, TopicSpec]]:
        """Every topic of this deployment as (full name, spec), in `TOPIC_SPECS` order."""
        return [(self.name(spec.suffix), spec) for spec in TOPIC_SPECS]

    def partitions(self, suffix: str) -> int:
        """The partition count the spec of topic `suffix` asks for. Raises StopIteration for an
        unknown suffix."""
        return next(spec.partitions for spec in TOPIC_SPECS if spec.suffix == suffix)
