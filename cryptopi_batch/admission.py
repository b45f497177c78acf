"""The one answer to "may the next batch start now?": go, wait (why, until when) or stop.

Pure: no I/O, no sleeping, no anyio. The clock (monotonic seconds) is an argument and
the readings (the run's state from the ops tables, a signal, a failed batch) are set by
the runner, so tests drive it without a server or real time.

An ``Admission`` combines gates: any ``Stop`` wins (the first gate's), and is final
(every later answer is that ``Stop``); else the ``Wait`` with the latest ``until``, cut
short at the earliest ``Deadline`` so that a worker wakes to stop there; else ``Go``.
The worker loop asks ``decide(now)`` before claiming a batch, sleeps ``wait_seconds``
(waking early on a stop) and asks again; after each commit it calls ``record``. A
batch's COMMIT may carry the next batch's BEGIN only if ``may_chain(now)``: no
transaction is ever held open by a gate that may answer wait. Whoever sets an input
(``run_state``, ``request_stop``) wakes the sleeping workers if ``decide`` now stops.

Further inputs plug in as one more gate, and nothing in the worker changes:

- a window (``--window``, :class:`window_gate.WindowGate`): ``may_wait`` is true;
  ``decide`` answers ``Go`` while ``now`` plus the recent p95 batch time (learned in
  ``record``) and ``MARGIN`` ends inside the window, else ``Wait("outside window, opens
  22:00 Europe/Berlin (Mon 2026-12-07)", until=<opening>, reported=True)``, or ``Stop``
  with ``--exit-outside-window``; ``--until`` is a ``Deadline`` predicted the same way;
- a health gate (replica lag, long transactions, ...): ``may_wait`` is true; it holds
  the last sample, set by the control channel, and answers ``Wait("replica lag 14.2 s >
  10 s", until=now + back-off, reported=True)`` past its limit.

A ``reported`` wait is what the run shows as ``waiting``: the runner writes
``Admission.waiting_reason`` to ``ops.backfills.waiting_reason`` when it changes. The
spacing of pacing is routine and not reported.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from .settings import ThrottlePolicy
from .states import RunState
from .throttle import Pacer

MAX_WAIT = 60.0  # a worker re-asks at least this often: clocks jump, laptops sleep
MARGIN = 1.0  # seconds a predicted batch end keeps from a window's end or a deadline


@dataclass(frozen=True)
class Go:
    """The next batch may start now."""


@dataclass(frozen=True)
class Wait:
    """Ask again at ``until`` (monotonic seconds, always after the ``now`` asked about).
    ``reason`` is for people; ``reported`` makes the run show as ``waiting`` with it."""

    reason: str
    until: float
    reported: bool = False


@dataclass(frozen=True)
class Stop:
    """No batch starts any more in this process; ``reason`` ends the run's last line."""

    reason: str


Decision = Go | Wait | Stop
GO = Go()


@dataclass(frozen=True)
class BatchDone:
    """A committed batch of this process: ``rows`` changed, from ``started`` to ``ended``."""

    started: float
    ended: float
    rows: int


class Gate(Protocol):
    """One input to the admission. ``may_wait``: whether ``decide`` can ever answer
    ``Wait`` (then no COMMIT carries the next BEGIN). ``decide`` must not answer a
    ``Wait`` whose ``until`` is not after ``now`` (the admission reads it as ``Go``)."""

    @property
    def name(self) -> str: ...
    @property
    def may_wait(self) -> bool: ...
    def decide(self, now: float) -> Decision: ...


@runtime_checkable
class Learner(Protocol):
    """A gate that learns from each committed batch (pacing; later a window's p95)."""

    def record(self, done: BatchDone) -> None: ...


class Pacing:
    """``--max-rows-per-second`` and ``--sleep``: waits until the ``Pacer`` allows the
    next start. One per process, shared by its workers: the rate cap is per process."""

    name = "pacing"

    def __init__(self, policy: ThrottlePolicy) -> None:
        self.pacer = Pacer(policy)
        self._reason = ""

    @property
    def may_wait(self) -> bool:
        return self.pacer.paces

    def decide(self, now: float) -> Decision:
        delay = self.pacer.delay(now)
        return Wait(self._reason, now + delay) if delay > 0 else GO

    def record(self, done: BatchDone) -> None:
        before = self.pacer.next_start
        self.pacer.record(done.ended, done.rows, done.started)
        if self.pacer.next_start > before:  # say which of the two set the new start
            policy = self.pacer.policy
            if self.pacer.next_start == done.ended + policy.sleep:
                self._reason = f"--sleep {policy.sleep:g}s between batches"
            else:
                self._reason = f"rate cap {policy.max_rows_per_second:g} rows/s"


class RecentDurations:
    """How long this process's last batches took: their p95 predicts the next one's end
    (0 before the first: only the margin is kept then)."""

    def __init__(self, keep: int = 50) -> None:
        self._seconds: deque[float] = deque(maxlen=keep)

    def record(self, done: BatchDone) -> None:
        self._seconds.append(max(0.0, done.ended - done.started))

    @property
    def p95(self) -> float:
        if not self._seconds:
            return 0.0
        ordered = sorted(self._seconds)
        return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


