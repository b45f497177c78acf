"""The progress bar a run shows on a terminal: the run's keys and rows, its rate and ETA,
readable at 80 columns; and whether stderr is a terminal to draw it on."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from .report import count

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import TaskID

    from .progress import Progress


class ProgressBar:
    """A rich progress bar over the run's keys: keys done of the estimate and rows changed,
    both for the whole run (not only this process's share), the rate and the ETA in keys.
    Every number is abbreviated as in the status table; narrow terminals drop the rate and
    elapsed time, never the counts or the ETA."""

    def __init__(self, console: Console) -> None:
        from rich.progress import (  # noqa: PLC0415 -- rich costs ~25 ms; only the bar uses it
            BarColumn,
            Progress,
            ProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.table import Column  # noqa: PLC0415 -- as above

        self.console = console
        wide = console.width >= 100
        columns: list[str | ProgressColumn] = [
            TextColumn(
                "[bold]{task.description}",
                table_column=Column(
                    no_wrap=True, overflow="ellipsis", max_width=40 if wide else 20
                ),
            ),
            BarColumn(bar_width=None if wide else 10),
            TextColumn("{task.fields[counts]}"),
        ]
        if wide:
            columns += [TextColumn("{task.fields[rate]}"), TimeElapsedColumn()]
        columns += [TextColumn("ETA"), TimeRemainingColumn()]
        self._progress = Progress(*columns, console=console, transient=False)
        self._task: TaskID | None = None

    def start(self, name: str, done: int, total: int, rows: int = 0) -> None:
        """Show the bar from the run's state at its start: ``done`` keys of ``total`` and
        ``rows`` rows changed."""
        self._progress.start()
        total = max(total, done)
        self._task = self._progress.add_task(
            name, total=total or None, completed=done, counts=_counts(done, total, rows), rate=""
        )

    def advance(self, progress: Progress) -> None:
        """Show the run's counters (they may also go down: see progress.Tally)."""
        if self._task is None:
            return
        task = self._progress.tasks[0]
        total = task.total
        completed = progress.keys
        if total is not None and completed > total:
            total = completed
        speed = task.speed
        self._progress.update(
            self._task,
            completed=completed,
            total=total,
            counts=_counts(int(completed), int(total or 0), progress.rows),
            rate=f"{count(speed)} keys/s" if speed else "",
        )

    def stop(self) -> None:
        self._progress.stop()


def _counts(done: int, total: int, rows: int) -> str:
    keys = f"{count(done)}/{count(total)}" if total else count(done)
    return f"{keys} keys {count(rows)} rows changed"


def terminal_bar() -> ProgressBar | None:
    """A bar on stderr if rich takes stderr for a terminal. rich costs ~25 ms of imports, so
    it is not asked when it cannot say yes: it does only for TTY_COMPATIBLE=1, a non-empty
    FORCE_COLOR, or a stderr that is a tty."""
    try:
        tty = sys.stderr.isatty()
    except (AttributeError, ValueError):  # no stream, or a closed one: rich says no too
        tty = False
    if not (tty or os.environ.get("TTY_COMPATIBLE") == "1" or os.environ.get("FORCE_COLOR")):
        return None
    from rich.console import Console  # noqa: PLC0415 -- only a bar on a terminal needs rich

    console = Console(stderr=True)
    return ProgressBar(console) if console.is_terminal else None
