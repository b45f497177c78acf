"""Pacing and batch-size decisions, driven by explicit clock readings (no real time)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cryptopi_batch.settings import ThrottlePolicy
from cryptopi_batch.throttle import (
    PACED_FLOOR,
    PACED_SLICE,
    PACING_GRACE,
    BatchSizer,
    Pacer,
    next_batch_size,
    shrink_after_timeout,
)

TARGET = ThrottlePolicy(target_batch_seconds=1.0, min_batch_size=10, max_batch_size=100_000)

# --- Pacer ----------------------------------------------------------------------------


def test_a_fresh_pacer_does_not_wait():
    assert Pacer(ThrottlePolicy()).delay(now=1234.5) == 0.0


def test_without_rate_or_sleep_the_next_batch_starts_at_once():
    pacer = Pacer(ThrottlePolicy())
    pacer.record(now=101.0, rows=1_000_000, started=100.0)
    assert pacer.delay(now=101.0) == 0.0


@given(
    sleep=st.sampled_from([0.0, 0.5]),
    rate=st.sampled_from([None, 0.0, 50.0]),
    batches=st.lists(st.tuples(st.floats(0, 10), st.integers(0, 10_000)), max_size=5),
)
def test_a_pacer_that_does_not_pace_never_asks_to_wait(
    sleep: float, rate: float | None, batches: list[tuple[float, int]]
) -> None:
    """``paces`` is what lets a batch's COMMIT begin the next one (no transaction may wait
    open): without it no batch ever waits, whatever ran before."""
    pacer = Pacer(ThrottlePolicy(sleep=sleep, max_rows_per_second=rate))
    now = 0.0
    waited = False
    for took, rows in batches:
        pacer.record(now=now + took, rows=rows, started=now)
        now += took
        waited = waited or pacer.delay(now) > 0
    assert pacer.paces is bool(sleep or rate)
    if not pacer.paces:
        assert not waited


def test_rate_cap_spaces_batch_starts_by_rows_over_rate():
    pacer = Pacer(ThrottlePolicy(max_rows_per_second=100.0))
    # 500 rows at 100 rows/s cost 5 s from the batch's start at t=10; it took 1 s.
    pacer.record(now=11.0, rows=500, started=10.0)
    assert pacer.delay(now=11.0) == pytest.approx(4.0)
    assert pacer.delay(now=14.0) == pytest.approx(1.0)
    assert pacer.delay(now=15.0) == 0.0


def test_a_batch_slower_than_its_budget_adds_no_wait():
    pacer = Pacer(ThrottlePolicy(max_rows_per_second=100.0))
    pacer.record(now=20.0, rows=500, started=10.0)  # 10 s for a 5 s budget
    assert pacer.delay(now=20.0) == 0.0


def test_sleep_pauses_after_each_batch():
    pacer = Pacer(ThrottlePolicy(sleep=0.5))
    pacer.record(now=3.0, rows=0, started=2.0)
    assert pacer.delay(now=3.0) == pytest.approx(0.5)
    assert pacer.delay(now=3.5) == 0.0


def test_sleep_and_rate_together_take_the_later_start():
    pacer = Pacer(ThrottlePolicy(max_rows_per_second=10.0, sleep=2.0))
    pacer.record(now=1.0, rows=5, started=0.0)  # rate allows t=0.5, sleep says t=3
    assert pacer.delay(now=1.0) == pytest.approx(2.0)
    pacer.record(now=4.0, rows=100, started=3.0)  # rate says t=13, sleep t=6
    assert pacer.delay(now=4.0) == pytest.approx(9.0)


def test_an_earlier_finishing_worker_does_not_pull_the_next_start_forward():
    """Workers share one pacer: a record that allows an earlier start must not override
    one that demands a later start; its rows are paid after the others' (1,010 rows at 100
    rows/s: 10.1 s)."""
    pacer = Pacer(ThrottlePolicy(max_rows_per_second=100.0))
    pacer.record(now=2.0, rows=1000, started=0.0)  # next start ≥ 10
    pacer.record(now=3.0, rows=10, started=2.5)  # alone: ≥ 2.6
    assert pacer.delay(now=3.0) == pytest.approx(7.1)


def test_batches_that_start_a_little_late_still_keep_to_the_cap():
    """Small batches under a cap, each starting 1.5 ms after it was due (a timer's wake-up,
    BEGIN's round trip): 100 batches of 1,000 rows at 100,000 rows/s take 1 s, not 1.15 s."""
    pacer = Pacer(ThrottlePolicy(max_rows_per_second=100_000.0))
    now = 0.0
    for _ in range(100):
        started = now
        pacer.record(now=started + 0.003, rows=1_000, started=started)
        now = started + 0.003 + pacer.delay(started + 0.003) + 0.0015
    assert now - 0.0015 == pytest.approx(1.0, abs=0.002)


def test_a_start_later_than_the_grace_starts_the_schedule_over():
    """After a pause (another gate's wait), the budget not used is not caught up in a
    burst: the next start counts from the late batch's own start."""
    pacer = Pacer(ThrottlePolicy(max_rows_per_second=1_000.0))
    pacer.record(now=0.1, rows=100, started=0.0)  # due at 0.1
    pacer.record(now=5.1, rows=100, started=5.0)  # 4.9 s late
    assert pacer.delay(now=5.1) == pytest.approx(0.0)
    assert pacer.next_start == pytest.approx(5.1)
    pacer.record(now=5.15, rows=100, started=5.1 + PACING_GRACE / 2)  # a little late
    assert pacer.next_start == pytest.approx(5.2)


# --- the batch size under a rate cap --------------------------------------------------


def test_under_a_rate_cap_a_batch_holds_the_caps_slice_at_most():
    sizer = BatchSizer(ThrottlePolicy(max_rows_per_second=97_703.0), 10_000)
    assert sizer.ceiling == math.ceil(97_703 * PACED_SLICE)
    assert sizer.keys() == sizer.ceiling
    assert sizer.size == 10_000  # the declared size, kept for when the cap lifts
    assert sizer.keys(500) == 500
    assert BatchSizer(ThrottlePolicy(max_rows_per_second=50.0), 10_000).keys() == PACED_FLOOR
    assert BatchSizer(ThrottlePolicy(), 10_000).keys() == 10_000


def test_the_size_comes_back_when_the_runners_share_grows_or_the_cap_lifts():
    sizer = BatchSizer(ThrottlePolicy(max_rows_per_second=100_000.0), 10_000)
    sizer.pace(25_000.0)  # another runner joined: a quarter of the budget
    assert sizer.keys() == math.ceil(25_000 * PACED_SLICE)
    assert sizer.after_batch(0.01, 500) == 10_000  # no target: the size stays
    sizer.pace(None)
    assert sizer.keys() == 10_000


def test_an_adapting_size_grows_no_further_than_the_ceiling_then_on_from_it():
    policy = ThrottlePolicy(max_rows_per_second=100_000.0, target_batch_seconds=1.0)
    sizer = BatchSizer(policy, 1_000)
    ceiling = math.ceil(100_000 * PACED_SLICE)
    for _ in range(5):  # far under the target: it would grow ×1.5 a batch
        sizer.size = sizer.after_batch(0.01, sizer.keys())
    assert sizer.size == ceiling
    sizer.pace(None)
    assert sizer.after_batch(0.01, sizer.keys()) == int(ceiling * 1.5)


def test_a_shrink_under_the_ceiling_cuts_what_a_batch_held():
    sizer = BatchSizer(ThrottlePolicy(max_rows_per_second=100_000.0), 10_000)
    assert sizer.shrink() == math.ceil(100_000 * PACED_SLICE) // 10
    sizer.pace(None)
    # A cut stays after the cap lifts: the size is what the batch held, cut, not 10,000.
    assert sizer.keys() == sizer.size == math.ceil(100_000 * PACED_SLICE) // 10


@settings(max_examples=200)
@given(
    rate=st.floats(0.1, 1e6),
    sleep=st.floats(0.0, 100.0),
    started=st.floats(0.0, 1e6),
    took=st.floats(0.0, 1e3),
    rows=st.integers(0, 10**7),
    asked_at=st.floats(0.0, 2e6),
)
def test_rate_cap_holds_and_delay_is_never_negative(rate, sleep, started, took, rows, asked_at):
    pacer = Pacer(ThrottlePolicy(max_rows_per_second=rate, sleep=sleep))
    now = started + took
    pacer.record(now=now, rows=rows, started=started)
    delay = pacer.delay(asked_at)
    assert delay >= 0.0
    if asked_at >= now:
        next_start = asked_at + delay
        assert next_start >= started + rows / rate - 1e-6 * max(1.0, next_start)
        assert next_start >= now + sleep - 1e-6 * max(1.0, next_start)


# --- next_batch_size ------------------------------------------------------------------


@pytest.mark.parametrize("seconds", [0.001, 1.0, 100.0])
def test_without_a_target_the_size_stays(seconds):
    assert next_batch_size(ThrottlePolicy(), 1234, seconds, rows=1234) == 1234


def test_a_fast_batch_grows_at_most_half_again():
    # 0.01 s for a 1 s target would ask ×100.
    assert next_batch_size(TARGET, 1000, 0.01, rows=1000) == 1500


def test_a_batch_on_target_keeps_its_size():
    assert next_batch_size(TARGET, 1000, 1.0, rows=1000) == 1000


def test_a_slow_batch_shrinks_in_proportion():
    assert next_batch_size(TARGET, 1000, 4.0, rows=1000) == 250


def test_a_gross_overrun_cuts_to_a_tenth():
    # 6 s is past 5× the 1 s target: a tenth, not the proportional sixth.
    assert next_batch_size(TARGET, 1000, 6.0, rows=1000) == 100


def test_size_is_clamped_to_the_policy_bounds():
    assert next_batch_size(TARGET, 90_000, 0.1, rows=1) == 100_000
    assert next_batch_size(TARGET, 30, 4.0, rows=30) == 10  # a quarter of 30, raised


def test_a_size_below_the_minimum_is_not_raised_by_a_cut():
    """`--batch-size 5` under the default minimum of 10: a cut must not grow the batch."""
    assert next_batch_size(TARGET, 5, 60.0, rows=5) <= 5  # overrun
    assert next_batch_size(TARGET, 5, 2.0, rows=5) <= 5  # proportional


def test_a_size_below_the_minimum_grows_at_most_half_again():
    assert next_batch_size(TARGET, 6, 0.01, rows=6) == 9


@settings(max_examples=200)
@given(
    current=st.integers(1, 10**7),
    seconds=st.floats(1e-6, 1e4),
    target=st.floats(1e-3, 100.0),
    lo=st.integers(1, 1000),
    span=st.integers(0, 10**6),
)
def test_adaptive_size_moves_toward_the_target_within_bounds(current, seconds, target, lo, span):
    policy = ThrottlePolicy(
        target_batch_seconds=target, min_batch_size=lo, max_batch_size=lo + span
    )
    size = next_batch_size(policy, current, seconds, rows=current)
    assert size >= 1
    assert size <= policy.max_batch_size
    assert size <= current * 1.5
    if seconds > target:
        # Over target: never grows.
        assert size <= current
    if seconds < target and current <= policy.max_batch_size:
        # Under target: never shrinks.
        assert size >= current


# --- shrink_after_timeout -------------------------------------------------------------


def test_shrink_after_timeout_is_a_tenth():
    assert shrink_after_timeout(TARGET, 5000) == 500


def test_shrink_after_timeout_stops_at_the_minimum():
    assert shrink_after_timeout(TARGET, 50) == 10


@pytest.mark.parametrize("current", [1, 5, 9, 10])
def test_shrink_after_timeout_never_grows_a_batch(current):
    assert shrink_after_timeout(TARGET, current) <= current


@settings(max_examples=200)
@given(current=st.integers(1, 10**8), lo=st.integers(1, 1000), span=st.integers(0, 10**6))
def test_shrink_after_timeout_is_within_bounds_and_never_grows(current, lo, span):
    policy = ThrottlePolicy(min_batch_size=lo, max_batch_size=lo + span)
    size = shrink_after_timeout(policy, current)
    assert 1 <= size <= current
    assert size <= policy.max_batch_size


def test_the_share_growing_back_lifts_the_ceiling_with_it():
    sizer = BatchSizer(ThrottlePolicy(max_rows_per_second=50_000.0), 10_000)
    sizer.pace(10_000.0)
    assert sizer.keys() == 200
    sizer.pace(50_000.0)  # the other runner ended: the whole budget again
    assert sizer.keys() == 1_000


def test_a_sparse_backfill_takes_more_keys_for_the_same_slice_of_rows():
    """One row changed in a hundred keys: the slice (400 rows at 20,000 rows/s) is ~40,000
    keys, so the declared 5,000 stand; five rows a key: 80 keys, lifted to the floor."""
    sparse = BatchSizer(ThrottlePolicy(max_rows_per_second=20_000.0), 5_000)
    assert sparse.keys() == 400  # rows per key not seen yet: one
    for _ in range(30):
        sparse.observe(keys=sparse.keys(), rows=sparse.keys() // 100)
    assert sparse.keys() == 5_000
    dense = BatchSizer(ThrottlePolicy(max_rows_per_second=20_000.0), 5_000)
    for _ in range(30):
        dense.observe(keys=dense.keys(), rows=dense.keys() * 5)
    assert dense.keys() == PACED_FLOOR


def test_a_cut_made_while_a_batch_ran_is_not_undone_by_its_next_size():
    """The sampler cuts the size (a session waits on a batch) while another batch awaits
    its checkpoint; that batch's next size, worked out before the cut, does not stand."""
    sizer = BatchSizer(ThrottlePolicy(), 10_000)
    cuts = sizer.cuts  # the batch starts
    next_size = sizer.after_batch(0.5, 10_000)
    assert sizer.shrink() == 1_000  # meanwhile
    sizer.adopt(next_size, cuts)  # the batch commits
    assert sizer.size == 1_000
    sizer.adopt(2_000, sizer.cuts)  # a batch that started after the cut
    assert sizer.size == 2_000


@settings(max_examples=300)
@given(
    rate=st.floats(10.0, 1e6),
    batches=st.lists(
        st.tuples(st.integers(1, 50_000), st.floats(0.0, PACING_GRACE)), min_size=2, max_size=30
    ),
)
def test_starts_up_to_the_grace_late_never_let_more_than_a_grace_of_rows_through(
    rate: float, batches: list[tuple[int, float]]
):
    """Each batch starts as soon as the pacer allows, plus up to PACING_GRACE late: over
    any run of batches the rows stay under the rate by at most the grace's worth."""
    pacer = Pacer(ThrottlePolicy(max_rows_per_second=rate))
    starts: list[float] = []
    now = 0.0
    for rows, late in batches:
        start = now + pacer.delay(now) + late
        starts.append(start)
        pacer.record(now=start, rows=rows, started=start)  # work itself takes no time
        now = start
    for i in range(len(starts)):
        for j in range(i + 1, len(starts)):
            rows = sum(r for r, _ in batches[i:j])
            allowed = rate * (starts[j] - starts[i] + PACING_GRACE)
            assert rows <= allowed * (1 + 1e-9) + 1e-6


def test_a_batch_that_ran_past_its_budget_is_not_forgiven_the_next_ones_lateness():
    """The grace is for a start that waited and woke a little late, not for one that
    comes late because the batch before ran past its budget: that next batch counts from
    its own start (else it could start within the grace of the last, over the cap)."""
    pacer = Pacer(ThrottlePolicy(max_rows_per_second=73.0))
    pacer.record(now=0.5, rows=36, started=0.0)  # due at 0.493; it ended at 0.5
    pacer.record(now=0.5, rows=1, started=0.5)
    assert pacer.next_start == pytest.approx(0.5 + 1 / 73)
