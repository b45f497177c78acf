"""``python -m benchmarks --workload``: what a backfill costs an application (issue 11).

One run, phase after phase, each on a fresh identical copy of the table with a
``CHECKPOINT`` first: pgbench's single-row reads and writes (benchmarks/pgbench.py) alone,
beside the single ``UPDATE``, beside the hand-written keyset loop, beside ``cryptopi_batch
run`` at its defaults, and beside ``cryptopi_batch run --max-rows-per-second`` at 50 % and
25 % of the rate that run reached; then beside no database work at all, a process that
burns a CPU in the shape of the 25 % cap's batches (CPU_DUTY of every CPU_PERIOD): what
that much CPU in such bursts costs the workload on this machine, whoever burns it.
pgbench runs for ``--phase-seconds``; the backfill starts ``LEAD_IN`` seconds into it, and
a rate-capped one that has not finished a second before pgbench ends is stopped with
SIGINT (resumable; its rows/s comes from ``ops.backfill_batches``). The workload's figures
are those of the backfill's own window, from its first batch's start to its last commit
(the idle and CPU phases: the same span of their phase). With ``--repeat K`` every phase
runs K times, round after round (the caps from the first round's rate), and the table
shows medians.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import anyio
import asyncpg
from rich.console import Console
from rich.table import Table

from . import baselines, product
from .baselines import SINGLE
from .cluster import Server, verify_backfilled
from .pgbench import Latency, Transaction, Workload, run_pgbench

LEAD_IN = 2.0  # seconds of workload before the backfill starts
TAIL = 1.0  # a capped backfill is stopped this long before pgbench ends
CAP_TOLERANCE = 0.10
CAPS = (0.50, 0.25)
# The CPU-only phase: busy CPU_DUTY of every CPU_PERIOD seconds, as a backfill capped at
# 25 % of its rate is (its batches each hold the cap's 20 ms slice: ~5 ms of work).
CPU_DUTY, CPU_PERIOD = 0.25, 0.020
_BURN = """
import sys, time
duty, period, end = float(sys.argv[1]), float(sys.argv[2]), time.monotonic() + float(sys.argv[3])
while time.monotonic() < end:
    t = time.perf_counter()
    while time.perf_counter() - t < duty * period:
        pass
    time.sleep(period * (1 - duty))
"""

# The backfill's steady rate: rows after its first batch over the time from that batch's
# commit to the last one's (a rate cap paces each batch's start after the one before).
_BATCHES = """
SELECT count(*) AS batches, coalesce(sum(rows), 0) AS rows,
       extract(epoch FROM min(finished_at))::float8 AS first_end,
       extract(epoch FROM max(finished_at))::float8 AS last_end,
       (array_agg(rows ORDER BY finished_at))[1] AS first_rows,
       (array_agg(duration_ms ORDER BY finished_at))[1] AS first_ms
  FROM ops.backfill_batches WHERE status = 'done'
