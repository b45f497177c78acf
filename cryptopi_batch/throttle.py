"""Pure pacing decisions: how long to wait before the next batch, and how big it is.

No I/O and no sleeping here: each function takes the facts and a clock reading and
returns a decision, so tests drive it without a database or real time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .settings import ThrottlePolicy

GROWTH_LIMIT = 1.5  # grow at most ×1.5 a step (REFERENCE: larger steps overshoot)
OVERRUN = 5.0  # a batch past 5× the target is cut hard
# Under a rate cap a batch holds at most what the cap allows in PACED_SLICE seconds (never
# fewer than PACED_FLOOR keys): the cap's work comes as many short bursts, not a few long
# ones. A paced backfill sleeps between batches, and each batch then takes a core at once
# for its whole length: the application's tail latency grows with that length, not with
# the rate (docs/benchmarks.md, "beside an application workload").
PACED_SLICE = 0.02
PACED_FLOOR = 100
MIN_DENSITY = 1e-4  # rows per key counted at least (a range changing nothing: no ceiling)
DENSITY_WEIGHT = 0.2  # of the latest batch in the rows-per-key estimate
# The rate cap's schedule forgives a batch that starts up to PACING_GRACE seconds late (a
# timer's wake-up, the BEGIN's round trip): the next start counts from where the last was
# due, so small batches keep to the cap instead of losing those milliseconds each time.
# Later than that (a wait of another gate, a slow claim) the schedule starts over: no burst
# catches up on a pause.
PACING_GRACE = 0.02


@dataclass
class Pacer:
    """Spaces batches so that rows per second stay under a cap, with a fixed pause too.

    ``next_start`` is the monotonic time before which the next batch must not start.
    Shared by all workers of a process, so the cap is per process.
    """

    policy: ThrottlePolicy
    next_start: float = 0.0
    due: float = float("-inf")  # where the rate cap's schedule has the next batch start
    ended: float = float("-inf")  # the last recorded batch's end

    @property
    def paces(self) -> bool:
        """Whether it may ever ask a batch to wait."""
        return bool(self.policy.sleep or self.policy.max_rows_per_second)

    def delay(self, now: float) -> float:
        """Seconds to wait before starting a batch at ``now``."""
        return max(0.0, self.next_start - now)

    def record(self, now: float, rows: int, started: float) -> None:
        """A batch of ``rows`` rows ran from ``started`` to ``now``."""
        earliest = now + self.policy.sleep
        if self.policy.max_rows_per_second:
            # The batch "costs" rows/rate seconds of budget, counted from when it was due:
            # if it started before that (another worker's batch paid first), or waited for
            # it and started no later than PACING_GRACE after (a wake-up's lateness, not a
            # batch that ran past its budget); else from its start.
            paced = self.ended <= self.due and started <= self.due + PACING_GRACE
            start = self.due if started < self.due or paced else started
            self.due = start + rows / self.policy.max_rows_per_second
            earliest = max(earliest, self.due)
        self.ended = max(self.ended, now)
        self.next_start = max(self.next_start, earliest)


def next_batch_size(policy: ThrottlePolicy, current: int, seconds: float, rows: int) -> int:
    """The batch size after a batch of ``current`` keys took ``seconds`` (work only).

    Without a target the size stays. With one it moves toward ``target`` in proportion,
    never growing more than ×1.5 a step and cutting to a tenth after a gross overrun.
    """
    target = policy.target_batch_seconds
    if not target or seconds <= 0 or rows < 0:
        return current
    if seconds > OVERRUN * target:
        proposed = current // 10
    else:
        proposed = int(current * min(GROWTH_LIMIT, target / seconds))
    return clamp(policy, proposed, current)


def shrink_after_timeout(policy: ThrottlePolicy, current: int) -> int:
    """The size to retry with after a statement timeout: a tenth of the batch."""
    return clamp(policy, current // 10, current)


def clamp(policy: ThrottlePolicy, size: int, current: int) -> int:
    """``size`` within the policy's bounds, but the floor never lifts it above ``current``:
    a batch already under the minimum (``--batch-size 5``) must not grow on a cut."""
    floor = max(1, min(policy.min_batch_size, current))
    return max(floor, min(policy.max_batch_size, size))


def paced_ceiling(rows_per_second: float | None, rows_per_key: float = 1.0) -> int | None:
    """The most keys a batch holds under a rate cap (``None``: no cap, no ceiling): the
    keys that hold the cap's PACED_SLICE of rows, at ``rows_per_key`` rows changed per key
    (a sparse backfill, one row in a hundred keys, takes a hundred times the keys)."""
    if not rows_per_second or rows_per_second <= 0:
        return None
    rows = rows_per_second * PACED_SLICE
    return max(PACED_FLOOR, math.ceil(rows / max(rows_per_key, MIN_DENSITY)))


@dataclass
class BatchSizer:
    """The batch size a runner's worker tasks share: adapted after each batch, cut after a
    statement timeout, and under a rate cap no more than the cap's slice (``keys``).

    ``size`` is the size without that ceiling: declared, adapted, or cut; it comes back
    when the cap lifts or this runner's share of it grows. ``cuts`` counts the cuts, so
    that a size worked out before one does not undo it (:meth:`adopt`)."""

    policy: ThrottlePolicy
    size: int
    ceiling: int | None = field(default=None, init=False)
    rows_per_key: float = field(default=1.0, init=False)  # recent batches' rows per key
    cuts: int = field(default=0, init=False)
    _rate: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.pace(self.policy.max_rows_per_second)

    def pace(self, rows_per_second: float | None) -> None:
        """This runner's rate cap (its share of the migration's budget) is now this."""
        self._rate = rows_per_second
        self.ceiling = paced_ceiling(rows_per_second, self.rows_per_key)

    def observe(self, keys: int, rows: int) -> None:
        """A committed batch of ``keys`` keys changed ``rows`` rows: the ceiling follows
        the rows per key, so that a slice of the cap is a slice of rows."""
        if keys > 0:
            density = rows / keys
            self.rows_per_key += DENSITY_WEIGHT * (density - self.rows_per_key)
            self.ceiling = paced_ceiling(self._rate, self.rows_per_key)

    def keys(self, size: int | None = None) -> int:
        """The keys a batch claims: ``size`` (default: the current size) under the
        ceiling."""
        wanted = self.size if size is None else size
        return wanted if self.ceiling is None else min(wanted, self.ceiling)

    def after_batch(self, seconds: float, rows: int) -> int:
        """The size after a batch that took ``seconds`` (its work only): adapted toward the
        target from the keys it held (growing no further than the ceiling, and on from it
        once it lifts); without a target the size stays."""
        if not self.policy.target_batch_seconds:
            return self.size
        return self.keys(next_batch_size(self.policy, self.keys(), seconds, rows))

    def adopt(self, size: int, cuts: int) -> None:
        """``size``, worked out from a batch when ``cuts`` cuts had been made, becomes the
        size, unless a cut came since (the sampler's, on a blocked session, or another
        worker's timeout): that one stands."""
        if cuts == self.cuts:
            self.size = size

    def shrink(self) -> int:
        """A claim's lookup timed out, or a session waits on ours: claim a tenth as many
        keys next time."""
        self.size = shrink_after_timeout(self.policy, self.keys())
        self.cuts += 1
        return self.size

    def cut(self, keys: int) -> int:
        """A batch of ``keys`` keys timed out: the size to retry it with (and no bigger
        from now on)."""
        smaller = shrink_after_timeout(self.policy, keys)
        self.size = min(self.size, smaller)
        self.cuts += 1
        return smaller
