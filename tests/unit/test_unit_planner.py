"""Property tests of ``split_range`` against a simulated index.

The next range from the frontier is planned in SQL now (``keysql.RangeQueries``); its
properties are tested on a real server in tests/integration/test_range_planning.py. What is
left in Python is cutting a claimed range after its n-th key, a key the database finds. Here
that key comes from a sorted list of unique keys (the index), ordered by the keys' real
values (ints numerically, composite keys as (int, str) rows, uuids as uuids) while bounds
travel as tuples of their text forms, as in the product. ``split_range`` never compares
bounds except for equality, so any order the index has must work.

A range is cut as ``store.split`` cuts a claim: the head is kept, the remainder becomes a
pending range, and either may be cut again, in any order.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cryptopi_batch.keys import Bound, KeyRange
from cryptopi_batch.planner import split_range


@dataclass(frozen=True)
class Index:
    """Unique keys in index order, each as its text-form bound."""

    bounds: tuple[Bound, ...]

    def position(self, bound: Bound) -> int:
        return self._positions[bound]

    @functools.cached_property
    def _positions(self) -> dict[Bound, int]:
        return {b: i for i, b in enumerate(self.bounds)}

    def nth(self, lower: Bound | None, end: Bound, n: int) -> Bound | None:
        """The n-th key k with lower < k <= end (1-based), None if fewer."""
        assert n >= 1
        start = 0 if lower is None else self.position(lower) + 1
        stop = self.position(end) + 1
        i = start + n - 1
        return self.bounds[i] if i < stop else None

    def keys_in(self, rng: KeyRange) -> list[Bound]:
        start = 0 if rng.lower is None else self.position(rng.lower) + 1
        return list(self.bounds[start : self.position(rng.upper) + 1])


def _index(values: Any, sort_key: Callable[[Any], Any], text: Callable[[Any], Bound]) -> Index:
    bounds = tuple(text(v) for v in sorted(values, key=sort_key))
    assert len(set(bounds)) == len(bounds), "text forms must be unique, like the keys"
    return Index(bounds)


SIZES = {"min_size": 1, "max_size": 60}

sparse_ints = st.sets(st.integers(-(2**63), 2**63 - 1), **SIZES).map(
    lambda s: _index(s, lambda v: v, lambda v: (str(v),))
)
# Small dense ranges around zero: negative keys, "-1" < "-10" as text but not as ints.
negative_ints = st.sets(st.integers(-30, 5), **SIZES).map(
    lambda s: _index(s, lambda v: v, lambda v: (str(v),))
)
uuids = st.sets(st.uuids(), **SIZES).map(lambda s: _index(s, lambda v: v, lambda v: (str(v),)))
composite = st.sets(st.tuples(st.integers(-5, 5), st.text(max_size=3)), **SIZES).map(
    lambda s: _index(s, lambda v: v, lambda v: (str(v[0]), v[1]))
)
texts = st.sets(st.text(max_size=6), **SIZES).map(lambda s: _index(s, lambda v: v, lambda v: (v,)))

any_index = st.one_of(sparse_ints, negative_ints, uuids, composite, texts)


def cut_up(index: Index, rng: KeyRange, data: st.DataObject) -> list[KeyRange]:
    """``rng`` cut again and again until drawn to stop; returns the pieces."""
    pieces: list[KeyRange] = []
    todo = [rng]
    while todo:
        # Each cut leaves at least one key on either side: at most one piece per key.
        assert len(pieces) <= max(len(index.keys_in(rng)), 1), f"{len(pieces)} pieces"
        claim = todo.pop(data.draw(st.integers(0, len(todo) - 1), label="which"))
        while data.draw(st.booleans(), label="split"):
            size = data.draw(st.integers(1, 12), label="split_size")
            halves = split_range(claim, index.nth(claim.lower, claim.upper, size))
            if halves is None:
                # Only when the claim has no more than `size` keys: nothing to cut off.
                assert len(index.keys_in(claim)) <= size
                break
            head, tail = halves
            assert head.lower == claim.lower
            assert tail.upper == claim.upper
            assert head.upper == tail.lower
            assert len(index.keys_in(head)) == size
            todo.append(tail)
            claim = head
        pieces.append(claim)
    return pieces


@st.composite
def ranges(draw: st.DrawFn) -> tuple[Index, KeyRange]:
    """An index and a range over it: from the start or after any key, up to any key from
    there (the lower bound itself included: an empty range)."""
    index = draw(any_index)
    n = len(index.bounds)
    lower_at = draw(st.one_of(st.none(), st.integers(0, n - 1)))
    upper_at = draw(st.integers(0 if lower_at is None else lower_at, n - 1))
    lower = None if lower_at is None else index.bounds[lower_at]
    return index, KeyRange(lower, index.bounds[upper_at])


@settings(max_examples=200, deadline=None)
@given(drawn=ranges(), data=st.data())
def test_pieces_of_a_range_cover_each_of_its_keys_exactly_once(drawn, data):
    index, rng = drawn
    pieces = cut_up(index, rng, data)

    covered = [key for piece in pieces for key in index.keys_in(piece)]
    assert len(covered) == len(set(covered)), "a key lies in two pieces"
    assert sorted(covered, key=index.position) == index.keys_in(rng), "a key was lost"
    if index.keys_in(rng):
        assert all(index.keys_in(p) for p in pieces), "an empty piece was cut off"
    else:
        assert pieces == [rng], "an empty range was cut"


def test_interleaved_texts_order_is_the_index_order_not_python_string_order():
    """Negative and multi-digit ints sort differently as text: the cut must not care."""
    index = _index({-10, -9, -1, 2, 10}, lambda v: v, lambda v: (str(v),))
    rng = KeyRange(("-9",), ("10",))
    assert split_range(rng, index.nth(rng.lower, rng.upper, 2)) == (
        KeyRange(("-9",), ("2",)),
        KeyRange(("2",), ("10",)),
    )
    assert split_range(rng, index.nth(rng.lower, rng.upper, 3)) is None


def test_a_split_at_the_upper_bound_or_without_a_key_cuts_nothing():
    rng = KeyRange(("a",), ("c",))
    assert split_range(rng, ("c",)) is None
    assert split_range(rng, None) is None
    assert split_range(rng, ("b",)) == (KeyRange(("a",), ("b",)), KeyRange(("b",), ("c",)))


def test_a_range_from_the_start_keeps_its_open_lower_bound():
    assert split_range(KeyRange(None, ("9",)), ("3",)) == (
        KeyRange(None, ("3",)),
        KeyRange(("3",), ("9",)),
    )
