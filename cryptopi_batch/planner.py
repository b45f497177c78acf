"""Pure key-range planning: a claimed range cut in two.

The next range from the frontier is planned in SQL, in the statement that hands it out
(:class:`store.RangeQueries`: ``claim_next`` and ``checkpoint``). What is left here is decided
without I/O and without comparing keys in Python: text keys follow the column's collation,
which only the database knows, so bounds are compared for equality only; the key to cut
after comes from the database (an index range scan of n entries, ``RangeQueries.nth``).
"""

from __future__ import annotations

from .keys import Bound, KeyRange


def split_range(rng: KeyRange, mid: Bound | None) -> tuple[KeyRange, KeyRange] | None:
    """``rng`` cut after ``mid`` (a key inside it), or ``None`` if that leaves nothing to
    cut off (``mid`` missing or equal to the upper bound)."""
    if mid is None or mid == rng.upper:
        return None
    return KeyRange(rng.lower, mid), KeyRange(mid, rng.upper)
