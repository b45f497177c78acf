"""Runs a migration's batches: claim a range, do the work and the checkpoint in one
transaction, retry what is transient, stop cleanly.

Each worker task has its own connection; one control connection beats the heartbeat and
reads the control state (pause, cancel) that workers obey between batches.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio
import asyncpg
import structlog
from tenacity import RetryCallState

from . import store
from .db import (
    ConnectionSettings,
    Ending,
    chained_transaction,
    close_quietly,
    ours,
    pg_interval,
    transaction,
)
from .errors import BatchFailed, LeaseLost, Stopped, one_line
from .keys import Bound, KeyRange, as_bound
from .migration import Batch, Work, run_work
from .retry import Fault, classify
from .settings import RunSettings, TimeoutPolicy
from .store import Claim, RangeQueries
from .target import Target
from .throttle import Pacer, next_batch_size, shrink_after_timeout

log = structlog.get_logger("cryptopi_batch")
T = TypeVar("T")

CRASH_ENV = "CRYPTOPI_BATCH_CRASH_AT"
"""Testing hook: ``point:n`` kills the process (SIGKILL) the n-th time a batch reaches
``point`` (before_work, after_work, before_commit, after_commit)."""

# A batch transaction's settings, on a connection whose server session may change from one
# transaction to the next (a pooler): sent as a statement of their own, which also returns
# the session's pid and the transaction's start, together naming this transaction in
# pg_stat_activity (see _end_aborted_batches).
_SET_LOCAL = (
    "SELECT pg_backend_pid() AS pid, now() AS xact_start,"
    " set_config('lock_timeout', $1, true),"
    " set_config('statement_timeout', $2, true),"
    " set_config('idle_in_transaction_session_timeout', $3, true),"
    " set_config('synchronous_commit', $4, true)"
)
# A connection straight to the server keeps its session: named once by pid and start.
_SESSION = "SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()"
# Sessions to end, each named by its pid and either its start (the whole session) or its
# transaction's start (only while still in that transaction).
_END_SESSIONS = (
    "SELECT pg_terminate_backend(a.pid) FROM pg_stat_activity a"
    " JOIN unnest($1::int[], $2::timestamptz[], $3::bool[]) AS b(pid, at, whole)"
    " ON a.pid = b.pid"
    " AND CASE WHEN b.whole THEN a.backend_start ELSE a.xact_start END = b.at"
)
_IDLE_POLL = 0.25
_CONTROL_IDLE = 5.0  # seconds a control step's transaction may wait between its statements
# A request on a runner's connection that gets no reply within the statement timeout plus
# this much (or twice the statement timeout, if longer) has lost its connection: see _bounded.
_REPLY_MARGIN = 5.0
# How long a look-ahead may hold the control connection (the heartbeat waits for it).
_AHEAD_BOUND = 2.0
# The run's states that stop its runners after their current batch: said by `pause` or
# `cancel`, or another runner's failure (its error stays; `run` resumes the run).
_STOPPING = ("paused", "cancelled", "failed")


@dataclass
class Progress:
    """Counters this process has seen, fed to the progress bar."""

    rows: int = 0
    keys: int = 0
    batches: int = 0


@dataclass
class Outcome:
    completed: bool
    progress: Progress
    seconds: float
    stop_reason: str | None = None


ProgressHook = Callable[[Progress, int], None]

_Session = tuple[int, Any, bool]
"""A server session to end if need be: pid, a start time, and whether that is the session's
start (a direct connection) or its transaction's (behind a pooler)."""


