"""What ``status`` shows, from rows shaped like ``status_rows``, without a database."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from cryptopi_batch.report import StatusRow, status_row


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
