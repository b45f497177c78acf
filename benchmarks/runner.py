"""``python -m benchmarks``: the phases, in order, and the tables they print."""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import platform
import pstats
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio
from rich.console import Console
from rich.table import Table

import cryptopi_batch

from . import baselines, eta, product, workload
from .analysis import Cycles, loop_cycles, median_or_nan
from .baselines import PhaseRun
from .cluster import Server, autovacuum_counts, verify_backfilled
from .product import BatchPhases
from .writer import WriterHandle, WriterStats, summarize


@dataclass(frozen=True)
class Approach:
    key: str
    label: str


APPROACHES = [
    Approach("idle", "writer alone, no backfill"),
    Approach("single", "single UPDATE"),
    Approach("keyset", "hand-written keyset loop"),
    Approach("keyset-script", "hand-written keyset loop, as a script"),
    Approach("naive", "naive IN (… LIMIT) loop"),
    Approach("cryptopi", "cryptopi_batch run"),
    Approach("cryptopi-inproc", "cryptopi_batch in-process"),
    Approach("cryptopi-w2", "cryptopi_batch run --workers 2"),
    Approach("cryptopi-sync", "cryptopi_batch run --synchronous-commit on"),
    Approach("cryptopi-nogates", "cryptopi_batch run --no-gates"),
]
# The extra arguments of the subprocess approaches.
_RUN_ARGS: dict[str, tuple[str, ...]] = {
    "cryptopi": (),
    "cryptopi-w2": ("--workers", "2"),
    "cryptopi-sync": ("--synchronous-commit", "on"),
    "cryptopi-nogates": ("--no-gates",),
}
LEGEND = """\
Approaches:
  single UPDATE: UPDATE matrices.dyn_values SET confidence = 1.0 WHERE confidence IS NULL.
  hand-written keyset loop: asyncpg, 10k keys a batch; boundary lookup (OFFSET 9999 LIMIT 1
    on the key), UPDATE … WHERE id > $1 AND id <= $2 AND confidence IS NULL and a checkpoint
    row's UPDATE in one transaction.
  hand-written keyset loop, as a script: the same loop in a process of its own (python -m
    benchmarks.keyset_script), timed as cryptopi_batch run is, spawn to exit: interpreter
    start, asyncpg's import, connect, loop, exit.
  naive IN (… LIMIT) loop: UPDATE … WHERE id IN (SELECT id … WHERE confidence IS NULL
    LIMIT 10000), autocommit, until it changes nothing.
  cryptopi_batch run: python -m cryptopi_batch run backfill_confidence --no-progress
    --log-format json (a subprocess: interpreter start, imports, connect, ops schema set-up,
    all batches, exit).
  cryptopi_batch in-process: cryptopi_batch.commands.run in the benchmark's process (the
    same work without interpreter start and imports).
  cryptopi_batch run --workers 2: the same command with two worker connections (not the
    migration's default; shows the headroom of parallel batches on this machine).
  cryptopi_batch run --synchronous-commit on: each batch's commit waits for the disk, as
    the keyset loop's does (the default, off, does not: see docs/design.md).
  cryptopi_batch run --no-gates: every health gate off (what their probes, five
    catalog reads a second on the sampler's connection, cost a run; the sampler still
    reads the WAL position and the run's budgets)."""
BY_KEY = {a.key: a for a in APPROACHES}
ONE_WORKER = ("cryptopi", "cryptopi-inproc", "cryptopi-sync", "cryptopi-nogates")


