"""``cryptopi_batch run`` as a user runs it (a subprocess, process start included) and
in-process (`cryptopi_batch.commands.run`), with what its logs and ops tables say about
where each batch's time went."""

from __future__ import annotations

import compileall
import contextlib
import cProfile
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import asyncpg

import cryptopi_batch
from cryptopi_batch import commands, logs
from cryptopi_batch.db import ConnectionSettings
from cryptopi_batch.settings import RunOptions

from .baselines import PhaseRun

MIGRATION = "backfill_confidence"
REPO = Path(__file__).resolve().parent.parent
DEFAULT_MIGRATIONS = REPO / "migrations"


@dataclass
class ProcessRun:
    """One ``python -m cryptopi_batch …`` process."""

    returncode: int
    seconds: float  # spawn to exit
    rss_mb: float  # peak resident set size (getrusage of this child only)
    spawn_wall: float  # time.time() just before the spawn
    spawn_mono: float
    end_mono: float
    events: list[dict[str, object]] = field(default_factory=list)
    stderr: str = ""

    def event_times(self, name: str) -> list[float]:
        """Wall-clock seconds of each ``name`` event in the JSON log."""
        return [_wall(e) for e in self.events if e.get("event") == name]

    def after_spawn(self, name: str) -> float | None:
        """Seconds from the spawn to the first ``name`` event."""
        times = self.event_times(name)
        return times[0] - self.spawn_wall if times else None


def _wall(event: dict[str, object]) -> float:
    return datetime.fromisoformat(str(event["timestamp"])).timestamp()


def cli_command(dsn: str, migrations_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "cryptopi_batch",
        "run",
        MIGRATION,
        "--no-progress",
        "--log-format",
        "json",
        "--migrations-dir",
        str(migrations_dir),
        "--dsn",
        dsn,
        *extra,
    ]


def run_process(
    cmd: list[str],
    *,
    kill_after: float | None = None,
    kill_signal: int = signal.SIGKILL,
    cwd: Path | None = None,
) -> ProcessRun:
    """Run ``cmd`` to its exit (blocking: call it from a thread); peak RSS from wait4.

    With ``kill_after``, ``kill_signal`` is sent that many seconds after the spawn.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PG") and k not in ("DATABASE_URL", "CRYPTOPI_BATCH_CRASH_AT")
    }
    with tempfile.TemporaryFile("w+") as err:
        spawn_wall = time.time()
        spawn_mono = time.monotonic()
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=err, env=env, text=True, cwd=cwd
        )
        reaped = threading.Event()
        timer = None
        if kill_after is not None:

            def kill() -> None:
                if not reaped.is_set():
                    proc.send_signal(kill_signal)

            timer = threading.Timer(kill_after, kill)
            timer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        end_mono = time.monotonic()
        reaped.set()
        if timer is not None:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        text = err.read()
    events = []
    for line in text.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
    return ProcessRun(
        proc.returncode,
        end_mono - spawn_mono,
        usage.ru_maxrss / 1024.0,
        spawn_wall,
        spawn_mono,
        end_mono,
        events,
        text,
    )


def cryptopi_subprocess(dsn: str, migrations_dir: Path, *extra: str) -> tuple[PhaseRun, ProcessRun]:
    proc = run_process(cli_command(dsn, migrations_dir, *extra))
    if proc.returncode != 0:
        raise RuntimeError(f"cryptopi_batch run exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    rows = sum(
        int(e.get("rows", 0))  # type: ignore[call-overload]
        for e in proc.events
        if e.get("event") == "batch_committed"
    )
    run = PhaseRun(proc.seconds, rows, start=proc.spawn_mono, end=proc.end_mono)
    run.extra["rss_mb"] = proc.rss_mb
    run.extra["to_run_started"] = proc.after_spawn("run_started")
    run.extra["to_first_commit"] = proc.after_spawn("batch_committed")
    commits = proc.event_times("batch_committed")
    if commits:
        # Where the time outside the batches went: spawn → first commit, last commit → exit.
        run.extra["last_commit_to_exit"] = proc.seconds - (commits[-1] - proc.spawn_wall)
    run.extra["commits"] = {
        int(e["batch"]): _wall(e)  # type: ignore[call-overload]
        for e in proc.events
        if e.get("event") == "batch_committed"
    }
    return run, proc


def keyset_script(dsn: str) -> PhaseRun:
    """The hand-written keyset loop as its own process (`keyset_script`), spawn to exit."""
    proc = run_process([sys.executable, "-m", "benchmarks.keyset_script", dsn], cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"the keyset loop's script exited {proc.returncode}:\n{proc.stderr}")
    rows = sum(int(e["rows"]) for e in proc.events if e.get("event") == "loop_done")  # type: ignore[call-overload]
    run = PhaseRun(proc.seconds, rows, start=proc.spawn_mono, end=proc.end_mono)
    run.extra["rss_mb"] = proc.rss_mb
    return run


class StatementTimer:
    """Times every statement cryptopi_batch sends through asyncpg (BEGIN and COMMIT
    included) by wrapping `asyncpg.Connection`'s query methods while active."""

    METHODS = ("execute", "fetch", "fetchrow", "fetchval")

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {}
        self._saved: dict[str, Any] = {}

    def __enter__(self) -> StatementTimer:
        for name in self.METHODS:
            original = getattr(asyncpg.Connection, name)
            self._saved[name] = original
            setattr(asyncpg.Connection, name, self._wrap(original))
        return self

    def __exit__(self, *exc: object) -> None:
        for name, original in self._saved.items():
            setattr(asyncpg.Connection, name, original)

    def _wrap(self, original: Any) -> Any:
        times = self.times

        async def timed(conn: asyncpg.Connection, query: str, *args: Any, **kw: Any) -> Any:
            started = time.perf_counter()
            try:
                return await original(conn, query, *args, **kw)
            finally:
                key = " ".join(query.split())[:90]
                times.setdefault(key, []).append((time.perf_counter() - started) * 1000.0)

        return timed


