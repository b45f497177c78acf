"""A runner's control connection: registering the runner, the heartbeat that keeps its
ranges' leases and reads the run's state, handing ranges back, and the look-ahead.

One connection runs one request at a time: the heartbeat and the look-ahead share it under
a lock; the worker tasks never wait for it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.abc
import asyncpg
import structlog

from .db import ConnectionSettings, pg_interval
from .keys import Bound, KeyRange
from .sessions import Sessions
from .settings import RunSettings, TimeoutPolicy
from .store import Claim, RunCounters, RunStore
from .transactions import transaction

log = structlog.get_logger("cryptopi_batch")
T = TypeVar("T")

CONTROL_IDLE = 5.0  # seconds a control step's transaction may wait between its statements
LIVE_WITHIN = 10.0  # a runner beating within this many seconds is live (as `status` counts)

Waiting = tuple[str | None, datetime | None]
"""Why this runner waits (``None``: it works) and when its window opens next."""
AHEAD_BOUND = 2.0  # how long a look-ahead may hold the control connection


@dataclass
class Ahead:
    """The bound of the range after ``after``, for ``size`` keys, looked up on the control
    connection while a batch works; ``bound`` stays ``None`` until (and unless) found."""

    after: Bound
    size: int
    bound: Bound | None = None

    def hint(self, size: int) -> tuple[Bound, Bound] | None:
        return None if self.bound is None or size != self.size else (self.after, self.bound)


class Control:
    """The control connection of one runner, and the ranges its worker tasks hold."""

    def __init__(  # noqa: PLR0913 -- keyword-only: the parts a runner made for it
        self,
        *,
        conn: asyncpg.Connection,
        store: RunStore,
        sessions: Sessions,
        connection: ConnectionSettings,
        settings: RunSettings,
        describe: Callable[[BaseException], str],
        end_key: Bound | None,
    ) -> None:
        self.conn = conn
        self._store = store
        self._sessions = sessions
        self._connection = connection
        self._settings = settings
        self._describe = describe
        self._end_key = end_key
        self._lock = anyio.Lock()  # the heartbeat and the look-ahead, one at a time
        # Ids of the ranges this runner's workers hold: claimed (added before the claim
        # commits) and not yet committed done or given up. Only these leases are extended;
        # other ranges under this runner's token are orphans (see release_orphans).
        self.held: set[int] = set()
        # Read at each beat; written to the ops tables when it changes (see set_waiting),
        # and at the first beat: a runner that joins a waiting run, working, clears it.
        self.waiting: Callable[[], Waiting] = lambda: (None, None)
        self._waiting_written: Waiting | None = None
        t = settings.timeouts
        self._ahead_timeouts = TimeoutPolicy(
            lock_timeout=_within(t.lock_timeout, AHEAD_BOUND / 4),
            statement_timeout=_within(t.statement_timeout, AHEAD_BOUND / 2),
        )
        # The control connection's steps on the ops tables: the lock timeout (a wait is
        # retried), and no transaction left open by a connection lost before its COMMIT.
        self._local = t.local(
            statement=False, idle_in_transaction_session_timeout=pg_interval(CONTROL_IDLE)
        )

    async def step(self, op: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run ``op`` on the control connection, reconnecting it if it was lost (a
        terminated backend, a server restart) and retrying what is transient. ``op`` runs
        in a transaction of its own under the batch's lock timeout: the ops tables are
        never queued behind for long (DDL, a stuck session); a lock timeout is retried."""

        async def bounded(conn: asyncpg.Connection) -> T:
            async with transaction(conn, self._local):
                return await op(conn)

        self.conn, result = await self._sessions.with_conn(self.conn, bounded)
        return result

    async def register(self, tasks: int) -> int:
        """This runner's row; and the ranges of runners on this host, in this pid
        namespace, whose process is gone released at once. Returns how many such runners
        were retired."""
        host, namespace = socket.gethostname(), pid_namespace()

        async def register(conn: asyncpg.Connection) -> int:
            await self._store.register(
                conn, host=host, pid=os.getpid(), tasks=tasks, namespace=namespace
            )
            return await self._retire_dead_peers(conn, host, namespace)

        return await self.step(register)

    async def _retire_dead_peers(
        self, conn: asyncpg.Connection, host: str, namespace: str | None
    ) -> int:
        peers = await self._store.peers_on_host(conn, host, namespace)
        dead = [p.token for p in peers if not process_exists(p.pid)]
        if dead:
            await self._store.retire(conn, dead)
        return len(dead)

    async def heartbeat(
        self, finished: anyio.Event, on_beat: Callable[[RunCounters], None]
    ) -> None:
        """Beat until ``finished``: extend the held ranges' leases and hand the run's state
        and counters to ``on_beat``. Every few beats, runners of this host found dead are
        retired, as at start: a surviving runner does not wait out a dead peer's lease."""
        interval = min(1.0, self._settings.lease_seconds / 3)
        host, namespace = socket.gethostname(), pid_namespace()
        beats = 0
        while not finished.is_set():
            beats += 1
            try:
                # Bounded: a black-holed socket must not hang the run (this task has to
                # end by itself); a timed-out connection is dropped and made anew.
                with anyio.fail_after(max(interval, 1.0) * 5):
                    async with self._lock:
                        if self.conn.is_closed():  # lost: reconnect, or try next beat
                            self.conn = await self._connection.connect()
                            await self.release_orphans(self.conn)
                        # One statement, no transaction: a connection lost mid-beat
                        # leaves no lock behind (it is bounded on this side).
                        counters = await self._store.heartbeat(self.conn, self.held)
                        await self._report_waiting(self.conn)  # never raises
                        if beats % 5 == 0:
                            retired = await self._retire_dead_peers(self.conn, host, namespace)
                            if retired:
                                log.info("runners_retired", count=retired)
            except Exception as exc:  # also asyncpg's InternalClientError on a killed backend
                if isinstance(exc, TimeoutError):
                    self.conn.terminate()
                # Losing the control connection must not stop the batches: leases lapse
                # and fencing keeps a stale runner from committing.
                log.warning("heartbeat_failed", error=self._describe(exc))
            else:
                on_beat(counters)
            with anyio.move_on_after(interval):
                await finished.wait()

    async def _report_waiting(self, conn: asyncpg.Connection) -> None:
        """This runner's waiting reason, written once per change (tried again next beat
        if it fails)."""
        waiting = self.waiting()
        if waiting == self._waiting_written:
            return
        reason, opens = waiting
        written = self._waiting_written
        try:
            async with transaction(conn, self._local):
                await self._store.set_waiting(conn, reason, opens, live_within=LIVE_WITHIN)
        except Exception as exc:  # only shown in status: the beat itself must go on
            log.warning("waiting_not_recorded", error=self._describe(exc))
            return
        self._waiting_written = waiting
        if reason is not None:
            log.info("run_waiting", reason=reason)
        elif written is not None:
            log.info("run_goes_on")

    async def release_orphans(self, conn: asyncpg.Connection) -> None:
        """A connection to the server was lost: a commit this runner saw succeed may have
        been lost with it (batches commit asynchronously), or one whose outcome it did not
        see may have claimed the next range; either leaves a range it no longer holds
        claimed under its token. Such ranges go back to pending now rather than when their
        lease lapses."""
        released = await self._store.release_orphans(conn, self.held)
        if released:
            log.warning("orphans_released", ranges=released)

    def look_ahead(self, c: Claim, size: int, tasks: anyio.abc.TaskGroup) -> Ahead | None:
        """Start looking up the bound of the range after ``c`` on the control connection,
        while ``c`` works: the checkpoint then claims it without an index scan of its own.
        Only with one worker task: with several, the others' checkpoints have moved the
        frontier past where ``c`` ends, the bound would go unused, and the query would take
        the control connection from the heartbeat for nothing. Never waits: skipped while
        the heartbeat has the connection."""
        if (
            self._settings.workers > 1
            or self._end_key is None
            or c.range.upper == self._end_key
            or self._lock.locked()
        ):
            return None
        ahead = Ahead(c.range.upper, size)
        tasks.start_soon(self._find_ahead, ahead)
        return ahead

    async def _find_ahead(self, ahead: Ahead) -> None:
        """Never raises (it runs in the workers' task group): it is only a shortcut, and
        the checkpoint finds the bound itself when none was found."""
        assert self._end_key is not None
        try:
            self._lock.acquire_nowait()
        except anyio.WouldBlock:
            return
        control = self.conn
        try:
            # Shielded: a query cancelled half way would leave the control connection,
            # which the heartbeat and the run's end still need, in an unknown state. The
            # server's own timeouts, shorter than the bound, end a slow look-ahead first.
            with anyio.fail_after(AHEAD_BOUND, shield=True) as scope:
                if not control.is_closed():
                    rng = KeyRange(ahead.after, self._end_key)
                    ahead.bound = await self._store.look_ahead(
                        control, rng, ahead.size, self._ahead_timeouts
                    )
        except Exception:
            if scope.cancel_called:  # silent, whatever escaped: the heartbeat reconnects
                control.terminate()
        finally:
            self._lock.release()


def _within(timeout: float, most: float) -> float:
    """``timeout`` (0: none), but never more than ``most``."""
    return most if timeout <= 0 else min(timeout, most)


def pid_namespace() -> str | None:
    """Where this process's pid means this process: the kernel's boot and the pid namespace
    (on Linux ``<boot id>/pid:[4026531836]``: machines that share a host name have
    different boot ids, containers on one machine different namespaces), or ``None`` where
    the system has none to read."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
        return f"{boot}/{os.readlink('/proc/self/ns/pid')}"
    except (OSError, ValueError):
        return None


def process_exists(pid: int) -> bool:
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
