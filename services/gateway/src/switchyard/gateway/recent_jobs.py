"""Jobs this gateway replica accepted recently, remembered until history has surely
recorded them: a client cancelling a job right after creating it must not get 404 just
because the job's `chat.requested` is still on its way to history."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from switchyard.gateway.auth import Principal


@dataclass(frozen=True)
class AcceptedJob:
    """A job this replica answered: who created it (user, and API key if one), the model,
    its `created_at` as answered (ISO 8601), its webhook URL and when it was accepted
    (monotonic seconds)."""

    job_id: str
    tenant: str
    user_id: str
    model: str
    created_at: str  # ISO 8601, as the job was answered
    webhook_url: str | None
    accepted_at: float  # monotonic seconds
    api_key_id: str | None = None

    def visible_to(self, principal: Principal) -> bool:
        """Whether `principal` may see (and cancel) this job, as history would let them
        once it is recorded: its creator or a tenant admin, and with a key narrowed to its
        own jobs (`Principal.own_key_only`) only the key that made it."""
        if principal.user_id != self.user_id and not principal.is_tenant_admin:
            return False
        only = principal.own_key_only
        return only is None or only == self.api_key_id


class RecentJobs:
    """At most `max_jobs` jobs, each for `ttl_s` seconds (oldest forgotten first)."""

    def __init__(self, ttl_s: float = 300.0, max_jobs: int = 10_000) -> None:
        self._ttl_s = ttl_s
        self._max_jobs = max_jobs
        self._jobs: OrderedDict[str, AcceptedJob] = OrderedDict()

    def add(self, job: AcceptedJob) -> None:
        """Remember `job`, forgetting the oldest beyond `max_jobs`."""
        self._jobs[job.job_id] = job
        self._jobs.move_to_end(job.job_id)
        while len(self._jobs) > self._max_jobs:
            self._jobs.popitem(last=False)

    def get(self, job_id: str, tenant: str) -> AcceptedJob | None:
        """The job if it was accepted here for `tenant` less than `ttl_s` ago."""
        job = self._jobs.get(job_id)
        if job is None or job.tenant != tenant:
            return None
        if time.monotonic() - job.accepted_at > self._ttl_s:
            del self._jobs[job_id]
            return None
        return job


class RecentIds:
    """Ids this replica answered lately (e.g. the ids of Responses it relayed to the end):
    at most `max_ids`, each for `ttl_s` seconds, oldest forgotten first. A read right after
    the answer waits for history to record the outcome the client already has."""

    def __init__(self, ttl_s: float = 300.0, max_ids: int = 10_000) -> None:
        self._ttl_s = ttl_s
        self._max_ids = max_ids
        self._ids: OrderedDict[str, float] = OrderedDict()

    def add(self, value: str) -> None:
        """Remember `value` from now, forgetting the oldest beyond `max_ids`."""
        self._ids[value] = time.monotonic()
        self._ids.move_to_end(value)
        while len(self._ids) > self._max_ids:
            self._ids.popitem(last=False)

    def __contains__(self, value: object) -> bool:
        added = self._ids.get(value) if isinstance(value, str) else None
        return added is not None and time.monotonic() - added < self._ttl_s
