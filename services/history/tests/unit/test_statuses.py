"""The statuses history records are the ones every service offers to filter on
(`switchyard.common.statuses`): the console's Jobs filter lacked `refused`, which history
records and its API takes."""

from __future__ import annotations

from switchyard.common.statuses import JOB_STATUSES, REPLAY_STATUSES, REQUEST_STATUSES
from switchyard.history.models import ReplayStatus, RequestStatus
from switchyard.history.queries import STATUSES


def test_the_statuses_offered_are_those_history_records():
    assert tuple(status.value for status in RequestStatus) == REQUEST_STATUSES == STATUSES
    assert tuple(status.value for status in ReplayStatus) == REPLAY_STATUSES
    # A job is a request: every terminal status of one, `pending` split in two.
    assert set(JOB_STATUSES) == (set(REQUEST_STATUSES) - {"pending"}) | {"queued", "in_progress"}
