"""Pure pacing decisions: how long to wait before the next batch, and how big it is.

No I/O and no sleeping here: each function takes the facts and a clock reading and
returns a decision, so tests drive it without a database or real time.
"""

from __future__ import annotations

from dataclasses import dataclass

from .settings import ThrottlePolicy

GROWTH_LIMIT = 1.5  # grow at most ×1.5 a step (REFERENCE: larger steps overshoot)
OVERRUN = 5.0  # a batch past 5× the target is cut hard


@dataclass
class Pacer:
    """Spaces batches so that rows per second stay under a cap, with a fixed pause too.

    ``next_start`` is the monotonic time before which the next batch must not start.
    Shared by all workers of a process, so the cap is per process.
    """

    policy: ThrottlePolicy
    next_start: float = 0.0

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
            # The batch "costs" rows/rate seconds of budget counted from its start.
            earliest = max(earliest, started + rows / self.policy.max_rows_per_second)
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


@dataclass
class BatchSizer:
    """The batch size a runner's worker tasks share: adapted after each batch, cut after a
    statement timeout."""

    policy: ThrottlePolicy
    size: int

    def after_batch(self, seconds: float, rows: int) -> int:
        """The size for the batch after one that took ``seconds`` (its work only)."""
        return next_batch_size(self.policy, self.size, seconds, rows)

    def shrink(self) -> int:
        """A claim's lookup timed out: claim a tenth as many keys next time."""
        self.size = shrink_after_timeout(self.policy, self.size)
        return self.size

    def cut(self, keys: int) -> int:
        """A batch of ``keys`` keys timed out: the size to retry it with (and no bigger
        from now on)."""
        smaller = shrink_after_timeout(self.policy, keys)
        self.size = min(self.size, smaller)
        return smaller
