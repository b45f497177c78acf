"""Why and when a runner stops: signals, ``--max-duration``, the run's state read from the
ops tables (pause, cancel, another runner's failure), a failed batch. Each becomes the
admission's stop, and wakes every worker task waiting between batches."""

from __future__ import annotations

import signal
import time

import anyio
import structlog

from .admission import Admission, Decision, Latch, Stop, wait_seconds
from .states import RunState

log = structlog.get_logger("cryptopi_batch")


class StopSignal:
    """The admission's stop, and an event that wakes the worker tasks for it."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self._event = anyio.Event()  # set on a stop, for good
        self._wake = anyio.Event()  # set on a stop or a nudge; replaced after a nudge
        self.aborted = False  # a second signal: the batches in flight roll back

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    @property
    def reason(self) -> str | None:
        return self.admission.stop_reason

    def request(self, reason: str) -> None:
        """Stop after the current batches; the first reason stays."""
        self.admission.request_stop(reason)
        self._event.set()
        self._wake.set()

    def release(self, latch: Latch) -> None:
        """Open ``latch`` and wake the worker tasks waiting on it."""
        latch.opened = True
        self.nudge()

    def nudge(self) -> None:
        """Wake the worker tasks waiting between batches: what held them may have let go."""
        if not self._event.is_set():  # a stop keeps them awake anyway
            woken, self._wake = self._wake, anyio.Event()
            woken.set()

    def run_state(self, state: RunState) -> None:
        """The run's state as last read from ``ops.backfills``."""
        self.admission.run_state = state
        decision = self.admission.control.decide(time.monotonic())
        if isinstance(decision, Stop):  # the admission's rule, said once (RunControl)
            self.request(decision.reason)

    def admit(self) -> Decision:
        """The admission's decision for a batch starting now; a stop it decides (the
        deadline) is a stop for every worker."""
        decision = self.admission.decide(time.monotonic())
        if isinstance(decision, Stop):
            self.request(decision.reason)
        return decision

    def may_chain(self) -> bool:
        """Whether a batch's COMMIT may begin the next batch's transaction."""
        return not self.requested and self.admission.may_chain(time.monotonic())

    async def wait(self, decision: Decision) -> None:
        """Sleep as ``decision`` says (at most a minute at a time), waking at once on a
        stop or a nudge."""
        seconds = wait_seconds(decision, time.monotonic())
        if seconds > 0:
            with anyio.move_on_after(seconds):
                await self._wake.wait()

    async def pause(self, seconds: float) -> None:
        """Sleep ``seconds``, waking at once on a stop."""
        with anyio.move_on_after(seconds):
            await self._event.wait()

    async def at(self, deadline: float) -> None:
        """Stop the run at ``deadline`` (monotonic), also while workers wait between
        batches; whatever the clock says on waking (the loop may wake a little early)."""
        await anyio.sleep(max(0.0, deadline - time.monotonic()))
        decision = self.admit()
        if not isinstance(decision, Stop):
            self.request("deadline reached")

    async def listen(self, abort: anyio.CancelScope) -> None:
        """SIGINT/SIGTERM: the first stops after the current batches; the second aborts
        them (``abort`` is cancelled; their transactions roll back)."""
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if not self.requested:
                    log.warning("stop_requested", signal=name)
                    self.request(f"{name} received")
                else:
                    log.warning("abort_requested", signal=name)
                    self.aborted = True
                    abort.cancel()