async def cryptopi_in_process(
    dsn: str,
    migrations_dir: Path,
    profile: Path | None = None,
    statements: StatementTimer | None = None,
) -> PhaseRun:
    """``commands.run`` in this process: no interpreter start, no imports, same work."""
    sink = io.StringIO()
    logs.configure("json", stream=sink)  # same log work as the subprocess, kept here
    profiler = cProfile.Profile() if profile is not None else None
    start = time.monotonic()
    if profiler is not None:
        profiler.enable()
    try:
        with statements if statements is not None else contextlib.nullcontext():
            result = await commands.run(
                MIGRATION,
                directory=migrations_dir,
                connection=ConnectionSettings(dsn=dsn),
                options=RunOptions(),
            )
    finally:
        if profiler is not None:
            profiler.disable()
    end = time.monotonic()
    if profiler is not None and profile is not None:
        profiler.dump_stats(str(profile))
    rows = result.outcome.progress.rows if result.outcome is not None else 0
    run = PhaseRun(end - start, rows, start=start, end=end)
    run.extra["commits"] = {
        int(e["batch"]): _wall(e)
        for e in (json.loads(line) for line in sink.getvalue().splitlines() if line.startswith("{"))
        if e.get("event") == "batch_committed"
    }
    return run


def compile_package() -> None:
    """Write the package's bytecode, as installing it does (pip compiles a wheel's modules;
    an editable install, or PYTHONDONTWRITEBYTECODE, leaves a checkout without any, and
    every process then compiles each module it imports). The keyset loop's script gets
    its own, as a script run twice would have."""
    compileall.compile_dir(Path(cryptopi_batch.__file__).parent, quiet=1)
    compileall.compile_dir(REPO / "benchmarks", quiet=1)


def startup_cost(repeat: int = 3) -> tuple[float, float]:
    """Median seconds and peak RSS (MB) of ``python -m cryptopi_batch --help``: the
    interpreter's start and the package's imports, with no database."""
    runs = [run_process([sys.executable, "-m", "cryptopi_batch", "--help"]) for _ in range(repeat)]
    return (statistics.median(r.seconds for r in runs), statistics.median(r.rss_mb for r in runs))


@dataclass
class BatchPhases:
    """Where one cryptopi_batch batch's time went (ms)."""

    batch: int
    cycle: float  # commit to commit, client clock (the log)
    work: float  # the batch statement alone (duration_ms)
    other: float  # cycle - work: claiming, BEGIN, settings, checkpoint, COMMIT, Python


async def batch_phases(dsn: str, commits: dict[int, float]) -> list[BatchPhases]:
    """Join ops.backfill_batches with the ``batch_committed`` log times."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT id, duration_ms FROM ops.backfill_batches WHERE status = 'done' ORDER BY id"
        )
    finally:
        await conn.close()
    out: list[BatchPhases] = []
    previous: float | None = None
    for r in rows:
        commit = commits.get(r["id"])
        if commit is None:
            previous = None
            continue
        if previous is not None:
            cycle = (commit - previous) * 1000.0
            work = float(r["duration_ms"])
            out.append(BatchPhases(r["id"], cycle, work, cycle - work))
        previous = commit
    return out


# --- resume on a large table ---------------------------------------------------------


@dataclass
class ResumeStep:
    label: str
    returncode: int
    to_run_started: float | None
    to_first_commit: float | None
    first_batch: int | None
    keys_done_before: int
    keys_done_after: int
    keys_total: int
    rss_mb: float
    seconds: float


async def _progress(dsn: str) -> tuple[int, int]:
    conn = await asyncpg.connect(dsn)
    try:
        if not await conn.fetchval("SELECT to_regclass('ops.backfills') IS NOT NULL"):
            return 0, 0
        row = await conn.fetchrow(
            "SELECT keys_done, keys_estimate FROM ops.backfills WHERE name LIKE '%' || $1",
            MIGRATION,
        )
    finally:
        await conn.close()
    return (0, 0) if row is None else (int(row[0]), int(row[1] or 0))


async def resume_step(
    label: str, dsn: str, migrations_dir: Path, *extra: str, kill_after: float | None = None
) -> ResumeStep:
    before, _ = await _progress(dsn)
    cmd = cli_command(dsn, migrations_dir, *extra)
    proc = await anyio.to_thread.run_sync(lambda: run_process(cmd, kill_after=kill_after))
    after, total = await _progress(dsn)
    batches = [
        int(e["batch"])  # type: ignore[call-overload]
        for e in proc.events
        if e.get("event") == "batch_committed"
    ]
    return ResumeStep(
        label,
        proc.returncode,
        proc.after_spawn("run_started"),
        proc.after_spawn("batch_committed"),
        batches[0] if batches else None,
        before,
        after,
        total,
        proc.rss_mb,
        proc.seconds,
    )