@dataclass
class Result:
    approach: Approach
    runs: list[PhaseRun] = field(default_factory=list)
    writer: list[WriterStats] = field(default_factory=list)
    wal_bytes: list[int] = field(default_factory=list)
    wal_segments: list[int] = field(default_factory=list)
    wal_stats: list[list[dict[str, Any]]] = field(default_factory=list)
    load: list[float] = field(default_factory=list)  # 1-min load average at the phase's end
    autovacuum: list[tuple[int, int]] = field(default_factory=list)
    cycles: list[float] = field(default_factory=list)
    phases: list[BatchPhases] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return statistics.median(r.seconds for r in self.runs)

    @property
    def rows_per_second(self) -> float:
        rows = self.runs[0].rows
        return rows / self.seconds if rows else float("nan")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="cryptopi_batch run against the single UPDATE and hand-written loops.",
    )
    p.add_argument("--rows", type=int, default=1_000_000, help="table size (default 1M)")
    p.add_argument(
        "--dsn",
        help="use this server (needs CREATEDB and CHECKPOINT rights)"
        " instead of starting an embedded one",
    )
    p.add_argument("--repeat", type=int, default=1, help="runs of each approach (median)")
    p.add_argument(
        "--only", help="comma-separated approaches: " + ",".join(a.key for a in APPROACHES)
    )
    p.add_argument("--writers", type=int, default=4, help="writer connections (default 4)")
    p.add_argument(
        "--writer-interval",
        type=float,
        default=0.01,
        help="seconds between one writer connection's updates (default 0.01)",
    )
    p.add_argument(
        "--idle-seconds", type=float, default=3.0, help="length of the writer-alone phase"
    )
    p.add_argument(
        "--cold-wal",
        action="store_true",
        help="skip the untimed WAL warm-up (see docs/benchmarks.md)",
    )
    p.add_argument(
        "--autovacuum",
        action="store_true",
        help="leave autovacuum on for the benchmark table (off by default: when it"
        " lands in a phase is luck)",
    )
    p.add_argument(
        "--wal-stats",
        action="store_true",
        help="break each phase's WAL down by resource manager (pg_walinspect)",
    )
    p.add_argument("--migrations-dir", type=Path, default=product.DEFAULT_MIGRATIONS)
    p.add_argument(
        "--memory",
        help="also run cryptopi_batch alone at these sizes for its"
        " peak RSS, e.g. 1000000,2000000,4000000",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="time a resume on a --resume-rows table (slow: builds it first)",
    )
    p.add_argument("--resume-rows", type=int, default=10_000_000)
    p.add_argument(
        "--resume-first-run",
        default="15s",
        help="how long the first run works before it is stopped (default 15s)",
    )
    p.add_argument(
        "--profile", type=Path, help="cProfile the in-process run into this file and print its top"
    )
    p.add_argument(
        "--statements",
        action="store_true",
        help="time every statement of the in-process cryptopi_batch runs",
    )
    p.add_argument("--json", type=Path, help="write every figure to this file")
    modes = p.add_argument_group("other modes (instead of the approaches; docs/benchmarks.md)")
    modes.add_argument(
        "--workload",
        action="store_true",
        help="pgbench reads and writes beside the single UPDATE and cryptopi_batch run at"
        " defaults and at 50 %% and 25 %% rate caps: its TPS and latency against idle",
    )
    modes.add_argument(
        "--phase-seconds",
        type=int,
        default=15,
        metavar="S",
        help="pgbench's time per --workload phase (default 15)",
    )
    modes.add_argument(
        "--workload-rate",
        type=float,
        default=400.0,
        metavar="TPS",
        help="pgbench transactions per second in all (default 400; 0: as fast as it can)",
    )
    modes.add_argument(
        "--plot", type=Path, metavar="FILE", help="--workload: its p99 against rows/s, PNG"
    )
    modes.add_argument(
        "--eta",
        action="store_true",
        help="status's ETA against the real finish of a rate-capped run",
    )
    modes.add_argument(
        "--eta-seconds",
        type=float,
        default=25.0,
        metavar="S",
        help="how long the --eta run is capped to last (default 25)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.only:
        unknown = [k for k in args.only.split(",") if k not in BY_KEY]
        if unknown:
            print(f"unknown approach: {', '.join(unknown)}", file=sys.stderr)
            return 2
    if args.phase_seconds < 5:  # 2 s of workload first, the backfill, 1 s after it
        print("--phase-seconds must be at least 5", file=sys.stderr)
        return 2
    if args.eta_seconds <= 0:
        print("--eta-seconds must be positive", file=sys.stderr)
        return 2
    return anyio.run(_main, args, backend="asyncio")


async def _main(args: argparse.Namespace) -> int:
    console = Console() if sys.stdout.isatty() else Console(width=170)
    console.print(f"Starting {'the server at --dsn' if args.dsn else 'an embedded PostgreSQL'}…")
    server = await anyio.to_thread.run_sync(Server.start, args.dsn)
    try:
        return await _bench(args, server, console)
    finally:
        await anyio.to_thread.run_sync(server.stop)


async def _bench(args: argparse.Namespace, server: Server, console: Console) -> int:
    await server.describe()
    server.autovacuum = args.autovacuum
    machine = _machine(server)
    console.print(machine_line(machine))
    keys = args.only.split(",") if args.only else [a.key for a in APPROACHES]
    chosen = [BY_KEY[k] for k in keys]
    report: dict[str, object] = {
        "machine": machine,
        "rows": args.rows,
        "repeat": args.repeat,
        "argv": sys.argv[1:],
    }
    product.compile_package()
    start_s, start_rss = await anyio.to_thread.run_sync(product.startup_cost)
    report["startup"] = {"seconds": start_s, "rss_mb": start_rss}

    console.print(f"Building the {args.rows:,}-row template (VACUUM (FREEZE, ANALYZE)) …")
    t = time.monotonic()
    await server.template(args.rows)
    console.print(f"  built in {time.monotonic() - t:.1f} s")
    if not args.cold_wal:
        await _warm_wal(server, args.rows, console)
    if args.workload or args.eta:
        if args.workload:
            report["workload"] = await workload.run(server, args, console)
        if args.eta:
            report["eta"] = await eta.run(server, args, console)
        if args.json is not None:
            args.json.write_text(json.dumps(report, indent=2, default=str))
        return 0

    results = {a.key: Result(a) for a in chosen}
    timer = product.StatementTimer() if args.statements else None
    for rep in range(args.repeat):
        shift = rep % len(chosen)
        for approach in chosen[shift:] + chosen[:shift]:
            console.print(f"[{rep + 1}/{args.repeat}] {approach.label} …", end=" ")
            profile = args.profile if rep == 0 and approach.key == "cryptopi-inproc" else None
            await _phase(server, args, approach, results[approach.key], profile, timer)
            r = results[approach.key]
            console.print(f"{r.runs[-1].seconds:.2f} s, writer max {r.writer[-1].max_ms:.0f} ms")

    console.print()
    console.print(results_table(results, args, server))
    console.print(LEGEND, markup=False, highlight=False)
    console.print(notes(args, server, start_s, start_rss))
    loads = [x for r in results.values() for x in r.load]
    console.print(
        f"  1-min load average at the end of the phases: {min(loads):.1f}–"
        f"{max(loads):.1f} on {os.cpu_count()} cores (the benchmark itself brings"
        " 1–2; more means something else ran beside it)."
    )
    console.print(bars(results))
    console.print(fixed_costs(results))
    console.print(cycles_table(results, server.segment_size))
    report["results"] = {k: _result_json(r) for k, r in results.items()}

    if args.wal_stats:
        console.print(wal_table(results))
    if timer is not None and timer.times:
        console.print(statements_table(timer, results))
        report["statements"] = {
            k: {"calls": len(v), "total_ms": sum(v)} for k, v in timer.times.items()
        }
    if args.profile is not None and "cryptopi-inproc" in results:
        _print_profile(console, args.profile)
    if args.memory:
        sizes = [int(s.replace("_", "")) for s in args.memory.split(",")]
        report["memory"] = await _memory(server, args, sizes, console)
    if args.resume:
        report["resume"] = await _resume(server, args, console)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2, default=str))
        console.print(f"Figures written to {args.json}")
    return 0


