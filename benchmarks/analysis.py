"""Small statistics over per-batch timings: typical cycle, tail, and the spikes in it."""

from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass

from .baselines import BatchTiming
from .writer import percentile

SPIKE_FACTOR = 2.0


@dataclass
class Cycles:
    """Commit-to-commit times of a batched approach (ms)."""

    batches: int
    median: float
    p95: float
    max: float
    spikes: int  # cycles longer than SPIKE_FACTOR × the median
    spike_ms: float  # time those spikes took beyond the median, in total
    total_ms: float

    @classmethod
    def of(cls, cycles: list[float]) -> Cycles | None:
        if not cycles:
            return None
        ordered = sorted(cycles)
        med = statistics.median(ordered)
        spikes = [c for c in ordered if c > SPIKE_FACTOR * med]
        return cls(
            len(ordered),
            med,
            percentile(ordered, 0.95),
            ordered[-1],
            len(spikes),
            sum(c - med for c in spikes),
            sum(ordered),
        )


def loop_cycles(batches: list[BatchTiming]) -> list[float]:
    return [(b.committed - a.committed) * 1000.0 for a, b in itertools.pairwise(batches)]


def median_or_nan(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
