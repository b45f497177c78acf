"""What people and machines see: the status row, its table and JSON, the progress bar."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any

import asyncpg

from .budget import share
from .errors import UsageError
from .states import RunState

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from .schedule import Window


@dataclass(frozen=True)
class Runner:
    """A live runner of a run, as ``status`` reports it: where it runs, its worker tasks,
    why it waits, and its share of the run's rows budget (``None``: no budget)."""

    host: str
    pid: int
    workers: int
    waiting_reason: str | None
    rows_per_second_share: float | None


@dataclass(frozen=True)
class StatusRow:
    """One migration's state as ``status`` reports it (``--json`` prints these fields)."""

    name: str
    status: str
    rows_processed: int = 0
    keys_done: int = 0
    keys_estimate: int | None = None
    batches: int = 0
    batch_size: int | None = None
    rows_per_second: float | None = None
    keys_per_second: float | None = None
    eta_seconds: float | None = None
    percent: float | None = None
    live_workers: int = 0
    last_error: str | None = None
    waiting_reason: str | None = None
    window: str | None = None  # the window the run was last started with, and its zone
    next_window_at: str | None = None  # while waiting outside it: when it opens next
    interrupted: bool = False
    started_at: str | None = None
    updated_at: str | None = None
    completed_at: str | None = None
    # The run's budgets (for all its runners together) and its live runners with their share.
    max_rows_per_second: float | None = None
    max_wal_bytes_per_second: float | None = None
    runners: tuple[Runner, ...] = ()
    # `list` only: the file's kind (py, sql), when ops.migrations recorded it, and what is
    # odd about it (recorded but missing from the directory, changed after it was applied).
    kind: str | None = None
    applied_at: str | None = None
    flag: str | None = None

    @classmethod
    def pending(cls, name: str) -> StatusRow:
        return cls(name=name, status=RunState.PENDING)

    @classmethod
    def applied(cls, name: str) -> StatusRow:
        """A migration recorded in ops.migrations without a batched run (e.g. a .sql one)."""
        return cls(name=name, status=RunState.COMPLETED)


_MOVING = (RunState.RUNNING, RunState.WAITING)
"""The reported states with an ETA: a stopped run (paused, cancelled, failed, interrupted)
has none, as nothing is moving it forward."""


def status_row(
    r: asyncpg.Record | Mapping[str, Any],
    now: datetime | None = None,
    runners: Sequence[asyncpg.Record | Mapping[str, Any]] = (),
) -> StatusRow:
    """Derive the reported state from an ``ops.backfills`` row with its live workers
    (``runners``: their rows, as ``status_runners`` reads them).

    A run whose stored state is ``running`` but has no live worker was interrupted
    (signal, crash, deploy): it is reported ``pending`` with ``interrupted`` set, since
    nothing is running it and ``run`` resumes it. A run with a window, asked about at
    ``now``, has an ETA that counts only the window's open time.
    """
    stored = RunState(r["status"])
    live = int(r["live_workers"] or 0)
    status, interrupted = stored, False
    if stored == RunState.RUNNING and live == 0:
        status, interrupted = RunState.PENDING, True
    elif stored == RunState.RUNNING and r["waiting_reason"]:
        status = RunState.WAITING
    keys_done = int(r["keys_done"])
    rows_done = int(r["rows_processed"])
    estimate = int(r["keys_estimate"]) if r["keys_estimate"] is not None else None
    elapsed = float(r["elapsed"] or 0)
    keys_rate, rows_rate = r["recent_keys_rate"], r["recent_rows_rate"]
    if keys_rate is None and elapsed > 0:
        keys_rate, rows_rate = keys_done / elapsed, rows_done / elapsed
    eta = None
    if stored == RunState.COMPLETED:
        eta = 0.0
    elif status in _MOVING and keys_rate and estimate is not None:
        # Keys, not rows: a batch covers its keys whether or not the work changes them.
        eta = max(estimate - keys_done, 0) / keys_rate
        window = _window(r)
        if window is not None and now is not None:
            finish = window.finish(eta, now)
            eta = None if finish is None else (finish - now).total_seconds()
    percent = None
    if estimate:
        percent = (
            100.0 if stored == RunState.COMPLETED else min(100.0, 100.0 * keys_done / estimate)
        )
    return StatusRow(
        name=r["name"],
        status=status,
        rows_processed=rows_done,
        keys_done=keys_done,
        keys_estimate=estimate,
        batches=int(r["batches_done"]),
        batch_size=int(r["batch_size"]),
        rows_per_second=round(float(rows_rate), 1) if rows_rate is not None else None,
        keys_per_second=round(float(keys_rate), 1) if keys_rate is not None else None,
        eta_seconds=round(eta, 1) if eta is not None else None,
        percent=round(percent, 2) if percent is not None else None,
        live_workers=live,
        last_error=r["last_error"],
        # Only while waiting: a runner stopped while it waited leaves its reason behind.
        waiting_reason=r["waiting_reason"] if status == "waiting" else None,
        window=f"{r['window_spec']} {r['window_timezone']}" if r.get("window_spec") else None,
        next_window_at=_iso(r.get("next_window_at")) if status == "waiting" else None,
        interrupted=interrupted,
        started_at=_iso(r["started_at"]),
        updated_at=_iso(r["updated_at"]),
        completed_at=_iso(r["completed_at"]),
        max_rows_per_second=r.get("max_rows_per_second"),
        max_wal_bytes_per_second=r.get("max_wal_bytes_per_second"),
        runners=_runners(r.get("max_rows_per_second"), runners),
    )


