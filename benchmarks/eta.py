"""``--eta``: how close the ETA of ``status`` comes to the real finish of a steady run.

A ``cryptopi_batch run`` paced by ``--max-rows-per-second`` (so that it lasts about
``--eta-seconds``) works on a fresh copy of the table while ``status`` is asked twice a
second in this process; each answer's predicted finish (when it was asked + its ETA) is
compared with the run's ``completed_at``, as a share of the time that was left.
"""

from __future__ import annotations

import subprocess
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import asyncpg
from rich.console import Console
from rich.table import Table

from cryptopi_batch import commands
from cryptopi_batch.db import ConnectionSettings

from . import product
from .cluster import Server

DATABASE = "bench_eta"
SAMPLE_EVERY = 0.5
PROGRESS = (10, 25, 50, 75, 90)  # percent done at which the error is shown


@dataclass(frozen=True)
class EtaSample:
    at: datetime
    percent: float
    eta_seconds: float


async def measure(
    server: Server, rows: int, seconds: float, migrations_dir: Path, console: Console
) -> dict[str, object]:
    """Run once, sample ``status``; print and return the errors from 10 % progress on."""
    dsn = await server.copy(DATABASE, rows)
    rate = max(rows / seconds, 1.0)
    cmd = product.cli_command(dsn, migrations_dir, "--max-rows-per-second", f"{rate:g}")
    console.print(f"eta: {rows:,} rows at --max-rows-per-second {rate:,.0f} …")
    samples: list[EtaSample] = []
    connection = ConnectionSettings(dsn=dsn)

    async def sample() -> None:
        while True:
            asked = datetime.now(UTC)
            try:
                found = await commands.status(None, directory=None, connection=connection)
            except Exception:  # the run may not have set up its schema yet
                found = []
            for row in found:
                if row.status == "running" and row.percent and row.eta_seconds is not None:
                    samples.append(EtaSample(asked, row.percent, row.eta_seconds))
            await anyio.sleep(SAMPLE_EVERY)

    async with (
        await anyio.open_process(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(sample)
        await proc.wait()
        tg.cancel_scope.cancel()
    conn = await asyncpg.connect(dsn)
    try:
        run = await conn.fetchrow("SELECT started_at, completed_at FROM ops.backfills")
    finally:
        await conn.close()
    await server.drop(DATABASE)
    if proc.returncode != 0 or run is None or run["completed_at"] is None:
        console.print(f"eta: the run exited {proc.returncode} without completing")
        return {"returncode": proc.returncode}
    begun, completed = run["started_at"], run["completed_at"]
    whole = (completed - begun).total_seconds()
    judged = [
        Judged(
            s,
            (s.at + timedelta(seconds=s.eta_seconds) - completed).total_seconds(),
            (completed - s.at).total_seconds(),
        )
        for s in samples
        if s.percent >= 10 and completed > s.at
    ]
    table = Table(title="ETA of `status` against the real finish", title_justify="left")
    for column in ("progress", "time left s", "ETA s", "off s", "of time left", "of the run"):
        table.add_column(column, justify="right")
    for target in PROGRESS:
        near = [j for j in judged if j.sample.percent >= target]
        if near:
            j = near[0]
            table.add_row(
                f"{j.sample.percent:.0f} %",
                f"{j.left:.1f}",
                f"{j.sample.eta_seconds:.1f}",
                f"{j.off:+.1f}",
                f"{abs(j.off) / j.left:.1%}",
                f"{abs(j.off) / whole:.1%}",
            )
    worst_left = max((abs(j.off) / j.left for j in judged), default=float("nan"))
    worst_run = max((abs(j.off) / whole for j in judged), default=float("nan"))
    table.caption = (
        f"{len(judged)} answers from 10 % on (every {SAMPLE_EVERY:g} s) of a {whole:.1f} s"
        f" run; the worst is off by {worst_run:.1%} of the run ({worst_left:.1%} of the"
        " time that was left, the last answers' few tenths of a second)."
        " off: asked + ETA - completed_at."
    )
    table.caption_justify = "left"
    console.print(table)
    return {
        "rows": rows,
        "rate": rate,
        "seconds": whole,
        "worst_of_run": worst_run,
        "worst_of_time_left": worst_left,
        "samples": [asdict(j.sample) | {"off": j.off, "left": j.left} for j in judged],
    }


@dataclass(frozen=True)
class Judged:
    sample: EtaSample
    off: float  # seconds the predicted finish was after (+) or before (-) the real one
    left: float  # seconds that were really left
