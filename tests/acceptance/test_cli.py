"""The command line as users run it: ``python -m cryptopi_batch`` in a subprocess.

Every test asserts the exit code, the shape of what the CLI printed, and the database's
real state afterwards: rows touched exactly once, checkpoints that match the rows, nothing
written when a run could not start.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import random
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import asyncpg
import pytest
from helpers import (
    PgServer,
    cli_argv,
    cli_env,
    connect,
    run_cli,
    run_in_thread,
    seed_table,
    with_database,
    with_password,
)

TABLE = "matrices.dyn_values"

# --- migration files ----------------------------------------------------------------

SQL_MIGRATION = '''"""Count every visit to a row in touched."""
from cryptopi_batch import Backfill

migration = Backfill(
    table="{table}",
    key="{key}",
    batch_size={batch_size},
    sql="UPDATE {table} SET touched = touched + 1 WHERE {{range}}",
)
'''

# Sleeps in every batch but the first, after touching its rows, when CB_TEST_SLOW says
# so: the environment changes the pace without changing the file's checksum.
SLOW_MIGRATION = '''"""Touch rows in Python, slowly when asked."""
import os

from cryptopi_batch import Backfill, Batch

SLOW = float(os.environ.get("CB_TEST_SLOW", "0"))


async def touch(batch: Batch) -> int:
    status = await batch.execute(
        "UPDATE matrices.dyn_values SET touched = touched + 1 WHERE {range}")
    if SLOW and batch.lower is not None:
        await batch.conn.execute("SELECT pg_sleep($1)", SLOW)
    return int(status.split()[-1])


migration = Backfill(table="matrices.dyn_values", key="id", batch_size=100, process=touch)
'''

FAILING_MIGRATION = '''"""Touch rows in Python; the third batch meets bad data."""
from cryptopi_batch import Backfill, Batch

calls = 0


async def touch(batch: Batch) -> int:
    global calls
    calls += 1
    status = await batch.execute(
        "UPDATE matrices.dyn_values SET touched = touched + 1 WHERE {range}")
    if calls == 3:
        raise ValueError("bad data in batch three")
    return int(status.split()[-1])


migration = Backfill(table="matrices.dyn_values", key="id", batch_size=100, process=touch)
'''

FIXED_MIGRATION = FAILING_MIGRATION.replace("calls == 3", "calls == -1")


def write_migration(directory: Path, filename: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / filename
    path.write_text(text)
    return path


def sql_migration(
    directory: Path, filename: str, *, table: str = TABLE, key: str = "id", batch_size: int = 100
) -> Path:
    return write_migration(
        directory, filename, SQL_MIGRATION.format(table=table, key=key, batch_size=batch_size)
    )


# --- the database, from synchronous tests -------------------------------------------


def fetch(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    async def go() -> list[asyncpg.Record]:
        conn = await connect(dsn)
        try:
            return await conn.fetch(query, *args)
        finally:
            await conn.close()

    return run_in_thread(go)


def value(dsn: str, query: str, *args: Any) -> Any:
    rows = fetch(dsn, query, *args)
    return rows[0][0] if rows else None


def execute(dsn: str, query: str) -> None:
    async def go() -> None:
        conn = await connect(dsn)
        try:
            await conn.execute(query)
        finally:
            await conn.close()

    run_in_thread(go)


def seed(dsn: str, rows: int, table: str = TABLE) -> None:
    async def go() -> None:
        conn = await connect(dsn)
        try:
            await seed_table(conn, table=table, rows=rows)
        finally:
            await conn.close()

    run_in_thread(go)


def has_ops_schema(dsn: str) -> bool:
    return value(dsn, "SELECT to_regnamespace('ops') IS NOT NULL") is True


def touched_sum(dsn: str, table: str = TABLE) -> int:
    return int(value(dsn, f"SELECT coalesce(sum(touched), 0) FROM {table}"))


def backfill(dsn: str, name: str) -> asyncpg.Record | None:
    rows = fetch(dsn, "SELECT * FROM ops.backfills WHERE name = $1", name)
    return rows[0] if rows else None


def batches_done(dsn: str, name: str) -> int:
    """Committed batches; 0 while the ops schema or the run's row does not exist yet."""
    if not has_ops_schema(dsn):
        return 0
    row = backfill(dsn, name)
    return 0 if row is None else int(row["batches_done"])


def checkpoint_agreement(dsn: str, name: str) -> asyncpg.Record:
    """Per row of the table: how often its work was applied (``touched``) against how many
    'done' batch ranges hold it. Exactly once means both are 1, or both 0 for rows not
    reached yet."""
    rows = fetch(
        dsn,
        """
        WITH hits AS (
            SELECT g AS id, count(*) AS hits
              FROM ops.backfill_batches b,
                   generate_series(
                       coalesce(b.lower_key[1]::bigint,
                                (SELECT min(id) - 1 FROM matrices.dyn_values)) + 1,
                       b.upper_key[1]::bigint) AS g
             WHERE b.backfill = $1 AND b.status = 'done'
             GROUP BY g),
        per_row AS (
            SELECT t.touched, coalesce(h.hits, 0) AS hits
              FROM matrices.dyn_values t LEFT JOIN hits h USING (id))
        SELECT count(*) AS total,
               count(*) FILTER (WHERE touched <> hits) AS disagree,
               count(*) FILTER (WHERE touched > 1) AS twice,
               count(*) FILTER (WHERE hits > 1) AS overlapping,
               count(*) FILTER (WHERE touched = 1) AS once
          FROM per_row""",
        name,
    )
    return rows[0]


def assert_exactly_once(dsn: str, name: str, filename: str, rows: int) -> None:
    """The completed state: every row touched once, the run completed and recorded once,
    and the done batches account for every row."""
    assert value(dsn, "SELECT count(*) FILTER (WHERE touched <> 1) FROM matrices.dyn_values") == 0
    assert value(dsn, "SELECT count(*) FROM matrices.dyn_values") == rows
    row = backfill(dsn, name)
    assert row is not None
    assert row["status"] == "completed"
    assert value(dsn, "SELECT count(*) FROM ops.migrations WHERE filename = $1", filename) == 1
    assert (
        value(
            dsn,
            "SELECT count(*) FROM ops.backfill_batches WHERE backfill = $1 AND status <> 'done'",
            name,
        )
        == 0
    )
    assert (
        value(
            dsn,
            "SELECT sum(rows) FROM ops.backfill_batches WHERE backfill = $1 AND status = 'done'",
            name,
        )
        == rows
    )
    agreement = checkpoint_agreement(dsn, name)
    assert (agreement["disagree"], agreement["overlapping"]) == (0, 0)


# --- the CLI as a subprocess ----------------------------------------------------------


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr
    assert "Traceback" not in result.stdout


def error_lines(stderr: str) -> list[str]:
    """The CLI's own message lines, as opposed to structured log events."""
    return [line for line in stderr.splitlines() if line.startswith("cryptopi_batch:")]


def json_log_shape(stderr: str) -> list[str]:
    """With ``--log-format json``: every stderr line that is not a JSON log event."""
    others = []
    for line in stderr.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            others.append(line)
            continue
        assert isinstance(event, dict), line
        assert "event" in event, line
    return others


