"""The ops tables as one runner sees them (:class:`RunStore`): registering, claims,
checkpoints, heartbeats, leases and the run's end; one typed method per named block of
``sql/queries.sql`` (the statements built from the key are :mod:`keysql`'s). What the
commands ask of the ops tables is :mod:`opsstore`'s; the schema itself :mod:`schema`'s.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from .db import pg_interval
from .keys import Bound, KeyRange, as_bound
from .keysql import RangeQueries
from .planner import split_range
from .settings import TimeoutPolicy
from .sqlfiles import query
from .states import RangeState, RunState
from .transactions import transaction


@dataclass(frozen=True)
class Claim:
    """A key range this runner owns until its lease lapses."""

    id: int
    range: KeyRange
    keys: int
    attempts: int

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Claim:
        return cls(
            row["id"],
            KeyRange(as_bound(row["lower_key"]), tuple(row["upper_key"])),
            int(row["keys"] or 0),
            int(row["attempts"]),
        )


@dataclass(frozen=True)
class Settled:
    """What a batch's checkpoint found: the run's state, and the next range if it claimed
    one."""

    state: RunState
    next: Claim | None


@dataclass(frozen=True)
class RangeRow:
    """A range's row as read back after a lost connection (see :meth:`RunStore.range_row`)."""

    status: RangeState
    runner: uuid.UUID | None
    rows: int
    range: KeyRange


@dataclass(frozen=True)
class RunCounters:
    """The run's state and counters, as the heartbeat reads them each beat."""

    state: RunState
    rows: int
    keys: int
    batches: int

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> RunCounters:
        """From a row with ops.backfills' status and counter columns."""
        return cls(
            RunState(row["status"]),
            int(row["rows_processed"]),
            int(row["keys_done"]),
            int(row["batches_done"]),
        )


@dataclass(frozen=True)
class Peer:
    """Another runner of the same run on this host and in this pid namespace."""

    token: uuid.UUID
    pid: int