async def _warm_wal(server: Server, rows: int, console: Console) -> None:
    """One untimed single UPDATE and a CHECKPOINT, so that every timed phase finds
    recycled WAL segments, as on any server that has been running a while. Without it
    whichever phase runs first creates (zero-fills and fsyncs) new 16 MB segments and
    pays ~50 ms per segment that the others do not."""
    console.print("Warming up WAL (untimed single UPDATE on a copy, then CHECKPOINT) …")
    dsn = await server.copy("bench_warmup", rows)
    conn_run = await baselines.single_update(dsn)
    await server.drop("bench_warmup")
    await server.checkpoint()
    console.print(f"  {conn_run.seconds:.2f} s")


async def _phase(
    server: Server,
    args: argparse.Namespace,
    approach: Approach,
    result: Result,
    profile: Path | None,
    timer: product.StatementTimer | None = None,
) -> None:
    database = f"bench_{approach.key.replace('-', '_')}"
    dsn = await server.copy(database, args.rows)
    await server.checkpoint()  # no checkpoint of the set-up's writes lands on the phase
    wal = await server.wal_counters()
    writer = WriterHandle(dsn, args.rows, args.writers, args.writer_interval)
    try:
        await anyio.to_thread.run_sync(writer.wait_ready)
        run = await _run_approach(approach.key, dsn, args, profile, timer)
        result.load.append(os.getloadavg()[0])
        samples = await anyio.to_thread.run_sync(writer.stop)
    finally:
        writer.kill()
    await anyio.sleep(1.0)  # let the closed backends' I/O statistics reach pg_stat_io
    written, segments = await server.wal_since(wal)
    result.wal_bytes.append(written)
    result.wal_segments.append(segments)
    if args.wal_stats:
        end = await server.wal_counters()
        result.wal_stats.append(await server.wal_stats(wal.lsn, end.lsn))
    result.writer.append(summarize(samples, run.start, run.end))
    if approach.key != "idle":
        await verify_backfilled(dsn, args.rows)
        if run.rows != args.rows:
            raise RuntimeError(f"{approach.key} reported {run.rows} rows, not {args.rows}")
    result.autovacuum.append(await autovacuum_counts(dsn))
    result.runs.append(run)
    if approach.key in ("keyset", "naive"):
        result.cycles += loop_cycles(run.batches)
    elif approach.key in ONE_WORKER:
        phases = await product.batch_phases(dsn, run.extra["commits"])  # type: ignore[arg-type]
        result.phases += phases
        result.cycles += [p.cycle for p in phases]
    await server.drop(database)


