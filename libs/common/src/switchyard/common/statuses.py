"""The statuses history records and its API filters on, for every service that names them
(history's queries, the gateway's API reference and its console's filters), so a status
added in one place is offered in all of them.

A request is `pending` until its one terminal status; a job is `queued`, then
`in_progress` once inference said it began to run it (`chat.started`), then terminal as a
request is. A replay runs until it stops or completes.
"""

from __future__ import annotations

from typing import Final

REQUEST_STATUSES: Final = ("pending", "completed", "failed", "cancelled", "expired", "refused")
UNFINISHED_JOB_STATUSES: Final = ("queued", "in_progress")
JOB_STATUSES: Final = (*UNFINISHED_JOB_STATUSES, *REQUEST_STATUSES[1:])
REPLAY_STATUSES: Final = ("running", "stopped", "completed")
