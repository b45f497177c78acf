"""The benchmarks' pure helpers: pgbench's log, latency windows, rates, ETA errors and the
bars' lines."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from benchmarks.baselines import PhaseRun
from benchmarks.eta import Sample, checks, worst
from benchmarks.pgbench import Latency, Transaction, Workload, parse_log
from benchmarks.runner import BY_KEY, Result, bars
from benchmarks.workload import Backfill, PhaseResult, cap_honoured, median_result, steady_rate
from benchmarks.writer import summarize


def test_parse_log_reads_latency_and_end_and_sorts_by_end() -> None:
    text = (
        "0 1 1560 0 1796394801 492943 96\n"  # with -R: a schedule lag column
        "1 1 1087 0 1796394801 196430\n"  # without -R
        "2 5 skipped 0 1796394802 000001 10\n"  # --latency-limit's skipped transaction
        "progress: 1.0 s, 412.9 tps\n"
        "\n"
    )
    assert parse_log(text) == [
        Transaction(1796394801.19643, 1.087),
        Transaction(1796394801.492943, 1.56),
    ]


@pytest.mark.parametrize(
    "line",
    ["", "0 1 12", "a b c d e f", "0 1 100 0 x 5", "0 1 -100 0 1 5", "0 1 1.5 0 1 5"],
)
def test_parse_log_leaves_out_lines_of_another_shape(line: str) -> None:
    assert parse_log(line) == []


def test_latency_window_counts_overlapping_transactions_and_tps_by_end() -> None:
    txns = [
        Transaction(end=1.0, latency_ms=100.0),  # wholly before the window
        Transaction(end=10.5, latency_ms=1000.0),  # began before, ended inside
        Transaction(end=12.0, latency_ms=5000.0),  # spans the whole window
        Transaction(end=11.0, latency_ms=2.0),
        Transaction(end=13.0, latency_ms=4.0),  # after
    ]
    w = Latency.of(txns, 10.0, 12.0)
    assert w.transactions == 3
    assert w.tps == pytest.approx(3 / 2.0)  # ends at 10.5, 11 and 12
    assert w.max_ms == 5000.0
    assert w.p50_ms == 1000.0


def test_latency_of_an_empty_window_is_nan() -> None:
    w = Latency.of([], 0.0, 1.0)
    assert (w.transactions, w.tps) == (0, 0.0)
    assert math.isnan(w.p99_ms)


def test_workload_arguments_rate_only_when_paced() -> None:
    paced = Workload(rate=400).arguments("postgresql://h/db", 10, 5, Path("l"))
    flat = Workload(rate=0).arguments("postgresql://h/db", 10, 5, Path("l"))
    assert paced[-3:] == ["-R", "400", "postgresql://h/db"]
    assert "-R" not in flat
    assert flat[-1] == "postgresql://h/db"
    assert paced[3:5] == ["-D", "rows=10"]


@pytest.mark.parametrize(
    ("measured", "cap", "ok"),
    [
        (100.0, 100.0, True),
        (109.9, 100.0, True),
        (90.1, 100.0, True),
        (111.0, 100.0, False),
        (89.0, 100.0, False),
        (50.0, 100.0, False),
    ],
)
def test_cap_honoured_within_ten_percent_either_side(measured: float, cap: float, ok: bool) -> None:
    assert cap_honoured(measured, cap) is ok


def test_steady_rate_leaves_out_the_first_batch() -> None:
    # 4 batches of 10k, committed at 0, 0.1, 0.2, 0.3 s: 30k rows in 0.3 s.
    assert steady_rate(40_000, 10_000, 100.0, 100.3) == pytest.approx(100_000)
    assert math.isnan(steady_rate(10_000, 10_000, 5.0, 5.0))


def test_eta_checks_from_ten_percent_before_the_finish() -> None:
    samples = [
        Sample(1.0, None, None, "pending"),
        Sample(2.0, 5.0, 19.0, "running"),  # under 10 %
        Sample(4.0, 16.0, 14.0, "running"),  # predicts 18 for a real 20: 2 s early
        Sample(10.0, 40.0, 12.0, "running"),  # predicts 22: 2 s late of 10 left
        Sample(20.0, 100.0, 0.0, "completed"),  # at or after the finish
    ]
    found = checks(samples, real=20.0)
    assert [c.elapsed for c in found] == [4.0, 10.0]
    assert [c.error for c in found] == [-2.0, 2.0]
    assert found[0].of_remaining == pytest.approx(-2.0 / 16.0)
    assert found[1].of_remaining == pytest.approx(0.2)
    assert found[1].of_run == pytest.approx(0.1)
    assert worst([c.of_remaining for c in found]) == pytest.approx(0.2)
    assert math.isnan(worst([]))


def test_a_workload_phase_run_in_rounds_shows_the_median_of_each_figure() -> None:
    def run(p99: float, rate: float, finished: bool = True) -> PhaseResult:
        w = Latency(transactions=100, seconds=10.0, tps=400.0, p50_ms=0.5, p99_ms=p99, max_ms=p99)
        b = Backfill(start=5.0, end=7.0, rows=1000, rows_per_second=rate, finished=finished)
        return PhaseResult("cap-25", "capped", w, b, cap=100.0)

    m = median_result([run(3.0, 98.0), run(9.0, 101.0, finished=False), run(4.0, 99.0)])
    assert (m.workload.p99_ms, m.workload.max_ms) == (4.0, 4.0)
    assert m.backfill is not None
    assert m.backfill.rows_per_second == 99.0
    assert m.backfill.end - m.backfill.start == 2.0
    assert not m.backfill.finished  # one round stopped short: said so
    assert (m.runs, m.cap) == (3, 100.0)


def _result(key: str, seconds: list[float], stall_ms: float = 10.0) -> Result:
    runs = [PhaseRun(s, 1_000_000) for s in seconds]
    writer = [summarize([(0.0, stall_ms / 1000)], 0.0, 1.0) for _ in seconds]
    return Result(BY_KEY[key], runs=runs, writer=writer)


def test_bars_judge_run_against_the_loop_and_show_the_script_beside_it() -> None:
    results = {
        "keyset": _result("keyset", [2.0, 2.0, 2.0]),
        "keyset-script": _result("keyset-script", [2.1, 2.1, 2.1]),
        "cryptopi": _result("cryptopi", [2.2, 2.1, 2.2]),
    }
    text = bars(results)
    # 2.0 / 2.2: under the 0.95 bar against the loop timed on an open connection.
    assert "≥ 0.95× keyset loop rows/s: 0.909× MISSED" in text
    assert "round by round: median 0.909×" in text
    # Beside the loop's script, timed from spawn to exit as `run` is: a line, not a bar.
    assert (
        "  (not a bar: beside the keyset loop as a script rows/s: 0.955×; round by round:"
        " median 0.955× (0.95–1.00))"
    ) in text.splitlines()


def test_bars_leave_the_script_line_out_without_its_runs() -> None:
    results = {"keyset": _result("keyset", [2.0]), "cryptopi": _result("cryptopi", [2.0])}
    assert "as a script" not in bars(results)