@dataclass(frozen=True)
class Deadline:
    """No batch starts at or after ``at``: ``Stop(reason)`` from then on. With ``recent``
    (``--until``), none starts that the recent p95 batch time and the margin would end
    after ``at``."""

    at: float
    reason: str
    name: str = "deadline"
    may_wait: bool = False
    recent: RecentDurations | None = field(default=None, compare=False)

    @classmethod
    def max_duration(cls, seconds: float, now: float) -> Deadline:
        """``--max-duration``, counted from ``now``: at 0 not even a first batch starts."""
        return cls(now + seconds, f"--max-duration {seconds:g}s reached")

    @classmethod
    def until(cls, seconds_left: float, text: str, now: float) -> Deadline:
        """``--until``, ``seconds_left`` from ``now`` by the wall clock; predicted."""
        return cls(now + seconds_left, f"--until {text} reached", "until", False, RecentDurations())

    def stops_at(self) -> float:
        """The first instant at which ``decide`` stops."""
        return self.at - (0.0 if self.recent is None else self.recent.p95 + MARGIN)

    def decide(self, now: float) -> Decision:
        return Stop(self.reason) if now >= self.stops_at() else GO

    def record(self, done: BatchDone) -> None:
        if self.recent is not None:
            self.recent.record(done)


class Latch:
    """Waits, unreported, until opened: the first batch waits for the health gates' first
    readings, taken while its range is claimed. Whoever opens it wakes the waiting
    workers (``StopSignal.release``); ``poll`` bounds a wait should that wake be missed."""

    def __init__(self, name: str, reason: str, poll: float = 1.0) -> None:
        self.name = name
        self.reason = reason
        self.poll = poll
        self.opened = False

    @property
    def may_wait(self) -> bool:
        return not self.opened

    def decide(self, now: float) -> Decision:
        return GO if self.opened else Wait(self.reason, now + self.poll)


@dataclass
class RunControl:
    """The run's state as the control channel last read it from ``ops.backfills``
    (heartbeat, checkpoint): ``pause``, ``cancel`` or another runner's failure stop."""

    state: RunState = RunState.RUNNING
    name: str = "control"
    may_wait: bool = False

    def decide(self, now: float) -> Decision:
        return Stop(f"migration {self.state}") if self.state.stops_runners else GO


class Admission:
    """Combines its gates (see the module's docstring); holds the run's control state
    and the first stop. Not shared across processes: each runner has its own."""

    def __init__(self, gates: Iterable[Gate] = ()) -> None:
        self.control = RunControl()
        self.gates: tuple[Gate, ...] = (self.control, *gates)
        self._stopped: Stop | None = None
        self.waiting_reason: str | None = None  # of the last decide's reported wait

    @classmethod
    def for_run(
        cls,
        throttle: ThrottlePolicy,
        max_duration: float | None,
        now: float,
        gates: Iterable[Gate] = (),
    ) -> Admission:
        """What a run admits: pacing, ``--max-duration`` from ``now``, and ``gates`` (a
        window, ``--until``)."""
        run_gates: list[Gate] = [Pacing(throttle)]
        if max_duration is not None:
            run_gates.append(Deadline.max_duration(max_duration, now))
        return cls([*run_gates, *gates])

    @property
    def run_state(self) -> RunState:
        return self.control.state

    @run_state.setter
    def run_state(self, state: RunState | str) -> None:
        """Set from ``ops.backfills.status``; a plain string is taken as its value."""
        self.control.state = RunState(state)

    @property
    def stop_reason(self) -> str | None:
        """Why no batch starts any more: the first stop requested or decided, else None."""
        return None if self._stopped is None else self._stopped.reason

    def request_stop(self, reason: str) -> bool:
        """Stop admitting (a signal, a failed batch). The first reason stays; ``True``
        if this call is the one that stopped it."""
        if self._stopped is not None:
            return False
        self._stopped = Stop(reason)
        return True

    def decide(self, now: float) -> Decision:
        """Go, wait or stop for a batch starting at ``now``; a ``Stop`` is final."""
        if self._stopped is not None:
            return self._stopped
        waits: list[Wait] = []
        for gate in self.gates:
            decision = gate.decide(now)
            if isinstance(decision, Stop):
                self._stopped = decision
                return decision
            if isinstance(decision, Wait) and decision.until > now:
                waits.append(decision)
        reported = [w for w in waits if w.reported]
        self.waiting_reason = max(reported, key=_until).reason if reported else None
        if not waits:
            return GO
        # Every deadline is after now here (else it stopped): wake there to stop.
        ends = [g.stops_at() for g in self.gates if isinstance(g, Deadline)]
        longest = max(waits, key=_until)
        return dataclasses.replace(longest, until=min([longest.until, *ends]))

    def record(self, done: BatchDone) -> None:
        """Tell the gates that learn (``Learner``) of a committed batch."""
        for gate in self.gates:
            if isinstance(gate, Learner):
                gate.record(done)

    def may_chain(self, now: float) -> bool:
        """Whether a batch's COMMIT may carry the next batch's BEGIN: ``Go`` now, and no
        gate that may ever wait (the next transaction would wait open otherwise)."""
        return isinstance(self.decide(now), Go) and not any(g.may_wait for g in self.gates)


def wait_seconds(decision: Decision, now: float, most: float = MAX_WAIT) -> float:
    """How long a worker sleeps on ``decision`` before asking again (0 for go or stop);
    at most ``most``, so a long wait re-reads the clock now and then."""
    return min(most, max(0.0, decision.until - now)) if isinstance(decision, Wait) else 0.0


def _until(wait: Wait) -> float:
    return wait.until
