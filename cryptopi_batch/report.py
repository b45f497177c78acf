"""What people and machines see: the status row, its table and JSON, the progress bar."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime
from collections.abc import Mapping
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import TaskID


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
    interrupted: bool = False
    started_at: str | None = None
    updated_at: str | None = None
    completed_at: str | None = None

    @classmethod
    def pending(cls, name: str) -> StatusRow:
        return cls(name=name, status="pending")

    @classmethod
    def applied(cls, name: str) -> StatusRow:
        """A migration recorded in ops.migrations without a batched run (e.g. a .sql one)."""
        return cls(name=name, status="completed")


_MOVING = ("running", "waiting")
"""The reported states with an ETA: a stopped run (paused, cancelled, failed, interrupted)
has none, as nothing is moving it forward."""


def status_row(r: Mapping[str, Any]) -> StatusRow:
    """Derive the reported state from an ``ops.backfills`` row with its live workers.

    A run whose stored state is ``running`` but has no live worker was interrupted
    (signal, crash, deploy): it is reported ``pending`` with ``interrupted`` set, since
    nothing is running it and ``run`` resumes it.
    """
    stored = r["status"]
    live = int(r["live_workers"] or 0)
    status, interrupted = stored, False
    if stored == "running" and live == 0:
        status, interrupted = "pending", True
    elif stored == "running" and r["waiting_reason"]:
        status = "waiting"
    keys_done = int(r["keys_done"])
    rows_done = int(r["rows_processed"])
    estimate = int(r["keys_estimate"]) if r["keys_estimate"] is not None else None
    elapsed = float(r["elapsed"] or 0)
    keys_rate, rows_rate = r["recent_keys_rate"], r["recent_rows_rate"]
    if keys_rate is None and elapsed > 0:
        keys_rate, rows_rate = keys_done / elapsed, rows_done / elapsed
    eta = None
    if stored == "completed":
        eta = 0.0
    elif status in _MOVING and keys_rate and estimate is not None:
        # Keys, not rows: a batch covers its keys whether or not the work changes them.
        eta = max(estimate - keys_done, 0) / keys_rate
    percent = None
    if estimate:
        percent = 100.0 if stored == "completed" else min(100.0, 100.0 * keys_done / estimate)
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
        waiting_reason=r["waiting_reason"],
        interrupted=interrupted,
        started_at=_iso(r["started_at"]),
        updated_at=_iso(r["updated_at"]),
        completed_at=_iso(r["completed_at"]),
    )


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def print_json(rows: list[StatusRow], out: IO[str]) -> None:
    """One JSON object per line, one line per migration."""
    for row in rows:
        out.write(json.dumps(asdict(row), sort_keys=True) + "\n")


def table_console() -> Console:
    """stdout; wide enough off a terminal that names are not cut when piped."""
    from rich.console import Console  # noqa: PLC0415 -- rich costs ~25 ms; only tables use it

    probe = Console()
    return probe if probe.is_terminal else Console(width=200)


def print_table(rows: list[StatusRow], console: Console) -> None:
    from rich.table import Table  # noqa: PLC0415 -- rich costs ~25 ms; only tables use it

    table = Table(box=None, header_style="bold")
    for column in ("migration", "state", "rows", "keys", "batches", "rows/s", "ETA", "note"):
        table.add_column(
            column,
            no_wrap=column != "note",
            justify="right" if column in ("rows", "keys", "batches", "rows/s", "ETA") else "left",
        )
    for r in rows:
        keys = f"{r.keys_done:,}"
        if r.keys_estimate and r.status != "completed":
            keys += f" / ~{r.keys_estimate:,}"
        note = (
            r.last_error
            or r.waiting_reason
            or ("interrupted; `run` resumes" if r.interrupted else "")
        )
        table.add_row(
            r.name,
            r.status,
            f"{r.rows_processed:,}",
            keys,
            f"{r.batches:,}",
            _num(r.rows_per_second),
            _duration(r.eta_seconds),
            note,
        )
    console.print(table)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class ProgressBar:
    """A rich progress bar over the run's keys; shows rows changed, rate and ETA."""

    def __init__(self, console: Console) -> None:
        from rich.progress import (  # noqa: PLC0415 -- rich costs ~25 ms; only the bar uses it
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("keys"),
            TextColumn("{task.fields[rows]:,} rows changed"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._task: TaskID | None = None

    def start(self, name: str, done: int, total: int) -> None:
        self._progress.start()
        self._task = self._progress.add_task(
            name, total=max(total, done) or None, completed=done, rows=0, rate=""
        )

    def advance(self, progress: Any, keys: int) -> None:
        if self._task is None:
            return
        task = self._progress.tasks[0]
        total = task.total
        completed = task.completed + keys
        if total is not None and completed > total:
            total = completed
        speed = task.speed
        self._progress.update(
            self._task,
            completed=completed,
            total=total,
            rows=progress.rows,
            rate=f"{speed:,.0f} keys/s" if speed else "",
        )

    def stop(self) -> None:
        self._progress.stop()
