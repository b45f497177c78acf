"""``python -m benchmarks --eta``: how good ``status``'s ETA is on a steady run (issue 10).

``cryptopi_batch run`` (a subprocess) works through a fresh copy of the table under
``--max-rows-per-second`` chosen so that the run lasts about ``--eta-seconds``; meanwhile
``cryptopi_batch.commands.status`` (what ``status --json`` prints) is read in-process every
``POLL`` seconds. After the run, each sample from ``FROM_PERCENT`` progress on is checked:
its predicted finish (the sample's time + ``eta_seconds``) against the process's real exit.
The bar: every prediction within ±20 % of the time that was really left.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import anyio
from rich.console import Console
from rich.table import Table

from cryptopi_batch import commands
from cryptopi_batch.db import ConnectionSettings

from . import product
from .cluster import Server, verify_backfilled

POLL = 1.0
FROM_PERCENT = 10.0
BAR = 0.20


@dataclass(frozen=True)
class Sample:
    """One ``status`` reading: seconds since the run's spawn, percent done, ETA."""

    elapsed: float
    percent: float | None
    eta_seconds: float | None
    status: str


@dataclass(frozen=True)
class Check:
    """One sample against the real finish (seconds since the spawn)."""

    elapsed: float
    percent: float
    eta_seconds: float
    predicted: float  # elapsed + eta
    real: float
    error: float  # predicted - real (seconds; > 0: predicted too late)
    of_remaining: float  # error / (real - elapsed): the ETA's own relative error
    of_run: float  # error / real: the predicted finish against the run's real length


def checks(samples: list[Sample], real: float, from_percent: float = FROM_PERCENT) -> list[Check]:
    """The samples with an ETA, from ``from_percent`` on, taken before the real finish."""
    out = []
    for s in samples:
        if s.percent is None or s.eta_seconds is None or s.percent < from_percent:
            continue
        remaining = real - s.elapsed
        if remaining <= 0 or s.percent >= 100.0:
            continue
        predicted = s.elapsed + s.eta_seconds
        error = predicted - real
        out.append(
            Check(
                s.elapsed,
                s.percent,
                s.eta_seconds,
                predicted,
                real,
                error,
                error / remaining,
                error / real,
            )
        )
    return out


def worst(values: list[float]) -> float:
    """The value farthest from zero (NaN for none)."""
    return max(values, key=abs) if values else float("nan")


async def _poll(dsn: str, migrations: Path, spawn: float, samples: list[Sample]) -> None:
    connection = ConnectionSettings(dsn=dsn)
    while True:
        now = time.monotonic()
        rows = await commands.status(product.MIGRATION, directory=migrations, connection=connection)
        if rows:
            r = rows[0]
            samples.append(Sample(now - spawn, r.percent, r.eta_seconds, str(r.status)))
        await anyio.sleep(max(POLL - (time.monotonic() - now), 0.0))


async def run(server: Server, args: argparse.Namespace, console: Console) -> dict[str, object]:
    rows = args.rows
    cap = rows / args.eta_seconds
    dsn = await server.copy("bench_eta", rows)
    await server.checkpoint()
    console.print(
        f"eta: cryptopi_batch run --max-rows-per-second {cap:,.0f} on {rows:,} rows"
        f" (~{args.eta_seconds:g} s), status every {POLL:g} s …"
    )
    cmd = product.cli_command(dsn, args.migrations_dir, "--max-rows-per-second", f"{cap:.0f}")
    samples: list[Sample] = []
    spawn = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(_poll, dsn, args.migrations_dir, spawn, samples)
        proc = await anyio.to_thread.run_sync(product.run_process, cmd)
        tg.cancel_scope.cancel()
    if proc.returncode != 0:
        raise RuntimeError(f"cryptopi_batch run exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    await verify_backfilled(dsn, rows)
    await server.drop("bench_eta")
    real = proc.end_mono - spawn
    found = checks(samples, real)
    console.print(table(found, real, cap))
    commits = proc.event_times("batch_committed")
    work_end = worst_work = float("nan")
    if commits:
        # The work's own end: what the ETA extrapolates to; the rest is completion and exit.
        work_end = commits[-1] - proc.spawn_wall + (proc.spawn_mono - spawn)
        worst_work = worst([c.of_remaining for c in checks(samples, work_end)])
        console.print(
            f"Last batch committed {work_end:.2f} s after the spawn, {real - work_end:.2f} s"
            " before the process exited (completion, exit); against that commit the ETA's"
            f" worst error is {worst_work:+.1%} of the time left."
        )
    of_remaining = worst([c.of_remaining for c in found])
    of_run = worst([c.of_run for c in found])
    worst_s = worst([c.error for c in found])
    met = bool(found) and abs(of_remaining) <= BAR
    console.print(
        f"Bar (issue 10): from {FROM_PERCENT:g} % on, the ETA within ±{BAR:.0%} of the time"
        f" really left: worst {of_remaining:+.1%} ({len(found)} samples)"
        f" {'met' if met else 'MISSED'}; in seconds: worst {worst_s:+.2f} s; the predicted"
        f" finish against the run's real length: worst {of_run:+.1%}."
    )
    return {
        "rows": rows,
        "cap": cap,
        "real_seconds": real,
        "samples": [asdict(s) for s in samples],
        "worst_of_remaining": of_remaining,
        "worst_of_run": of_run,
        "worst_seconds": worst_s,
        "last_commit_seconds": work_end,
        "worst_of_remaining_to_last_commit": worst_work,
    }


def table(found: list[Check], real: float, cap: float) -> Table:
    t = Table(
        title=f"status's ETA during a run capped at {cap:,.0f} rows/s; real finish"
        f" {real:.2f} s after the spawn (process exit)",
        title_justify="left",
    )
    for col in (
        "elapsed s",
        "percent",
        "eta s",
        "predicted finish s",
        "error s",
        "÷ time left",
        "÷ run length",
    ):
        t.add_column(col, justify="right")
    for c in found:
        t.add_row(
            f"{c.elapsed:.1f}",
            f"{c.percent:.1f}",
            f"{c.eta_seconds:.1f}",
            f"{c.predicted:.2f}",
            f"{c.error:+.2f}",
            f"{c.of_remaining:+.1%}",
            f"{c.of_run:+.1%}",
        )
    return t
