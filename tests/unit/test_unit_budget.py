"""The migration-wide budgets' arithmetic: shares by live worker tasks, WAL rates, the WAL
a row costs, and replica lag estimated from WAL positions. No server, no sleeping."""

from __future__ import annotations

import pytest

from cryptopi_batch.budget import RowCost, WalHistory, combined, share


@pytest.mark.parametrize(
    ("budget", "mine", "live", "expected"),
    [
        (None, 4, 8, None),  # no budget: no cap
        (1000.0, 1, 1, 1000.0),  # alone
        (1000.0, 1, 2, 500.0),  # two runners of one worker each
        (1000.0, 3, 4, 750.0),  # 3 of the 4 live workers are this runner's
        (1000.0, 2, 0, 1000.0),  # its own heartbeat not seen yet: alone
        (1000.0, 4, 2, 1000.0),  # never more than the whole budget
    ],
)
def test_each_runner_takes_its_workers_share(budget, mine, live, expected):
    assert share(budget, mine, live) == expected


def test_shares_rebalance_as_runners_come_and_go():
    """The shares of the live runners always add up to the budget."""
    budget = 900.0
    runners = {"a": 1, "b": 2}
    assert sum(share(budget, n, sum(runners.values())) or 0 for n in runners.values()) == 900
    runners["c"] = 3  # one more comes
    shares = {k: share(budget, n, sum(runners.values())) for k, n in runners.items()}
    assert shares == {"a": 150.0, "b": 300.0, "c": 450.0}
    del runners["b"]  # one goes
    shares = {k: share(budget, n, sum(runners.values())) for k, n in runners.items()}
    assert shares == {"a": 225.0, "c": 675.0}


def test_combined_takes_the_tightest_cap():
    assert combined(None, None) is None
    assert combined(500.0, None) == 500.0
    assert combined(500.0, 200.0) == 200.0


def test_wal_rate_over_the_window():
    h = WalHistory()
    assert h.rate(0.0) is None
    h.add(0.0, 0.0)
    h.add(0.5, 100.0)
    assert h.rate(0.5) is None  # under a second apart: not yet a rate
    for t in range(1, 11):
        h.add(float(t), t * 1000.0)
    assert h.rate(10.0) == pytest.approx(1000.0)


def test_replica_lag_from_wal_positions():
    """A replica whose replay position the primary passed at t=3 is 7 s behind at t=10."""
    h = WalHistory()
    for t, pos in [(0.0, 100.0), (1.0, 100.0), (2.0, 150.0), (3.0, 300.0), (4.0, 400.0)]:
        h.add(t, pos)
    assert h.behind(400.0, 10.0) == 0.0  # caught up: nothing newer
    assert h.behind(299.0, 10.0) == 7.0
    assert h.behind(100.0, 10.0) == 8.0
    assert h.behind(50.0, 10.0) == 10.0  # behind since before the first sample: at least


def test_the_wal_a_row_costs_becomes_a_rows_cap():
    cost = RowCost()
    assert cost.rows_cap(1e6) == 1e6 / 8192  # nothing known yet: a full page a row
    for t in range(6):
        cost.add(float(t), t * 500_000.0, t * 1000)  # 500 kB and 1000 rows a second
    assert cost.bytes_per_row() == pytest.approx(500.0)
    assert cost.rows_cap(1e6) == pytest.approx(2000.0)
    assert cost.rows_cap(None) is None
    # While the run waits (no rows change) the last estimate stays.
    for t in range(6, 14):
        cost.add(float(t), 2_500_000.0 + t * 10.0, 5000)
    assert cost.bytes_per_row() == pytest.approx(500.0)
