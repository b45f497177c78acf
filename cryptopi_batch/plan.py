"""`plan NAME`: what a run of a migration would do, writing nothing: its key range and
rows, its batches, the first batch's SQL with its bounds and its plan, and the warnings
that matter. ``sample`` also times the first batch, run in a transaction rolled back
(which is a write: see docs/cli.md).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from .commands import setup_errors
from .db import ConnectionSettings, close_quietly
from .discovery import discover, load, resolve
from .errors import UsageError, one_line
from .keys import KeyRange, render_range
from .keysql import RangeQueries
from .migration import Batch, run_work
from .opsstore import OPS
from .preflight import preflight
from .settings import RunOptions, RunSettings, resolve_settings
from .sqlfiles import query
from .target import Target
from .transactions import set_local, transaction

MANY_BATCHES = 10
"""A sequential scan in the first batch's plan is flagged on a table of more batches than
this (on a smaller one, reading it all is what the planner rightly prefers), or always
when it remains with sequential scans priced out (no index the batch can use)."""

NEAR_TIMEOUT = 0.5
"""A sampled batch that takes more than this share of the statement timeout is flagged."""


@dataclass(frozen=True)
class Plan:
    name: str
    table: str
    key: list[str]
    first_key: list[str] | None  # None: the table is empty
    last_key: list[str] | None
    rows: int | None  # None: never analysed (and not counted)
    exact: bool
    batch_size: int
    batches: int | None
    first_batch_sql: str | None  # None: a process= migration (its SQL is its own)
    first_batch_bounds: list[str]
    explain: list[str]
    sample_seconds: float | None = None
    sample_rows: int | None = None
    estimated_seconds: float | None = None
    warnings: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


async def plan(  # noqa: PLR0913 -- keyword-only: a command's options
    name: str,
    *,
    directory: Path,
    connection: ConnectionSettings,
    options: RunOptions | None = None,
    exact: bool = False,
    sample: bool = False,
) -> Plan:
    """The plan of migration ``name``; writes nothing unless ``sample``."""
    file = resolve(discover(directory), name)
    if file.kind != "py":
        raise UsageError(
            f"{file.filename}: plan plans a backfill (.py); a .sql file runs once in one"
            " transaction (`migrate --dry-run` lists it)"
        )
    migration = load(file)
    settings = resolve_settings(options or RunOptions(), migration.backfill)
    conn = await connection.connect_or_fail()
    try:
        async with setup_errors(connection):
            checked = await preflight(conn, migration, settings)
            target = checked.target
            # No statement timeout for an exact count, which reads the whole table.
            limits = query("read_only") + " " + settings.timeouts.local(statement=not exact)
            async with transaction(conn, limits):
                found = await _read(conn, migration.backfill.work, target, settings, exact)
            found = Plan(**{**asdict(found), "name": migration.name})
            if sample and found.first_key is not None:
                found = await _sample(conn, migration.backfill.work, target, settings, found)
        return found
    finally:
        await close_quietly(conn)


async def _read(
    conn: asyncpg.Connection, work: Any, target: Target, settings: RunSettings, exact: bool
) -> Plan:
    keys = RangeQueries(target)
    last = await keys.last_key(conn)
    first = upper = None
    if last is not None:
        first = await keys.nth(conn, KeyRange(None, last), 1)
        upper = await keys.nth(conn, KeyRange(None, last), settings.batch_size) or last
    rows: int | None = target.estimate if target.estimate >= 0 else None
    if exact:
        rows = await OPS.count_rows(conn, target.quoted)
    batches = None if rows is None else math.ceil(rows / settings.batch_size)
    sql: str | None = None
    bounds: list[str] = []
    explain: list[str] = []
    warnings: list[str] = []
    if isinstance(work, str) and upper is not None:
        sql, bounds = render_range(work, target.key, KeyRange(None, upper), 0)
        try:
            async with conn.transaction():  # a savepoint: the reads after it go on
                explain = await OPS.explain(conn, sql, bounds)
        except asyncpg.PostgresError as exc:
            # The executor's own checks (e.g. an UPDATE of a table published without a
            # replica identity): the first batch would fail the same way.
            warnings.append(f"the first batch cannot run: {one_line(str(exc))}")
        if _seq_scan(explain, target):
            # With sequential scans priced out, a plan that still scans has no index to use.
            await conn.execute(set_local(enable_seqscan="off"))
            forced = _seq_scan(await OPS.explain(conn, sql, bounds), target)
            await conn.execute(set_local(enable_seqscan="on"))
            many = rows is not None and rows > MANY_BATCHES * settings.batch_size
            if forced or many:
                warnings.append(_seq_scan_warning(target, forced=forced))
    warnings += _table_warnings(await OPS.table_facts(conn, target.table), target.table)
    if rows is None:
        warnings.append(
            f"{target.table} was never analysed: no estimate of its rows (ANALYZE it, or"
            " --exact counts them)"
        )
    return Plan(
        name="",
        table=target.table,
        key=list(target.key.names),
        first_key=None if first is None else list(first),
        last_key=None if last is None else list(last),
        rows=rows,
        exact=exact,
        batch_size=settings.batch_size,
        batches=batches,
        first_batch_sql=sql,
        first_batch_bounds=list(bounds),
        explain=explain,
        warnings=warnings,
    )


def _seq_scan(explain: list[str], target: Target) -> bool:
    short = target.table.rsplit(".", 1)[-1]
    return any("Seq Scan on" in line and short in line for line in explain)


def _seq_scan_warning(target: Target, *, forced: bool) -> str:
    key = ", ".join(target.key.names)
    if forced:
        return (
            f"the batch's plan can use no index on ({key}): every batch reads all of"
            f" {target.table}; does the SQL bound the key with {{range}} on its own table?"
        )
    return (
        f"the first batch's plan scans {target.table} sequentially (the planner prefers it"
        f" to the index on ({key})): every batch may read the whole table"
    )


def _table_warnings(facts: asyncpg.Record, table: str) -> list[str]:
    found = []
    if facts["triggers"]:
        found.append(f"triggers on {table} fire for every row: {', '.join(facts['triggers'])}")
    fks = [*facts["references_out"], *facts["references_in"]]
    if fks:
        found.append(f"foreign keys checked on {table}'s changes: {', '.join(fks)}")
    if facts["publications"] and facts["no_replica_identity"]:
        found.append(
            f"{table} is published ({', '.join(facts['publications'])}) without a replica"
            " identity: its UPDATEs and DELETEs fail (ALTER TABLE … REPLICA IDENTITY)"
        )
    return found


async def _sample(
    conn: asyncpg.Connection, work: Any, target: Target, settings: RunSettings, found: Plan
) -> Plan:
    """The first batch run for real, in a transaction rolled back, timed."""
    assert found.first_key is not None
    upper = tuple(found.first_batch_bounds) if found.first_batch_bounds else None
    if upper is None:  # a process= migration: the first batch's bound again
        keys = RangeQueries(target)
        last = tuple(found.last_key or ())
        upper = await keys.nth(conn, KeyRange(None, last), settings.batch_size) or last
    tx = conn.transaction()
    await tx.start()
    try:
        await conn.execute(settings.timeouts.local())
        started = time.monotonic()
        changed = await run_work(work, Batch(conn, target.key, KeyRange(None, upper)))
        seconds = time.monotonic() - started
    finally:
        await tx.rollback()
    estimated = None if found.batches is None else seconds * found.batches
    warnings = list(found.warnings)
    limit = settings.timeouts.statement_timeout
    if limit and seconds > NEAR_TIMEOUT * limit:
        warnings.append(
            f"the sampled batch took {seconds:.1f} s, near the statement timeout ({limit:g} s):"
            " a smaller --batch-size, or a longer --statement-timeout"
        )
    return Plan(
        **{
            **asdict(found),
            "sample_seconds": seconds,
            "sample_rows": changed,
            "estimated_seconds": estimated,
            "warnings": warnings,
        }
    )


def plan_lines(p: Plan) -> list[str]:
    """The plan as `plan` prints it."""
    key = ", ".join(p.key)
    rows = "unknown (never analysed)" if p.rows is None else f"{p.rows:,}"
    how = "counted" if p.exact else "estimated from statistics"
    lines = [f"{p.name}: {p.table}, key ({key})"]
    if p.first_key is None or p.last_key is None:
        lines.append("  keys:    none: the table is empty, a run has nothing to do")
    else:
        lines.append(f"  keys:    {', '.join(p.first_key)} … {', '.join(p.last_key)}")
    lines.append(f"  rows:    {rows}" + ("" if p.rows is None else f" ({how})"))
    if p.batches is not None:
        lines.append(f"  batches: {p.batches:,} of {p.batch_size:,} keys")
    if p.first_batch_sql is not None:
        bounds = ", ".join(f"${n} = {v}" for n, v in enumerate(p.first_batch_bounds, 1))
        lines += [f"  first batch: {p.first_batch_sql}", f"    with {bounds}", "  its plan:"]
        lines += [f"    {line}" for line in p.explain]
    elif p.first_key is not None:
        lines.append("  first batch: process= (the SQL is the function's own; no plan)")
    if p.sample_seconds is not None:
        eta = "" if p.estimated_seconds is None else f"; all batches ~{p.estimated_seconds:.1f} s"
        lines.append(
            f"  sample:  the first batch changed {p.sample_rows:,} rows in"
            f" {p.sample_seconds * 1000:.0f} ms (rolled back){eta}"
        )
    else:
        lines.append("  sample:  not run (--sample times the first batch, rolled back)")
    lines += [f"  warning: {w}" for w in p.warnings]
    return lines
