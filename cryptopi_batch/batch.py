"""One batch, from a claimed range to its commit: the batch's transaction (the work, then
the checkpoint that claims the next range), retried as its errors say; after a lost
connection, the range's row read back to learn whether the commit happened."""

from __future__ import annotations

import contextlib
import enum
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

import asyncpg
import structlog
from tenacity import RetryCallState

from .admission import BatchDone
from .errors import LeaseLost
from .keys import Bound
from .migration import Batch, run_work
from .retry import Fault, Faults
from .sessions import batch_settings
from .states import RangeState
from .store import Claim, RangeRow
from .transactions import Ending, chained_transaction, ours

if TYPE_CHECKING:
    from .worker import Crew

log = structlog.get_logger("cryptopi_batch")


class Verdict(enum.Enum):
    """What a range's row says of a batch whose commit's outcome was not seen."""

    COMMITTED = "committed"  # done under this runner: count it, go on
    LOST = "lost"  # another runner owns it now (or its id names another range)
    UNSETTLED = "unsettled"  # still this runner's and not done: run it again


def verdict(row: RangeRow | None, c: Claim, token: uuid.UUID) -> Verdict:
    """The batch ``c``'s fate from its range's row, read back after a lost connection.
    The range is compared too: after a crash that lost the claim, its id may name another
    range."""
    if row is None or row.runner != token or row.range != c.range:
        return Verdict.LOST
    return Verdict.COMMITTED if row.status is RangeState.DONE else Verdict.UNSETTLED