async def _run_approach(
    key: str,
    dsn: str,
    args: argparse.Namespace,
    profile: Path | None,
    timer: product.StatementTimer | None = None,
) -> PhaseRun:
    if key == "idle":
        start = time.monotonic()
        await anyio.sleep(args.idle_seconds)
        end = time.monotonic()
        return PhaseRun(end - start, 0, start=start, end=end)
    if key in _RUN_ARGS:
        run, _ = await anyio.to_thread.run_sync(
            lambda: product.cryptopi_subprocess(dsn, args.migrations_dir, *_RUN_ARGS[key])
        )
        return run
    if key == "cryptopi-inproc":
        return await product.cryptopi_in_process(dsn, args.migrations_dir, profile, timer)
    if key == "keyset-script":
        return await anyio.to_thread.run_sync(lambda: product.keyset_script(dsn))
    runners: dict[str, Callable[[str], Awaitable[PhaseRun]]] = {
        "single": baselines.single_update,
        "keyset": baselines.keyset_loop,
        "naive": baselines.naive_loop,
    }
    return await runners[key](dsn)


# --- tables ---------------------------------------------------------------------------


def _fmt(value: float | None, spec: str = ".2f", none: str = "—") -> str:
    if value is None or value != value:  # None or NaN
        return none
    return format(value, spec)


def results_table(results: dict[str, Result], args: argparse.Namespace, server: Server) -> Table:
    single = results.get("single")
    keyset = results.get("keyset")
    repeat = args.repeat
    runs = f"median of {repeat} runs" if repeat > 1 else "1 run"
    title = (
        f"{args.rows:,} rows, {runs}"
        f" each; fresh identical table and CHECKPOINT before every timed phase;"
        f" writer: {args.writers} connections, one UPDATE each every"
        f" {args.writer_interval * 1000:g} ms"
    )
    t = Table(title=title, title_justify="left")
    for col, justify in (
        ("approach", "left"),
        ("seconds", "right"),
        ("rows/s", "right"),
        ("× single UPDATE", "right"),
        ("× keyset loop", "right"),
        ("writer max stall ms", "right"),
        ("writer p99 ms", "right"),
        ("peak RSS MB", "right"),
        ("WAL MB", "right"),
        ("new WAL segments", "right"),
    ):
        t.add_column(col, justify=justify)  # type: ignore[arg-type]
    for key, r in results.items():
        if key == "idle":
            seconds = _fmt(r.seconds)
            rate = x_single = x_keyset = "—"
        else:
            seconds = _fmt(r.seconds)
            if repeat > 1:
                lo = min(x.seconds for x in r.runs)
                hi = max(x.seconds for x in r.runs)
                seconds += f" ({lo:.2f}–{hi:.2f})"
            rate = f"{r.rows_per_second / 1000:,.0f} k"
            x_single = (
                _fmt(r.rows_per_second / single.rows_per_second) if single and single.runs else "—"
            )
            x_keyset = (
                _fmt(r.rows_per_second / keyset.rows_per_second) if keyset and keyset.runs else "—"
            )
        worst = max(w.max_ms for w in r.writer)
        p99 = statistics.median(w.p99_ms for w in r.writer)
        rss = [
            float(x.extra["rss_mb"])  # type: ignore[arg-type]
            for x in r.runs
            if "rss_mb" in x.extra
        ]
        wal = statistics.median(r.wal_bytes) / 2**20
        t.add_row(
            r.approach.label,
            seconds,
            rate,
            x_single,
            x_keyset,
            f"{worst:,.0f}",
            f"{p99:.1f}",
            _fmt(max(rss), ".0f") if rss else "—",
            f"{wal:,.0f}",
            str(max(r.wal_segments)),
        )
    return t


