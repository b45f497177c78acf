"""What ``status`` shows, from rows shaped like ``status_rows``, without a database."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

import pytest
import structlog
from rich.console import Console

from cryptopi_batch import logs
from cryptopi_batch.bar import ProgressBar
from cryptopi_batch.progress import Progress
from cryptopi_batch.report import (
    StatusRow,
    count,
    print_json,
    print_table,
    status_row,
)

ERROR = (
    "KeyError: 'customr' (20250601_1200_fill_customer_names.py, line 12);"
    " the checkpoint is kept and `run` resumes"
)
ROWS = [
    StatusRow(
        name="20250301_0930_backfill_confidence_of_every_value_in_the_matrix",
        status="failed",
        rows_processed=1_234_567_890,
        keys_done=2_345_678_901,
        keys_estimate=9_876_543_210,
        batches=123_456,
        rows_per_second=345_678.9,
        last_error=ERROR,
    ),
    StatusRow(
        name="20250302_1015_normalise_notes",
        status="running",
        rows_processed=40_000,
        keys_done=40_000,
        keys_estimate=299_259,
        batches=4,
        rows_per_second=38_092.7,
        eta_seconds=6.8,
    ),
]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def record(**changes: Any) -> dict[str, Any]:
    """A ``status_rows`` row: a run a third done, 100 keys and 50 rows per second lately."""
    now = datetime(2025, 3, 1, 9, 30, tzinfo=UTC)
    row: dict[str, Any] = {
        "name": "20250301_0930_backfill_confidence",
        "status": "running",
        "rows_processed": 500,
        "keys_done": 1_000,
        "keys_estimate": 3_000,
        "batches_done": 10,
        "batch_size": 100,
        "live_workers": 1,
        "last_error": None,
        "waiting_reason": None,
        "recent_keys_rate": 100.0,
        "recent_rows_rate": 50.0,
        "elapsed": 10.0,
        "started_at": now,
        "updated_at": now,
        "completed_at": None,
    }
    row.update(changes)
    return row


@pytest.mark.parametrize(
    ("changes", "state", "eta"),
    [
        ({}, "running", 20.0),
        ({"waiting_reason": "window closed"}, "waiting", 20.0),
        ({"status": "completed", "completed_at": datetime.now(UTC)}, "completed", 0.0),
        ({"status": "paused"}, "paused", None),
        ({"status": "cancelled"}, "cancelled", None),
        ({"status": "failed", "last_error": "KeyError: 'x'"}, "failed", None),
        ({"live_workers": 0}, "pending", None),  # interrupted: nothing is running it
    ],
)
def test_only_a_running_or_waiting_run_has_an_eta(
    changes: dict[str, Any], state: str, eta: float | None
) -> None:
    row = status_row(record(**changes))
    assert (row.status, row.eta_seconds) == (state, eta)


def test_rows_per_second_counts_rows_and_the_eta_counts_keys() -> None:
    row = status_row(record())
    assert (row.rows_per_second, row.keys_per_second) == (50.0, 100.0)
    assert row.eta_seconds == 20.0  # 2,000 keys left at 100 keys/s
    # No recent batch: the run's averages over its elapsed time.
    average = status_row(record(recent_keys_rate=None, recent_rows_rate=None))
    assert (average.rows_per_second, average.keys_per_second) == (50.0, 100.0)


def test_a_row_that_never_ran_has_no_rate() -> None:
    row = StatusRow.pending("20250301_0930_x")
    assert (row.rows_per_second, row.keys_per_second, row.eta_seconds) == (None, None, None)


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (0, "0"),
        (999, "999"),
        (1_000, "1k"),
        (1_234, "1.2k"),
        (9_960, "10k"),
        (340_000, "340k"),
        (999_600, "1M"),
        (1_234_567, "1.2M"),
        (3_400_000_000, "3.4G"),
    ],
)
def test_counts_are_abbreviated_to_four_characters(value: int, shown: str) -> None:
    assert count(value) == shown


@pytest.mark.parametrize("width", [80, 120, 200])
def test_the_status_table_fits_and_always_shows_the_state_and_the_whole_error(width: int) -> None:
    console = Console(width=width, record=True)
    print_table(ROWS, console)
    lines = console.export_text().splitlines()
    assert all(len(line.rstrip()) <= width for line in lines), "\n".join(lines)
    header = lines[0]
    assert "state" in header
    # The note column, wrapped or not, holds the whole error.
    note_at = header.index("note")
    note = "".join(line[note_at:].strip() for line in lines[1:])
    assert "".join(ERROR.split()) in "".join(note.split())
    for state in ("failed", "running"):
        assert any(f" {state} " in line for line in lines), "\n".join(lines)
    if width >= 200:  # room for every column, with exact numbers
        assert "1,234,567,890" in "\n".join(lines)
        assert header.split() == [
            "migration",
            "state",
            "rows",
            "keys",
            "batches",
            "rows/s",
            "ETA",
            "note",
        ]
    else:
        assert "1.2G" in "\n".join(lines)


@pytest.mark.parametrize("width", [80, 120, 200])
def test_the_progress_bar_fits_and_counts_the_whole_run(width: int) -> None:
    out = io.StringIO()
    console = Console(file=out, width=width, force_terminal=True)
    bar = ProgressBar(console)
    # A resumed run: 1.2M keys of 3M and 340k rows changed before this process started.
    bar.start("20250301_0930_backfill_confidence_of_every_value", 1_200_000, 3_000_000, 340_000)
    # The run's counters after one more batch (progress.Tally hands the bar the run's).
    bar.advance(Progress(rows=400_000, keys=1_300_000, batches=13))
    bar.stop()
    # Each refresh erases the line and draws it again: the last drawing.
    last = ANSI.sub("", out.getvalue().split("\x1b[2K")[-1]).strip()
    assert len(last) <= width, last
    assert "1.3M/3M keys 400k rows changed" in last, last
    assert "ETA" in last


def test_a_warning_while_the_bar_is_shown_stands_on_a_line_of_its_own() -> None:
    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=True)
    bar = ProgressBar(console)
    logs.configure("console", level=logging.WARNING, console=bar.console)
    try:
        bar.start("20250301_0930_backfill_confidence", 0, 1_000, 0)
        bar.advance(Progress(rows=100, keys=100, batches=1))
        bar._progress.refresh()  # the bar is drawn, then a warning comes
        structlog.get_logger().warning("batch_retrying", batch=7)
        bar.advance(Progress(rows=200, keys=200, batches=2))
        bar.stop()
    finally:
        logs.configure("console")
    # What the terminal shows: each erase-line starts the line over.
    screen = [ANSI.sub("", line.split("\x1b[2K")[-1]) for line in out.getvalue().split("\n")]
    [warning] = [line for line in screen if "batch_retrying" in line]
    assert re.match(r"\d{4}-\d\d-\d\dT[\d:.]+Z \[warning *\] batch_retrying +batch=7$", warning)


def test_at_80_columns_numbers_are_abbreviated_before_a_name_is_folded() -> None:
    row = StatusRow(
        name="20250601_1200_fill_order_totals",
        status="completed",
        rows_processed=100_000,
        keys_done=100_000,
        batches=20,
        rows_per_second=271_350.0,
        eta_seconds=0.0,
    )
    console = Console(width=80, record=True)
    print_table([row], console)
    lines = console.export_text().splitlines()
    assert len(lines) == 2, "\n".join(lines)  # the header and one line: nothing folded
    assert all(len(line) <= 80 for line in lines)
    # batches is left out first (the name, 31 characters, takes the room)
    assert lines[0].split() == ["migration", "state", "rows", "keys", "rows/s", "ETA", "note"]
    assert lines[1].split() == [
        "20250601_1200_fill_order_totals",
        "completed",
        "100k",
        "100k",
        "271k",
        "0:00:00",
    ]


def test_a_windowed_run_eta_counts_only_open_time_and_shows_the_next_opening() -> None:
    # 2,000 keys left at 100 keys/s: 20 s of work; the window opens at 22:00 UTC.
    now = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    opens = datetime(2026, 12, 4, 22, 0, tzinfo=UTC)
    row = status_row(
        record(
            window_spec="22:00-23:00",
            window_timezone="UTC",
            waiting_reason="outside window, opens 22:00 UTC (Fri 2026-12-04)",
            next_window_at=opens,
        ),
        now,
    )
    assert row.status == "waiting"
    assert row.eta_seconds == 10 * 3600 + 20
    assert row.window == "22:00-23:00 UTC"
    assert row.next_window_at == opens.isoformat()
    # Working inside it: no next opening shown; the window is the table's note.
    inside = status_row(record(window_spec="22:00-23:00", window_timezone="UTC"), opens)
    assert (inside.status, inside.next_window_at, inside.eta_seconds) == ("running", None, 20.0)
    table = Console(width=80, record=True)
    print_table([inside], table)
    assert "window 22:00-23:00 UTC" in table.export_text()


def test_a_stale_waiting_reason_of_an_interrupted_run_is_not_shown() -> None:
    row = status_row(record(live_workers=0, waiting_reason="outside window, opens 22:00 UTC"))
    assert (row.status, row.interrupted, row.waiting_reason) == ("pending", True, None)


def runner(host: str, pid: int, workers: int = 1) -> dict[str, Any]:
    """A ``status_runners`` row."""
    return {"host": host, "pid": pid, "workers": workers, "waiting_reason": None}


@pytest.mark.parametrize(
    ("budget", "workers", "shares"),
    [
        (5_000.0, (1, 1), [2_500.0, 2_500.0]),
        (6_000.0, (1, 2), [2_000.0, 4_000.0]),  # each runner's workers among all live ones
        (5_000.0, (3,), [5_000.0]),
        (None, (1, 1), [None, None]),  # no budget: no share
    ],
)
def test_status_shows_each_live_runners_share_of_the_rows_budget(
    budget: float | None, workers: tuple[int, ...], shares: list[float | None]
) -> None:
    live = [runner(f"host{i}", 100 + i, n) for i, n in enumerate(workers)]
    row = status_row(
        record(live_workers=len(live), max_rows_per_second=budget, max_wal_bytes_per_second=9e6),
        runners=live,
    )
    assert (row.max_rows_per_second, row.max_wal_bytes_per_second) == (budget, 9e6)
    assert [(r.host, r.pid, r.workers) for r in row.runners] == [
        (f"host{i}", 100 + i, n) for i, n in enumerate(workers)
    ]
    assert [r.rows_per_second_share for r in row.runners] == shares
    out = io.StringIO()
    print_json([row], out)
    shown = json.loads(out.getvalue())
    assert [r["rows_per_second_share"] for r in shown["runners"]] == shares
    assert shown["max_rows_per_second"] == budget


@pytest.mark.parametrize("width", [80, 120, 200])
def test_a_running_run_with_a_budget_notes_it_and_the_table_still_fits(width: int) -> None:
    budgeted = status_row(
        record(live_workers=2, max_rows_per_second=5_000.0),
        runners=[runner("a", 1), runner("b", 2)],
    )
    console = Console(width=width, record=True)
    print_table([*ROWS, budgeted], console)
    lines = console.export_text().splitlines()
    assert all(len(line.rstrip()) <= width for line in lines), "\n".join(lines)
    note_at = lines[0].index("note")
    note = " ".join(line[note_at:].strip() for line in lines[1:])
    if width >= 200:  # room for it beside the error (narrower: only if it costs no column)
        assert "budget 5k rows/s over 2 runners" in " ".join(note.split()), "\n".join(lines)
    assert "".join(ERROR.split()) in "".join(note.split())  # the error is still whole


def test_the_budget_note_is_left_out_rather_than_cost_a_column() -> None:
    # Alone at 80 columns, the 33-character name and the numbers leave the note no room
    # for 31 characters: the row keeps its columns and goes without the note.
    row = status_row(
        record(live_workers=2, max_rows_per_second=5_000.0),
        runners=[runner("a", 1), runner("b", 2)],
    )
    console = Console(width=80, record=True)
    print_table([row], console)
    lines = console.export_text().splitlines()
    assert len(lines) == 2, "\n".join(lines)
    assert lines[0].split() == ["migration", "state", "rows", "keys", "ETA", "note"]
    assert "budget" not in lines[1]
    wide = Console(width=120, record=True)
    print_table([dataclasses.replace(row, name="20250301_0930_fill")], wide)
    assert "budget 5k rows/s over 2 runners" in wide.export_text()


def test_no_budget_note_without_a_budget_or_once_the_run_stopped() -> None:
    two = [runner("a", 1), runner("b", 2)]
    for row in (
        status_row(record(live_workers=2), runners=two),
        status_row(record(status="paused", max_rows_per_second=5_000.0)),
    ):
        console = Console(width=200, record=True)
        print_table([row], console)
        assert "budget" not in console.export_text()
