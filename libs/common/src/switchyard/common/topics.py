"""Topic names and their partition counts, and the default consumer group names. Topics
are created explicitly (`switchyard topics create`), never by broker auto-creation.

Both carry the deployment's prefix (`SWITCHYARD_TOPIC_PREFIX`), so deployments sharing a
cluster never read each other's topics nor join each other's consumer groups."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TopicSpec:
    suffix: str
    partitions: int
    description: str


TOPIC_SPECS: tuple[TopicSpec, ...] = (
    TopicSpec("requests.interactive", 12, "Chat requests from interactive clients."),
    TopicSpec("requests.batch", 6, "Chat requests from the jobs API (lower priority lane)."),
    TopicSpec("replies", 12, "Replies and stream chunks, partitioned by waiting gateway replica."),
    TopicSpec("usage", 6, "One usage record per finished request."),
    TopicSpec("control", 3, "Cancellations; every inference replica reads all of it."),
    TopicSpec(
        "deadletter", 3, "Events no consumer could decode or handle, with their coordinates."
    ),
    TopicSpec(
        "auth.events",
        1,
        "Revocations from auth (keys, users, tokens, signing keys); one partition keeps them"
        " in order, and every gateway replica reads all of it.",
    ),
)


class Topics:
    """Full topic names for one deployment (prefix from settings)."""

    def __init__(self, prefix: str = "switchyard") -> None:
        self.prefix = prefix
        self.requests_interactive = f"{prefix}.requests.interactive"
        self.requests_batch = f"{prefix}.requests.batch"
        self.replies = f"{prefix}.replies"
        self.usage = f"{prefix}.usage"
        self.control = f"{prefix}.control"
        self.deadletter = f"{prefix}.deadletter"
        self.auth_events = f"{prefix}.auth.events"

    def name(self, suffix: str) -> str:
        return f"{self.prefix}.{suffix}"

    def group(self, name: str) -> str:
        """The default name of consumer group `name` in this deployment, e.g.
        `switchyard.history`."""
        return f"{self.prefix}.{name}"

    def all(self) -> list[tuple[str, TopicSpec]]:
        return [(self.name(spec.suffix), spec) for spec in TOPIC_SPECS]

    def partitions(self, suffix: str) -> int:
        return next(spec.partitions for spec in TOPIC_SPECS if spec.suffix == suffix)
