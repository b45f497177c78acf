"""Property tests of the planner against a simulated index.

The database's only answer to the planner is "the n-th key after this bound, no further than
the end". Here that answer comes from a sorted list of unique keys (the index), ordered by
the keys' real values (ints numerically, composite keys as (int, str) rows, uuids as uuids)
while bounds travel as tuples of their text forms, as in the product. The planner never
compares bounds except for equality, so any order the index has must work.

The loop mirrors the executor: claims come from the frontier (with a batch size that may
change at every step, as adaptive sizing does) or from pending remainders of earlier splits,
in any order; a claimed range may be split any number of times before it is handed out.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cryptopi_batch.keys import Bound, KeyRange
from cryptopi_batch.planner import next_range, split_range


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
        return list(self.bounds[start:self.position(rng.upper) + 1])


def _index(values: Any, sort_key: Callable[[Any], Any], text: Callable[[Any], Bound]) -> Index:
    bounds = tuple(text(v) for v in sorted(values, key=sort_key))
    assert len(set(bounds)) == len(bounds), "text forms must be unique, like the keys"
    return Index(bounds)


SIZES = {"min_size": 1, "max_size": 60}

sparse_ints = st.sets(st.integers(-(2**63), 2**63 - 1), **SIZES).map(
    lambda s: _index(s, lambda v: v, lambda v: (str(v),)))
# Small dense ranges around zero: negative keys, "-1" < "-10" as text but not as ints.
negative_ints = st.sets(st.integers(-30, 5), **SIZES).map(
    lambda s: _index(s, lambda v: v, lambda v: (str(v),)))
uuids = st.sets(st.uuids(), **SIZES).map(
    lambda s: _index(s, lambda v: v, lambda v: (str(v),)))
composite = st.sets(st.tuples(st.integers(-5, 5), st.text(max_size=3)), **SIZES).map(
    lambda s: _index(s, lambda v: v, lambda v: (str(v[0]), v[1])))
texts = st.sets(st.text(max_size=6), **SIZES).map(
    lambda s: _index(s, lambda v: v, lambda v: (v,)))

any_index = st.one_of(sparse_ints, negative_ints, uuids, composite, texts)


def run_plan(index: Index, checkpoint: Bound | None, end: Bound, data: st.DataObject,
             ) -> list[KeyRange]:
    """Hand out ranges from ``checkpoint`` to ``end`` until nothing is left; returns them."""
    handed: list[KeyRange] = []
    pending: list[KeyRange] = []
    frontier = checkpoint
    exhausted = False
    # Each step hands out one range; every range holds at least one key except possibly
    # the frontier's last, so more steps than keys (+1) means the loop does not terminate.
    for _ in range(len(index.bounds) + 2):
        if exhausted and not pending:
            return handed
        from_pending = pending and (exhausted or data.draw(st.booleans(), label="pending"))
        if from_pending:
            claim = pending.pop(data.draw(st.integers(0, len(pending) - 1), label="which"))
        else:
            size = data.draw(st.integers(1, 12), label="batch_size")
            planned = next_range(frontier, end, index.nth(frontier, end, size))
            claim = planned.range
            assert claim.lower == frontier
            frontier, exhausted = claim.upper, planned.last
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
            pending.append(tail)
            claim = head
        handed.append(claim)
    raise AssertionError(f"no termination after {len(handed)} ranges")


@st.composite
def runs(draw: st.DrawFn) -> tuple[Index, Bound | None, Bound]:
    index = draw(any_index)
    n = len(index.bounds)
    # The run's end is fixed when it starts; the checkpoint is None (a fresh run) or any key
    # up to the end (a resumed one, possibly with nothing left).
    end_at = draw(st.integers(0, n - 1))
    checkpoint_at = draw(st.one_of(st.none(), st.integers(0, end_at)))
    checkpoint = None if checkpoint_at is None else index.bounds[checkpoint_at]
    return index, checkpoint, index.bounds[end_at]


@settings(max_examples=200, deadline=None)
@given(run=runs(), data=st.data())
def test_ranges_cover_every_key_after_the_checkpoint_exactly_once(run, data):
    index, checkpoint, end = run
    handed = run_plan(index, checkpoint, end, data)

    covered = [key for rng in handed for key in index.keys_in(rng)]
    expected = index.keys_in(KeyRange(checkpoint, end))
    assert len(covered) == len(set(covered)), "a key was handed out twice"
    assert sorted(covered, key=index.position) == expected, "a key was never handed out"
    # No batch is wasted on an empty range, unless the checkpoint already is the end: then
    # the one range handed out is empty and the last.
    if checkpoint == end:
        assert handed == [KeyRange(end, end)]
    else:
        assert all(index.keys_in(r) for r in handed), "an empty range was handed out"


def test_interleaved_texts_order_is_the_index_order_not_python_string_order():
    """Negative and multi-digit ints sort differently as text: the planner must not care."""
    index = _index({-10, -9, -1, 2, 10}, lambda v: v, lambda v: (str(v),))
    end = ("10",)
    planned = next_range(("-9",), end, index.nth(("-9",), end, 2))
    assert planned.range == KeyRange(("-9",), ("2",))
    assert not planned.last
    last = next_range(planned.range.upper, end, index.nth(planned.range.upper, end, 2))
    assert last.range == KeyRange(("2",), ("10",))
    assert last.last


def test_fewer_keys_than_the_batch_size_runs_to_the_end_and_is_last():
    planned = next_range(None, ("7",), None)
    assert planned.range == KeyRange(None, ("7",))
    assert planned.last


def test_nth_key_equal_to_the_end_is_the_last_range():
    planned = next_range(("1",), ("7",), ("7",))
    assert planned.last


def test_a_split_at_the_upper_bound_or_without_a_key_cuts_nothing():
    rng = KeyRange(("a",), ("c",))
    assert split_range(rng, ("c",)) is None
    assert split_range(rng, None) is None
    assert split_range(rng, ("b",)) == (KeyRange(("a",), ("b",)), KeyRange(("b",), ("c",)))


@settings(max_examples=50, deadline=None)
@given(run=runs(), data=st.data())
def test_a_fresh_run_starts_before_the_first_key(run, data):
    index, _, end = run
    handed = run_plan(index, None, end, data)
    assert handed[0].lower is None
    assert index.bounds[0] in index.keys_in(handed[0])


def test_a_single_uuid_key_is_one_last_range():
    key = (str(uuid.UUID(int=1)),)
    planned = next_range(None, key, None)
    assert planned == next_range(None, key, key)
    assert planned.range == KeyRange(None, key)
    assert planned.last
