"""The window as one more gate of the admission: go while a batch would end inside it,
else wait for its next opening (or stop, with ``--exit-outside-window``).

Gates get a monotonic ``now``; a window is wall-clock time, read from an injected clock
at each decision. A wait's ``until`` is the monotonic instant of the opening as the wall
clock says now; the worker re-asks at least every minute (``admission.MAX_WAIT``), so a
clock set forward or back, or a machine that slept, is re-read within a minute.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from .admission import GO, MARGIN, BatchDone, Decision, RecentDurations, Stop, Wait

if TYPE_CHECKING:
    from .schedule import Window
    from .settings import SchedulePolicy

WallClock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class WindowGate:
    """``--window``: ``Go`` while ``now`` plus the recent p95 batch time and the margin is
    before the open window's end; else ``Wait`` (reported) until its next opening, or
    ``Stop`` if ``exit_outside``."""

    name = "window"
    may_wait = True

    def __init__(
        self, window: Window, *, exit_outside: bool = False, wall: WallClock = utc_now
    ) -> None:
        self.window = window
        self.exit_outside = exit_outside
        self.wall = wall
        self.recent = RecentDurations()
        self.opens_at: datetime | None = None  # of the last wait; None after a go

    def decide(self, now: float) -> Decision:
        wall = self.wall()
        end = self.window.current_end(wall)
        ahead = timedelta(seconds=self.recent.p95 + MARGIN)
        if end is None or wall + ahead < end:
            self.opens_at = None
            return GO
        opens = self.window.next_opening(wall)
        assert opens is not None  # a window that closes opens again
        self.opens_at = opens
        if self.exit_outside:
            return Stop(f"outside the window {self.window}; it opens {self._when(opens)}")
        seconds = max((opens - wall).total_seconds(), 0.001)
        return Wait(self.reason(opens), until=now + seconds, reported=True)

    def reason(self, opens: datetime) -> str:
        return f"outside window, opens {self._when(opens)}"

    def _when(self, at: datetime) -> str:
        from .schedule import when  # noqa: PLC0415 -- only a run with a window has one

        return when(at, self.window.zone)

    def record(self, done: BatchDone) -> None:
        self.recent.record(done)


def not_now(schedule: SchedulePolicy, wall: datetime) -> str | None:
    """Why a run started at ``wall`` would start no batch at all, decided before it writes
    anything: outside its window with ``--exit-outside-window``, or past ``--until``."""
    if schedule.until is not None and wall >= schedule.until:
        return f"--until {schedule.until.isoformat()} has passed"
    if schedule.window is not None and schedule.exit_outside_window:
        decision = WindowGate(schedule.window, exit_outside=True, wall=lambda: wall).decide(0.0)
        if isinstance(decision, Stop):
            return decision.reason
    return None