"""


@dataclass(frozen=True)
class Backfill:
    """What the backfill of a phase did: its window (epoch seconds), rows, rate."""

    start: float
    end: float
    rows: int
    rows_per_second: float
    finished: bool


@dataclass
class PhaseResult:
    key: str
    label: str
    workload: Latency
    backfill: Backfill | None = None
    cap: float | None = None
    runs: int = 1  # of which this is the median


def steady_rate(rows: int, first_rows: int, first_end: float, last_end: float) -> float:
    """Rows per second after the first batch (NaN with fewer than two batches)."""
    span = last_end - first_end
    return (rows - first_rows) / span if span > 0 else float("nan")


def cap_honoured(measured: float, cap: float, tolerance: float = CAP_TOLERANCE) -> bool:
    """The measured rate is within ``tolerance`` of the cap, either side (under it by
    more is a cap that costs throughput for nothing)."""
    return abs(measured / cap - 1.0) <= tolerance


async def _single_update(dsn: str) -> Backfill:
    conn = await asyncpg.connect(dsn)
    try:
        start = time.time()
        status = await conn.execute(SINGLE)
        end = time.time()
    finally:
        await conn.close()
    rows = int(status.rsplit(" ", 1)[-1])
    return Backfill(start, end, rows, rows / (end - start), True)


async def _keyset_loop(dsn: str) -> Backfill:
    run = await baselines.keyset_loop(dsn)
    wall = time.time() - time.monotonic()  # the loop's clock is monotonic
    # Its rate as cryptopi_batch's is measured: after the first batch.
    first, last = run.batches[0], run.batches[-1]
    rate = steady_rate(run.rows, first.rows, first.committed, last.committed)
    return Backfill(run.start + wall, run.end + wall, run.rows, rate, True)


async def _burn_cpu(until: float) -> None:
    """A process busy CPU_DUTY of every CPU_PERIOD until ``until`` (epoch seconds)."""
    await anyio.run_process(
        [sys.executable, "-c", _BURN, str(CPU_DUTY), str(CPU_PERIOD), str(until - time.time())]
    )


async def _cryptopi(dsn: str, migrations: Path, deadline: float, *extra: str) -> Backfill:
    cmd = product.cli_command(dsn, migrations, *extra)
    stop_after = max(deadline - time.time(), 0.5)
    proc = await anyio.to_thread.run_sync(
        lambda: product.run_process(cmd, kill_after=stop_after, kill_signal=signal.SIGINT)
    )
    if proc.returncode not in (0, 3):  # 3: stopped by the SIGINT, resumable
        raise RuntimeError(f"cryptopi_batch run exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    conn = await asyncpg.connect(dsn)
    try:
        r = await conn.fetchrow(_BATCHES)
    finally:
        await conn.close()
    if r is None or r["batches"] < 2:
        raise RuntimeError(f"cryptopi_batch run committed too few batches:\n{proc.stderr[-3000:]}")
    rows = int(r["rows"])
    rate = steady_rate(rows, int(r["first_rows"]), r["first_end"], r["last_end"])
    start = r["first_end"] - float(r["first_ms"]) / 1000.0
    return Backfill(start, r["last_end"], rows, rate, proc.returncode == 0)


async def _phase(
    server: Server,
    args: argparse.Namespace,
    workload: Workload,
    key: str,
    label: str,
    cap: float | None = None,
) -> PhaseResult:
    database = f"bench_workload_{key.replace('-', '_')}"
    dsn = await server.copy(database, args.rows)
    await server.checkpoint()  # no checkpoint of the set-up's writes lands on the phase
    seconds = int(args.phase_seconds)
    txns: list[Transaction] = []

    async def bench() -> None:
        txns.extend(
            await anyio.to_thread.run_sync(
                run_pgbench, server.cluster, workload, dsn, args.rows, seconds
            )
        )

    backfill: Backfill | None = None
    async with anyio.create_task_group() as tg:
        began = time.time()
        tg.start_soon(bench)
        await anyio.sleep(LEAD_IN)
        deadline = began + seconds - TAIL
        if key == "idle":
            await anyio.sleep(max(deadline - time.time(), 0.0))
            window = (began + LEAD_IN, deadline)
        elif key == "cpu":
            await _burn_cpu(deadline)
            window = (began + LEAD_IN, deadline)
        else:
            if key == "single":
                backfill = await _single_update(dsn)
            elif key == "keyset":
                backfill = await _keyset_loop(dsn)
            else:
                extra = ("--max-rows-per-second", f"{cap:.0f}") if cap else ()
                backfill = await _cryptopi(dsn, args.migrations_dir, deadline, *extra)
            window = (backfill.start, backfill.end)
    if backfill is not None and backfill.finished:
        await verify_backfilled(dsn, args.rows)
    await server.drop(database)
    return PhaseResult(key, label, Latency.of(txns, *window), backfill, cap)


PLAN = [
    ("idle", "workload alone (idle)"),
    ("single", "single UPDATE"),
    ("keyset", "hand-written keyset loop"),
    ("cryptopi", "cryptopi_batch run"),
]
CPU_LABEL = f"no backfill: CPU busy {CPU_DUTY:.0%} in {CPU_DUTY * CPU_PERIOD * 1000:g} ms bursts"


async def run(server: Server, args: argparse.Namespace, console: Console) -> dict[str, object]:
    """Every phase (``--repeat`` rounds of them), the table of medians, the bars and
    (``--plot``) the PNG; returns the figures."""
    workload = Workload(rate=args.workload_rate)
    rounds = max(1, args.repeat)
    runs: dict[str, list[PhaseResult]] = {}
    caps: list[tuple[str, str, float]] = []

    async def one(i: int, key: str, label: str, cap: float | None = None) -> PhaseResult:
        console.print(f"[{i + 1}/{rounds}] workload: {label} …", end=" ")
        r = await _phase(server, args, workload, key, label, cap)
        console.print(_summary(r))
        runs.setdefault(key, []).append(r)
        return r

    for i in range(rounds):
        for key, label in PLAN:
            await one(i, key, label)
        if not caps:  # from the first round's rate, the same in every round
            defaults = runs["cryptopi"][0].backfill
            assert defaults is not None
            for share in CAPS:
                cap = defaults.rows_per_second * share
                label = f"… capped at {share:.0%}: {cap:,.0f} rows/s"
                caps.append((f"cap-{share * 100:.0f}", label, cap))
        for key, label, cap in caps:
            await one(i, key, label, cap)
        await one(i, "cpu", CPU_LABEL)
    results = [median_result(rs) for rs in runs.values()]
    console.print()
    console.print(table(results, args, workload))
    console.print(bars(results))
    if args.plot is not None:
        plot(results, args.plot)
        console.print(f"Plot written to {args.plot}")
    return {
        "workload": asdict(workload),
        "phase_seconds": args.phase_seconds,
        "rounds": rounds,
        "phases": [asdict(r) for r in results],
        "runs": {k: [asdict(r) for r in rs] for k, rs in runs.items()},
    }


def median_result(rs: list[PhaseResult]) -> PhaseResult:
    """One phase's runs as one: the median of each figure (the backfill's too)."""

    def med(values: list[float]) -> float:
        return statistics.median(values)

    ws = [r.workload for r in rs]
    w = Latency(
        transactions=int(med([x.transactions for x in ws])),
        seconds=med([x.seconds for x in ws]),
        tps=med([x.tps for x in ws]),
        p50_ms=med([x.p50_ms for x in ws]),
        p99_ms=med([x.p99_ms for x in ws]),
        max_ms=med([x.max_ms for x in ws]),
    )
    backfill = None
    bs = [r.backfill for r in rs if r.backfill is not None]
    if bs:
        backfill = Backfill(
            start=0.0,
            end=med([b.end - b.start for b in bs]),
            rows=int(med([b.rows for b in bs])),
            rows_per_second=med([b.rows_per_second for b in bs]),
            finished=all(b.finished for b in bs),
        )
    first = rs[0]
    return PhaseResult(first.key, first.label, w, backfill, first.cap, len(rs))


def _summary(r: PhaseResult) -> str:
    w = r.workload
    line = f"{w.tps:.0f} tps, p99 {w.p99_ms:.1f} ms, max {w.max_ms:.1f} ms"
    if r.backfill is not None:
        line += f"; backfill {r.backfill.rows_per_second / 1000:,.1f} k rows/s"
    return line


def _x(value: float, base: float) -> str:
    return f"{value / base:.2f}" if base and value == value and base == base else "—"


def table(results: list[PhaseResult], args: argparse.Namespace, workload: Workload) -> Table:
    idle = results[0].workload
    rate = f"{workload.rate:g} tx/s" if workload.rate else "as fast as it can"
    t = Table(
        title=f"{args.rows:,} rows; pgbench: {workload.clients} clients, {workload.threads}"
        f" threads, {rate}, each a SELECT and an UPDATE of one random row by id; figures of"
        " the backfill's window; fresh identical table and CHECKPOINT before every phase"
        + (f"; median of {results[0].runs} rounds" if results[0].runs > 1 else ""),
        title_justify="left",
    )
    for col in (
        "phase",
        "backfill rows/s",
        "× cap",
        "backfill s",
        "done",
        "tps",
        "× idle",
        "p50 ms",
        "× idle",
        "p99 ms",
        "× idle",
        "max ms",
        "× idle",
    ):
        t.add_column(col, justify="left" if col == "phase" else "right")
    for r in results:
        w, b = r.workload, r.backfill
        t.add_row(
            r.label,
            f"{b.rows_per_second / 1000:,.1f} k" if b else "—",
            f"{b.rows_per_second / r.cap:.3f}" if b and r.cap else "—",
            f"{b.end - b.start:.2f}" if b else f"({w.seconds:.1f})",
            ("yes" if b.finished else f"stopped at {b.rows:,}") if b else "—",
            f"{w.tps:.0f}",
            _x(w.tps, idle.tps),
            f"{w.p50_ms:.2f}",
            _x(w.p50_ms, idle.p50_ms),
            f"{w.p99_ms:.2f}",
            _x(w.p99_ms, idle.p99_ms),
            f"{w.max_ms:.1f}",
            _x(w.max_ms, idle.max_ms),
        )
    t.caption = (
        "cryptopi_batch run: at its defaults; capped: with --max-rows-per-second at that"
        " share of its rate. backfill rows/s: the single UPDATE's rows over its seconds;"
        " cryptopi_batch's (from ops.backfill_batches) and the keyset loop's steady rate"
        " (rows after the first batch over the first to the last commit). Latency counts from each"
        " transaction's scheduled start (pgbench -R). The last row runs no database work:"
        " a process burns a CPU in the 25 % cap's shape, for what such bursts cost the"
        " workload on this machine."
    )
    t.caption_justify = "left"
    return t


def bars(results: list[PhaseResult]) -> str:
    by_key = {r.key: r for r in results}
    idle = by_key["idle"].workload
    out = ["Bars (issue 11):"]

    def line(text: str, met: bool) -> None:
        out.append(f"  {text}: {'met' if met else 'MISSED'}")

    d = by_key["cryptopi"].workload
    line(f"at defaults, max latency < 100 ms: {d.max_ms:.1f} ms", d.max_ms < 100)
    line(
        f"at defaults, p99 < 3× idle: {d.p99_ms / idle.p99_ms:.2f}×",
        d.p99_ms < 3 * idle.p99_ms,
    )
    q = by_key["cap-25"].workload
    line(
        f"at the 25 % cap, p99 within 1.5× idle: {q.p99_ms / idle.p99_ms:.2f}×",
        q.p99_ms <= 1.5 * idle.p99_ms,
    )
    for r in results:
        if r.cap and r.backfill:
            measured = r.backfill.rows_per_second
            line(
                f"cap {r.cap:,.0f} rows/s honoured within 10 %: {measured:,.0f} rows/s"
                f" ({measured / r.cap:.3f}×)",
                cap_honoured(measured, r.cap),
            )
    if "cpu" in by_key:
        c = by_key["cpu"].workload
        out.append(
            f"  for reference, no database work, a CPU busy {CPU_DUTY:.0%} in"
            f" {CPU_DUTY * CPU_PERIOD * 1000:g} ms bursts: p99 {c.p99_ms / idle.p99_ms:.2f}× idle"
        )
    return "\n".join(out)


_SHORT = {
    "idle": "workload alone",
    "single": "single UPDATE",
    "keyset": "keyset loop",
    "cryptopi": "cryptopi_batch run",
    "cap-50": "cap 50 %",
    "cap-25": "cap 25 %",
}


def plot(results: list[PhaseResult], path: Path) -> None:
    """The workload's p99 against the backfill's rate, one point per phase (PNG)."""
    import matplotlib  # noqa: PLC0415 -- only --plot needs it (the dev extra)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    idle = results[0].workload.p99_ms
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    for r in results:
        if r.key == "cpu":
            ax.axhline(
                r.workload.p99_ms,
                color="tab:red",
                linestyle="-.",
                linewidth=0.8,
                label=f"no backfill, CPU busy {CPU_DUTY:.0%} in bursts"
                f" ({r.workload.p99_ms:.1f} ms)",
            )
            continue
        x = r.backfill.rows_per_second / 1000 if r.backfill else 0.0
        marker = "s" if r.key == "single" else "o"
        ax.scatter([x], [r.workload.p99_ms], marker=marker, zorder=3)
        ax.annotate(
            _SHORT.get(r.key, r.label),
            (x, r.workload.p99_ms),
            textcoords="offset points",
            xytext=(6, 4),
            fontsize=8,
        )
    for factor, style in ((1.0, "-"), (1.5, "--"), (3.0, ":")):
        ax.axhline(
            idle * factor,
            color="grey",
            linestyle=style,
            linewidth=0.8,
            label=f"{factor:g}× idle p99 ({idle * factor:.1f} ms)",
        )
    ax.legend(loc="upper left", fontsize=8)
    rightmost = max((r.backfill.rows_per_second for r in results if r.backfill), default=1.0)
    ax.set_xlim(-0.05 * rightmost / 1000, 1.25 * rightmost / 1000)  # room for the labels
    ax.set_yscale("log")
    ax.set_xlabel("backfill rate (k rows/s)")
    ax.set_ylabel("workload p99 latency (ms, log scale)")
    ax.set_title("pgbench single-row reads and writes beside a backfill")
    ax.grid(True, which="both", linewidth=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