@dataclass(frozen=True)
class RunStore:
    """The ops tables as one runner process of one run sees them: one typed method per
    query. ``token`` names the runner (its row in ``ops.backfill_workers``, and the owner
    of the ranges its worker tasks claim); ``lease`` is how long a claim holds without a
    heartbeat.

    Each method runs in the caller's transaction (or none) unless it says otherwise, on the
    connection it is given: a runner talks on one connection per worker task and one
    control connection.
    """

    name: str
    token: uuid.UUID
    ranges: RangeQueries
    lease: float

    # --- the runner's own row -----------------------------------------------------

    async def register(
        self, conn: asyncpg.Connection, *, host: str, pid: int, tasks: int, namespace: str | None
    ) -> None:
        """Record this runner (idempotent: a retry after a lost reply finds it written)."""
        await conn.execute(
            query("register_worker"), self.token, self.name, host, pid, tasks, namespace
        )

    async def peers_on_host(
        self, conn: asyncpg.Connection, host: str, namespace: str | None
    ) -> list[Peer]:
        """The run's other live runners whose pid means a process here."""
        rows = await conn.fetch(
            query("live_workers_on_host"), self.name, host, self.token, namespace
        )
        return [Peer(r["token"], r["pid"]) for r in rows]

    async def retire(self, conn: asyncpg.Connection, tokens: Sequence[uuid.UUID]) -> None:
        """Runners known dead: their ranges are released at once, not at their leases' end."""
        await conn.execute(query("retire_workers"), list(tokens))

    async def heartbeat(self, conn: asyncpg.Connection, held: Collection[int]) -> RunCounters:
        """Extend the leases of the ranges ``held`` (no others under this token: see
        :meth:`release_orphans`); returns the run's state and counters."""
        row = await conn.fetchrow(
            query("heartbeat"), self.token, self.name, self.lease, [str(i) for i in held]
        )
        if row is None:  # the run's row is gone (deleted by hand): nothing to go on with
            return RunCounters(RunState.CANCELLED, 0, 0, 0)
        return RunCounters.from_row(row)

    async def set_waiting(
        self,
        conn: asyncpg.Connection,
        reason: str | None,
        opens: datetime | None,
        *,
        live_within: float,
    ) -> None:
        """This runner waits for ``reason`` (``None``: it works); the run shows it, and
        ``opens`` (its window's next opening), while each of its live runners waits. In the
        caller's transaction: the run's row is locked first, so that two runners starting
        to wait at once each see the other's reason (else each would find the other
        working, and the run would not show as waiting)."""
        await conn.execute(query("lock_backfill"), self.name)
        await conn.execute(query("set_waiting"), self.token, reason, self.name, opens, live_within)

    async def release_orphans(self, conn: asyncpg.Connection, held: Collection[int]) -> int:
        """Ranges under this token that no worker task holds go back to pending now;
        returns how many."""
        status = await conn.execute(
            query("release_orphans"), self.token, self.name, [str(i) for i in held]
        )
        return int(status.split()[-1])

    async def stop(self, conn: asyncpg.Connection) -> None:
        """This runner has ended: what it still holds goes back to pending at once."""
        await conn.execute(query("stop_worker"), self.token)

    # --- the run's row ------------------------------------------------------------

    async def fail(self, conn: asyncpg.Connection, message: str) -> None:
        """Mark the run failed with ``message`` (if it is still running)."""
        await conn.execute(query("fail_backfill"), self.name, message)

    async def finalize(self, conn: asyncpg.Connection, filename: str) -> None:
        """Complete the run if every range is done, and record ``filename`` in
        ops.migrations in the same transaction, once."""
        await conn.execute(query("finalize"), self.name, filename)

    async def run_row(self, conn: asyncpg.Connection) -> asyncpg.Record | None:
        """The run's row of ops.backfills."""
        return await conn.fetchrow(query("get_backfill"), self.name)

    async def open_ranges(self, conn: asyncpg.Connection) -> int:
        """How many of the run's ranges are not done (handed out or pending)."""
        return int(await conn.fetchval(query("open_batches"), self.name))

    # --- ranges -------------------------------------------------------------------

    async def range_row(self, conn: asyncpg.Connection, range_id: int) -> RangeRow | None:
        """A range's state, owner and bounds (after a lost connection: did it commit?)."""
        row = await conn.fetchrow(query("batch_state"), range_id)
        if row is None:
            return None
        rng = KeyRange(as_bound(row["lower_key"]), tuple(row["upper_key"]))
        return RangeRow(RangeState(row["status"]), row["worker"], int(row["rows"] or 0), rng)

    async def record_error(
        self, conn: asyncpg.Connection, c: Claim, attempts: int, error: str
    ) -> None:
        """Keep a failed attempt's error on the range and the run (``status`` shows it)."""
        await conn.execute(query("batch_failed"), c.id, self.token, attempts, error, self.name)

    async def claim(
        self,
        conn: asyncpg.Connection,
        *,
        size: int,
        timeouts: TimeoutPolicy,
        on_begin: Callable[[int, datetime], None] | None = None,
        on_claim: Callable[[int], None] | None = None,
    ) -> Claim | None:
        """Claim the next range: an open one (a split's remainder, a lapsed lease) first,
        else a new one of ``size`` keys from the frontier. ``None`` when nothing is left to
        hand out.

        Runs its own transaction with ``synchronous_commit`` off: a claim lost in a crash
        is harmless (its range is simply claimed again), and WAL order guarantees no batch
        commit survives without the claim before it. The batch's lock and statement
        timeouts apply: the run's row is locked here, and batches' checkpoints wait on it.
        ``on_begin(pid, xact_start)`` learns the server transaction the claim runs in, and
        ``on_claim(id)`` the claimed range's id before the claim commits.
        """
        async with conn.transaction():
            session = await conn.fetchrow(
                query("claim_settings"),
                pg_interval(timeouts.lock_timeout),
                pg_interval(timeouts.statement_timeout),
            )
            if on_begin is not None and session is not None:
                on_begin(session["pid"], session["xact_start"])
            row = await conn.fetchrow(query("claim_open"), self.name, self.token, self.lease)
            if row is None:
                row = await conn.fetchrow(
                    self.ranges.claim_next, self.name, self.token, size, self.lease
                )
            if row is None:
                return None
            if on_claim is not None:
                on_claim(row["id"])
            return Claim.from_row(row)

    async def split(
        self, conn: asyncpg.Connection, c: Claim, size: int, *, timeouts: TimeoutPolicy
    ) -> Claim:
        """Cut claim ``c`` to its first ``size`` keys; the rest becomes a pending range that
        any worker may claim. Returns the smaller claim (``c`` itself if it cannot be cut).

        One short transaction under the batch's lock and statement timeouts: finding the
        cut reads the user's table, which must never queue long behind DDL."""
        if size >= c.keys:
            return c
        # synchronous_commit off, as for a claim: a cut lost in a crash is made again.
        async with transaction(conn, timeouts.local(synchronous_commit="off")):
            halves = split_range(c.range, await self.ranges.nth(conn, c.range, size))
            if halves is None:
                return c
            head, tail = halves
            await conn.fetchval(
                query("split_batch"),
                c.id,
                self.token,
                list(head.upper),
                size,
                list(tail.upper),  # c's own (fencing)
                c.keys,
            )
        return Claim(c.id, head, size, c.attempts)

    async def look_ahead(
        self, conn: asyncpg.Connection, rng: KeyRange, n: int, timeouts: TimeoutPolicy
    ) -> Bound | None:
        """The ``n``-th key in ``rng``, read in a short transaction of its own under the
        batch's lock and statement timeouts (it must never queue behind DDL): a worker asks
        for the next range's bound on another connection while its batch works, and hands
        it to :meth:`checkpoint`, which then skips the index scan if the frontier is where
        it was expected. The run's row is not read or locked here."""
        async with transaction(conn, timeouts.local()):
            return await self.ranges.nth(conn, rng, n)

    async def checkpoint(  # noqa: PLR0913 -- keyword-only: what a checkpoint records
        self,
        conn: asyncpg.Connection,
        c: Claim,
        *,
        rows: int,
        seconds: float,
        attempts: int,
        batch_size: int,
        claim_next: bool,
        hint: tuple[Bound, Bound] | None = None,
    ) -> Settled | None:
        """Mark ``c`` done and count it, in the caller's (the batch's) transaction, and, if
        ``claim_next``, claim the next ``batch_size`` keys from the frontier in the same
        statement: the claim costs no transaction of its own and commits or vanishes with
        the batch. ``None`` when this runner no longer owns ``c`` (the caller rolls the
        batch back). ``hint``: a frontier and the ``batch_size``-th key after it, from
        :meth:`look_ahead`.
        """
        after, nth = (None, None) if hint is None else (list(hint[0]), list(hint[1]))
        lower = None if c.range.lower is None else list(c.range.lower)
        row = await conn.fetchrow(
            self.ranges.checkpoint,
            c.id,
            self.token,
            rows,
            seconds * 1000.0,
            attempts,
            self.name,
            batch_size,
            claim_next,
            self.lease,
            after,
            nth,
            list(c.range.upper),
            lower,
        )
        if row is None:
            return None
        return Settled(RunState(row["status"]), None if row["id"] is None else Claim.from_row(row))