def _runners(
    budget: float | None, rows: Sequence[asyncpg.Record | Mapping[str, Any]]
) -> tuple[Runner, ...]:
    """The live runners, each with its workers' share of the rows budget as the runners
    themselves take it (budget.share)."""
    live = sum(int(w["workers"]) for w in rows)
    return tuple(
        Runner(
            host=w["host"],
            pid=int(w["pid"]),
            workers=int(w["workers"]),
            waiting_reason=w["waiting_reason"],
            rows_per_second_share=share(budget, int(w["workers"]), live),
        )
        for w in rows
    )


def _window(r: asyncpg.Record | Mapping[str, Any]) -> Window | None:
    """The run's stored window; ``None`` without one (or one this version cannot read)."""
    from .schedule import parse_window  # noqa: PLC0415 -- zoneinfo only for a window

    if not r.get("window_spec"):
        return None
    try:
        return parse_window(r["window_spec"], r.get("window_timezone"))
    except UsageError:
        return None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def print_json(rows: list[StatusRow], out: IO[str]) -> None:
    """One JSON object per line, one line per migration."""
    for row in rows:
        out.write(json.dumps(asdict(row), sort_keys=True) + "\n")


def table_console() -> Console:
    """stdout; off a terminal 200 columns wide (names are not cut when piped) unless
    ``$COLUMNS`` says otherwise."""
    from rich.console import Console  # noqa: PLC0415 -- rich costs ~25 ms; only tables use it

    probe = Console()
    return probe if probe.is_terminal or os.environ.get("COLUMNS") else Console(width=200)


_NUMBERS = ("rows", "keys", "batches", "rows/s", "ETA")
# Dropped in this order when the table does not fit; the name, state and note never are.
_DROPPED_FIRST = ("batches", "rows/s", "keys", "rows", "ETA")
_NOTE_MIN = 24  # the note wraps within at least this many columns
_NAME_MIN = 16  # and the name folds within at least this many


def print_table(rows: list[StatusRow], console: Console) -> None:
    """The status table, fitted to the console's width: exact numbers if they fit, else
    abbreviated ones (1.2M), then fewer columns; the state and the note (a failed run's
    error) are always shown, the note wrapped if need be."""
    console.print(status_table(rows, console.width))


def status_table(rows: list[StatusRow], width: int) -> Table:
    """The status table of :func:`print_table`, fitted to ``width`` columns."""
    from rich.table import Table  # noqa: PLC0415 -- rich costs ~25 ms; only tables use it

    shown, cells = _fit(rows, width)
    table = Table(box=None, header_style="bold")
    for column in shown:
        flexible = column in ("migration", "note")
        table.add_column(
            column,
            no_wrap=not flexible,
            overflow="fold",
            justify="right" if column in _NUMBERS else "left",
            min_width=_width(column, cells) if flexible else None,
        )
    for row in cells:
        table.add_row(*(row[column] for column in shown))
    return table