def notes(args: argparse.Namespace, server: Server, start_s: float, start_rss: float) -> str:
    lines = [
        "Notes:",
        "  × columns: rows/s divided by that row's rows/s (above 1 is faster).",
        "  Each phase runs in a fresh CREATE DATABASE … TEMPLATE copy of one frozen, analysed"
        " table, after a CHECKPOINT.",
        "  Baselines time the work on an open connection; the cryptopi_batch subprocess row"
        " times spawn to exit.",
        f"  Process start of `python -m cryptopi_batch --help` alone: {start_s:.2f} s,"
        f" {start_rss:.0f} MB RSS (the package's bytecode written first, as installing it"
        " does).",
        "  writer max stall: the longest single-row UPDATE that overlapped the phase (worst of"
        " the runs); p99: median of the runs.",
        "  WAL MB includes the writer's own WAL (a few MB). new WAL segments: 16 MB WAL files"
        " created (zero-filled and fsynced) during the phase, worst run (pg_stat_io).",
    ]
    if args.cold_wal:
        lines.append("  --cold-wal: no WAL warm-up; the first phase creates new WAL segments.")
    else:
        lines.append(
            "  WAL warmed up first (an untimed UPDATE and CHECKPOINT): phases reuse"
            " recycled segments."
        )
    lines.append(
        "  Autovacuum is off for the benchmark table (--autovacuum leaves it on)."
        if not args.autovacuum
        else "  --autovacuum: autovacuum on for the benchmark table; see the JSON's counts."
    )
    return "\n".join(lines)


def paired_ratios(r: Result, base: Result) -> list[float]:
    """``r``'s rows/s over ``base``'s, round by round: each round runs every approach once,
    close together in time, so drift of the machine from one round to the next (seconds
    of every approach moved by ±10 % between rounds here) cancels out of these ratios,
    where it stays in the ratio of the medians."""
    return [b.seconds / x.seconds for x, b in zip(r.runs, base.runs, strict=False)]


def _bar(label: str, ratio: float, paired: list[float], bar: float | None) -> str:
    """One line of ratios against a baseline, judged against ``bar`` (``None``: shown, not
    judged)."""

    def verdict(x: float) -> str:
        return "" if bar is None else (" met" if x >= bar else " MISSED")

    head = f"  ≥ {bar:.2f}× {label}" if bar is not None else f"  (not a bar: beside {label}"
    line = f"{head} rows/s: {ratio:.3f}×{verdict(ratio)}"
    if len(paired) > 1:
        mid = statistics.median(paired)
        line += (
            f"; round by round: median {mid:.3f}× ({min(paired):.2f}–{max(paired):.2f})"
            f"{verdict(mid)}"
        )
    return line if bar is not None else line + ")"


