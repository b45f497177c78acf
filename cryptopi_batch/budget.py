"""Budgets for a migration as a whole: ``--max-rows-per-second`` and ``--max-wal-rate``
hold for all its runners together. Pure: the sampler (:mod:`health`) feeds readings in.

Each budget is stored with the run (``ops.backfills.max_rows_per_second``,
``max_wal_bytes_per_second``); each runner takes the share of its worker tasks among the
live runners' (a heartbeat within a few seconds), re-read about once a second, so the
shares move as runners come and go.

The WAL budget becomes a rows-per-second cap: the server's WAL rate (``pg_current_wal_insert_lsn()``
deltas) over the run's rows per second (``ops.backfills.rows_processed`` deltas) in the
same window is the WAL each row costs. All of the server's WAL is put down to the run: the
estimate is an upper bound, and other writers make the run slower, never faster.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

WINDOW = 5.0  # seconds of samples a rate is measured over
WORST_ROW = 8192.0  # WAL bytes a row is taken to cost before it is measured: a full page
KEEP = 600.0  # seconds of WAL positions kept (replica lag's estimate looks this far back)


def share(budget: float | None, mine: int, live: int) -> float | None:
    """This runner's part of a migration-wide ``budget``: its ``mine`` worker tasks among
    ``live`` tasks of every live runner (this one's included, even before its first
    heartbeat is seen)."""
    if budget is None:
        return None
    return budget * mine / max(live, mine, 1)


@dataclass
class WalHistory:
    """The primary's WAL position (bytes) over time, as the sampler reads it."""

    samples: deque[tuple[float, float]] = field(default_factory=deque)

    def add(self, at: float, position: float) -> None:
        self.samples.append((at, position))
        while self.samples and self.samples[0][0] < at - KEEP:
            self.samples.popleft()

    def rate(self, now: float, window: float = WINDOW) -> float | None:
        """Bytes per second over about the last ``window`` seconds; ``None`` before there
        are two samples a second apart."""
        return _rate(self.samples, now, window)

    def behind(self, position: float, now: float) -> float:
        """How long ago the primary first had WAL past ``position`` (a replica's replay
        position): a lower bound of that replica's lag in seconds; 0 if never seen."""
        for at, pos in self.samples:
            if pos > position:
                return max(0.0, now - at)
        return 0.0


@dataclass
class RowCost:
    """WAL bytes per row of the run, from WAL and row counts sampled together."""

    wal: deque[tuple[float, float]] = field(default_factory=deque)
    rows: deque[tuple[float, float]] = field(default_factory=deque)
    last: float | None = None  # the last estimate: kept while no rows change (waiting)

    def add(self, at: float, wal_position: float, rows_processed: int) -> None:
        for series, value in ((self.wal, wal_position), (self.rows, float(rows_processed))):
            series.append((at, value))
            while len(series) > 2 and series[1][0] <= at - WINDOW:
                series.popleft()

    def bytes_per_row(self) -> float | None:
        """Over the window, or the last window that changed rows; ``None`` before any."""
        if len(self.rows) >= 2:
            rows = self.rows[-1][1] - self.rows[0][1]
            wal = self.wal[-1][1] - self.wal[0][1]
            if rows > 0 and wal >= 0:
                self.last = wal / rows
        return self.last

    def rows_cap(self, wal_budget: float | None) -> float | None:
        """Rows per second that keep WAL under ``wal_budget`` bytes per second; until the
        cost is measured, each row is taken to cost a full page (a slow, safe start)."""
        if wal_budget is None:
            return None
        cost = self.bytes_per_row()
        return wal_budget / (WORST_ROW if cost is None or cost <= 0 else cost)


@dataclass
class Shares:
    """One runner's share of its migration's budgets (rows per second; ``None``: no cap),
    re-balanced on each reading of the run's row."""

    workers: int  # this runner's worker tasks
    cost: RowCost = field(default_factory=RowCost)
    share: float | None = None

    def update(self, at: float, wal_position: float | None, row: BudgetReading) -> bool:
        """The share from the run's budgets and live workers; whether it changed."""
        if wal_position is not None:
            self.cost.add(at, wal_position, row.rows_processed)
        cap = combined(row.max_rows_per_second, self.cost.rows_cap(row.max_wal_bytes_per_second))
        mine = share(cap, self.workers, max(row.live_workers, self.workers))
        changed, self.share = mine != self.share, mine
        return changed

    def moved(self, before: float | None) -> bool:
        """Whether the share moved by more than 5 % from ``before`` (worth a log line)."""
        if before is None or self.share is None:
            return before != self.share
        return abs(self.share - before) > 0.05 * before


class BudgetReading(Protocol):
    """What :meth:`Shares.update` reads of the run's row."""

    @property
    def max_rows_per_second(self) -> float | None: ...
    @property
    def max_wal_bytes_per_second(self) -> float | None: ...
    @property
    def rows_processed(self) -> int: ...
    @property
    def live_workers(self) -> int: ...


def combined(*caps: float | None) -> float | None:
    """The tightest of the caps given (``None``: no cap)."""
    given = [c for c in caps if c is not None]
    return min(given) if given else None


def _rate(samples: deque[tuple[float, float]], now: float, window: float) -> float | None:
    if len(samples) < 2:
        return None
    last_at, last = samples[-1]
    first_at, first = samples[0]
    for at, pos in samples:  # the oldest sample inside the window
        if at >= now - window:
            first_at, first = at, pos
            break
    if last_at - first_at < 1.0:
        return None
    return (last - first) / (last_at - first_at)
