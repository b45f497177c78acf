"""Pure key-range planning: the next range from a frontier, and a range cut in two.

The database answers one question, "what is the n-th key after this bound, no further
than the end?" (an index range scan of n entries; :class:`store.RangeQueries`). Everything
else is decided here without I/O and without comparing keys in Python: text keys follow the
column's collation, which only the database knows, so bounds are compared for equality only.
"""

from __future__ import annotations

from dataclasses import dataclass

from .keys import Bound, KeyRange


@dataclass(frozen=True)
class Planned:
    """A range to hand out, and whether it is the last one before the end."""

    range: KeyRange
    last: bool


def next_range(frontier: Bound | None, end: Bound, nth: Bound | None) -> Planned:
    """The range after ``frontier``: up to ``nth`` (the batch size's n-th key after the
    frontier, ``None`` if fewer keys are left), else up to ``end``, the run's fixed end."""
    upper = end if nth is None else nth
    return Planned(KeyRange(frontier, upper), upper == end)


def split_range(rng: KeyRange, mid: Bound | None) -> tuple[KeyRange, KeyRange] | None:
    """``rng`` cut after ``mid`` (a key inside it), or ``None`` if that leaves nothing to
    cut off (``mid`` missing or equal to the upper bound)."""
    if mid is None or mid == rng.upper:
        return None
    return KeyRange(rng.lower, mid), KeyRange(mid, rng.upper)
