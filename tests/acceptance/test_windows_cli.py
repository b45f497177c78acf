"""The CLI with off-peak windows, in a subprocess: a window on either side of now, a signal
while waiting, and ``status --watch``."""

from __future__ import annotations

import json
import re
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

from test_cli import (
    SLOW_MIGRATION,
    TABLE,
    Running,
    cli,
    fetch,
    has_ops_schema,
    seed,
    touched_sum,
    wait_until,
    workdir,
    write_migration,
)

NAME = "20240101_0000_slow_touch"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")  # colours, and Live's cursor moves
__all__ = ["workdir"]  # the fixture, imported for these tests


def clock(at: datetime) -> str:
    """As a window's normalised text shows it: seconds only when not 0."""
    return at.strftime("%H:%M:%S" if at.second else "%H:%M")


def span(start: datetime, end: datetime) -> str:
    return f"{clock(start)}-{clock(end)}"


def _prepare(dsn: str, workdir: Path) -> None:
    seed(dsn, 300)
    write_migration(workdir / "migrations", f"{NAME}.py", SLOW_MIGRATION)


def test_outside_the_window_with_exit_outside_window_exits_3_and_writes_nothing(
    dsn: str, workdir: Path
) -> None:
    _prepare(dsn, workdir)
    later = datetime.now(UTC) + timedelta(hours=2)
    window = span(later, later + timedelta(hours=1))
    result = cli(
        "run", NAME, "--window", window, "--timezone", "UTC", "--exit-outside-window",
        dsn=dsn, cwd=workdir,
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"cryptopi_batch: {NAME}: outside the window {window} UTC; it opens ")
    assert line.endswith("; nothing was written")
    assert not has_ops_schema(dsn)
    assert touched_sum(dsn, TABLE) == 0


def test_inside_the_window_the_run_completes(dsn: str, workdir: Path) -> None:
    _prepare(dsn, workdir)
    now = datetime.now(UTC)
    window = span(now - timedelta(minutes=1), now + timedelta(minutes=10))
    result = cli("run", NAME, "--window", window, "--exit-outside-window", dsn=dsn, cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert touched_sum(dsn, TABLE) == 300
    status = cli("status", NAME, "--json", dsn=dsn, cwd=workdir)
    row = json.loads(status.stdout)
    assert (row["status"], row["window"], row["next_window_at"]) == (
        "completed",
        f"{window} UTC",
        None,
    )


def test_waiting_outside_the_window_shows_in_status_and_a_signal_exits_3_at_once(
    dsn: str, workdir: Path
) -> None:
    _prepare(dsn, workdir)
    opens = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    window = span(opens, opens + timedelta(hours=1))
    running = Running("run", NAME, "--window", window, "--no-progress", dsn=dsn, cwd=workdir)
    try:

        def waiting() -> bool:
            if not has_ops_schema(dsn):
                return False
            rows = fetch(dsn, "SELECT waiting_reason FROM ops.backfills WHERE name = $1", NAME)
            return bool(rows and rows[0]["waiting_reason"])

        wait_until("the run waits", waiting, running=running)
        status = cli("status", NAME, "--json", dsn=dsn, cwd=workdir)
        row = json.loads(status.stdout)
        assert row["status"] == "waiting"
        assert (
            row["waiting_reason"]
            == f"outside window, opens {clock(opens)} UTC ({opens:%a %Y-%m-%d})"
        )
        assert row["next_window_at"] == opens.isoformat()
        running.signal(signal.SIGINT)
        assert running.wait(timeout=10) == 3
        assert f"{NAME}: SIGINT received; `run` resumes" in running.stderr
        assert touched_sum(dsn, TABLE) == 0
    finally:
        running.kill()


def test_status_watch_refreshes_until_ctrl_c_and_exits_0(dsn: str, workdir: Path) -> None:
    _prepare(dsn, workdir)
    assert cli("run", NAME, dsn=dsn, cwd=workdir).returncode == 0
    # As on a terminal 80 columns wide: the table is redrawn in place (rich Live).
    watching = Running(
        "status", "--watch", dsn=dsn, cwd=workdir, env={"TTY_COMPATIBLE": "1", "COLUMNS": "80"}
    )
    try:
        wait_until(
            "two refreshes",
            lambda: sum("migration" in line for line in watching.stdout_lines) >= 2,
            timeout=20,
            running=watching,
        )
        watching.signal(signal.SIGINT)
        assert watching.wait(timeout=10) == 0
        assert watching.stderr == ""
        shown = [ANSI.sub("", line).rstrip() for line in watching.stdout_lines]
        assert all(len(line) <= 80 for line in shown), shown
    finally:
        watching.kill()