class BatchRun:
    """Runs a worker task's claimed ranges to their commits, one at a time, on the task's
    connection; remembers whether the last commit began the next batch's transaction."""

    def __init__(self, crew: Crew) -> None:
        self.crew = crew
        self._begun = False  # the COMMIT of this task's last batch began its next one

    async def run(
        self, conn: asyncpg.Connection | None, c: Claim
    ) -> tuple[asyncpg.Connection | None, Claim | None]:
        """Run claim ``c`` to its commit, retrying transient errors; returns the connection
        to go on with (``None`` if it was lost) and the next range if the commit claimed it
        (a claim still held when the run stops goes back with the runner's others)."""
        crew = self.crew
        attempts = c.attempts
        recheck = False
        live: asyncpg.Connection | None = conn
        faults = Faults(fatal=(LeaseLost,))
        retrying = crew.settings.retry.retrying(
            retry_on=faults.retryable, before_sleep=self._log_retry(c)
        )
        try:
            async for attempt in retrying:
                with attempt:
                    attempts += 1
                    if live is None or live.is_closed():
                        live = await crew.sessions.connect()
                    if recheck:
                        try:
                            async with crew.sessions.bounded(live):
                                settled = await self._settled(live, c)
                        except Exception as exc:
                            if faults.tag(exc, conn_closed=live.is_closed()) is Fault.RECONNECT:
                                live.terminate()
                                live = None
                            raise
                        if settled:
                            crew.control.held.discard(c.id)
                            return live, None
                    recheck = False
                    began = time.monotonic()
                    try:
                        async with crew.sessions.bounded(live):
                            nxt = await self._transaction(live, c, attempts)
                    except LeaseLost:
                        raise
                    except Exception as exc:
                        timeout = crew.settings.timeouts.statement_timeout
                        ran = time.monotonic() - began
                        fault = faults.tag(
                            exc, conn_closed=live.is_closed(), ran_past_timeout=0 < timeout <= ran
                        )
                        await self._record_error(live, c, attempts, exc)
                        if fault is Fault.RECONNECT:
                            live.terminate()
                            live = None
                            recheck = True  # the commit's outcome is unknown
                        elif fault is Fault.SHRINK and not live.is_closed():
                            # (lost recording the error: retried whole)
                            c, live = await self._cut(live, c, faults)
                        raise
                    else:
                        return live, nxt
        except LeaseLost:
            crew.control.held.discard(c.id)
            log.warning("batch_lease_lost", batch=c.id)
        return live, None

    async def _cut(
        self, conn: asyncpg.Connection, c: Claim, faults: Faults
    ) -> tuple[Claim, asyncpg.Connection | None]:
        """The batch met the statement timeout: cut its range to a tenth for the retry."""
        crew = self.crew
        smaller = crew.sizer.cut(c.keys)
        try:
            async with crew.sessions.bounded(conn):
                c = await crew.store.split(conn, c, smaller, timeouts=crew.settings.timeouts)
        except Exception as exc:
            if faults.tag(exc, conn_closed=conn.is_closed()) is Fault.RECONNECT:
                conn.terminate()
            raise
        log.warning("batch_shrunk", batch=c.id, keys=c.keys)
        return c, conn

    async def _settled(self, conn: asyncpg.Connection, c: Claim) -> bool:
        """After a lost connection: did the batch commit, or did another runner take it?
        The next range, if the lost commit claimed one, is under this runner's token and
        held by none of its workers: back to pending now rather than after its lease."""
        crew = self.crew
        row = await crew.store.range_row(conn, c.id)
        found = verdict(row, c, crew.store.token)
        await crew.control.release_orphans(conn)
        if found is Verdict.LOST:
            log.warning("batch_lease_lost", batch=c.id)
        elif found is Verdict.COMMITTED and row is not None:
            log.info("batch_committed_before_disconnect", batch=c.id)
            crew.tally.committed(row.rows, c.keys)
        return found is not Verdict.UNSETTLED

    async def _transaction(self, conn: asyncpg.Connection, c: Claim, attempts: int) -> Claim | None:
        crew = self.crew
        started = time.monotonic()
        cuts = crew.sizer.cuts  # a cut while this batch runs outlives its next size
        nxt: Claim | None = None
        session = await crew.sessions.identify(conn)
        begun, self._begun = self._begun, False
        ending: Ending | None = None
        try:
            mine = ours(conn)
            # Behind a pooler (or on a plain asyncpg connection, which cannot carry a BEGIN
            # with its COMMIT): the settings in a statement of their own.
            if session is None or mine is None:
                async with conn.transaction():
                    crew.sessions.began(
                        conn,
                        await batch_settings(
                            conn, crew.settings.timeouts, crew.settings.lease_seconds
                        ),
                        whole=False,
                    )
                    rows, seconds, next_size, nxt = await self._work_and_checkpoint(
                        conn, c, attempts
                    )
                    self._crash("before_commit")
            else:
                # Direct: the settings travel with BEGIN, and BEGIN with the COMMIT of the
                # batch before when this one was to start at once.
                crew.sessions.began(conn, session, whole=True)
                async with chained_transaction(mine, crew.begin, begun=begun) as ending:
                    rows, seconds, next_size, nxt = await self._work_and_checkpoint(
                        conn, c, attempts
                    )
                    self._crash("before_commit")
                    if nxt is not None and crew.stop.may_chain():
                        ending.begin_next(crew.begin)
        except BaseException:
            if nxt is not None:  # not committed, or not known to be
                crew.control.held.discard(nxt.id)
            raise
        # What follows the commit in this process. Should it fail, the next batch's
        # transaction, if this commit began one, goes with its connection.
        began_next = ending is not None and ending.began_next
        try:
            crew.control.held.discard(c.id)
            self._crash("after_commit")
            crew.sizer.adopt(next_size, cuts)
            crew.sizer.observe(c.keys, rows)
            crew.stop.admission.record(BatchDone(started, time.monotonic(), rows))
            crew.tally.committed(rows, c.keys)
            log.info(
                "batch_committed",
                batch=c.id,
                lower=_show(c.range.lower),
                upper=_show(c.range.upper),
                rows=rows,
                keys=c.keys,
                ms=round(seconds * 1000, 1),
                attempts=attempts,
                next_size=crew.sizer.keys(next_size),
            )
        except BaseException:
            if began_next:
                conn.terminate()
            raise
        self._begun = began_next
        return nxt

    async def _work_and_checkpoint(
        self, conn: asyncpg.Connection, c: Claim, attempts: int
    ) -> tuple[int, float, int, Claim | None]:
        """Inside the batch's transaction: the work, then the checkpoint that also claims
        the next range. Returns the rows changed, the work's seconds, the next batch size
        and the next range (already held)."""
        crew = self.crew
        self._crash("before_work")
        assert crew.look_aheads is not None
        ahead = crew.control.look_ahead(c, crew.sizer.keys(), crew.look_aheads)
        work_started = time.monotonic()
        rows = await run_work(crew.work, Batch(conn, crew.target.key, c.range))
        seconds = time.monotonic() - work_started
        self._crash("after_work")
        next_size = crew.sizer.after_batch(seconds, rows)
        # The next range is claimed by the checkpoint's own statement, so it commits or
        # vanishes with this batch. Open ranges (a split's remainder, a lapsed lease) are
        # taken by the claim of its own when the frontier has reached the end.
        settled = await crew.store.checkpoint(
            conn,
            c,
            rows=rows,
            seconds=seconds,
            attempts=attempts,
            batch_size=crew.sizer.keys(next_size),
            claim_next=not crew.stop.requested,
            hint=None if ahead is None else ahead.hint(crew.sizer.keys(next_size)),
        )
        if settled is None:
            raise LeaseLost
        if settled.next is not None:  # held from before the commit: see Control.held
            crew.control.held.add(settled.next.id)
        # Seen in the commit of the batch that was running when it was said: no worker
        # starts another batch, without waiting for the next heartbeat.
        crew.stop.run_state(settled.state)
        return rows, seconds, next_size, settled.next

    async def _record_error(
        self, conn: asyncpg.Connection, c: Claim, attempts: int, exc: BaseException
    ) -> None:
        if conn.is_closed():
            return
        # Best effort: the error is also logged and raised.
        with contextlib.suppress(Exception):
            async with self.crew.sessions.bounded(conn):  # a silent connection: terminated
                await self.crew.store.record_error(conn, c, attempts, self.crew.describe(exc))

    def _log_retry(self, c: Claim) -> Callable[[RetryCallState], None]:
        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning(
                "batch_retrying",
                batch=c.id,
                attempt=state.attempt_number,
                error=self.crew.describe(exc) if exc else None,
                wait=round(state.upcoming_sleep, 3),
            )

        return before_sleep

    def _crash(self, point: str) -> None:
        if self.crew.crash is not None:
            self.crew.crash.reached(point)


def _show(bound: Bound | None) -> str | None:
    if bound is None:
        return None
    return bound[0] if len(bound) == 1 else "(" + ", ".join(bound) + ")"
