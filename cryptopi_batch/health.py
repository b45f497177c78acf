"""The health probes: one typed method per ``health_*`` named block of ``sql/queries.sql``,
each in a short transaction of its own under a short statement and lock timeout, so that a
slow catalog read or a lock queue never holds the sampler (:mod:`sampler`) for long.

They read only the server's statistics views and ``ops.backfills`` (and, for a check, what
its query reads, in a READ ONLY transaction); cryptopi_batch's own sessions are told apart
by their ``application_name``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import TypeVar

import anyio
import asyncpg
import structlog

from .budget import WalHistory
from .db import APPLICATION_NAME, ConnectionSettings, let_go, pg_interval
from .errors import UsageError
from .migration import Check
from .sqlfiles import query
from .transactions import set_local, transaction

T = TypeVar("T")
log = structlog.get_logger("cryptopi_batch")

PROBE_TIMEOUT = 1.0  # each probe's statement and lock timeout, seconds
PROBE_BOUND = 3.0  # a probe with no answer after this long has failed (its connection too)


class CheckFailed(Exception):
    """A check's answer was neither a boolean nor a text (nor NULL)."""


@dataclass(frozen=True)
class Replica:
    """A standby as the primary sees it (``pg_stat_replication``); ``None``: not readable."""

    name: str
    seconds: float | None
    bytes: float | None
    replay_position: float | None
    reply_age: float = 0.0  # seconds since the standby last reported its position


@dataclass(frozen=True)
class ReplicaSide:
    """A standby as it sees itself (through ``--replica-dsn``)."""

    standby: bool
    seconds: float | None
    replay_position: float | None


@dataclass(frozen=True)
class Holder:
    """Something holding back the xmin horizon; ``seconds`` ``None``: its age is unknown."""

    who: str
    xmin: str
    seconds: float | None


@dataclass(frozen=True)
class Blocked:
    """The longest wait of a session behind one of ours."""

    seconds: float
    pid: int
    blocker: int


@dataclass(frozen=True)
class BudgetRow:
    """The run's budgets, its rows so far, and its live runners' worker tasks."""

    max_rows_per_second: float | None
    max_wal_bytes_per_second: float | None
    rows_processed: int
    live_workers: int


def primary_side_lag(r: Replica, history: WalHistory, now: float) -> float | None:
    """A standby's lag as the primary sees it: its replay lag, or, where that is not
    measured (NULL when idle, stale while replay is paused), how long before its last
    report the primary was past the standby's replay position (as of that report: a standby
    that reports seldom while idle is not taken to fall behind in between). ``None``: the
    row's columns are hidden."""
    if r.bytes is None or r.replay_position is None:
        return None
    behind = history.behind(r.replay_position, now - r.reply_age) if r.bytes > 0 else 0.0
    return max(r.seconds or 0.0, behind)


def oldest(
    holders: list[Holder], first_seen: dict[tuple[str, str], float], now: float
) -> tuple[float, str, dict[tuple[str, str], float]]:
    """The oldest holder's age and name (``0, ""`` for none), and when each holder's xmin
    was first seen (the age of those the server gives none)."""
    seen: dict[tuple[str, str], float] = {}
    found = (0.0, "")
    for h in holders:
        key = (h.who, h.xmin)
        seen[key] = first_seen.get(key, now)
        found = max(found, (h.seconds if h.seconds is not None else now - seen[key], h.who))
    return found[0], found[1], seen


CHECK_TYPES = ("bool", "text", "varchar", "bpchar", "name", "unknown")


async def prepare_check(conn: asyncpg.Connection, sql: str | None, settings: str) -> None:
    """``--check``'s SQL prepared before the run starts (in a transaction with ``settings``,
    the batch's timeouts), so that a typo, a missing table or a query that returns neither
    a boolean nor a text exits 2 instead of holding the run for ever."""
    if sql is None:
        return
    what = "--check (or check=)"
    try:
        async with transaction(conn, settings):
            prepared = await conn.prepare(sql)
    except asyncpg.PostgresError as exc:
        raise UsageError(f"{what} does not prepare: {exc}") from None
    columns = prepared.get_attributes()
    if not columns or columns[0].type.name not in CHECK_TYPES:
        returns = f"type {columns[0].type.name}" if columns else "no column"
        raise UsageError(f"{what} must return a boolean or a text, not {returns}")


