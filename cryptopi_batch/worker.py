"""One worker task of a runner: admit → claim → run the batch (:mod:`batch`: its
transaction, the checkpoint that claims the next range, retries) → again."""

from __future__ import annotations

import functools
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio.abc
import asyncpg
import structlog

from .admission import Go, Stop
from .batch import BatchRun
from .control import Control
from .db import close_quietly, let_go
from .migration import Work
from .progress import Tally
from .sessions import Sessions
from .settings import RunSettings
from .stopping import StopSignal
from .store import Claim, RunStore
from .target import Target
from .throttle import BatchSizer

log = structlog.get_logger("cryptopi_batch")

CRASH_ENV = "CRYPTOPI_BATCH_CRASH_AT"
"""Testing hook: ``point:n`` kills the process (SIGKILL) the n-th time a batch reaches
``point`` (before_work, after_work, before_commit, after_commit)."""

IDLE_POLL = 0.25  # seconds between looks for open ranges when none is claimable


@dataclass
class Crew:
    """What a runner's worker tasks share."""

    store: RunStore
    work: Work
    target: Target
    settings: RunSettings
    sessions: Sessions
    control: Control
    stop: StopSignal
    sizer: BatchSizer
    tally: Tally
    describe: Callable[[BaseException], str]
    begin: str  # BEGIN and the batch's settings, for a direct connection
    look_aheads: anyio.abc.TaskGroup | None = None
    spare: list[asyncpg.Connection] = field(default_factory=list)
    failure: BaseException | None = None
    crash: CrashPoint | None = None


class BatchWorker:
    """One worker task: claims ranges and runs their batches until the run stops."""

    def __init__(self, crew: Crew, index: int) -> None:
        self.crew = crew
        self.index = index
        self._batches = BatchRun(crew)

    async def run(self) -> None:
        crew = self.crew
        conn = crew.spare.pop() if crew.spare else None
        c: Claim | None = None  # the next range, when the last batch's commit claimed it
        with structlog.contextvars.bound_contextvars(worker=self.index):
            try:
                while True:
                    decision = crew.stop.admit()
                    if isinstance(decision, Stop):
                        break
                    # A range in hand before any wait: the run's end is seen at once, not
                    # after a pause that paces a batch that will never come. Then ask
                    # again: the claim took a while (the first one, while the health
                    # gates take their first readings).
                    if c is None:
                        conn, c = await crew.sessions.with_conn(
                            conn, self._claim, on_shrink=crew.sizer.shrink
                        )
                        if c is not None:
                            continue
                    if c is None:
                        conn, left = await crew.sessions.with_conn(conn, crew.store.open_ranges)
                        if not left:
                            break
                        await crew.stop.pause(IDLE_POLL)
                        continue
                    if not isinstance(decision, Go):
                        await crew.stop.wait(decision)
                        continue
                    conn, c = await self._run_batch(conn, c)
            except Exception as exc:
                crew.failure = crew.failure or exc
                crew.stop.request("a batch failed")
            finally:
                with anyio.CancelScope(shield=True):
                    if crew.stop.aborted and conn is not None:
                        conn.terminate()
                        await crew.sessions.end_all()
                    elif crew.failure is None:
                        await let_go(conn)
                    else:
                        await close_quietly(conn)

    async def _claim(self, conn: asyncpg.Connection) -> Claim | None:
        crew, held = self.crew, self.crew.control.held
        claimed: list[int] = []

        def hold(range_id: int) -> None:
            claimed.append(range_id)
            held.add(range_id)

        try:
            c = await crew.store.claim(
                conn,
                size=crew.sizer.keys(),
                timeouts=crew.settings.timeouts,
                on_begin=lambda pid, at: crew.sessions.began(conn, (pid, at), whole=False),
                on_claim=hold,
            )
        except BaseException:
            held.difference_update(claimed)  # not committed, or not known to be
            raise
        return c

    async def _run_batch(
        self, conn: asyncpg.Connection | None, c: Claim
    ) -> tuple[asyncpg.Connection | None, Claim | None]:
        """Run claim ``c``'s batch (:class:`batch.BatchRun`), cut first if it was claimed
        at a size since lowered: an open range from before a shrink (a split's remainder,
        a lapsed lease), or this runner's first share of a budget, read while it was
        claimed. Not when the last batch's COMMIT began this one's transaction (a range
        its checkpoint claimed): that batch runs at the size it has."""
        fresh = conn is None or not conn.is_in_transaction()
        if fresh and c.keys > 2 * self.crew.sizer.keys():
            conn, c = await self.crew.sessions.with_conn(conn, functools.partial(self._fit, c=c))
        return await self._batches.run(conn, c)

    async def _fit(self, conn: asyncpg.Connection, c: Claim) -> Claim:
        """Claim ``c`` cut to today's size, the rest pending for any worker (one short
        transaction: failed, ``c`` is as it was, still held)."""
        crew = self.crew
        return await crew.store.split(conn, c, crew.sizer.keys(), timeouts=crew.settings.timeouts)


class CrashPoint:
    """The testing hook of :data:`CRASH_ENV`."""

    def __init__(self, point: str, n: int) -> None:
        self.point, self.n, self.count = point, n, 0

    @classmethod
    def from_env(cls) -> CrashPoint | None:
        value = os.environ.get(CRASH_ENV)
        if not value:
            return None
        point, _, n = value.partition(":")
        return cls(point, int(n or 1))

    def reached(self, point: str) -> None:
        if point == self.point:
            self.count += 1
            if self.count == self.n:
                os.kill(os.getpid(), signal.SIGKILL)