def bars(results: dict[str, Result]) -> str:
    r = results.get("cryptopi")
    if r is None or not r.runs:
        return ""
    out = [
        "Bars for `cryptopi_batch run` (subprocess; ratio of the medians, then the median"
        " of each round's own ratio):"
    ]
    for key, label, bar in (("single", "single UPDATE", 0.90), ("keyset", "keyset loop", 0.95)):
        base = results.get(key)
        if base and base.runs:
            out.append(
                _bar(label, r.rows_per_second / base.rows_per_second, paired_ratios(r, base), bar)
            )
    worst = max(w.max_ms for w in r.writer)
    out.append(f"  writer max stall < 50 ms: {worst:.0f} ms {'met' if worst < 50 else 'MISSED'}")
    script = results.get("keyset-script")
    if script and script.runs:  # the same loop timed as `run` is, from spawn to exit
        ratio = r.rows_per_second / script.rows_per_second
        out.append(_bar("the keyset loop as a script", ratio, paired_ratios(r, script), None))
    return "\n".join(out)


def fixed_costs(results: dict[str, Result]) -> str:
    r = results.get("cryptopi")
    if r is None or not r.runs:
        return ""

    def med(key: str) -> float:
        values = [
            float(x.extra[key])  # type: ignore[arg-type]
            for x in r.runs
            if x.extra.get(key) is not None
        ]
        return statistics.median(values) if values else float("nan")

    start, first, tail = med("to_run_started"), med("to_first_commit"), med("last_commit_to_exit")
    return (
        "`cryptopi_batch run` outside its batches (median): spawn → run_started"
        f" {start:.3f} s, spawn → first batch committed {first:.3f} s, last batch"
        f" committed → process exit {tail:.3f} s."
    )


def cycles_table(results: dict[str, Result], segment: int) -> Table:
    t = Table(title="Per-batch cycle (commit to commit, ms; all runs pooled)", title_justify="left")
    for col in (
        "approach",
        "batches",
        "median",
        "p95",
        "max",
        "spikes > 2× median",
        "spike time beyond median",
        "median UPDATE",
        "median all else",
        "spikes at a WAL segment switch",
    ):
        t.add_column(col, justify="left" if col == "approach" else "right")
    for key, r in results.items():
        c = Cycles.of(r.cycles)
        if c is None:
            continue
        work = other = at_switch = "—"
        if r.phases:
            work = _fmt(median_or_nan([p.work for p in r.phases]), ".1f")
            other = _fmt(median_or_nan([p.other for p in r.phases]), ".1f")
        elif key == "keyset":
            pairs = [(a, b) for run in r.runs for a, b in itertools.pairwise(run.batches)]
            work = _fmt(median_or_nan([(b.worked - b.looked_up) * 1000 for _, b in pairs]), ".1f")
            other = _fmt(
                median_or_nan(
                    [(b.committed - a.committed - b.worked + b.looked_up) * 1000 for a, b in pairs]
                ),
                ".1f",
            )
            at_switch = _spikes_at_switch(r.runs, c.median, segment)
        t.add_row(
            r.approach.label,
            str(c.batches),
            f"{c.median:.1f}",
            f"{c.p95:.1f}",
            f"{c.max:.1f}",
            str(c.spikes),
            f"{c.spike_ms:,.0f}",
            work,
            other,
            at_switch,
        )
    t.caption = (
        "UPDATE: the batch statement alone (cryptopi_batch: duration_ms; keyset loop:"
        " its own timer). All else: the rest of the cycle (finding the next"
        " boundary, claiming, BEGIN, settings, checkpoint, COMMIT, Python). A batch"
        " is at a WAL segment switch when its WAL crossed a segment boundary (WAL"
        " position read in the checkpoint's RETURNING)."
    )
    t.caption_justify = "left"
    return t


def statements_table(timer: product.StatementTimer, results: dict[str, Result]) -> Table:
    r = results.get("cryptopi-inproc")
    runs = len(r.runs) if r else 1
    commits = [x.extra.get("commits") for x in r.runs] if r else []
    batches = max(1, sum(len(c) for c in commits if isinstance(c, dict)))
    t = Table(
        title="Statements of the in-process cryptopi_batch runs, as asyncpg waits for them"
        f" ({runs} runs, {batches} batches)",
        title_justify="left",
    )
    for col in ("statement", "calls", "calls per batch", "mean ms", "ms per batch"):
        t.add_column(col, justify="left" if col == "statement" else "right")
    rows = sorted(timer.times.items(), key=lambda kv: -sum(kv[1]))
    for sql, times in rows[:25]:
        t.add_row(
            sql,
            str(len(times)),
            f"{len(times) / batches:.2f}",
            f"{sum(times) / len(times):.2f}",
            f"{sum(times) / batches:.2f}",
        )
    return t


