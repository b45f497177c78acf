"""The run's progress as one runner counts it: one place, fed by the batches this runner
commits and corrected from ``ops.backfills`` at every heartbeat."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from .store import RunCounters


@dataclass
class Progress:
    """The run's counters: rows changed, keys covered, batches committed."""

    rows: int = 0
    keys: int = 0
    batches: int = 0


ProgressHook = Callable[[Progress], None]
"""Told of the run's counters each time they change (the progress bar)."""


class Tally:
    """The run's counters as ``ops.backfills`` last had them, plus the batches this runner
    committed since. A commit this runner saw succeed can still be lost with the server
    (batches commit asynchronously) and its batch redone: the heartbeat's reading of the
    table replaces the count, so the bar, the logs and the last line agree with
    ``ops.backfills`` and never count a batch twice."""

    def __init__(self, start: Progress, on_change: ProgressHook | None = None) -> None:
        self.start = dataclasses.replace(start)
        self.progress = start
        self._on_change = on_change

    @property
    def since_start(self) -> Progress:
        """What the run did since this runner started (by every runner of it)."""
        p, s = self.progress, self.start
        return Progress(p.rows - s.rows, p.keys - s.keys, p.batches - s.batches)

    def committed(self, rows: int, keys: int) -> None:
        """This runner committed a batch (or found, after a lost connection, that its
        commit went through)."""
        p = self.progress
        p.rows, p.keys, p.batches = p.rows + rows, p.keys + keys, p.batches + 1
        self._changed()

    def read(self, counters: RunCounters) -> None:
        """The run's counters as read from ``ops.backfills`` (other runners' batches
        included)."""
        p = self.progress
        fresh = (counters.rows, counters.keys, counters.batches)
        if (p.rows, p.keys, p.batches) != fresh:
            p.rows, p.keys, p.batches = fresh
            self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self.progress)
