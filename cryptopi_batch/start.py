"""A run's row in ops.backfills as a run starts: created on a first start, resumed,
restarted, extended (``--catch-up``), or refused (cancelled, paused, a changed source);
and the window it keeps to."""

from __future__ import annotations

import asyncpg
import structlog

from .discovery import LoadedMigration, shown
from .errors import RunCancelled, SourceChanged, Stopped
from .keysql import RangeQueries
from .opsstore import OPS
from .preflight import Preflight
from .settings import RunSettings
from .states import RunState
from .target import Target, estimate_rows
from .transactions import transaction

log = structlog.get_logger("cryptopi_batch")


async def start_or_resume(
    conn: asyncpg.Connection, migration: LoadedMigration, target: Target, settings: RunSettings
) -> asyncpg.Record | None:
    """The run's row, created on first start; refuses what must not resume. ``None``: the
    file is recorded in ops.migrations without a run of its own (applied by other tooling,
    or before its run's row was removed), so it is done, as `list` shows it."""
    name = migration.name
    # The run's row is locked here, and the user's table read: under the lock timeout, so
    # a start never queues behind DDL (or a stuck session) while holding that row, which
    # every other runner's checkpoint needs. No statement timeout: a first start on a
    # table never analysed counts its rows.
    async with transaction(conn, settings.timeouts.local(statement=False)):
        row = await OPS.lock_run(conn, name)
        if row is not None and settings.restart:
            await OPS.delete_run(conn, name)
            row = None
        if (
            row is None
            and not settings.restart
            and migration.direction == "up"  # a down run undoes an applied file
            and await OPS.is_applied(conn, migration.file.filename)
        ):
            return None
        keys = RangeQueries(target)
        if row is None:
            await OPS.insert_run(
                conn,
                name=name,
                filename=migration.file.filename,
                target=target,
                end=await keys.last_key(conn),
                batch_size=settings.batch_size,
                estimate=await estimate_rows(conn, target),
                checksum=migration.checksum,
                direction=migration.direction,
            )
            row = await OPS.lock_run(conn, name)
            assert row is not None
        status = row["status"]
        if status == RunState.COMPLETED:
            if not settings.catch_up:
                return row
            end = await keys.last_key(conn)
            if end is None or list(end) == list(row["end_key"] or []):
                return row
            estimate = await estimate_rows(conn, target)
            more = max(estimate - int(row["keys_done"]), 0)
            await OPS.extend_run(conn, name, end=end, more_keys=more)
        elif status == RunState.CANCELLED:
            raise RunCancelled(
                f"{name} was cancelled; `resume {name}` takes it up again from its"
                " checkpoint, `run --restart` starts it over"
            )
        elif status == RunState.PAUSED:
            raise Stopped(f"{name} is paused; `resume {name}` lifts the pause")
        if row["source_checksum"] != migration.checksum and not settings.force:
            raise SourceChanged(
                f"{shown(migration.file.path)} changed since its run started;"
                " rerun with --force to resume with the new source"
            )
        fresh = await OPS.reopen_run(
            conn, name, checksum=migration.checksum, batch_size=settings.batch_size
        )
        assert fresh is not None  # the row is locked by this transaction
        return fresh


async def nothing_to_do(
    conn: asyncpg.Connection, migration: LoadedMigration, checked: Preflight, settings: RunSettings
) -> bool:
    """Whether the run would find nothing to do (reading only): completed, or recorded in
    ops.migrations without a run; such a run says so, in the window or not."""
    if settings.restart or settings.catch_up:
        return False
    row = await OPS.run_row(conn, migration.name) if checked.ops.version > 0 else None
    if row is not None:
        return bool(row["status"] == RunState.COMPLETED)
    return checked.ops.migrations and await OPS.is_applied(conn, migration.file.filename)


async def record_window(
    conn: asyncpg.Connection, row: asyncpg.Record, settings: RunSettings
) -> None:
    """Record the window this runner keeps to; one started with another window than the
    run's stored one is told so, and keeps its own."""
    window = settings.schedule.window
    mine = (window.spec, window.timezone) if window is not None else (None, None)
    stored = (row["window_spec"], row["window_timezone"])
    if stored != mine:
        if stored[0] is not None:
            log.warning(
                "window_differs",
                stored=f"{stored[0]} {stored[1]}",
                used=str(window) if window is not None else "any time",
            )
        await OPS.record_window(conn, row["name"], *mine)


async def record_budgets(conn: asyncpg.Connection, name: str, settings: RunSettings) -> None:
    """Store the budgets this runner was given with the run, once as it starts: every
    runner's health sampler reads them each second for its share (docs/operating.md)."""
    rows, wal = settings.throttle.max_rows_per_second, settings.health.max_wal_rate
    if rows is not None or wal is not None:
        await OPS.record_budgets(conn, name, rows, wal)
