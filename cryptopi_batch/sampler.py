"""The health sampler: a task of each runner, on a connection of its own (and one per
``--replica-dsn``), that reads PostgreSQL's health about once a second, hands the readings
to the health gates (:mod:`gates`), re-balances the migration's budgets (:mod:`budget`)
and records the runner's reason to wait when it changes.

Its own connection: a slow probe never delays the heartbeat, which keeps the leases. Each
probe runs under a short statement timeout and a bound on this side; a probe that fails or
times out is a failed sample for its gates (they hold, never go), and a connection that
timed out is dropped and opened anew at the next round.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

import anyio
import anyio.abc
import asyncpg
import structlog

from . import gates as g
from .admission import Admission, Gate, Pacing
from .budget import Shares, WalHistory
from .db import ConnectionSettings
from .gates import GatePolicy, HealthGate, Reading
from .health import Blocked, HealthProbes, Holder, ProbeConnections, oldest, primary_side_lag
from .migration import Check
from .settings import HealthLimits
from .throttle import BatchSizer

log = structlog.get_logger("cryptopi_batch")
T = TypeVar("T")

INTERVAL = 1.0  # seconds between samples, at most this often
LIVE_WITHIN = 5.0  # a runner with a heartbeat this recent is live (for the budgets' shares)


def build_gates(
    limits: HealthLimits, now: float, policy: GatePolicy | None = None
) -> list[HealthGate]:
    """The health gates a run's limits ask for (those switched off left out), made at
    ``now`` (a gate with no sample some seconds after it holds)."""
    checks: list[object] = [limits.check] if limits.check else []
    connections = (
        None if limits.max_active_connections is None else float(limits.max_active_connections)
    )
    wanted: list[tuple[str, str, float | None, str]] = [
        (g.REPLICA_LAG, "replica lag", limits.max_replica_lag, "s"),
        (g.TRANSACTION_AGE, "transaction age", limits.max_transaction_age, "s"),
        (g.BLOCKING, "blocking", limits.max_blocking, "s"),
        # No limit given: it is set from the server's max_connections on sampling.
        (g.ACTIVE_CONNECTIONS, "active connections", connections, ""),
        (g.AUTOVACUUM, "autovacuum", None, "s"),
        *(
            (
                g.CHECK,
                "check" if isinstance(c, str) else f"check {getattr(c, '__name__', '')}".strip(),
                None,
                "s",
            )
            for c in [*checks, *limits.checks]
        ),
    ]
    return [
        HealthGate(name, label, limit, unit=unit, policy=policy, since=now)
        for name, label, limit, unit in wanted
        if name not in limits.off
    ]


@dataclass
class Sampler:
    """One runner's health sampler (see the module's docstring)."""

    name: str  # the migration
    token: uuid.UUID  # the runner
    table: str
    workers: int  # this runner's worker tasks (its share of a budget)
    limits: HealthLimits
    connection: ConnectionSettings
    admission: Admission
    sizer: BatchSizer
    gates: list[HealthGate]
    describe: Callable[[BaseException], str]
    probes: HealthProbes = field(default_factory=HealthProbes)
    history: WalHistory = field(default_factory=WalHistory)
    # A connection opened for it beforehand (while the run's checks ran): its first round
    # then waits for no connect, and the first batch, admitted on that round, neither.
    opened: asyncpg.Connection | None = None
    # Called when a gate lets go: the workers it held go at once, not when their back-off
    # (up to 30 s) would have them look again.
    on_release: Callable[[], None] = lambda: None
    _first_seen: dict[tuple[str, str], float] = field(default_factory=dict)
    conns: ProbeConnections = field(init=False)
    _holder_logged: str | None = None
    shares: Shares = field(init=False)

    def __post_init__(self) -> None:
        self.conns = ProbeConnections(self.connection, self.describe, conn=self.opened)
        self.shares = Shares(self.workers)

    def _by_name(self, name: str) -> HealthGate | None:
        return next((gate for gate in self.gates if gate.name == name), None)

    async def run(self, finished: anyio.Event, first: Callable[[], None] = lambda: None) -> None:
        """Sample until ``finished``; ``first()`` after the first round (the first batch
        waits for it, to be admitted on real readings). Never raises."""
        try:
            done_first = False
            while not finished.is_set():
                began = time.monotonic()
                try:
                    await self.sample()
                except Exception as exc:  # a bug here must not stop the batches: gates go stale
                    log.warning("health_sample_failed", error=self.describe(exc))
                if not done_first:
                    first()
                    done_first = True
                with anyio.move_on_after(max(0.0, INTERVAL - (time.monotonic() - began))):
                    await finished.wait()
        finally:
            with anyio.CancelScope(shield=True):
                await self._close()

    async def _close(self) -> None:
        await self.conns.close()

    async def sample(self) -> None:
        """One round: every probe, the gates' readings, the budgets, the waiting reason."""
        held = [gate for gate in self.gates if gate.holding]
        conn = await self.conns.primary()
        if conn is None:
            for gate in self.gates:
                gate.observe(Reading(time.monotonic(), error="no connection to the server"))
            return
        wal = await self._probe(conn, self.probes.wal)
        now = time.monotonic()
        max_connections = None
        if not isinstance(wal, Exception):
            self.history.add(now, wal[0])
            max_connections = wal[1]
        await self._replica_lag(conn)
        await self._transaction_age(conn)
        await self._blocking(conn)
        await self._active(conn, max_connections)
        await self._autovacuum(conn)
        await self._checks(conn)
        await self._budget(conn, None if isinstance(wal, Exception) else wal[0])
        if any(not gate.holding for gate in held):
            self.on_release()
        self._report()

    # --- the gates ----------------------------------------------------------------

    async def _replica_lag(self, conn: asyncpg.Connection) -> None:
        gate = self._by_name(g.REPLICA_LAG)
        if gate is None:
            return
        seen = await self._probe(conn, self.probes.replicas)
        now = time.monotonic()
        if isinstance(seen, Exception):
            gate.observe(Reading(now, error=f"pg_stat_replication: {self.describe(seen)}"))
            return
        lags: list[tuple[float, str]] = [(0.0, "")]
        for r in seen:
            lag = primary_side_lag(r, self.history, now)
            if lag is None:
                gate.observe(
                    Reading(now, error="pg_stat_replication is not readable (pg_read_all_stats)")
                )
                return
            lags.append((lag, r.name or "replica"))
        for i, dsn in enumerate(self.limits.replica_dsns, start=1):
            where = f"replica-{i}"
            replica = await self.conns.replica(i, dsn)
            side = (
                replica
                if isinstance(replica, Exception)
                else await self.conns.probe(replica, self.probes.replica_side, replica=i)
            )
            if isinstance(side, Exception):
                text = replace(self.connection, dsn=dsn).redact(self.describe(side))
                gate.observe(Reading(now, error=f"{where}: {text}"))
                return
            if not side.standby:
                gate.observe(Reading(now, error=f"{where} is not a standby"))
                return
            behind = (
                0.0
                if side.replay_position is None
                else self.history.behind(side.replay_position, now)
            )
            lags.append((max(side.seconds or 0.0, behind), where))
        value, where = max(lags)
        gate.observe(Reading(now, value, where))

    async def _transaction_age(self, conn: asyncpg.Connection) -> None:
        def reading(holders: list[Holder], now: float) -> Reading:
            age, who, self._first_seen = oldest(holders, self._first_seen, now)
            return Reading(now, age, who)

        await self._gate(conn, g.TRANSACTION_AGE, self.probes.xmin_holders, reading)

    async def _blocking(self, conn: asyncpg.Connection) -> None:
        def reading(blocked: Blocked | None, now: float) -> Reading:
            if blocked is None:
                return Reading(now)
            return Reading(now, blocked.seconds, f"pid {blocked.pid} behind pid {blocked.blocker}")

        gate = self._by_name(g.BLOCKING)
        was = gate is not None and gate.holding
        await self._gate(conn, g.BLOCKING, self.probes.blocked, reading)
        if gate is not None and gate.holding and not was:
            size = self.sizer.shrink()  # the next batches hold fewer rows' locks
            log.warning("batch_size_shrunk", reason=gate.reason, batch_size=size)

    async def _active(self, conn: asyncpg.Connection, max_connections: int | None) -> None:
        gate = self._by_name(g.ACTIVE_CONNECTIONS)
        default = self.limits.max_active_connections is None
        if gate is not None and default and max_connections is not None:
            gate.limit = float(max(1, max_connections // 2))

        def reading(active: int, now: float) -> Reading:
            if gate is not None and gate.limit is None:  # the default needs max_connections
                return Reading(now, error="max_connections unknown")
            return Reading(now, float(active))

        await self._gate(conn, g.ACTIVE_CONNECTIONS, self.probes.active, reading)

    async def _autovacuum(self, conn: asyncpg.Connection) -> None:
        def reading(pid: int | None, now: float) -> Reading:
            if pid is None:
                return Reading(now)
            return Reading(now, reason=f"to prevent wraparound on {self.table} (pid {pid})")

        probe = functools.partial(self.probes.wraparound, table=self.table)
        await self._gate(conn, g.AUTOVACUUM, probe, reading)

    async def _checks(self, conn: asyncpg.Connection) -> None:
        if g.CHECK in self.limits.off:
            return
        checks: list[str | Check] = [self.limits.check] if self.limits.check else []
        gates = [gate for gate in self.gates if gate.name == g.CHECK]
        for gate, check in zip(gates, [*checks, *self.limits.checks], strict=True):
            answer = await self._probe(conn, functools.partial(self.probes.check, check=check))
            gate.observe(self._reading(answer, lambda reason, now: Reading(now, reason=reason)))

    async def _gate(
        self,
        conn: asyncpg.Connection,
        name: str,
        probe: Callable[[asyncpg.Connection], Awaitable[T]],
        reading: Callable[[T, float], Reading],
    ) -> None:
        """Gate ``name``'s sample, if it is on: ``probe``'s answer as ``reading`` makes it,
        or the probe's failure (the gate holds)."""
        gate = self._by_name(name)
        if gate is not None:
            gate.observe(self._reading(await self._probe(conn, probe), reading))

    def _reading(self, answer: T | Exception, reading: Callable[[T, float], Reading]) -> Reading:
        now = time.monotonic()
        if isinstance(answer, Exception):
            return Reading(now, error=self.describe(answer))
        return reading(answer, now)

    # --- the budgets and the waiting reason ---------------------------------------

    async def _budget(self, conn: asyncpg.Connection, wal_position: float | None) -> None:
        row = await self._probe(
            conn,
            lambda c: self.probes.budget(c, self.name, live_within=LIVE_WITHIN),
        )
        if isinstance(row, Exception) or row is None:
            return  # the last share stays
        now = time.monotonic()
        before = self.shares.share
        if not self.shares.update(now, wal_position, row):
            return
        pacing = next((x for x in self.admission.gates if isinstance(x, Pacing)), None)
        if pacing is not None:
            pacing.pacer.policy = replace(
                pacing.pacer.policy, max_rows_per_second=self.shares.share
            )
        self.sizer.pace(self.shares.share)
        if self.shares.moved(before):
            wal = self.history.rate(now)
            log.info(
                "budget_share",
                rows_per_second=None if self.shares.share is None else round(self.shares.share, 1),
                live_workers=max(row.live_workers, self.workers),
                workers=self.workers,
                wal_bytes_per_second=None if wal is None else round(wal),
                batch_size=self.sizer.keys(),  # under the share's 20 ms slice
            )

    async def _probe(
        self, conn: asyncpg.Connection, probe: Callable[[asyncpg.Connection], Awaitable[T]]
    ) -> T | Exception:
        return await self.conns.probe(conn, probe)

    def _report(self) -> None:
        """Log when what holds the run changes (another gate, or none), not as its value
        moves. The reason itself reaches the ops tables with the heartbeat, which records
        the admission's reported wait, a window's or a gate's (control.Control)."""
        reason = self.admission.waiting_reason
        holder = holding_gate(self.gates, reason)
        if holder != self._holder_logged:
            log.info("throttle_changed", gate=holder, waiting_reason=reason)
            self._holder_logged = holder


def holding_gate(gates: list[HealthGate], reason: str | None) -> str | None:
    """The gate a reason is from (the longest label it starts with), else the reason."""
    if reason is None:
        return None
    labels = [x.label for x in gates if reason.startswith(x.label)]
    return max(labels, key=len) if labels else reason


def health_gates(admission: Admission, gates: Sequence[Gate]) -> None:
    """Add the health gates to a run's admission: each one more input to go or wait."""
    admission.gates = (*admission.gates, *gates)