class Running:
    """A CLI process in the background whose output is collected as it comes."""

    def __init__(
        self,
        *args: str,
        dsn: str,
        cwd: Path,
        env: Mapping[str, str] | None = None,
        sigint_ignored: bool = False,
    ) -> None:
        argv = cli_argv(*args)
        if sigint_ignored:  # as a shell starts a job in the background (`cmd &` in a script)
            argv = [
                sys.executable,
                "-c",
                "import runpy, signal, sys;"
                " signal.signal(signal.SIGINT, signal.SIG_IGN); sys.argv[0] = 'cryptopi_batch';"
                " runpy.run_module('cryptopi_batch', run_name='__main__', alter_sys=True)",
                *args,
            ]
        self.proc = subprocess.Popen(
            argv,
            env=cli_env(dsn, env),
            cwd=cwd,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.stderr_lines: list[str] = []
        self.stdout_lines: list[str] = []
        self._readers = [
            threading.Thread(
                target=self._drain, args=(self.proc.stderr, self.stderr_lines), daemon=True
            ),
            threading.Thread(
                target=self._drain, args=(self.proc.stdout, self.stdout_lines), daemon=True
            ),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _drain(stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line.rstrip("\n"))

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def stderr(self) -> str:
        return "\n".join(self.stderr_lines)

    def signal(self, signum: int) -> None:
        os.kill(self.proc.pid, signum)

    def wait(self, timeout: float = 60) -> int:
        code = self.proc.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait()


def wait_until(
    what: str, condition: Callable[[], bool], *, timeout: float = 30, running: Running | None = None
) -> None:
    """Poll ``condition`` until it holds; fail with ``what`` after ``timeout`` or as soon
    as ``running`` exits early."""
    deadline = time.monotonic() + timeout
    while not condition():
        if running is not None and running.proc.poll() is not None:
            pytest.fail(
                f"the CLI exited ({running.proc.returncode}) before {what}:\n" + running.stderr
            )
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def cli(
    *args: str, dsn: str | None, cwd: Path, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, dsn=dsn, cwd=cwd, env=env, timeout=120)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A project directory: the CLI runs here and finds ``migrations/`` by default."""
    (tmp_path / "migrations").mkdir()
    return tmp_path


# --- 1. kill -9, repeatedly, then resume ---------------------------------------------


def test_kill_9_at_random_moments_then_resume_applies_every_row_exactly_once(
    dsn: str, workdir: Path
) -> None:
    rows, batch_size = 80_000, 500
    seed(dsn, rows)
    filename = "20240101_0000_touch_all.py"
    sql_migration(workdir / "migrations", filename, batch_size=batch_size)
    name = filename.removesuffix(".py")

    seed_value = random.randrange(2**32)
    print(f"kill -9 schedule seed: {seed_value}")
    rng = random.Random(seed_value)
    killed_mid_run = 0
    for _ in range(5):
        # 160 batches at >= 40 ms each outlast five kills of at most 1.5 s each.
        running = Running("run", "touch_all", "--sleep", "40ms", dsn=dsn, cwd=workdir)
        time.sleep(rng.uniform(0.2, 1.5))
        if running.proc.poll() is None:
            killed_mid_run += 1
        running.signal(signal.SIGKILL)
        # Reap it: a zombie's pid still exists, and the next run judges by pid.
        code = running.wait()
        assert code == -signal.SIGKILL, running.stderr
        agreement = checkpoint_agreement(dsn, name) if backfill_exists(dsn, name) else None
        if agreement is not None:
            assert (agreement["disagree"], agreement["twice"], agreement["overlapping"]) == (
                0,
                0,
                0,
            ), dict(agreement)
    assert killed_mid_run == 5
    assert batches_done(dsn, name) < rows // batch_size, "the kills left nothing to resume"

    started = time.monotonic()
    final = cli("run", "touch_all", dsn=dsn, cwd=workdir)
    print(f"final run: {time.monotonic() - started:.1f} s")
    assert final.returncode == 0, final.stderr
    no_traceback(final)
    assert_exactly_once(dsn, name, filename, rows)


def backfill_exists(dsn: str, name: str) -> bool:
    return has_ops_schema(dsn) and backfill(dsn, name) is not None


# --- 2. one signal: finish the batch, checkpoint, exit 3 ------------------------------


@pytest.mark.parametrize(
    ("signum", "paced"),
    [
        (signal.SIGTERM, True),
        (signal.SIGINT, True),
        (signal.SIGINT, False),
    ],
    ids=["SIGTERM", "SIGINT", "SIGINT-unpaced"],
)
def test_a_signal_stops_after_the_current_batch_and_run_resumes(
    dsn: str, workdir: Path, signum: signal.Signals, paced: bool
) -> None:
    """Unpaced, each batch's COMMIT also begins the next batch's transaction: the stop
    leaves none of it behind either."""
    rows = 20_000
    seed(dsn, rows)
    filename = "20240101_0000_touch_all.py"
    sql_migration(workdir / "migrations", filename, batch_size=200 if paced else 10)
    name = filename.removesuffix(".py")

    pace = ("--sleep", "20ms") if paced else ()
    running = Running("run", name, *pace, dsn=dsn, cwd=workdir)
    try:
        wait_until("two committed batches", lambda: batches_done(dsn, name) >= 2, running=running)
        running.signal(signum)
        code = running.wait(timeout=30)
    finally:
        running.kill()
    assert code == 3, running.stderr
    assert "Traceback" not in running.stderr
    lines = error_lines(running.stderr)
    assert len(lines) == 1, running.stderr
    assert signum.name in lines[0]

    agreement = checkpoint_agreement(dsn, name)
    assert (agreement["disagree"], agreement["twice"], agreement["overlapping"]) == (0, 0, 0), dict(
        agreement
    )
    assert 0 < agreement["once"] < rows, "the signal should stop the run part-way"
    # Nothing is held: a range claimed for the next batch went back as 'pending' (claimed
    # first when the run resumes), none is left 'running' under the stopped runner.
    assert (
        value(
            dsn,
            "SELECT count(*) FROM ops.backfill_batches"
            " WHERE backfill = $1 AND (status = 'running' OR worker IS NOT NULL"
            " AND status <> 'done')",
            name,
        )
        == 0
    )
    assert value(dsn, "SELECT count(*) FROM ops.migrations") == 0

    status = cli("status", name, "--json", dsn=dsn, cwd=workdir)
    assert status.returncode == 0, status.stderr
    [shown] = [json.loads(line) for line in status.stdout.splitlines()]
    assert shown["name"] == name
    assert (shown["status"], shown["interrupted"]) == ("pending", True), shown
    assert shown["rows_processed"] == agreement["once"]

    # Resuming does not wait for any lease: the stopped runner left no claim behind.
    started = time.monotonic()
    resumed = cli("run", name, dsn=dsn, cwd=workdir)
    assert resumed.returncode == 0, resumed.stderr
    assert time.monotonic() - started < 20
    assert_exactly_once(dsn, name, filename, rows)


@pytest.mark.parametrize(
    ("signum", "background"),
    [
        (signal.SIGTERM, False),
        (signal.SIGINT, False),
        # Started in the background by a shell script: SIGINT ignored, SIGTERM still stops it.
        (signal.SIGTERM, True),
    ],
    ids=["SIGTERM", "SIGINT", "SIGTERM-in-background"],
)
def test_a_signal_while_still_connecting_exits_3(
    workdir: Path, signum: signal.Signals, background: bool
) -> None:
    sql_migration(workdir / "migrations", "20240101_0000_touch_all.py")
    # A server that accepts the TCP connection and never answers: the run hangs in connect.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        running = Running(
            "run",
            "touch_all",
            dsn=f"postgresql://postgres@127.0.0.1:{port}/x",
            cwd=workdir,
            sigint_ignored=background,
        )
        try:
            readable, _, _ = select.select([silent], [], [], 30)
            assert readable, "the CLI never connected"
            running.signal(signum)
            code = running.wait(timeout=10)
        finally:
            running.kill()
    assert code == 3, (code, running.stderr)
    assert "Traceback" not in running.stderr
    assert running.stderr_lines == ["cryptopi_batch: interrupted"]


def _ended_before_cryptopi_batch_ran(signum: int, code: int, stderr: str) -> bool:
    """A signal that lands in the interpreter's own start-up (its first ~10-15 ms, before
    the first line of cryptopi_batch runs: site.py, an editable install's import hook)
    ends the process as it ends any program: by the signal, or by Python's own
    KeyboardInterrupt there, whose traceback holds no frame of cryptopi_batch."""
    if code == -signum and stderr == "":
        return True
    return signum == signal.SIGINT and f"{os.sep}cryptopi_batch{os.sep}" not in stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_at_any_moment_of_start_up_exits_3_without_a_traceback(
    workdir: Path, signum: signal.Signals
) -> None:
    """From the package's first line on (imports ~50 ms, argument parsing, connecting):
    exit 3 and one line, never a KeyboardInterrupt traceback or a death by SIGTERM."""
    sql_migration(workdir / "migrations", "20240101_0000_touch_all.py")
    # The interpreter's own start-up, before cryptopi_batch's first line, takes ~10-15 ms
    # on a quiet machine and several times that on a loaded one: measured, not assumed.
    before_us = max(0.05, 3 * _interpreter_start_up())
    surely_ours = before_us + 0.2
    outcomes = {}
    with socket.socket() as silent:  # accepts and never answers: the run waits in connect
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        dsn = f"postgresql://postgres@127.0.0.1:{silent.getsockname()[1]}/x"
        for delay in (0, 0.02, 0.05, 0.1, 0.2, 0.3, surely_ours):
            proc = subprocess.Popen(
                cli_argv("run", "touch_all"),
                env=cli_env(dsn),
                cwd=workdir,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            time.sleep(delay)
            proc.send_signal(signum)
            out, err = proc.communicate(timeout=30)
            outcomes[delay] = (proc.returncode, err)
            assert out == ""
    for delay, (code, err) in outcomes.items():
        if delay < before_us and _ended_before_cryptopi_batch_ran(signum, code, err):
            continue
        assert (code, err) == (3, "cryptopi_batch: interrupted\n"), (delay, code, err)


def _interpreter_start_up() -> float:
    """Seconds this machine takes now to start the interpreter, with the same site set-up
    (an editable install's import hook), to an empty program: the slowest of three."""
    times = []
    for _ in range(3):
        started = time.monotonic()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        times.append(time.monotonic() - started)
    return max(times)


# --- 3. a second signal: roll the batch back, exit at once ----------------------------


def test_a_second_signal_rolls_the_batch_in_flight_back_and_exits_at_once(
    dsn: str, workdir: Path, pg_server: PgServer
) -> None:
    rows, slow = 2_000, 5.0
    seed(dsn, rows)
    filename = "20240101_0000_touch_slowly.py"
    write_migration(workdir / "migrations", filename, SLOW_MIGRATION)
    name = filename.removesuffix(".py")
    database = value(dsn, "SELECT current_database()")

    def sleeping_backends() -> list[int]:
        return [
            r["pid"]
            for r in fetch(
                pg_server.admin_dsn,
                "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND state = 'active'"
                " AND query LIKE '%pg_sleep%' AND pid <> pg_backend_pid()",
                database,
            )
        ]

    running = Running("run", name, dsn=dsn, cwd=workdir, env={"CB_TEST_SLOW": str(slow)})
    try:
        # The first batch is quick; the second sleeps `slow` seconds after its update.
        wait_until(
            "a batch in flight after a committed one",
            lambda: batches_done(dsn, name) >= 1 and bool(sleeping_backends()),
            running=running,
        )
        in_flight = sleeping_backends()
        running.signal(signal.SIGTERM)
        wait_until(
            "the first signal to be seen",
            lambda: "stop_requested" in running.stderr,
            timeout=10,
            running=running,
        )
        assert running.proc.poll() is None, "a first signal must let the batch finish"
        sent = time.monotonic()
        running.signal(signal.SIGTERM)
        code = running.wait(timeout=30)
        took = time.monotonic() - sent
    finally:
        running.kill()
    assert code == 3, running.stderr
    assert took < 2.0, f"the second signal took {took:.1f} s to stop the run"
    assert "Traceback" not in running.stderr
    lines = error_lines(running.stderr)
    assert len(lines) == 1, running.stderr
    assert "rolled back" in lines[0]

    # The batch in flight is rolled back now, on the server too: its session ends rather
    # than holding its row locks until its statement would have finished.
    wait_until(
        "the aborted batch's session to end",
        lambda: not set(in_flight) & set(sleeping_backends()),
        timeout=max(0.5, 2.0 - (time.monotonic() - sent)),
    )
    # And no row outside the one done range is touched.
    assert batches_done(dsn, name) == 1
    agreement = checkpoint_agreement(dsn, name)
    assert (agreement["once"], agreement["disagree"], agreement["twice"]) == (100, 0, 0), dict(
        agreement
    )

    started = time.monotonic()
    resumed = cli("run", name, dsn=dsn, cwd=workdir)
    assert resumed.returncode == 0, resumed.stderr
    assert time.monotonic() - started < 20, "resume waited for the aborted batch's lease"
    assert_exactly_once(dsn, name, filename, rows)


# --- 4. could not start: exit 2, one line, nothing written ---------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


BAD_INPUTS: dict[str, dict[str, Any]] = {
    "unknown_name": {
        "name": "no_such_thing",
        # Never the whole directory: where to look instead.
        "expect": ["no migration named 'no_such_thing'; `list` shows the 12 migrations in "],
    },
    "misspelt_name": {
        "name": "missing_tabel",
        "expect": ["no migration named 'missing_tabel'; did you mean 20240102_0002_missing_table"],
    },
    "ambiguous_prefix": {
        "name": "20240101_00",
        "expect": ["ambiguous", "20240101_0000_touch_all", "20240101_0001_touch_again"],
    },
    "syntax_error": {
        "name": "broken_syntax",
        "expect": ["20240102_0000_broken_syntax.py:4", "syntax"],
    },
    "raises_at_import": {
        "name": "raises_on_import",
        "expect": [
            "20240102_0001_raises_on_import.py:3",
            "RuntimeError",
            "no settings for this migration",
        ],
    },
    "missing_table": {"name": "missing_table", "expect": ["matrices.nowhere", "does not exist"]},
    "key_column_missing": {"name": "missing_key", "expect": ["no_such_column"]},
    "key_not_unique": {"name": "not_unique", "expect": ["matrices.dupes", "unique"]},
    "key_nullable": {"name": "nullable_key", "expect": ["matrices.nullable_ids", "nullable"]},
    "unreachable_server": {"name": "touch_all", "dsn": "unreachable", "expect": ["cannot connect"]},
    "unknown_database": {
        "name": "touch_all",
        "dsn": "unknown_database",
        "expect": ["cannot connect", "no_such_database_"],
    },
    "port_out_of_range": {
        "name": "touch_all",
        "dsn": "port_out_of_range",
        "expect": ["cannot connect"],
    },
    "exits_at_import": {
        "name": "exits_on_import",
        "expect": ["20240102_0006_exits_on_import.py:3", "SystemExit"],
    },
    # PostgreSQL's HINT joins the message on its one line.
    "sql_typo": {"name": "sql_typo", "expect": ["does not prepare", "lenght", "; HINT:"]},
    "window_declared_invalid": {
        "name": "in_a_window",
        "expect": ['window=: "Sun 03:00-25:00": no such time of day "25:00"'],
    },
    "window_bad_weekday": {
        "name": "touch_all",
        "args": ["--window", "Mon-Fry 22:00-06:00"],
        "expect": ['--window: "Mon-Fry 22:00-06:00": unknown weekday "Fry"'],
    },
    "window_bad_zone": {
        "name": "touch_all",
        "args": ["--window", "22:00-06:00", "--timezone", "Europe/Berln"],
        "expect": ['--timezone: unknown time zone "Europe/Berln"'],
    },
    "until_without_offset": {
        "name": "touch_all",
        "args": ["--until", "2026-12-01T06:00"],
        "expect": ['--until: "2026-12-01T06:00" has no UTC offset'],
    },
    "batch_size_past_int4": {
        "name": "touch_all",
        "args": ["--batch-size", "2147483648"],
        "expect": ["--batch-size", "2,147,483,647"],
    },
    "view_as_table": {"name": "a_view", "expect": ["matrices.dyn_view is a view", "not a table"]},
    "statement_timeout_past_int4": {
        "name": "touch_all",
        "args": ["--statement-timeout", "100000000h"],
        "expect": ["--statement-timeout", "at most"],
    },
    "wal_rate_not_a_size": {
        "name": "touch_all",
        "args": ["--max-wal-rate", "20 furlongs"],
        "expect": ["--max-wal-rate (or max_wal_rate=): not a size: '20 furlongs'"],
    },
    "unknown_gate": {
        "name": "touch_all",
        "args": ["--no-gate", "replica-lagg"],
        "expect": ["--no-gate: no gate 'replica-lagg'", "replica-lag, transaction-age"],
    },
    "replica_lag_not_a_duration": {
        "name": "touch_all",
        "args": ["--max-replica-lag", "soon"],
        "expect": ["--max-replica-lag (or max_replica_lag=): not a duration: 'soon'"],
    },
    "check_typo": {
        "name": "touch_all",
        "args": ["--check", "SELEC true"],
        "expect": ['--check (or check=) does not prepare: syntax error at or near "SELEC"'],
    },
    "check_missing_table": {
        "name": "touch_all",
        "args": ["--check", "SELECT reason FROM no_such_flags"],
        "expect": ['--check (or check=) does not prepare: relation "no_such_flags" does not'],
    },
    "check_returns_a_number": {
        "name": "touch_all",
        "args": ["--check", "SELECT 1"],
        "expect": ["--check (or check=) must return a boolean or a text, not type int4"],
    },
    "replica_dsn_bad_port": {
        "name": "touch_all",
        "args": ["--replica-dsn", "postgresql://u:hunter2@replica:99999/db"],
        "expect": ["--replica-dsn: invalid DSN: the URL's port is not a number"],
    },
}


def _bad_input_dir(directory: Path) -> None:
    sql_migration(directory, "20240101_0000_touch_all.py")
    sql_migration(directory, "20240101_0001_touch_again.py")
    write_migration(
        directory,
        "20240102_0000_broken_syntax.py",
        '"""Broken."""\nfrom cryptopi_batch import Backfill\n\nmigration = = 1\n',
    )
    write_migration(
        directory,
        "20240102_0001_raises_on_import.py",
        '"""Raises."""\nfrom cryptopi_batch import Backfill\n'
        'raise RuntimeError("no settings for this migration")\n',
    )
    sql_migration(directory, "20240102_0002_missing_table.py", table="matrices.nowhere")
    sql_migration(directory, "20240102_0003_missing_key.py", key="no_such_column")
    sql_migration(directory, "20240102_0004_not_unique.py", table="matrices.dupes")
    sql_migration(directory, "20240102_0005_nullable_key.py", table="matrices.nullable_ids")
    write_migration(
        directory, "20240102_0006_exits_on_import.py", '"""Exits."""\nimport sys\nsys.exit(5)\n'
    )
    write_migration(
        directory,
        "20240102_0007_sql_typo.py",
        '"""A typo."""\nfrom cryptopi_batch import Backfill\n\n'
        f'migration = Backfill(table="{TABLE}", key="id",'
        " sql=\"UPDATE matrices.dyn_values SET touched = lenght('x')"
        ' WHERE {range}")\n',
    )
    sql_migration(directory, "20240102_0009_a_view.py", table="matrices.dyn_view")
    write_migration(
        directory,
        "20240102_0008_in_a_window.py",
        '"""Off-peak only."""\nfrom cryptopi_batch import Backfill\n\n'
        f'migration = Backfill(table="{TABLE}", key="id", window="Sun 03:00-25:00",'
        ' sql="UPDATE matrices.dyn_values SET touched = touched + 1'
        ' WHERE {range}")\n',
    )


def _seed_bad_tables(dsn: str) -> None:
    seed(dsn, 300)
    execute(
        dsn,
        "CREATE TABLE matrices.dupes (id bigint NOT NULL, touched int NOT NULL"
        " DEFAULT 0); CREATE INDEX ON matrices.dupes (id);"
        " INSERT INTO matrices.dupes (id) VALUES (1), (1), (2);"
        " CREATE TABLE matrices.nullable_ids (id bigint UNIQUE, touched int NOT NULL"
        " DEFAULT 0); INSERT INTO matrices.nullable_ids (id) VALUES (1), (NULL);"
        f" CREATE VIEW matrices.dyn_view AS SELECT * FROM {TABLE};",
    )


def _all_untouched(dsn: str) -> None:
    assert not has_ops_schema(dsn)
    for table in (TABLE, "matrices.dupes", "matrices.nullable_ids"):
        assert touched_sum(dsn, table) == 0


def _assert_could_not_start(result: subprocess.CompletedProcess[str], expect: list[str]) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    no_traceback(result)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    [line] = lines
    assert line.startswith("cryptopi_batch: ")
    for text in expect:
        assert text in line, (text, line)
    return line


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    dsn: str, workdir: Path, case: str
) -> None:
    _bad_input_dir(workdir / "migrations")
    _seed_bad_tables(dsn)
    spec = BAD_INPUTS[case]
    target = dsn
    if spec.get("dsn") == "unreachable":
        target = f"postgresql://postgres@127.0.0.1:{_free_port()}/postgres"
    elif spec.get("dsn") == "unknown_database":
        target = with_database(dsn, f"no_such_database_{uuid.uuid4().hex[:8]}")
    elif spec.get("dsn") == "port_out_of_range":
        target = "postgresql://postgres@127.0.0.1:99999/postgres"
    result = cli("run", spec["name"], *spec.get("args", []), dsn=target, cwd=workdir)
    line = _assert_could_not_start(result, spec["expect"])
    assert "hunter2" not in line
    assert result.stdout == ""
    _all_untouched(dsn)


# process= that the first batch would fail on: each refused when the file loads.
BAD_PROCESSES = {
    "plain-function": ("def work(batch):\n    return 0\n", "work", "not a plain function"),
    "lambda": ("", "lambda batch: 0", "not a plain function"),
    "class": ("class Work:\n    def __init__(self, batch):\n        pass\n", "Work", "a class"),
    "async-generator": (
        "async def work(batch):\n    yield 0\n",
        "work",
        "not an async generator",
    ),
    "no-argument": ("async def work():\n    return 0\n", "work", "it takes ()"),
    "two-arguments": (
        "async def work(batch, other):\n    return 0\n",
        "work",
        "it takes (batch, other)",
    ),
    "not-callable": ("", '"UPDATE x"', "not an object of type str"),
}


@pytest.mark.parametrize("case", list(BAD_PROCESSES))
def test_a_process_that_is_not_an_async_function_of_one_batch_is_refused_at_load(
    dsn: str, workdir: Path, case: str
) -> None:
    seed(dsn, 300)
    definition, value_text, complaint = BAD_PROCESSES[case]
    path = write_migration(
        workdir / "migrations",
        "20240101_0000_bad_process.py",
        '"""A process= the first batch would fail on."""\n'
        "from cryptopi_batch import Backfill\n\n"
        f"{definition}\n"
        f'migration = Backfill(table="{TABLE}", key="id", process={value_text})\n',
    )
    line_no = path.read_text().splitlines().index(path.read_text().splitlines()[-1]) + 1
    result = cli("run", "bad_process", dsn=dsn, cwd=workdir)
    shown = path.relative_to(workdir)  # paths under the current directory are shown relative
    line = _assert_could_not_start(result, [f"{shown}:{line_no}: Backfill process= must"])
    assert complaint in line
    assert result.stdout == ""
    _all_untouched_main(dsn)


def test_a_wrong_password_exits_2_and_never_shows_a_password(
    dsn: str, workdir: Path, pg_server: PgServer
) -> None:
    sql_migration(workdir / "migrations", "20240101_0000_touch_all.py")
    seed(dsn, 300)
    role = f"cb_user_{uuid.uuid4().hex[:8]}"
    right = f"Right-{uuid.uuid4().hex}"
    wrong = f"Wrong-{uuid.uuid4().hex}"
    execute(pg_server.admin_dsn, f"CREATE ROLE {role} LOGIN PASSWORD '{right}'")
    try:
        good = with_user(dsn, role, right)
        assert value(good, "SELECT current_user") == role  # the right password works
        bad = with_user(dsn, role, wrong)
        for args in (["run", "touch_all"], ["status"], ["list"]):
            result = cli(*args, dsn=bad, cwd=workdir)
            line = _assert_could_not_start(result, ["cannot connect", "password"])
            for output in (result.stdout, result.stderr):
                assert wrong not in output, line
                assert right not in output, line
        # The same through --dsn, with DATABASE_URL unset.
        result = cli(
            "run", "touch_all", "--dsn", bad, dsn=None, cwd=workdir, env={"DATABASE_URL": ""}
        )
        _assert_could_not_start(result, ["cannot connect"])
        assert wrong not in result.stderr + result.stdout
        _all_untouched_main(dsn)
    finally:
        execute(pg_server.admin_dsn, f"DROP ROLE IF EXISTS {role}")


QUOTING_MIGRATION = '''"""Fail, quoting the connection string in the error."""
import os

from cryptopi_batch import Backfill, Batch


async def fail(batch: Batch) -> int:
    raise RuntimeError(f"cannot reach {os.environ['DATABASE_URL']}\\nDETAIL: a second line")

migration = Backfill(table="matrices.dyn_values", key="id", batch_size=100, process=fail)
'''


def test_an_error_that_quotes_the_dsn_never_shows_its_password(
    dsn: str, workdir: Path, pg_server: PgServer
) -> None:
    """A migration's own error may quote the connection string: the log events, the error
    kept in ops.backfills, `status` and the last line show it without the password, and
    on one line."""
    seed(dsn, 300)
    filename = "20240101_0000_quote_dsn.py"
    write_migration(workdir / "migrations", filename, QUOTING_MIGRATION)
    role = f"cb_user_{uuid.uuid4().hex[:8]}"
    secret = f"Secret-{uuid.uuid4().hex}/x:y%z"
    execute(pg_server.admin_dsn, f"CREATE ROLE {role} LOGIN PASSWORD '{secret}'")
    database = value(dsn, "SELECT current_database()")
    execute(
        dsn,
        f'GRANT CREATE ON DATABASE "{database}" TO {role};'
        f" GRANT USAGE ON SCHEMA matrices TO {role};"
        f" GRANT SELECT, UPDATE ON {TABLE} TO {role}",
    )
    try:
        user_dsn = with_user(dsn, role, secret)
        failed = cli("run", "quote_dsn", "--log-format", "json", dsn=user_dsn, cwd=workdir)
        assert failed.returncode == 1, failed.stderr
        console = cli("run", "quote_dsn", dsn=user_dsn, cwd=workdir)
        status = cli("status", "quote_dsn", "--json", dsn=user_dsn, cwd=workdir)
        kept = value(dsn, "SELECT last_error FROM ops.backfills")

        assert (failed.returncode, console.returncode, status.returncode) == (1, 1, 0)
        assert "RuntimeError: cannot reach postgresql://" in kept
        for text in (
            failed.stdout,
            failed.stderr,
            console.stdout,
            console.stderr,
            status.stdout,
            kept,
        ):
            assert secret not in text
            assert quote(secret, safe="") not in text
        assert "\n" not in kept
        # The error's own second line joins the first: one line for the run's outcome.
        [line] = error_lines(console.stderr)
        assert line.endswith("; DETAIL: a second line (20240101_0000_quote_dsn.py, line 8)"), (
            console.stderr
        )
        assert console.stderr.rstrip("\n").splitlines()[-1] == line
    finally:
        execute(dsn, f"DROP OWNED BY {role}")
        execute(pg_server.admin_dsn, f"DROP ROLE IF EXISTS {role}")


PASSWORD = "S3cr/et#Pw?x@Q"


def password_pieces(*secrets: str) -> set[str]:
    """Every run of 4 characters of each secret."""
    return {s[i : i + 4] for s in secrets for i in range(len(s) - 3)}


def _secret_sources(dsn: str, tmp: Path) -> dict[str, tuple[dict[str, str], list[str]]]:
    """Ways a password reaches the CLI, each wrong or malformed: the environment to run
    with, and the secrets in it."""
    parts = urlsplit(dsn)
    host, port, db = parts.hostname, parts.port, parts.path.lstrip("/")
    where = f"{host}:{port}/{db}"
    pgpass = tmp / "pgpass"
    pgpass.write_text(f"{host}:{port}:*:cb_nobody:{PASSWORD}\n")
    pgpass.chmod(0o600)
    broken = tmp / "pgpass_broken"
    broken.write_text(f"{PASSWORD} not a line of five fields\n")
    broken.chmod(0o600)
    pg_vars = {"DATABASE_URL": "", "PGHOST": str(host), "PGPORT": str(port), "PGDATABASE": db}
    pg_vars["PGUSER"] = "cb_nobody"
    return {
        "url-raw": ({"DATABASE_URL": f"postgresql://cb_nobody:{PASSWORD}@{where}"}, [PASSWORD]),
        **{
            f"url-raw-{c}": (
                {"DATABASE_URL": f"postgresql://cb_nobody:S3cr{c}etPwQz@{where}"},
                [f"S3cr{c}etPwQz"],
            )
            for c in "/#?@["
        },
        "url-digits-slash": (
            {"DATABASE_URL": f"postgresql://cb_nobody:{port}/S3cretPw@{where}"},
            ["S3cretPw"],
        ),
        "url-encoded-wrong": (
            {"DATABASE_URL": f"postgresql://cb_nobody:{quote(PASSWORD, safe='')}@{where}"},
            [PASSWORD],
        ),
        "url-query": (
            {"DATABASE_URL": f"postgresql://{where}?user=cb_nobody&password=S3cr&etPwQz"},
            ["S3cr&etPwQz"],
        ),
        "kv-wrong": (
            {
                "DATABASE_URL": f"host={host} port={port} dbname={db} user=cb_nobody"
                f" password={PASSWORD}"
            },
            [PASSWORD],
        ),
        "kv-space": (
            {"DATABASE_URL": f"host={host} port={port} password=S3cr etPwQz"},
            ["S3cr etPwQz"],
        ),
        "kv-key": (
            {"DATABASE_URL": f"host={host} port={port} password=S3cr etPwQz=1"},
            ["S3cr etPwQz=1"],
        ),
        "kv-quote": (
            {"DATABASE_URL": f"host={host} port={port} password='S3cr/et#Pw"},
            ["S3cr/et#Pw"],
        ),
        "pgpassword": ({**pg_vars, "PGPASSWORD": PASSWORD}, [PASSWORD]),
        "pgpassword-bad-port": (
            {**pg_vars, "PGPASSWORD": PASSWORD, "PGPORT": "S3cr/et"},
            [PASSWORD],
        ),
        "pgpass": ({**pg_vars, "PGPASSFILE": str(pgpass)}, [PASSWORD]),
        "pgpass-broken": ({**pg_vars, "PGPASSFILE": str(broken)}, [PASSWORD]),
    }


@pytest.mark.parametrize("traceback", [False, True], ids=["plain", "traceback"])
def test_no_error_path_shows_any_piece_of_a_password(
    dsn: str, workdir: Path, tmp_path: Path, traceback: bool
) -> None:
    """A password with the characters that end a URL's parts (raw or percent-encoded,
    whole or in pieces), in a URL, a key/value DSN, $PGPASSWORD or a password file: each
    wrong or malformed, each refused with exit 2 on one line that holds no run of 4 of
    its characters, also with --traceback."""
    seed(dsn, 100)
    sql_migration(workdir / "migrations", "20240101_0000_touch_all.py")
    flags = ["--traceback"] if traceback else []
    for case, (env, secrets) in _secret_sources(dsn, tmp_path).items():
        for command in (["run", "touch_all"], ["status"]):
            result = cli(*command, *flags, dsn=None, cwd=workdir, env=env)
            assert result.returncode == 2, (case, result.stderr)
            shown = {p for p in password_pieces(*secrets) if p in result.stdout + result.stderr}
            assert not shown, (case, shown, result.stderr)
            lines = result.stderr.splitlines()
            assert lines[-1].startswith("cryptopi_batch: cannot connect"), (case, lines)
            if not traceback:
                assert len(lines) == 1, (case, result.stderr)
    _all_untouched_main(dsn)


def test_commands_without_privileges_on_the_ops_tables_exit_2(
    dsn: str, workdir: Path, pg_server: PgServer
) -> None:
    """A role that may connect but not read the ops tables: each command says so on one
    line and exits 2, as `run` does."""
    seed(dsn, 100)
    sql_migration(workdir / "migrations", "20240101_0000_touch_all.py")
    assert cli("run", "touch_all", dsn=dsn, cwd=workdir).returncode == 0
    role = f"cb_user_{uuid.uuid4().hex[:8]}"
    secret = f"Pw-{uuid.uuid4().hex}"
    execute(pg_server.admin_dsn, f"CREATE ROLE {role} LOGIN PASSWORD '{secret}'")
    try:
        user_dsn = with_user(dsn, role, secret)
        for args in (["status"], ["status", "touch_all"], ["list"], ["pause", "touch_all"]):
            result = cli(*args, dsn=user_dsn, cwd=workdir)
            _assert_could_not_start(result, ["permission denied"])
        assert value(dsn, "SELECT status FROM ops.backfills") == "completed"
    finally:
        execute(pg_server.admin_dsn, f"DROP ROLE IF EXISTS {role}")


def test_a_runner_that_cannot_register_exits_1_on_one_line_and_run_resumes(
    dsn: str, workdir: Path, pg_server: PgServer
) -> None:
    """A role that may run batches but not add its runner to ops.backfill_workers: the run
    stops before any batch, on one line naming that step (exit 1), and runs once the
    privilege is there."""
    rows = 300
    seed(dsn, rows)
    filename = "20240101_0000_touch_all.py"
    sql_migration(workdir / "migrations", filename)
    name = filename.removesuffix(".py")
    assert cli("run", name, "--max-duration", "0", dsn=dsn, cwd=workdir).returncode == 3
    role = f"cb_user_{uuid.uuid4().hex[:8]}"
    secret = f"Pw-{uuid.uuid4().hex}"
    execute(pg_server.admin_dsn, f"CREATE ROLE {role} LOGIN PASSWORD '{secret}'")
    execute(
        dsn,
        f"GRANT USAGE ON SCHEMA matrices, ops TO {role};"
        f" GRANT SELECT, UPDATE ON {TABLE} TO {role};"
        f" GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA ops TO {role};"
        f" GRANT USAGE ON ALL SEQUENCES IN SCHEMA ops TO {role};"
        f" REVOKE INSERT ON ops.backfill_workers FROM {role}",
    )
    try:
        user_dsn = with_user(dsn, role, secret)
        refused = cli("run", name, dsn=user_dsn, cwd=workdir)
        assert refused.returncode == 1, refused.stderr
        no_traceback(refused)
        [line] = error_lines(refused.stderr)
        assert "could not register this runner" in line
        assert "permission denied" in line
        assert touched_sum(dsn) == 0
        execute(dsn, f"GRANT INSERT ON ops.backfill_workers TO {role}")
        resumed = cli("run", name, dsn=user_dsn, cwd=workdir)
        assert resumed.returncode == 0, resumed.stderr
        assert_exactly_once(dsn, name, filename, rows)
    finally:
        execute(dsn, f"DROP OWNED BY {role}")
        execute(pg_server.admin_dsn, f"DROP ROLE IF EXISTS {role}")


def test_version_and_demo_refusals(workdir: Path) -> None:
    version = cli("--version", dsn=None, cwd=workdir)
    assert version.returncode == 0, version.stderr
    assert re.fullmatch(r"cryptopi_batch \d+\.\d+\.\d+\S*\n", version.stdout)
    refused = cli("demo", "--rows", "-5", dsn=None, cwd=workdir)
    _assert_could_not_start(refused, ["--rows", "at least 1"])
    # Without the example migration, demo starts no server and seeds nothing.
    missing = cli("demo", "--rows", "1000", dsn=None, cwd=workdir)
    _assert_could_not_start(missing, ["backfill_confidence"])
    assert not (workdir / ".pgdata").exists()


def with_user(dsn: str, user: str, password: str) -> str:
    """`dsn` logging in as `user` with `password`."""
    parts = urlsplit(with_password(dsn, password))
    _, _, host = parts.netloc.rpartition("@")
    secret = parts.netloc.rpartition("@")[0].partition(":")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{secret}@{host}"))


def _all_untouched_main(dsn: str) -> None:
    assert not has_ops_schema(dsn)
    assert touched_sum(dsn) == 0


def test_traceback_flag_shows_where_a_refusal_came_from(dsn: str, workdir: Path) -> None:
    _bad_input_dir(workdir / "migrations")
    _seed_bad_tables(dsn)
    result = cli("run", "missing_table", "--traceback", dsn=dsn, cwd=workdir)
    assert result.returncode == 2, result.stderr
    assert "Traceback" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("cryptopi_batch: ")
    assert "matrices.nowhere" in result.stderr.splitlines()[-1]
    _all_untouched(dsn)


# --- 5. a rerun of a completed migration is a no-op ------------------------------------


def test_rerunning_a_completed_migration_changes_nothing(dsn: str, workdir: Path) -> None:
    rows = 1_000
    seed(dsn, rows)
    filename = "20240101_0000_touch_all.py"
    sql_migration(workdir / "migrations", filename, batch_size=100)
    name = filename.removesuffix(".py")

    first = cli("run", name, dsn=dsn, cwd=workdir)
    assert first.returncode == 0, first.stderr
    assert error_lines(first.stderr) == []
    assert_exactly_once(dsn, name, filename, rows)
    before = dict(backfill(dsn, name) or {})
    batch_rows = value(dsn, "SELECT count(*) FROM ops.backfill_batches")

    again = cli("run", name, dsn=dsn, cwd=workdir)
    assert again.returncode == 0, again.stderr
    no_traceback(again)
    assert "already completed" in again.stderr
    assert_exactly_once(dsn, name, filename, rows)
    after = dict(backfill(dsn, name) or {})
    for column in ("rows_processed", "batches_done", "keys_done", "completed_at", "status"):
        assert after[column] == before[column], column
    assert value(dsn, "SELECT count(*) FROM ops.backfill_batches") == batch_rows


def test_the_installed_script_is_the_same_command(dsn: str, workdir: Path) -> None:
    """``cryptopi-batch``, the script the package installs, runs a migration and refuses bad
    input as ``python -m cryptopi_batch`` does (both enter through ``__main__``)."""
    script = Path(sys.executable).with_name("cryptopi-batch")
    if not script.exists():
        pytest.skip("the package is not installed in this interpreter's environment")
    # What the installed metadata says the script runs (an install older than the current
    # pyproject.toml would run something else).
    (entry,) = importlib.metadata.entry_points(group="console_scripts", name="cryptopi-batch")
    assert entry.value == "cryptopi_batch.__main__:start"
    rows = 300
    seed(dsn, rows)
    filename = "20240101_0000_touch_all.py"
    sql_migration(workdir / "migrations", filename, batch_size=100)
    name = filename.removesuffix(".py")
    env = cli_env(dsn)

    done = subprocess.run(
        [str(script), "run", name, "--no-progress"],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert_exactly_once(dsn, name, filename, rows)

    unknown = subprocess.run(
        [str(script), "run", "no_such_migration"],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert unknown.returncode == 2
    assert len(unknown.stderr.strip().splitlines()) == 1, unknown.stderr
    assert "no migration named 'no_such_migration'" in unknown.stderr


# --- 6. status and list ------------------------------------------------------------------


STATUS_FIELDS = {
    "name",
    "status",
    "rows_processed",
    "batches",
    "rows_per_second",
    "eta_seconds",
    "last_error",
    "waiting_reason",
}


def test_status_and_list_show_every_migration_with_its_state(dsn: str, workdir: Path) -> None:
    seed(dsn, 1_000)
    migrations = workdir / "migrations"
    sql_migration(migrations, "20240101_0000_touch_all.py", batch_size=100)
    sql_migration(migrations, "20240101_0001_touch_again.py", batch_size=250)
    done, never = "20240101_0000_touch_all", "20240101_0001_touch_again"

    # Before anything ran: no ops schema, and reading it must not create it.
    for args in (
        ["status"],
        ["status", "--json"],
        ["list"],
        ["list", "--json"],
        ["status", "touch_all", "--json"],
    ):
        result = cli(*args, dsn=dsn, cwd=workdir)
        assert result.returncode == 0, (args, result.stderr)
        no_traceback(result)
    assert not has_ops_schema(dsn)

    assert cli("run", done, dsn=dsn, cwd=workdir).returncode == 0

    status = cli("status", "--json", dsn=dsn, cwd=workdir)
    assert status.returncode == 0, status.stderr
    objects = [json.loads(line) for line in status.stdout.splitlines()]
    assert [o["name"] for o in objects] == [done]
    [shown] = objects
    assert shown.keys() >= STATUS_FIELDS
    assert shown["status"] == "completed"
    assert (shown["rows_processed"], shown["batches"]) == (1_000, 10)
    assert shown["eta_seconds"] == 0
    assert (shown["last_error"], shown["waiting_reason"]) == (None, None)

    one = cli("status", never, "--json", dsn=dsn, cwd=workdir)
    assert one.returncode == 0, one.stderr
    [pending] = [json.loads(line) for line in one.stdout.splitlines()]
    assert pending.keys() >= STATUS_FIELDS
    assert (pending["name"], pending["status"], pending["rows_processed"]) == (never, "pending", 0)

    table = cli("status", dsn=dsn, cwd=workdir, env={"COLUMNS": "200"})
    assert table.returncode == 0, table.stderr
    for text in (done, "completed", "1,000"):
        assert text in table.stdout, table.stdout

    listing = cli("list", "--json", dsn=dsn, cwd=workdir)
    assert listing.returncode == 0, listing.stderr
    states = {o["name"]: o["status"] for o in map(json.loads, listing.stdout.splitlines())}
    assert states == {done: "completed", never: "pending"}

    text = cli("list", dsn=dsn, cwd=workdir, env={"COLUMNS": "200"})
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert any(done in line and "completed" in line for line in lines), text.stdout
    assert any(never in line and "pending" in line for line in lines), text.stdout


# --- 7. a migration that raises ----------------------------------------------------------


def test_a_raising_migration_fails_with_exit_1_and_resumes_with_force(
    dsn: str, workdir: Path
) -> None:
    rows = 1_000
    seed(dsn, rows)
    filename = "20240101_0000_touch_in_python.py"
    path = write_migration(workdir / "migrations", filename, FAILING_MIGRATION)
    name = filename.removesuffix(".py")

    failed = cli("run", name, "--log-format", "json", dsn=dsn, cwd=workdir)
    assert failed.returncode == 1, failed.stderr
    no_traceback(failed)
    assert json_log_shape(failed.stderr) == [], failed.stderr
    last = json.loads(failed.stderr.splitlines()[-1])  # the error line is an event too
    assert (last["event"], last["exit_code"]) == ("error", 1)
    assert last["message"].startswith("cryptopi_batch: ")
    assert "ValueError" in last["message"]
    assert "bad data in batch three" in last["message"]

    # Two batches committed, the third rolled back with its error kept.
    agreement = checkpoint_agreement(dsn, name)
    assert (agreement["once"], agreement["disagree"], agreement["twice"]) == (200, 0, 0)
    assert value(dsn, "SELECT count(*) FROM ops.migrations") == 0

    status = cli("status", name, "--json", dsn=dsn, cwd=workdir)
    assert status.returncode == 0, status.stderr
    [shown] = [json.loads(line) for line in status.stdout.splitlines()]
    assert shown["status"] == "failed"
    assert "bad data in batch three" in (shown["last_error"] or "")

    # `run` resumes a failed run: unchanged, this process's third batch fails in turn, after
    # the range that failed before and one new range committed, still nothing twice.
    started = time.monotonic()
    again = cli("run", name, dsn=dsn, cwd=workdir)
    assert again.returncode == 1, again.stderr
    assert time.monotonic() - started < 20, "resume waited for the failed batch's lease"
    lines = error_lines(again.stderr)
    assert len(lines) == 1, again.stderr
    assert "bad data in batch three" in lines[0]
    agreement = checkpoint_agreement(dsn, name)
    assert (agreement["once"], agreement["disagree"], agreement["twice"]) == (400, 0, 0)

    # Fixed: the changed source is refused without --force, and writes nothing.
    path.write_text(FIXED_MIGRATION)
    refused = cli("run", name, dsn=dsn, cwd=workdir)
    assert refused.returncode == 2, refused.stderr
    assert len(refused.stderr.splitlines()) == 1, refused.stderr
    assert "--force" in refused.stderr
    assert checkpoint_agreement(dsn, name)["once"] == 400

    fixed = cli("run", name, "--force", dsn=dsn, cwd=workdir)
    assert fixed.returncode == 0, fixed.stderr
    assert_exactly_once(dsn, name, filename, rows)
    status = cli("status", name, "--json", dsn=dsn, cwd=workdir)
    [shown] = [json.loads(line) for line in status.stdout.splitlines()]
    assert (shown["status"], shown["last_error"]) == ("completed", None)


# --- 8. name resolution ---------------------------------------------------------------


def test_full_name_prefix_and_description_name_the_same_migration(dsn: str, workdir: Path) -> None:
    rows = 500
    seed(dsn, rows)
    migrations = workdir / "migrations"
    filename = "20240101_0000_touch_all.py"
    sql_migration(migrations, filename)
    sql_migration(migrations, "20240202_0000_other_work.py")
    name = filename.removesuffix(".py")

    first = cli("run", "20240101", dsn=dsn, cwd=workdir)
    assert first.returncode == 0, first.stderr
    assert f"{name}: completed" in first.stderr
    for typed in ("touch_all", name, filename, "touch_a"):
        again = cli("run", typed, dsn=dsn, cwd=workdir)
        assert again.returncode == 0, (typed, again.stderr)
        assert f"{name}: already completed" in again.stderr, (typed, again.stderr)
    assert value(dsn, "SELECT array_agg(name) FROM ops.backfills") == [name]
    assert_exactly_once(dsn, name, filename, rows)

    shown = cli("status", "touch_all", "--json", dsn=dsn, cwd=workdir)
    assert json.loads(shown.stdout)["name"] == name


def test_whole_words_of_the_description_name_a_migration(dsn: str, workdir: Path) -> None:
    """`run total_cents` runs `…_fill_total_cents`; part of a word (`otal`) is unknown and
    words in two descriptions (`total`) ambiguous: exit 2, one line, nothing written."""
    rows = 300
    seed(dsn, rows)
    migrations = workdir / "migrations"
    filename = "20250101_0000_fill_total_cents.py"
    sql_migration(migrations, filename)
    sql_migration(migrations, "20250102_0000_fill_order_totals.py")
    sql_migration(migrations, "20250103_0000_drop_total_cache.py")
    name = filename.removesuffix(".py")

    for typed, line in [
        (
            "otal",
            "cryptopi_batch: no migration named 'otal'; did you mean"
            f" {name}, 20250103_0000_drop_total_cache, 20250102_0000_fill_order_totals",
        ),
        (
            "total",
            f"cryptopi_batch: migration name 'total' is ambiguous: {name},"
            " 20250103_0000_drop_total_cache",
        ),
    ]:
        refused = cli("run", typed, dsn=dsn, cwd=workdir)
        assert (refused.returncode, refused.stderr.splitlines()) == (2, [line]), typed
    _all_untouched_main(dsn)

    done = cli("run", "total_cents", dsn=dsn, cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert f"{name}: completed" in done.stderr
    assert value(dsn, "SELECT array_agg(name) FROM ops.backfills") == [name]
    assert_exactly_once(dsn, name, filename, rows)


# A name with no letter or digit in it, as a script with an unset variable or a slip of
# the shell passes it: the empty string is a prefix of every name.
BLANK_NAMES = ["", " ", "\t", ".", "/", "..", "./", ".py", "migrations/.sql", "_", "-"]


@pytest.mark.parametrize("typed", BLANK_NAMES, ids=repr)
def test_a_blank_name_is_refused_by_every_command_and_runs_nothing(
    dsn: str, workdir: Path, typed: str
) -> None:
    seed(dsn, 300)
    sql_migration(workdir / "migrations", "20240101_0000_touch_all.py")  # the only one
    for command in ("run", "status", "pause", "resume", "cancel"):
        result = cli(command, typed, dsn=dsn, cwd=workdir)
        assert result.returncode == 2, (command, result.stderr)
        assert result.stdout == ""
        assert result.stderr.splitlines() == [
            f"cryptopi_batch: migration name {typed!r} names nothing: give the file name,"
            " its description, or a unique prefix of either"
        ], command
    _all_untouched_main(dsn)


# --- pause, resume, cancel: their lines and exit codes --------------------------------


def test_pause_resume_and_cancel_say_plain_sentences_with_documented_exit_codes(
    dsn: str, workdir: Path
) -> None:
    """Each step's exit code, its one line on stderr and the state it leaves in
    ops.backfills (docs/cli.md's table); then `resume` takes a cancelled run up again and
    `run` finishes it from its checkpoint, each row once."""
    rows = 1_000
    seed(dsn, rows)
    migrations = workdir / "migrations"
    filename = "20240101_0000_touch_all.py"
    sql_migration(migrations, filename)  # 10 batches of 100
    sql_migration(migrations, "20240202_0000_never_run.py")
    name, never = filename.removesuffix(".py"), "20240202_0000_never_run"

    def step(args: list[str], code: int, line: str, state: str | None) -> None:
        result = cli(*args, dsn=dsn, cwd=workdir)
        assert (result.returncode, result.stderr.splitlines()) == (code, [line]), args
        assert result.stdout == ""
        row = backfill(dsn, args[1]) if has_ops_schema(dsn) else None
        assert (row["status"] if row else None) == state, args

    # Never started: before the ops schema exists.
    step(
        ["pause", never],
        2,
        f"cryptopi_batch: {never} has not started; there is nothing to pause",
        None,
    )

    # A run killed after its second batch; a second runner retires the dead one and stops
    # before a batch of its own: 2 batches done, no runner alive.
    crashed = cli(
        "run", name, dsn=dsn, cwd=workdir, env={"CRYPTOPI_BATCH_CRASH_AT": "after_commit:2"}
    )
    assert crashed.returncode < 0, crashed.stderr
    assert cli("run", name, "--max-duration", "0", dsn=dsn, cwd=workdir).returncode == 3
    before = backfill(dsn, name)
    assert before is not None
    assert (before["status"], before["batches_done"]) == ("running", 2)

    stop = "running workers stop after their current batch"
    cancelled_hint = f"`resume {name}` takes it up again from its checkpoint"
    for args, code, line, state in [
        (["pause", name], 0, f"{name}: paused; {stop}", "paused"),
        (["pause", name], 0, f"{name} is already paused", "paused"),
        (["resume", name], 0, f"{name}: resumed; `run {name}` continues it", "running"),
        (["resume", name], 0, f"{name} is not paused; `run {name}` continues it", "running"),
        (
            ["cancel", name],
            0,
            f"{name}: cancelled; {stop}; `resume {name}` undoes it, keeping the checkpoint",
            "cancelled",
        ),
        (["cancel", name], 0, f"{name} is already cancelled", "cancelled"),
        (
            ["pause", name],
            2,
            f"cryptopi_batch: {name} was cancelled; there is nothing to pause ({cancelled_hint})",
            "cancelled",
        ),
        (
            ["run", name],
            2,
            f"cryptopi_batch: {name} was cancelled; {cancelled_hint},"
            " `run --restart` starts it over",
            "cancelled",
        ),
        (
            ["resume", name],
            0,
            f"{name}: resumed with its checkpoint kept (200 keys done); `run {name}` continues it",
            "running",
        ),
        (
            ["pause", never],
            2,
            f"cryptopi_batch: {never} has not started; there is nothing to pause",
            None,
        ),
    ]:
        step(args, code, line, state)
    after = backfill(dsn, name)
    assert after is not None
    for column in ("batches_done", "keys_done", "rows_processed", "frontier", "end_key"):
        assert after[column] == before[column], column

    # With --log-format json the reply is one event, its line the message.
    shown = cli("resume", name, "--log-format", "json", dsn=dsn, cwd=workdir)
    assert shown.returncode == 0, shown.stderr
    [event] = [json.loads(line) for line in shown.stderr.splitlines()]
    assert (event["event"], event["message"], event["before"], event["status"]) == (
        "control",
        f"{name} is not paused; `run {name}` continues it",
        "running",
        "running",
    )

    done = cli("run", name, "--no-progress", dsn=dsn, cwd=workdir)
    assert done.returncode == 0, done.stderr
    # The 2 batches of before the cancel were not redone: 8 now.
    assert re.fullmatch(
        rf"{name}: completed: 1,000 rows changed in 10 batches \(800 now\), [0-9.]+ s",
        done.stderr.splitlines()[-1],
    )
    assert_exactly_once(dsn, name, filename, rows)

    for command in ("pause", "resume", "cancel"):
        step(
            [command, name],
            2,
            f"cryptopi_batch: {name} has completed; there is nothing to {command}",
            "completed",
        )


# --- 9. where the connection comes from -------------------------------------------------


def test_dsn_option_wins_over_database_url(dsn: str, workdir: Path, pg_server: PgServer) -> None:
    rows = 300
    seed(dsn, rows)
    filename = "20240101_0000_touch_all.py"
    sql_migration(workdir / "migrations", filename)
    name = filename.removesuffix(".py")
    elsewhere = f"postgresql://postgres@127.0.0.1:{_free_port()}/postgres"

    result = cli("run", name, "--dsn", dsn, dsn=elsewhere, cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert_exactly_once(dsn, name, filename, rows)

    # And the other way round: DATABASE_URL alone is used, a bad --dsn is not overridden.
    refused = cli("status", "--dsn", elsewhere, dsn=dsn, cwd=workdir)
    assert refused.returncode == 2, refused.stderr
    assert "cannot connect" in refused.stderr
    from_env = cli("status", "--json", dsn=dsn, cwd=workdir)
    assert from_env.returncode == 0
    assert json.loads(from_env.stdout)["status"] == "completed"


def test_a_libpq_key_value_dsn_runs_like_its_url(dsn: str, workdir: Path) -> None:
    """``--dsn "host=… port=… dbname=… user=… password=…"`` (libpq's form, which asyncpg
    does not read itself): the run connects all its connections with it, and a bad one is
    exit 2 with one line that names no password."""
    rows = 250
    seed(dsn, rows)
    filename = "20240101_0000_touch_all.py"
    sql_migration(workdir / "migrations", filename)
    name = filename.removesuffix(".py")
    url = urlsplit(dsn)
    key_value = (
        f"host={url.hostname} port={url.port} dbname='{url.path.lstrip('/')}'"
        f" user={url.username} password='{unquote(url.password or '')}'"
    )

    result = cli("run", name, "--dsn", key_value, "--workers", "2", dsn=None, cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert_exactly_once(dsn, name, filename, rows)

    bad = cli("status", "--dsn", key_value + " options=-cwork_mem=1MB", dsn=None, cwd=workdir)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0, bad.stderr
    assert "unsupported key at character" in bad.stderr
    if url.password:
        assert unquote(url.password) not in bad.stderr + bad.stdout


# --- what status and the bar report (issue 9, items 12-17, 20) ------------------------------


def test_rows_per_second_counts_rows_changed_and_keys_per_second_keys(
    dsn: str, workdir: Path
) -> None:
    """A migration that changes every second row: its rate in rows is half its rate in keys
    (the ETA's rate), over the same batches."""
    seed(dsn, 2_000)
    name = "20240101_0000_touch_even"
    write_migration(
        workdir / "migrations",
        f"{name}.py",
        SQL_MIGRATION.format(table=TABLE, key="id", batch_size=100).replace(
            "WHERE {range}", "WHERE {range} AND id % 2 = 0"
        ),
    )
    assert cli("run", name, dsn=dsn, cwd=workdir).returncode == 0
    status = cli("status", name, "--json", dsn=dsn, cwd=workdir)
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    assert (shown["rows_processed"], shown["keys_done"]) == (1_000, 2_000)
    assert shown["keys_per_second"] > 0
    assert shown["rows_per_second"] == pytest.approx(shown["keys_per_second"] / 2, rel=0.01)


KEYERROR_MIGRATION = '''"""Fill names from a lookup with a typo in its key."""
from cryptopi_batch import Backfill, Batch


async def fill(batch: Batch) -> int:
    row = {"customer": 1}
    return row["customr"]


migration = Backfill(table="matrices.dyn_values", key="id", batch_size=100, process=fill)
'''


def test_a_process_error_names_the_migration_file_and_line(dsn: str, workdir: Path) -> None:
    seed(dsn, 300)
    filename = "20240101_0000_fill_names.py"
    write_migration(workdir / "migrations", filename, KEYERROR_MIGRATION)
    line = KEYERROR_MIGRATION.splitlines().index('    return row["customr"]') + 1

    failed = cli("run", "fill_names", dsn=dsn, cwd=workdir)
    assert failed.returncode == 1, failed.stderr
    no_traceback(failed)
    assert error_lines(failed.stderr) == [
        f"cryptopi_batch: 20240101_0000_fill_names: KeyError: 'customr' ({filename}, line {line})"
    ], failed.stderr
    shown = json.loads(cli("status", "fill_names", "--json", dsn=dsn, cwd=workdir).stdout)
    assert shown["last_error"] == f"KeyError: 'customr' ({filename}, line {line})"

    traced = cli("run", "fill_names", "--traceback", dsn=dsn, cwd=workdir)
    assert traced.returncode == 1, traced.stderr
    assert f'{filename}", line {line}, in fill' in traced.stderr, traced.stderr
    assert traced.stderr.rstrip().splitlines()[-1].startswith("cryptopi_batch: ")


def test_with_log_format_json_every_stderr_line_is_one_json_event(dsn: str, workdir: Path) -> None:
    seed(dsn, 300)
    sql_migration(workdir / "migrations", "20240101_0000_touch_all.py")
    write_migration(workdir / "migrations", "20240101_0001_fill_names.py", KEYERROR_MIGRATION)
    (workdir / "migrations" / "not_a_migration.py").write_text("")

    def events(*args: str, code: int) -> list[dict[str, Any]]:
        result = cli(*args, "--log-format", "json", dsn=dsn, cwd=workdir)
        assert result.returncode == code, result.stderr
        assert json_log_shape(result.stderr) == [], result.stderr
        return [json.loads(line) for line in result.stderr.splitlines()]

    ran = events("run", "touch_all", code=0)
    assert ran[-1]["event"] == "run_summary"
    assert (ran[-1]["rows"], ran[-1]["batches"]) == (300, 3)
    assert events("run", "touch_all", code=0)[-1]["event"] == "run_already_completed"
    failed = events("run", "fill_names", code=1)[-1]
    assert (failed["event"], failed["exit_code"]) == ("error", 1)
    assert "KeyError: 'customr'" in failed["message"]
    unknown = events("run", "nosuch", code=2)[-1]
    assert (unknown["event"], unknown["exit_code"]) == ("error", 2)
    assert unknown["message"].startswith("cryptopi_batch: no migration named 'nosuch'")
    assert events("list", code=0)[-1]["files"] == ["not_a_migration.py"]


DOCS = Path(__file__).resolve().parents[2] / "docs"


def documented_lines() -> set[str]:
    """The CLI's lines quoted in docs/cli.md's code blocks."""
    return {
        line
        for line in (DOCS / "cli.md").read_text().splitlines()
        if line.startswith("cryptopi_batch: ")
    }


def test_the_error_lines_quoted_in_the_docs_are_the_real_ones(dsn: str, tmp_path: Path) -> None:
    """Each case is run in a project whose files have the docs' names: its one error line is
    quoted verbatim in docs/cli.md (paths relative to the current directory)."""
    quoted = documented_lines()
    seed(dsn, 1_000)

    def project(name: str, files: dict[str, str]) -> Path:
        root = tmp_path / name
        for filename, text in files.items():
            write_migration(root / "migrations", filename, text)
        return root

    def one_line(*args: str, cwd: Path, code: int) -> str:
        result = cli(*args, dsn=dsn, cwd=cwd)
        assert result.returncode == code, result.stderr
        [line] = error_lines(result.stderr)
        return line

    two = project(
        "two",
        {
            "20250301_0930_backfill_confidence.py": FAILING_MIGRATION,
            "20250302_1015_normalise_notes.py": SQL_MIGRATION.format(
                table=TABLE, key="id", batch_size=100
            ),
        },
    )
    lines = [
        one_line("run", "2025", cwd=two, code=2),
        one_line("run", "nosuch", cwd=two, code=2),
    ]
    # A run that failed, then a changed source.
    assert cli("run", "backfill_confidence", dsn=dsn, cwd=two).returncode == 1
    path = two / "migrations" / "20250301_0930_backfill_confidence.py"
    path.write_text(FIXED_MIGRATION)
    lines.append(one_line("run", "backfill_confidence", cwd=two, code=2))
    # The control commands' refusals, and `run` of a cancelled run.
    lines.append(one_line("pause", "normalise_notes", cwd=two, code=2))
    assert cli("cancel", "backfill_confidence", dsn=dsn, cwd=two).returncode == 0
    lines.append(one_line("run", "backfill_confidence", cwd=two, code=2))
    lines.append(one_line("pause", "backfill_confidence", cwd=two, code=2))
    assert cli("resume", "backfill_confidence", dsn=dsn, cwd=two).returncode == 0
    assert cli("run", "backfill_confidence", "--force", dsn=dsn, cwd=two).returncode == 0
    lines.append(one_line("pause", "backfill_confidence", cwd=two, code=2))

    broken = project("broken", {"20250101_0004_fix.py": '"""Fix."""\nx = (1 2)\n'})
    lines.append(one_line("run", "fix", cwd=broken, code=2))
    purge = SQL_MIGRATION.format(table=TABLE, key="id", batch_size=100).replace(
        "batch_size=100,", "batch_size=100, destructive=True,"
    )
    destructive = project("destructive", {"20250112_0900_purge_notes.py": purge})
    lines.append(one_line("run", "purge_notes", cwd=destructive, code=2))

    for line in lines:
        assert line in quoted, line


# --- the pre-flight: what only the server can tell ------------------------------------------

TOUCH = "UPDATE matrices.dyn_values SET touched = touched + 1"

# {range} where it expands harmlessly and binds nothing: the statement would be unbounded.
RANGE_NOT_IN_SQL = {
    "line_comment": f"{TOUCH} -- {{range}}",
    "block_comment": f"{TOUCH} /* {{range}} */",
    "string": f"{TOUCH} WHERE note <> '{{range}}'",
    "escape_string": f"{TOUCH} WHERE note <> E'{{range}}'",
    "dollar_quoted": f"{TOUCH} WHERE note <> $$ {{range}} $$",
    "tagged_dollar_quoted": f"{TOUCH} WHERE note <> $tag$ {{range}} $tag$",
}


def range_migration(directory: Path, filename: str, sql: str, down: str | None = None) -> Path:
    declared = "" if down is None else f", down={down!r}"
    return write_migration(
        directory,
        filename,
        '"""Touch every row."""\nfrom cryptopi_batch import Backfill\n\n'
        f'migration = Backfill(table="{TABLE}", key="id", batch_size=100, sql={sql!r}'
        f"{declared})\n",
    )


@pytest.mark.parametrize("form", ["sql", "down"])
@pytest.mark.parametrize("case", list(RANGE_NOT_IN_SQL))
def test_range_in_a_comment_or_a_literal_exits_2_and_writes_nothing(
    dsn: str, workdir: Path, case: str, form: str
) -> None:
    """The prepared statement must take the range's bounds: {range} where it binds nothing
    is refused before anything is written, in sql= and in down=."""
    seed(dsn, 300)
    hidden = RANGE_NOT_IN_SQL[case]
    filename = "20240101_0000_touch_all.py"
    if form == "sql":
        range_migration(workdir / "migrations", filename, hidden)
    else:
        range_migration(workdir / "migrations", filename, f"{TOUCH} WHERE {{range}}", hidden)
    result = cli("run", "touch_all", dsn=dsn, cwd=workdir)
    line = _assert_could_not_start(result, [filename])
    its = "SQL" if form == "sql" else "down= SQL"
    assert line.endswith(
        f"{{range}} must appear in its {its} itself, not in a comment or a string literal"
    ), line
    assert not has_ops_schema(dsn)
    assert touched_sum(dsn) == 0


def test_range_in_the_sql_itself_runs_beside_one_in_a_comment(dsn: str, workdir: Path) -> None:
    """A {range} that binds its bounds is enough: one more in a comment does not matter."""
    rows = 300
    seed(dsn, rows)
    filename = "20240101_0000_touch_all.py"
    range_migration(
        workdir / "migrations",
        filename,
        f"{TOUCH} WHERE {{range}} -- {{range}}",
        down=f"UPDATE {TABLE} AS t SET touched = t.touched - 1 WHERE {{range:t}} /* {{range}} */",
    )
    result = cli("run", "touch_all", dsn=dsn, cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert_exactly_once(dsn, "20240101_0000_touch_all", filename, rows)


def test_sql_with_parameters_of_its_own_exits_2(dsn: str, workdir: Path) -> None:
    seed(dsn, 300)
    filename = "20240101_0000_touch_all.py"
    range_migration(workdir / "migrations", filename, f"{TOUCH} WHERE {{range}} AND id <> $2")
    result = cli("run", "touch_all", dsn=dsn, cwd=workdir)
    _assert_could_not_start(result, [filename, "parameters of its own"])
    assert not has_ops_schema(dsn)