def wal_table(results: dict[str, Result]) -> Table:
    t = Table(
        title="WAL by resource manager (MB: records + full-page images; first run)",
        title_justify="left",
    )
    t.add_column("approach")
    managers: list[str] = []
    for r in results.values():
        for row in r.wal_stats[0] if r.wal_stats else []:
            if row["resource_manager"] not in managers:
                managers.append(str(row["resource_manager"]))
    for m in managers[:6]:
        t.add_column(m, justify="right")
    t.add_column("of which FPI", justify="right")
    for r in results.values():
        rows = {str(x["resource_manager"]): x for x in (r.wal_stats[0] if r.wal_stats else [])}
        cells = [
            f"{int(rows[m]['combined_size']) / 2**20:,.0f}" if m in rows else "—"
            for m in managers[:6]
        ]
        fpi = sum(int(x["fpi_size"]) for x in rows.values()) / 2**20
        t.add_row(r.approach.label, *cells, f"{fpi:,.0f}")
    return t


def _spikes_at_switch(runs: list[PhaseRun], median: float, segment: int) -> str:
    """ "k of n": how many of the loop's spikes fell on a batch whose WAL crossed into a new
    segment, and how many batches crossed one at all."""
    spikes = crossing = both = 0
    for run in runs:
        for a, b in itertools.pairwise(run.batches):
            if a.wal is None or b.wal is None:
                continue
            crossed = a.wal // segment != b.wal // segment
            spike = (b.committed - a.committed) * 1000 > 2 * median
            spikes += spike
            crossing += crossed
            both += spike and crossed
    return f"{both} of {spikes} ({crossing} switches)"


def _print_profile(console: Console, path: Path) -> None:
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.strip_dirs().sort_stats("tottime").print_stats(20)
    console.print(f"cProfile of the in-process run ({path}), top 20 by own time:")
    console.print(out.getvalue(), markup=False, highlight=False)


async def _memory(
    server: Server, args: argparse.Namespace, sizes: list[int], console: Console
) -> list[dict[str, float]]:
    table = Table(
        title="cryptopi_batch run alone (no writer): peak RSS by table size", title_justify="left"
    )
    for col in ("rows", "seconds", "rows/s", "peak RSS MB", "new WAL segments"):
        table.add_column(col, justify="right")
    out = []
    for rows in sizes:
        console.print(f"memory: {rows:,} rows …")
        dsn = await server.copy("bench_memory", rows)
        await server.checkpoint()
        wal = await server.wal_counters()
        run, _ = await anyio.to_thread.run_sync(
            product.cryptopi_subprocess, dsn, args.migrations_dir
        )
        await anyio.sleep(1.0)
        _, segments = await server.wal_since(wal)
        await verify_backfilled(dsn, rows)
        await server.drop("bench_memory")
        rss = float(run.extra["rss_mb"])  # type: ignore[arg-type]
        out.append(
            {"rows": rows, "seconds": run.seconds, "rss_mb": rss, "new_wal_segments": segments}
        )
        table.add_row(
            f"{rows:,}",
            f"{run.seconds:.2f}",
            f"{rows / run.seconds / 1000:,.0f} k",
            f"{rss:.0f}",
            str(segments),
        )
        if rows != args.rows:
            await server.drop(server.templates.pop(rows))
    console.print(table)
    return out