@dataclass
class _Ahead:
    """The bound of the range after ``after``, for ``size`` keys, looked up on the control
    connection while a batch works; ``bound`` stays ``None`` until (and unless) found."""

    after: Bound
    size: int
    bound: Bound | None = None

    def hint(self, size: int) -> tuple[Bound, Bound] | None:
        return None if self.bound is None or size != self.size else (self.after, self.bound)


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
    on_batch: ProgressHook | None = None
    end_key: Bound | None = None  # the run's end as it started: enables looking ahead
    # Connections already open for the workers (opened while the run's checks ran); the
    # runner owns them from here.
    connections: list[asyncpg.Connection] = field(default_factory=list)
    token: uuid.UUID = field(default_factory=uuid.uuid4)

    def __post_init__(self) -> None:
        self._spare = list(self.connections)  # taken by the workers as they start
        self.ranges = RangeQueries(self.target)
        self.stop = anyio.Event()
        self._finished = anyio.Event()
        self.stop_reason: str | None = None
        self.failure: BaseException | None = None
        self.aborted = False
        self.pacer = Pacer(self.settings.throttle)
        self._deadline_at = (
            None
            if self.settings.max_duration is None
            else time.monotonic() + self.settings.max_duration
        )
        self.batch_size = self.settings.batch_size
        self.progress = Progress()
        # The heartbeat and the look-ahead share the control connection, one at a time.
        self._control_lock = anyio.Lock()
        # Ids of the ranges this runner's workers hold: claimed (added before the claim
        # commits) and not yet committed done or given up. Only these leases are extended;
        # other ranges under this runner's token are orphans (see release_orphans).
        self._held: set[int] = set()
        self._crash_at = _parse_crash(os.environ.get(CRASH_ENV))
        self._crash_count = 0
        # Connection -> (server pid, start) of the transaction last begun on it (a claim's or
        # a batch's): the server session to end if the connection goes silent or the run is
        # aborted by a second signal.
        self._xacts: weakref.WeakKeyDictionary[asyncpg.Connection, _Session] = (
            weakref.WeakKeyDictionary()
        )
        # Connection -> its server session (pid, start) when it talks to the server
        # directly, None behind a pooler: see _identify.
        self._sessions: weakref.WeakKeyDictionary[asyncpg.Connection, tuple[int, Any] | None] = (
            weakref.WeakKeyDictionary()
        )
        t = self.settings.timeouts
        self._ahead_timeouts = TimeoutPolicy(
            lock_timeout=_within(t.lock_timeout, _AHEAD_BOUND / 4),
            statement_timeout=_within(t.statement_timeout, _AHEAD_BOUND / 2),
        )
        # The control connection's steps on the ops tables: the lock timeout (a wait is
        # retried), and no transaction left open by a connection lost before its COMMIT.
        self._control_local = t.local(
            statement=False, idle_in_transaction_session_timeout=pg_interval(_CONTROL_IDLE)
        )
        self._begin = "BEGIN; " + t.local(
            idle_in_transaction_session_timeout=pg_interval(self.settings.lease_seconds),
            synchronous_commit="on" if t.synchronous_commit else "off",
        )
        # Connection -> True while the COMMIT of its last batch has begun its next one.
        self._begun: weakref.WeakKeyDictionary[asyncpg.Connection, bool] = (
            weakref.WeakKeyDictionary()
        )

    # --- lifecycle ------------------------------------------------------------------

    async def execute(self, control: asyncpg.Connection) -> Outcome:
        """Run until the migration completes, fails, or is stopped.

        Raises :class:`BatchFailed` (exit 1) or :class:`Stopped` (exit 3).
        """
        started = time.monotonic()
        self._control = control
        host = socket.gethostname()
        try:
            retired = await self._on_control(lambda c: self._register(c, host))
        except Exception as exc:
            self._drop_spares()
            raise BatchFailed(
                f"{self.name}: could not register this runner in"
                f" ops.backfill_workers: {self._describe(exc)}; no batch ran,"
                " `run` resumes"
            ) from None
        except BaseException:
            self._drop_spares()
            raise
        if retired:
            log.info("workers_retired", count=retired)
        structlog.contextvars.bind_contextvars(migration=self.name)
        log.info(
            "run_started",
            workers=self.settings.workers,
            batch_size=self.batch_size,
            table=self.target.table,
        )
        try:
            async with anyio.create_task_group() as outer:
                self._outer = outer.cancel_scope
                outer.start_soon(self._heartbeat, control)
                async with anyio.create_task_group() as side:
                    if self.handle_signals:
                        side.start_soon(self._signals)
                    if self._deadline_at is not None:
                        side.start_soon(self._deadline)
                    async with anyio.create_task_group() as workers:
                        self._background = workers  # look-aheads: waited for, never raise
                        for i in range(self.settings.workers):
                            workers.start_soon(self._worker, i)
                    side.cancel_scope.cancel()  # neither touches a connection
                # The heartbeat ends by itself: cancelling it mid-query would leave the
                # control connection, still needed below, in an unknown state.
                self._finished.set()
        finally:
            self._drop_spares()
            with anyio.move_on_after(5, shield=True), contextlib.suppress(Exception):
                await self._on_control(lambda c: c.execute(store.query("stop_worker"), self.token))
        elapsed = time.monotonic() - started
        try:
            if self.aborted:
                raise Stopped("stopped by a second signal; the current batch was rolled back")
            if self.failure is not None:
                message = self._describe(self.failure)
                try:
                    await self._on_control(
                        lambda c: c.execute(store.query("fail_backfill"), self.name, message)
                    )
                except Exception as exc:
                    message += f" (not recorded in ops.backfills: {self._describe(exc)})"
                log.error("run_failed", error=message)
                raise BatchFailed(f"{self.name}: {message}")
            try:
                if self.stop_reason is None:
                    await self._on_control(
                        lambda c: c.execute(store.query("finalize"), self.name, self.filename)
                    )
                row = await self._on_control(
                    lambda c: c.fetchrow(store.query("get_backfill"), self.name)
                )
            except Exception as exc:
                raise BatchFailed(
                    f"{self.name}: its batches ended, but recording the run's"
                    f" end failed: {self._describe(exc)}; `run` records it"
                ) from None
        finally:
            if self._control is not control:  # a replacement of ours; the caller's is lost
                await close_quietly(self._control)
        if row is not None and row["status"] == "completed":
            log.info(
                "run_completed",
                rows=self.progress.rows,
                batches=self.progress.batches,
                seconds=round(elapsed, 3),
            )
            return Outcome(True, self.progress, elapsed)
        reason = self.stop_reason or "stopped"
        log.info("run_stopped", reason=reason, rows=self.progress.rows)
        status = "" if row is None else str(row["status"])
        advice = {
            "paused": f"`resume {self.name}` lifts the pause, then `run` continues",
            "cancelled": "`run --restart` starts it again",
        }.get(status, "`run` resumes")
        raise Stopped(f"{self.name}: {reason}; {advice}")

    def _drop_spares(self) -> None:
        """Close the connections opened for workers that no worker took."""
        for spare in self._spare:
            spare.terminate()
        self._spare.clear()

    async def _on_control(self, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run ``op`` on the control connection, reconnecting it if it was lost (a
        terminated backend, a server restart) and retrying what is transient. ``op`` runs
        in a transaction of its own under the batch's lock timeout: the ops tables are
        never queued behind for long (DDL, a stuck session); a lock timeout is retried."""

        async def bounded(conn: asyncpg.Connection) -> T:
            async with transaction(conn, self._control_local):
                return await op(conn)

        self._control, result = await self._with_conn(self._control, bounded)
        return result

    def request_stop(self, reason: str) -> None:
        if not self.stop.is_set():
            self.stop_reason = reason
            self.stop.set()

    async def _register(self, control: asyncpg.Connection, host: str) -> int:
        """This runner's row (again, if a retry finds it written); and the ranges of
        runners on this host, in this pid namespace, whose process is gone released at
        once. Returns how many such runners were retired."""
        namespace = _pid_namespace()
        await control.execute(
            store.query("register_worker"),
            self.token,
            self.name,
            host,
            os.getpid(),
            self.settings.workers,
            namespace,
        )
        rows = await control.fetch(
            store.query("live_workers_on_host"), self.name, host, self.token, namespace
        )
        dead = [r["token"] for r in rows if not _process_exists(r["pid"])]
        if dead:
            await control.execute(store.query("retire_workers"), dead)
        return len(dead)

    async def _heartbeat(self, control: asyncpg.Connection) -> None:
        interval = min(1.0, self.settings.lease_seconds / 3)
        while not self._finished.is_set():
            try:
                # Bounded: a black-holed socket must not hang the run (this task has to
                # end by itself); a timed-out connection is dropped and made anew.
                with anyio.fail_after(max(interval, 1.0) * 5):
                    async with self._control_lock:
                        if self._control.is_closed():  # lost: reconnect, or try next beat
                            self._control = await self.connection.connect()
                            await self._release_orphans(self._control)
                        # One statement, no transaction: a connection lost mid-beat
                        # leaves no lock behind (it is bounded on this side).
                        status = await self._control.fetchval(
                            store.query("heartbeat"),
                            self.token,
                            self.name,
                            self.settings.lease_seconds,
                            [str(i) for i in self._held],
                        )
            except Exception as exc:  # also asyncpg's InternalClientError on a killed backend
                if isinstance(exc, TimeoutError):
                    self._control.terminate()
                # Losing the control connection must not stop the batches: leases lapse
                # and fencing keeps a stale runner from committing.
                log.warning("heartbeat_failed", error=self._describe(exc))
                status = "running"
            if status in _STOPPING:
                self.request_stop(f"migration {status}")
            with anyio.move_on_after(interval):
                await self._finished.wait()

    async def _release_orphans(self, conn: asyncpg.Connection) -> None:
        """A connection to the server was lost: a commit this runner saw succeed may have
        been lost with it (batches commit asynchronously), or one whose outcome it did not
        see may have claimed the next range; either leaves a range it no longer holds
        claimed under its token. Such ranges go back to pending now rather than when their
        lease lapses."""
        status = await conn.execute(
            store.query("release_orphans"), self.token, self.name, [str(i) for i in self._held]
        )
        released = int(status.split()[-1])
        if released:
            log.warning("orphans_released", ranges=released)

    async def _signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if not self.stop.is_set():
                    log.warning("stop_requested", signal=name)
                    self.request_stop(f"{name} received")
                else:
                    log.warning("abort_requested", signal=name)
                    self.aborted = True
                    self._outer.cancel()

    async def _deadline(self) -> None:
        """Stop the run at its --max-duration, also while workers wait between batches."""
        assert self._deadline_at is not None
        # Stops whatever the clock says on waking: the event loop may wake it a little early.
        await anyio.sleep(max(0.0, self._deadline_at - time.monotonic()))
        self.request_stop(self._deadline_reason())

    def _check_deadline(self) -> None:
        if self._deadline_at is not None and time.monotonic() >= self._deadline_at:
            self.request_stop(self._deadline_reason())

    def _deadline_reason(self) -> str:
        return f"--max-duration {self.settings.max_duration:g}s reached"

    # --- workers --------------------------------------------------------------------

    async def _worker(self, index: int) -> None:
        conn = self._spare.pop() if self._spare else None
        c: Claim | None = None  # the next range, when the last batch's commit claimed it
        structlog.contextvars.bind_contextvars(worker=index)
        try:
            while not self.stop.is_set():
                if not await self._pace():
                    break
                if c is None:
                    conn, c = await self._with_conn(conn, self._claim)
                if c is None:
                    conn, finished = await self._with_conn(conn, self._nothing_open)
                    if finished:
                        break
                    with anyio.move_on_after(_IDLE_POLL):
                        await self.stop.wait()
                    continue
                conn, c = await self._run_batch(conn, c)
        except Exception as exc:
            self.failure = self.failure or exc
            self.request_stop("a batch failed")
        finally:
            with anyio.CancelScope(shield=True):
                if self.aborted and conn is not None:
                    conn.terminate()
                    await self._end_aborted_batches()
                else:
                    await close_quietly(conn)

    def _starts_at_once(self) -> bool:
        """Whether a worker goes from this batch's commit straight to its next batch:
        nothing asked to stop, and nothing spaces the batches. Only then may the commit
        begin the next batch's transaction (see chained_transaction): no transaction
        waits open for a pause, a rate cap, or a stop."""
        return not self.stop.is_set() and not self.pacer.paces

    async def _pace(self) -> bool:
        """Wait until the next batch may start; ``False`` if a stop came meanwhile or the
        run's time is up (no batch starts past --max-duration, even a first one at 0)."""
        self._check_deadline()
        delay = self.pacer.delay(time.monotonic())
        if delay > 0:
            with anyio.move_on_after(delay):
                await self.stop.wait()
        return not self.stop.is_set()

    def _look_ahead(self, c: Claim) -> _Ahead | None:
        """Start looking up the bound of the range after ``c`` on the control connection,
        while ``c`` works: the checkpoint then claims it without an index scan of its own
        (one worker: the frontier is where ``c`` ends; with several it often is not, and
        the checkpoint finds the bound itself). Never waits: skipped while the heartbeat
        has the connection."""
        if self.end_key is None or c.range.upper == self.end_key or self._control_lock.locked():
            return None
        ahead = _Ahead(c.range.upper, self.batch_size)
        self._background.start_soon(self._find_ahead, ahead)
        return ahead

    async def _find_ahead(self, ahead: _Ahead) -> None:
        """Never raises (it runs in the workers' task group): it is only a shortcut, and
        the checkpoint finds the bound itself when none was found."""
        assert self.end_key is not None
        try:
            self._control_lock.acquire_nowait()
        except anyio.WouldBlock:
            return
        control = self._control
        try:
            # Shielded: a query cancelled half way would leave the control connection,
            # which the heartbeat and the run's end still need, in an unknown state. The
            # server's own timeouts, shorter than the bound, end a slow look-ahead first.
            with anyio.fail_after(_AHEAD_BOUND, shield=True) as scope:
                if not control.is_closed():
                    ahead.bound = await store.look_ahead(
                        control,
                        self.ranges,
                        KeyRange(ahead.after, self.end_key),
                        ahead.size,
                        self._ahead_timeouts,
                    )
        except Exception:
            if scope.cancel_called:  # silent, whatever escaped: the heartbeat reconnects
                control.terminate()
        finally:
            self._control_lock.release()

    async def _with_conn(
        self,
        conn: asyncpg.Connection | None,
        op: Callable[[asyncpg.Connection], Awaitable[T]],
    ) -> tuple[asyncpg.Connection, T]:
        """Run ``op`` on ``conn``, reconnecting and retrying transient errors."""
        live = conn
        async for attempt in self.settings.retry.retrying(
            retry_on=_retryable, before_sleep=self._log_retry(None)
        ):
            with attempt:
                try:
                    if live is None or live.is_closed():
                        live = await self.connection.connect()
                    async with self._bounded(live):
                        result = await op(live)
                except Exception as exc:
                    fault = _tag(exc, live)
                    if fault is Fault.RECONNECT and live is not None:
                        live.terminate()
                        live = None
                    elif fault is Fault.SHRINK:
                        # A claim's range lookup timed out: the next try claims fewer keys,
                        # as a batch that timed out is cut.
                        self.batch_size = shrink_after_timeout(
                            self.settings.throttle, self.batch_size
                        )
                    raise
                return live, result
        raise AssertionError("unreachable: tenacity reraises")

    async def _claim(self, conn: asyncpg.Connection) -> Claim | None:
        claimed: list[int] = []

        def hold(range_id: int) -> None:
            claimed.append(range_id)
            self._held.add(range_id)

        try:
            c = await store.claim(
                conn,
                self.name,
                self.token,
                self.settings.lease_seconds,
                self.ranges,
                size=self.batch_size,
                timeouts=self.settings.timeouts,
                on_begin=lambda pid, xact_start: self._xacts.__setitem__(
                    conn, (pid, xact_start, False)
                ),
                on_claim=hold,
            )
        except BaseException:
            self._held.difference_update(claimed)  # not committed, or not known to be
            raise
        if c is not None and c.keys > 2 * self.batch_size:
            # An open range from before a shrink (a split's remainder, a lapsed lease) is
            # cut to today's size rather than timing out again at its old one.
            try:
                c = await store.split(
                    conn,
                    c,
                    self.token,
                    self.batch_size,
                    self.ranges,
                    timeouts=self.settings.timeouts,
                )
            except BaseException:
                # A retry claims afresh: this range, claimed but no longer held, must not
                # keep its lease alive (it lapses, or is handed back on reconnecting).
                self._held.discard(c.id)
                raise
        return c

    async def _nothing_open(self, conn: asyncpg.Connection) -> bool:
        """No range is left anywhere (all handed out and committed)."""
        row = await conn.fetchrow(store.query("open_batches"), self.name)
        return row is None or int(row["open"]) == 0

    async def _run_batch(
        self,
        conn: asyncpg.Connection | None,
        c: Claim,
    ) -> tuple[asyncpg.Connection | None, Claim | None]:
        """Run claim ``c`` to its commit, retrying transient errors; returns the connection
        to go on with (``None`` if it was lost) and the next range if the commit claimed it
        (a claim still held when the run stops goes back with the runner's others)."""
        attempts = c.attempts
        recheck = False
        live: asyncpg.Connection | None = conn
        retrying = self.settings.retry.retrying(
            retry_on=_retryable, before_sleep=self._log_retry(c)
        )
        try:
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    if live is None or live.is_closed():
                        live = await self.connection.connect()
                    if recheck:
                        try:
                            async with self._bounded(live):
                                settled = await self._already_settled(live, c)
                                # The next range, if the lost commit claimed one: under
                                # this runner's token, held by none of its workers. Back
                                # to pending now rather than after its lease.
                                await self._release_orphans(live)
                        except Exception as exc:
                            live = _dropped_if_lost(exc, live)
                            raise
                        if settled:
                            self._held.discard(c.id)
                            return live, None
                    recheck = False
                    began = time.monotonic()
                    try:
                        async with self._bounded(live):
                            nxt = await self._transaction(live, c, attempts)
                    except LeaseLost:
                        raise
                    except Exception as exc:
                        timeout = self.settings.timeouts.statement_timeout
                        fault = _tag(
                            exc, live, ran_past_timeout=0 < timeout <= time.monotonic() - began
                        )
                        await self._record_error(live, c, attempts, exc)
                        if fault is Fault.RECONNECT:
                            live.terminate()
                            live = None
                            recheck = True  # the commit's outcome is unknown
                        elif fault is Fault.SHRINK:
                            smaller = shrink_after_timeout(self.settings.throttle, c.keys)
                            self.batch_size = min(self.batch_size, smaller)
                            if not live.is_closed():  # lost recording the error: retried whole
                                try:
                                    async with self._bounded(live):
                                        c = await store.split(
                                            live,
                                            c,
                                            self.token,
                                            smaller,
                                            self.ranges,
                                            timeouts=self.settings.timeouts,
                                        )
                                except Exception as split_failed:
                                    live = _dropped_if_lost(split_failed, live)
                                    raise
                                log.warning("batch_shrunk", batch=c.id, keys=c.keys)
                        raise
                    else:
                        return live, nxt
        except LeaseLost:
            self._held.discard(c.id)
            log.warning("batch_lease_lost", batch=c.id)
        return live, None

    async def _transaction(self, conn: asyncpg.Connection, c: Claim, attempts: int) -> Claim | None:
        started = time.monotonic()
        nxt: Claim | None = None
        session = await self._identify(conn)
        begun = self._begun.pop(conn, False)
        ending: Ending | None = None
        try:
            mine = ours(conn)
            # Behind a pooler (or on a plain asyncpg connection, which cannot carry a BEGIN
            # with its COMMIT): the settings in a statement, see _work_and_checkpoint.
            if session is None or mine is None:
                async with conn.transaction():
                    rows, seconds, next_size, nxt = await self._work_and_checkpoint(
                        conn, c, attempts, direct=False
                    )
                    self._maybe_crash("before_commit")
            else:
                # Direct: the settings travel with BEGIN, and BEGIN with the COMMIT of the
                # batch before when this one was to start at once.
                self._xacts[conn] = (*session, True)
                async with chained_transaction(mine, self._begin, begun=begun) as ending:
                    rows, seconds, next_size, nxt = await self._work_and_checkpoint(
                        conn, c, attempts, direct=True
                    )
                    self._maybe_crash("before_commit")
                    if nxt is not None and self._starts_at_once():
                        ending.begin_next(self._begin)
        except BaseException:
            if nxt is not None:  # not committed, or not known to be
                self._held.discard(nxt.id)
            raise
        # What follows the commit in this process. Should it fail, the next batch's
        # transaction, if this commit began one, goes with its connection.
        began_next = ending is not None and ending.began_next
        try:
            self._held.discard(c.id)
            self._maybe_crash("after_commit")
            self.batch_size = next_size
            now = time.monotonic()
            self.pacer.record(now, rows, started)
            self.progress.rows += rows
            self.progress.keys += c.keys
            self.progress.batches += 1
            log.info(
                "batch_committed",
                batch=c.id,
                lower=_show(c.range.lower),
                upper=_show(c.range.upper),
                rows=rows,
                keys=c.keys,
                ms=round(seconds * 1000, 1),
                attempts=attempts,
                next_size=next_size,
            )
            if self.on_batch is not None:
                self.on_batch(self.progress, c.keys)
        except BaseException:
            if began_next:
                conn.terminate()
            raise
        if began_next:
            self._begun[conn] = True
        return nxt

    async def _work_and_checkpoint(
        self, conn: asyncpg.Connection, c: Claim, attempts: int, *, direct: bool
    ) -> tuple[int, float, int, Claim | None]:
        """Inside the batch's transaction: its settings (unless a ``direct`` connection sent
        them with BEGIN), the work, the checkpoint that also claims the next range. Returns the
        rows changed, the work's seconds, the next batch size and the next range (already
        in ``self._held``)."""
        t = self.settings.timeouts
        if not direct:
            session = await conn.fetchrow(
                _SET_LOCAL,
                pg_interval(t.lock_timeout),
                pg_interval(t.statement_timeout),
                pg_interval(self.settings.lease_seconds),
                "on" if t.synchronous_commit else "off",
            )
            assert session is not None
            self._xacts[conn] = (session["pid"], session["xact_start"], False)
        self._maybe_crash("before_work")
        ahead = self._look_ahead(c)
        work_started = time.monotonic()
        rows = await run_work(self.work, Batch(conn, self.target.key, c.range))
        seconds = time.monotonic() - work_started
        self._maybe_crash("after_work")
        next_size = next_batch_size(self.settings.throttle, self.batch_size, seconds, rows)
        # The next range is claimed by the checkpoint's own statement, so it commits or
        # vanishes with this batch. Open ranges (a split's remainder, a lapsed lease) are
        # taken by the claim of its own when the frontier has reached the end.
        settled = await store.checkpoint(
            conn,
            c,
            self.token,
            name=self.name,
            rows=rows,
            seconds=seconds,
            attempts=attempts,
            batch_size=next_size,
            claim_next=not self.stop.is_set(),
            lease=self.settings.lease_seconds,
            ranges=self.ranges,
            hint=None if ahead is None else ahead.hint(next_size),
        )
        if settled is None:
            raise LeaseLost
        status, nxt = settled
        if nxt is not None:  # held from before the commit: see self._held
            self._held.add(nxt.id)
        if status in _STOPPING:
            # Seen in the commit of the batch that was running when it was said: no worker
            # starts another batch, without waiting for the next heartbeat.
            self.request_stop(f"migration {status}")
        return rows, seconds, next_size, nxt

    async def _end_aborted_batches(self) -> None:
        """After a second signal: end the sessions whose batch transaction is still open, so
        the server rolls them back now. Closing our socket is not enough: a backend notices
        a vanished client only when it next talks to it, after its statement, which may run
        (holding its row locks) until the statement timeout. Only a session still in the
        very transaction we began is ended, never one reused since (PgBouncer)."""
        sessions = list(self._xacts.values())
        self._xacts.clear()
        await self._end_sessions(sessions)

    async def _identify(self, conn: asyncpg.Connection) -> tuple[int, Any] | None:
        """The server session of ``conn`` (pid, start), asked once per connection, if it
        talks to the server directly: then the pid the server announced at connect is its
        own. Behind a pooler (another pid) ``None``: its session may change with every
        transaction, which must then name itself (``_SET_LOCAL``)."""
        if conn not in self._sessions:
            row = await conn.fetchrow(_SESSION)
            self._sessions[conn] = (
                (row["pid"], row["backend_start"])
                if row is not None and row["pid"] == conn.get_server_pid()
                else None
            )
        return self._sessions[conn]

    async def _end_sessions(self, sessions: list[_Session]) -> None:
        """End the server sessions ``sessions`` names (a whole session, or one only while
        still in the transaction it names), from a new connection; best effort, bounded."""
        if not sessions:
            return
        with anyio.move_on_after(5):
            conn: asyncpg.Connection | None = None
            try:
                conn = await self.connection.connect()
                await conn.execute(_END_SESSIONS, *(list(x) for x in zip(*sessions, strict=True)))
            except Exception as exc:  # best effort, whatever the connection raises
                log.warning("abort_cleanup_failed", error=self._describe(exc))
            finally:
                await close_quietly(conn)

    def _reply_bound(self) -> float | None:
        """How long a request may wait for its reply before its connection counts as lost;
        ``None`` (forever) when the statement timeout is off."""
        t = self.settings.timeouts.statement_timeout
        return t + max(t, _REPLY_MARGIN) if t > 0 else None

    @contextlib.asynccontextmanager
    async def _bounded(self, conn: asyncpg.Connection) -> AsyncIterator[None]:
        """Give up on ``conn`` when what runs inside waits longer than the reply bound for
        an answer: from its start, then from each answer the server gave (a batch of many
        statements may take longer in all; each one is bounded).

        The server enforces the statement timeout, but over a silent connection (a
        black-holed socket, a lost NAT entry) its verdict never arrives and asyncpg would
        wait forever. Then ``conn`` is terminated, never reused; the server session of a
        transaction begun inside (a claim's or a batch's) is ended, so it does not sit idle
        in transaction holding its locks; and :class:`TimeoutError` (RECONNECT: the commit's
        outcome is unknown) is raised.
        """
        bound = self._reply_bound()
        self._xacts.pop(conn, None)
        mine = ours(conn)
        try:
            with anyio.fail_after(bound) as scope:
                if mine is not None and bound is not None:
                    mine.on_reply = lambda: setattr(scope, "deadline", anyio.current_time() + bound)
                try:
                    yield
                finally:
                    if mine is not None:
                        mine.on_reply = None
        except Exception as exc:
            if not scope.cancel_called:
                raise
            # Whatever escaped the cancelled scope (asyncpg's rollback of an interrupted
            # transaction may raise its own error), the connection is silent.
            conn.terminate()
            xact = self._xacts.pop(conn, None)
            log.warning("connection_silent", seconds=bound, session=xact[0] if xact else None)
            if xact is not None:
                await self._end_sessions([xact])
            raise TimeoutError(f"no reply from the server within {bound:g} s") from exc

    async def _already_settled(self, conn: asyncpg.Connection, c: Claim) -> bool:
        """After a lost connection: did the batch commit, or did another runner take it?"""
        row = await conn.fetchrow(store.query("batch_state"), c.id)
        # The range too: after a crash that lost the claim, its id may name another range.
        if (
            row is None
            or row["worker"] != self.token
            or as_bound(row["lower_key"]) != c.range.lower
            or tuple(row["upper_key"]) != c.range.upper
        ):
            log.warning("batch_lease_lost", batch=c.id)
            return True
        if row["status"] == "done":
            log.info("batch_committed_before_disconnect", batch=c.id)
            self.progress.rows += int(row["rows"] or 0)
            self.progress.batches += 1
            self.progress.keys += c.keys
            if self.on_batch is not None:
                self.on_batch(self.progress, c.keys)
            return True
        return False

    async def _record_error(
        self, conn: asyncpg.Connection, c: Claim, attempts: int, exc: BaseException
    ) -> None:
        if conn.is_closed():
            return
        # Best effort: the error is also logged and raised.
        with contextlib.suppress(Exception):
            async with self._bounded(conn):  # a silent connection: TimeoutError, terminated
                await conn.execute(
                    store.query("batch_failed"),
                    c.id,
                    self.token,
                    attempts,
                    self._describe(exc),
                    self.name,
                )

    def _describe(self, exc: BaseException) -> str:
        """``exc`` as logged and as kept in the ops tables: one line, and no password of the
        connection's (a migration's own error may quote its DSN)."""
        return one_line(self.connection.redact(_describe(exc)))

    def _log_retry(self, c: Claim | None) -> Callable[[RetryCallState], None]:
        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning(
                "batch_retrying" if c else "claim_retrying",
                batch=c.id if c else None,
                attempt=state.attempt_number,
                error=self._describe(exc) if exc else None,
                wait=round(state.upcoming_sleep, 3),
            )

        return before_sleep

    def _maybe_crash(self, point: str) -> None:
        if self._crash_at is None or self._crash_at[0] != point:
            return
        self._crash_count += 1
        if self._crash_count == self._crash_at[1]:
            os.kill(os.getpid(), signal.SIGKILL)


def _tag(
    exc: BaseException, conn: asyncpg.Connection | None, *, ran_past_timeout: bool = False
) -> Fault:
    """Classify ``exc`` while the connection it came from is at hand, and remember it: the
    retry predicate sees only the exception (an InterfaceError is transient only if its
    connection closed)."""
    fault = classify(
        exc, conn_closed=conn is None or conn.is_closed(), ran_past_timeout=ran_past_timeout
    )
    exc.__dict__["_cryptopi_fault"] = fault
    return fault


def _dropped_if_lost(exc: BaseException, conn: asyncpg.Connection) -> asyncpg.Connection | None:
    """Classify ``exc`` from ``conn`` (see _tag); ``None`` (``conn`` terminated) if it
    means the connection is lost, else ``conn``."""
    if _tag(exc, conn) is Fault.RECONNECT:
        conn.terminate()
        return None
    return conn


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, LeaseLost):
        return False
    fault = exc.__dict__.get("_cryptopi_fault") if hasattr(exc, "__dict__") else None
    return (fault if isinstance(fault, Fault) else classify(exc)) is not Fault.FATAL


def _within(timeout: float, most: float) -> float:
    """``timeout`` (0: none), but never more than ``most``."""
    return most if timeout <= 0 else min(timeout, most)


def _pid_namespace() -> str | None:
    """Where this process's pid means this process: the kernel's boot and the pid namespace
    (on Linux ``<boot id>/pid:[4026531836]``: machines that share a host name have
    different boot ids, containers on one machine different namespaces), or ``None`` where
    the system has none to read."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
        return f"{boot}/{os.readlink('/proc/self/ns/pid')}"
    except (OSError, ValueError):
        return None


def _process_exists(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (signal 0 checks, sends nothing). Where
    that cannot be asked (not POSIX), every runner counts as alive: its leases lapse."""
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _parse_crash(value: str | None) -> tuple[str, int] | None:
    if not value:
        return None
    point, _, n = value.partition(":")
    return point, int(n or 1)


def _describe(exc: BaseException) -> str:
    state = getattr(exc, "sqlstate", None)
    text = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__} ({state}): {text}" if state else f"{type(exc).__name__}: {text}"


def _show(bound: tuple[str, ...] | None) -> str | None:
    if bound is None:
        return None
    return bound[0] if len(bound) == 1 else "(" + ", ".join(bound) + ")"
