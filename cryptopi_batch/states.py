"""The states of a run and of its key ranges, as stored in the ops tables.

``RunState`` values are those of ``ops.backfills.status`` plus two that are only reported
by ``status``: ``pending`` (no run yet, or a ``running`` run no runner holds: interrupted)
and ``waiting`` (a ``running`` run with a ``waiting_reason``, e.g. outside its window).
``RangeState`` values are those of ``ops.backfill_batches.status``. Both are ``StrEnum``:
a member equals, formats and binds as its plain value.
"""

from __future__ import annotations

from enum import StrEnum


class RunState(StrEnum):
    """A migration run's state (``ops.backfills.status``, or as ``status`` reports it)."""

    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def stops_runners(self) -> bool:
        """Whether its runners stop after their current batch: said by ``pause`` or
        ``cancel``, or another runner's failure (its error stays; ``run`` resumes)."""
        return self in _STOPPING


_STOPPING = frozenset({RunState.PAUSED, RunState.CANCELLED, RunState.FAILED})


class RangeState(StrEnum):
    """A key range's state (``ops.backfill_batches.status``)."""

    PENDING = "pending"  # not claimed yet, or handed back
    RUNNING = "running"  # claimed under a lease by a runner
    DONE = "done"  # its batch committed; stays so