async def _resume(
    server: Server, args: argparse.Namespace, console: Console
) -> list[dict[str, object]]:
    rows = args.resume_rows
    console.print(f"resume: building a {rows:,}-row table …")
    t = time.monotonic()
    await server.create_table_db("bench_resume", rows)
    console.print(f"  built in {time.monotonic() - t:.1f} s")
    dsn = server.dsn("bench_resume")
    mdir = args.migrations_dir
    steps = []
    plan: list[tuple[str, tuple[str, ...], float | None]] = [
        (
            f"first start, stopped by --max-duration {args.resume_first_run}",
            ("--max-duration", args.resume_first_run),
            None,
        ),
        ("resume after that clean stop (--max-duration 3s)", ("--max-duration", "3s"), None),
        ("resume again, killed with SIGKILL after 3 s", (), 3.0),
        ("resume after the kill -9 (--max-duration 3s)", ("--max-duration", "3s"), None),
    ]
    for label, extra, kill_after in plan:
        await server.checkpoint()
        console.print(f"resume: {label} …")
        steps.append(await product.resume_step(label, dsn, mdir, *extra, kill_after=kill_after))
    await server.drop("bench_resume")
    table = Table(title=f"Resume on {rows:,} rows: from process spawn to …", title_justify="left")
    for col in (
        "step",
        "exit",
        "run_started s",
        "first batch committed s",
        "first batch id",
        "done before",
        "done after",
        "peak RSS MB",
    ):
        table.add_column(col, justify="left" if col == "step" else "right")
    for s in steps:
        total = s.keys_total or 1
        table.add_row(
            s.label,
            str(s.returncode),
            _fmt(s.to_run_started, ".3f"),
            _fmt(s.to_first_commit, ".3f"),
            str(s.first_batch or "—"),
            f"{s.keys_done_before / total:.0%}",
            f"{s.keys_done_after / total:.0%}",
            f"{s.rss_mb:.0f}",
        )
    table.caption = (
        "Times from the JSON log's run_started and first batch_committed events"
        " against the wall clock just before the spawn. CHECKPOINT before each"
        " step."
    )
    table.caption_justify = "left"
    console.print(table)
    return [asdict(s) for s in steps]


# --- the machine ----------------------------------------------------------------------


def _machine(server: Server) -> dict[str, object]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "product": _product_version(),
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "postgres": server.version,
        "embedded": server.cluster is not None,
        "settings": server.settings,
    }


def _product_version() -> str:
    """Which cryptopi_batch is measured: its directory, and the git commit it is at (with
    ``+uncommitted`` when its files differ from that commit)."""
    where = Path(cryptopi_batch.__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        # A `git archive` snapshot (see docs/benchmarks.md) carries its commit in COMMIT.
        stamp = where.parent / "COMMIT"
        if stamp.is_file():
            return f"cryptopi_batch at {stamp.read_text().strip()} (snapshot)"
        return f"cryptopi_batch from {where} (not a git work tree)"
    return f"cryptopi_batch at {head}{'+uncommitted' if dirty else ''}"


def machine_line(m: dict[str, object]) -> str:
    settings = m["settings"]
    assert isinstance(settings, dict)
    shown = ", ".join(f"{k}={v}" for k, v in settings.items())
    kind = "embedded" if m["embedded"] else "external"
    return (
        f"{m['product']}. Machine: {m['cores']} cores ({m['cpu']}), {m['memory_gb']} GB"
        f" RAM, Python {m['python']}; PostgreSQL {m['postgres']} ({kind}): {shown}"
    )


def _result_json(r: Result) -> dict[str, object]:
    c = Cycles.of(r.cycles)
    return {
        "label": r.approach.label,
        "seconds": [x.seconds for x in r.runs],
        "rows": r.runs[0].rows if r.runs else 0,
        "rows_per_second": r.rows_per_second if r.runs else None,
        "writer": [asdict(w) for w in r.writer],
        "wal_bytes": r.wal_bytes,
        "wal_segments": r.wal_segments,
        "wal_stats": r.wal_stats,
        "load": r.load,
        "cycle_ms": [round(c, 2) for c in r.cycles],
        "batches": [
            [
                {
                    "lookup_ms": round((b.looked_up - b.began) * 1000, 2),
                    "update_ms": round((b.worked - b.looked_up) * 1000, 2),
                    "commit_ms": round((b.committed - b.worked) * 1000, 2),
                    "cycle_ms": round((b.committed - a.committed) * 1000, 2),
                    "wal": b.wal,
                }
                for a, b in itertools.pairwise(x.batches)
            ]
            for x in r.runs
        ],
        "phases": [asdict(p) for p in r.phases],
        "autovacuum": r.autovacuum,
        "extra": [{k: v for k, v in x.extra.items() if k != "commits"} for x in r.runs],
        "cycles": asdict(c) if c else None,
    }