class HealthProbes:
    """The probes (see the module's docstring). ``timeout``: each one's statement timeout."""

    def __init__(self, timeout: float = PROBE_TIMEOUT) -> None:
        self.settings = set_local(
            statement_timeout=pg_interval(timeout), lock_timeout=pg_interval(timeout)
        )

    async def _short(
        self, conn: asyncpg.Connection, op: Callable[[], Awaitable[T]], *, read_only: bool = False
    ) -> T:
        settings = query("read_only") + " " + self.settings if read_only else self.settings
        async with transaction(conn, settings):
            return await op()

    async def wal(self, conn: asyncpg.Connection) -> tuple[float, int]:
        """The primary's WAL position (bytes) and its max_connections."""
        row = await self._short(conn, lambda: conn.fetchrow(query("health_wal")))
        assert row is not None
        return float(row["position"]), int(row["max_connections"])

    async def replicas(self, conn: asyncpg.Connection) -> list[Replica]:
        rows = await self._short(conn, lambda: conn.fetch(query("health_replicas")))
        return [
            Replica(
                r["name"] or "",
                r["seconds"],
                r["bytes"],
                r["replay_position"],
                r["reply_age"] or 0.0,
            )
            for r in rows
        ]

    async def replica_side(self, conn: asyncpg.Connection) -> ReplicaSide:
        row = await self._short(conn, lambda: conn.fetchrow(query("health_replica_side")))
        assert row is not None
        return ReplicaSide(row["standby"], row["seconds"], row["replay_position"])

    async def xmin_holders(self, conn: asyncpg.Connection) -> list[Holder]:
        rows = await self._short(
            conn, lambda: conn.fetch(query("health_xmin_holders"), APPLICATION_NAME)
        )
        return [Holder(r["who"], r["xmin"], r["seconds"]) for r in rows]

    async def blocked(self, conn: asyncpg.Connection) -> Blocked | None:
        row = await self._short(
            conn, lambda: conn.fetchrow(query("health_blocked"), APPLICATION_NAME)
        )
        return None if row is None else Blocked(row["seconds"] or 0.0, row["pid"], row["blocker"])

    async def active(self, conn: asyncpg.Connection) -> int:
        return int(
            await self._short(conn, lambda: conn.fetchval(query("health_active"), APPLICATION_NAME))
        )

    async def wraparound(self, conn: asyncpg.Connection, table: str) -> int | None:
        """The pid of an autovacuum preventing wraparound on ``table``, if one runs."""
        pid = await self._short(conn, lambda: conn.fetchval(query("health_wraparound"), table))
        return None if pid is None else int(pid)

    async def check(self, conn: asyncpg.Connection, check: str | Check) -> str | None:
        """A check's reason to wait, or ``None`` to go: ``--check`` SQL (its first column
        of its first row) or the migration's callable, in a READ ONLY transaction."""

        async def ask() -> object:
            if isinstance(check, str):
                return await conn.fetchval(check)
            return await check(conn)

        answer = await self._short(conn, ask, read_only=True)
        if answer is None or answer is True:
            return None
        if answer is False:
            return "returned false"
        if isinstance(answer, str):
            return answer.strip() or "returned an empty reason"
        raise CheckFailed(f"returned {answer!r}, not a boolean or a text")

    async def budget(
        self, conn: asyncpg.Connection, name: str, *, live_within: float
    ) -> BudgetRow | None:
        """The run's budgets (stored as runners start); ``None`` if the run's row is gone."""
        row = await self._short(
            conn, lambda: conn.fetchrow(query("health_budget"), name, live_within)
        )
        if row is None:
            return None
        return BudgetRow(
            row["max_rows_per_second"],
            row["max_wal_bytes_per_second"],
            int(row["rows_processed"]),
            int(row["live_workers"]),
        )


@dataclass
class ProbeConnections:
    """The sampler's connections: one to the server, one to each ``--replica-dsn`` replica.
    A probe is bounded on this side too: one with no answer within :data:`PROBE_BOUND`
    failed, and its connection (its state unknown) is dropped, made anew next time."""

    connection: ConnectionSettings
    describe: Callable[[BaseException], str]
    conn: asyncpg.Connection | None = None
    replicas: dict[int, asyncpg.Connection | None] = field(default_factory=dict)

    async def probe(
        self,
        conn: asyncpg.Connection,
        probe: Callable[[asyncpg.Connection], Awaitable[T]],
        *,
        replica: int | None = None,
    ) -> T | Exception:
        """``probe``'s answer, or the exception it failed with (a timeout included)."""
        try:
            with anyio.fail_after(PROBE_BOUND, shield=True):
                return await probe(conn)
        except Exception as exc:
            if not (isinstance(exc, TimeoutError) or conn.is_closed()):
                return exc
            conn.terminate()
            if replica is None:
                self.conn = None
            else:
                self.replicas[replica] = None
            if isinstance(exc, TimeoutError):
                return TimeoutError(f"no answer within {PROBE_BOUND:g} s")
            return exc

    async def primary(self) -> asyncpg.Connection | None:
        """The connection to the server, made if need be; ``None`` if it cannot be."""
        if self.conn is None or self.conn.is_closed():
            try:
                with anyio.fail_after(PROBE_BOUND):
                    self.conn = await self.connection.connect(timeout=PROBE_BOUND)
            except Exception as exc:
                log.warning("health_connect_failed", error=self.describe(exc))
                self.conn = None
        return self.conn

    async def replica(self, i: int, dsn: str) -> asyncpg.Connection | Exception:
        """The connection to the ``i``-th replica, made if need be; else why it cannot be
        (the gate's reason names it, redacted)."""
        conn = self.replicas.get(i)
        if conn is None or conn.is_closed():
            try:
                with anyio.fail_after(PROBE_BOUND):
                    conn = await replace(self.connection, dsn=dsn).connect(timeout=PROBE_BOUND)
            except Exception as exc:
                self.replicas[i] = None
                if isinstance(exc, TimeoutError):
                    return TimeoutError(f"no connection within {PROBE_BOUND:g} s")
                return exc
            self.replicas[i] = conn
        return conn

    async def close(self) -> None:
        for c in [self.conn, *self.replicas.values()]:
            with anyio.move_on_after(2):
                await let_go(c)
