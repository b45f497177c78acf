"""One runner process's share of a migration run: register, start the worker tasks, wait
for them, record how the run ended.

Each worker task (:mod:`worker`) has its own connection; the control connection
(:mod:`control`) beats the heartbeat and reads the run's state, which the admission
(:mod:`admission`, through :mod:`stopping`) turns into go, wait or stop before each batch.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from dataclasses import dataclass, field

import anyio
import asyncpg
import structlog

from .admission import Admission, Deadline, Latch
from .control import Control, Waiting
from .db import ConnectionSettings, close_quietly, pg_interval
from .errors import BatchFailed, Stopped, describe, one_line
from .keys import Bound
from .keysql import RangeQueries
from .migration import Work
from .progress import Progress, ProgressHook, Tally
from .sampler import Sampler, build_gates, health_gates
from .sessions import Sessions
from .settings import RunSettings
from .states import RunState
from .stopping import StopSignal
from .store import RunCounters, RunStore
from .target import Target
from .throttle import BatchSizer
from .transactions import begin_with
from .window_gate import WallClock, WindowGate, utc_now
from .worker import BatchWorker, CrashPoint, Crew

log = structlog.get_logger("cryptopi_batch")


@dataclass
class Outcome:
    """A run that completed, as this process saw it (one that did not raises).
    ``progress``: what the run did while this runner ran; ``total``: the run's counters.
    Both as ``ops.backfills`` has them."""

    progress: Progress
    total: Progress
    seconds: float


@dataclass
class Runner:
    """One runner process's share of a migration run."""

    name: str
    filename: str
    work: Work
    target: Target
    settings: RunSettings
    connection: ConnectionSettings
    handle_signals: bool = False
    on_progress: ProgressHook | None = None
    end_key: Bound | None = None  # the run's end as it started: enables looking ahead
    start: Progress = field(default_factory=Progress)  # the run's counters as it starts
    # Connections already open for the workers (opened while the run's checks ran); the
    # runner owns them from here.
    connections: list[asyncpg.Connection] = field(default_factory=list)
    token: uuid.UUID = field(default_factory=uuid.uuid4)
    wall: WallClock = utc_now  # the window's and --until's clock

    async def execute(self, conn: asyncpg.Connection) -> Outcome:
        """Run until the migration completes, fails, or is stopped.

        Raises :class:`BatchFailed` (exit 1) or :class:`Stopped` (exit 3).
        """
        started = time.monotonic()
        s = self.settings
        store = RunStore(self.name, self.token, RangeQueries(self.target), s.lease_seconds)
        sessions = Sessions(self.connection, s.timeouts.statement_timeout, s.retry, self._describe)
        control = Control(
            conn=conn,
            store=store,
            sessions=sessions,
            connection=self.connection,
            settings=s,
            describe=self._describe,
            end_key=self.end_key,
        )
        window = self._window_gate()
        admission = Admission.for_run(
            s.throttle, s.max_duration, started, [g for g in (window, self._until(started)) if g]
        )
        stop = StopSignal(admission)
        control.waiting = lambda: _waiting(admission, window)
        t = s.timeouts
        crew = Crew(
            store=store,
            work=self.work,
            target=self.target,
            settings=s,
            sessions=sessions,
            control=control,
            stop=stop,
            sizer=BatchSizer(s.throttle, s.batch_size),
            tally=Tally(self.start, self.on_progress),
            describe=self._describe,
            begin=begin_with(
                t.local(
                    idle_in_transaction_session_timeout=pg_interval(s.lease_seconds),
                    synchronous_commit="on" if t.synchronous_commit else "off",
                )
            ),
            spare=list(self.connections),
            crash=CrashPoint.from_env(),
        )
        try:
            try:
                retired = await control.register(s.workers)
            except Exception as exc:
                raise BatchFailed(
                    f"{self.name}: could not register this runner in ops.backfill_workers:"
                    f" {self._describe(exc)}; no batch ran, `run` resumes"
                ) from None
            if retired:
                log.info("runners_retired", count=retired)
            with structlog.contextvars.bound_contextvars(migration=self.name):
                log.info(
                    "run_started",
                    workers=s.workers,
                    batch_size=s.batch_size,
                    table=self.target.table,
                )
                await self._work(crew)
                return await self._end(crew, time.monotonic() - started)
        finally:
            for spare in crew.spare:  # opened for workers that no worker took
                spare.terminate()
            if control.conn is not conn:  # a replacement of ours; the caller's is lost
                await close_quietly(control.conn)

    async def _work(self, crew: Crew) -> None:
        """The worker tasks, the heartbeat, and the signals and deadline, until the workers
        end; then this runner's row is stopped (its held ranges handed back)."""
        stop, control = crew.stop, crew.control
        finished = anyio.Event()

        def beat(counters: RunCounters) -> None:
            stop.run_state(counters.state)
            crew.tally.read(counters)

        try:
            async with anyio.create_task_group() as outer:
                outer.start_soon(control.heartbeat, finished, beat)
                # The first batch waits for the health gates' first readings, taken while
                # its range is claimed.
                first = Latch("health", "the health gates' first readings")
                sampler = self._sampler(crew, first)
                outer.start_soon(sampler.run, finished, lambda: stop.release(first))
                async with anyio.create_task_group() as side:
                    if self.handle_signals:
                        side.start_soon(stop.listen, outer.cancel_scope)
                    if self.settings.max_duration is not None:
                        side.start_soon(stop.at, time.monotonic() + self.settings.max_duration)
                    async with anyio.create_task_group() as workers:
                        crew.look_aheads = workers  # look-aheads: waited for, never raise
                        for i in range(self.settings.workers):
                            workers.start_soon(BatchWorker(crew, i).run)
                    side.cancel_scope.cancel()  # neither touches a connection
                # The heartbeat ends by itself: cancelling it mid-query would leave the
                # control connection, still needed below, in an unknown state.
                finished.set()
        finally:
            with anyio.move_on_after(5, shield=True), contextlib.suppress(Exception):
                await control.step(crew.store.stop)

    def _sampler(self, crew: Crew, first: Latch) -> Sampler:
        """The health sampler, its gates added to the run's admission (with ``first``,
        which holds the first batch until they have their first readings)."""
        s = self.settings
        gates = build_gates(s.health, time.monotonic())
        health_gates(crew.stop.admission, [*gates, first])
        return Sampler(
            opened=crew.spare.pop() if crew.spare else None,  # one was opened for it
            name=self.name,
            token=self.token,
            table=self.target.table,
            workers=s.workers,
            limits=s.health,
            connection=self.connection,
            admission=crew.stop.admission,
            sizer=crew.sizer,
            gates=gates,
            describe=self._describe,
            on_release=crew.stop.nudge,
        )

    async def _end(self, crew: Crew, elapsed: float) -> Outcome:
        """Record how the run ended: failed, completed, or stopped (exit 3)."""
        stop, control, store = crew.stop, crew.control, crew.store
        if stop.aborted:
            raise Stopped("stopped by a second signal; the current batch was rolled back")
        if crew.failure is not None:
            message = self._describe(crew.failure)
            try:
                await control.step(lambda c: store.fail(c, message))
            except Exception as exc:
                message += f" (not recorded in ops.backfills: {self._describe(exc)})"
            log.error("run_failed", error=message)
            raise BatchFailed(f"{self.name}: {message}") from crew.failure
        try:
            if stop.reason is None:
                await control.step(lambda c: store.finalize(c, self.filename))
            row = await control.step(store.run_row)
        except Exception as exc:
            raise BatchFailed(
                f"{self.name}: its batches ended, but recording the run's"
                f" end failed: {self._describe(exc)}; `run` records it"
            ) from None
        if row is not None:  # the final count, as ops.backfills has it
            crew.tally.read(RunCounters.from_row(row))
        progress = crew.tally.since_start
        if row is not None and row["status"] == RunState.COMPLETED:
            log.info(
                "run_completed",
                rows=progress.rows,
                batches=progress.batches,
                seconds=round(elapsed, 3),
            )
            return Outcome(progress, crew.tally.progress, elapsed)
        reason = stop.reason or "stopped"
        log.info("run_stopped", reason=reason, rows=progress.rows)
        status = None if row is None else RunState(row["status"])
        if status is RunState.PAUSED:
            advice = f"`resume {self.name}` lifts the pause, then `run` continues"
        elif status is RunState.CANCELLED:
            advice = (
                f"`resume {self.name}` takes it up again from its checkpoint,"
                " `run --restart` starts it over"
            )
        else:
            advice = "`run` resumes"
        raise Stopped(f"{self.name}: {reason}; {advice}")

    def _window_gate(self) -> WindowGate | None:
        schedule = self.settings.schedule
        if schedule.window is None:
            return None
        return WindowGate(
            schedule.window, exit_outside=schedule.exit_outside_window, wall=self.wall
        )

    def _until(self, now: float) -> Deadline | None:
        """``--until``, on this process's monotonic clock from the wall clock's now."""
        until = self.settings.schedule.until
        if until is None:
            return None
        return Deadline.until((until - self.wall()).total_seconds(), until.isoformat(), now)

    def _describe(self, exc: BaseException) -> str:
        """``exc`` as logged and as kept in the ops tables: one line, and no password of the
        connection's (a migration's own error may quote its DSN)."""
        return one_line(self.connection.redact(describe(exc)))


def _waiting(admission: Admission, window: WindowGate | None) -> Waiting:
    """What the heartbeat reports: the admission's reported wait, with the window's next
    opening when it is the window that waits."""
    reason = admission.waiting_reason
    opens = window.opens_at if window is not None and reason is not None else None
    return reason, opens
