"""Offsets are committed only below the first event still in progress."""

from __future__ import annotations

from switchyard.common.bus.kafka import _PartitionProgress


def test_commit_waits_for_the_oldest_event_in_flight():
    progress = _PartitionProgress()
    for offset in (10, 11, 12):
        progress.start(offset)
    progress.finish(11)
    progress.finish(12)
    assert progress.committable() is None  # 10 is still running: committing 13 would lose it
    progress.finish(10)
    assert progress.committable() == 13
    progress.committed = 13
    assert progress.committable() is None
    assert progress.in_flight == 0


def test_commit_moves_to_the_first_gap():
    progress = _PartitionProgress()
    for offset in range(5):
        progress.start(offset)
    for offset in (0, 1, 3):
        progress.finish(offset)
    assert progress.committable() == 2