def _fit(rows: list[StatusRow], width: int) -> tuple[list[str], list[dict[str, str]]]:
    """The columns and cells to show: exact numbers, else abbreviated ones, else fewer
    columns; the name is folded only when even the fewest columns leave it no room. A
    running run's budget note only where the note column has room for it, costing no column."""
    columns = ["migration", "state", "rows", "keys", "batches", "rows/s", "ETA", "note"]
    if any(r.kind for r in rows):  # `list`
        columns.insert(1, "kind")
    tries = [(columns, False)] + [
        ([c for c in columns if c not in _DROPPED_FIRST[:dropped]], True)
        for dropped in range(len(_DROPPED_FIRST) + 1)
    ]

    def fits(shown: list[str], cells: list[dict[str, str]], fold: bool, note: int = 0) -> bool:
        # rich pads 1+1; ``note``: the least width the note column needs
        extra = max(0, note - _width("note", cells))
        return sum(_width(c, cells, fold=fold) + 2 for c in shown) + extra <= width

    for fold in (False, True):
        for shown, short in tries:
            cells = [_cells(r, short=short) for r in rows]
            if fits(shown, cells, fold):
                budgeted = [_cells(r, short=short, budget=True) for r in rows]
                notes = [b["note"] for b, c in zip(budgeted, cells, strict=True) if b != c]
                unwrapped = max(map(len, notes), default=0)
                return shown, budgeted if fits(shown, budgeted, fold, unwrapped) else cells
    return tries[-1][0], [_cells(r, short=True) for r in rows]


def _width(column: str, cells: list[dict[str, str]], *, fold: bool = True) -> int:
    """The column's width at its narrowest: the note wraps down to its minimum, and the
    name too if ``fold``."""
    longest = max([len(column), *(len(row[column]) for row in cells)])
    if column == "note":
        return min(longest, _NOTE_MIN)
    if column == "migration" and fold:
        return min(longest, _NAME_MIN)
    return longest


def _cells(r: StatusRow, *, short: bool, budget: bool = False) -> dict[str, str]:
    def n(value: float) -> str:
        return count(value) if short else f"{value:,.0f}"

    keys = n(r.keys_done)
    if r.keys_estimate and r.status != RunState.COMPLETED:
        keys += f" / ~{n(r.keys_estimate)}"
    note = (
        r.flag
        or r.last_error
        or r.waiting_reason
        or ("interrupted; `run` resumes" if r.interrupted else "")
        or (_budget_note(r) if budget else "")
        or (f"window {r.window}" if r.window and r.status != RunState.COMPLETED else "")
        or (f"applied {r.applied_at[:16].replace('T', ' ')}" if r.applied_at else "")
    )
    return {
        "kind": r.kind or "",
        "migration": r.name,
        "state": r.status,
        "rows": n(r.rows_processed),
        "keys": keys,
        "batches": n(r.batches),
        "rows/s": "-" if r.rows_per_second is None else n(r.rows_per_second),
        "ETA": _duration(r.eta_seconds),
        "note": note,
    }


def _budget_note(r: StatusRow) -> str:
    """A running run's rows budget and how many runners share it (none: no note)."""
    if r.status != RunState.RUNNING or r.max_rows_per_second is None or not r.runners:
        return ""
    many = len(r.runners)
    runners = f"{many} runner" + ("s" if many > 1 else "")
    note = f"budget {count(r.max_rows_per_second)} rows/s over {runners}"
    return f"{note}; window {r.window}" if r.window else note


def count(value: float) -> str:
    """A count in at most four characters: 950, 1.2k, 340k, 12M, 3.4G."""
    if abs(value) < 1000:
        return f"{value:.0f}"
    for unit in ("k", "M", "G", "T"):
        value /= 1000
        text = f"{value:.1f}" if abs(value) < 9.95 else f"{value:.0f}"
        if abs(float(text)) < 1000 or unit == "T":
            return text.removesuffix(".0") + unit
    raise AssertionError("unreachable")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
