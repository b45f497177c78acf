"""`migrate`: every pending migration of the directory, in file-name order, up to the
first that fails. A ``.sql`` file runs once, in one transaction with its record (or, when
it holds a statement PostgreSQL refuses in a transaction, statement by statement and
recorded afterwards); a ``.py`` migration runs as `run` runs it, and migrate goes on only
once it completed.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg

from . import commands, schema
from .db import ConnectionSettings, close_quietly, is_pooled
from .discovery import LoadedMigration, MigrationFile, discover, load, project_settings, resolve
from .errors import MigrationLoadError, Pending, TargetInvalid, UsageError
from .opsstore import OPS
from .preflight import check_session
from .settings import RunOptions, resolve_settings
from .sqlfile import SqlMigration, read_sql_migration
from .sqlrun import SqlJob, refused, run_sql_job, through_pooler
from .sqlrun import lock_timeout as sql_lock_timeout

if TYPE_CHECKING:
    from .progress import ProgressHook


@dataclass(frozen=True)
class PendingFile:
    """A file `migrate` would run: its state (``pending``, or ``unfinished`` for a backfill
    whose run started), for a backfill the estimated rows and batches, and why migrate
    would refuse it here, if it would."""

    file: MigrationFile
    state: str
    rows: int | None = None
    batches: int | None = None
    refused: str | None = None


def _upto(files: list[MigrationFile], to: str | None) -> list[MigrationFile]:
    if to is None:
        return files
    last = resolve(files, to)
    return [f for f in files if f.filename <= last.filename]


async def pending(
    *,
    directory: Path,
    connection: ConnectionSettings,
    to: str | None = None,
    options: RunOptions | None = None,
    estimate: bool = False,
) -> list[PendingFile]:
    """The files `migrate` would run, in order, each with why migrate would refuse it here
    (a file run outside a transaction, through a pooler); writes nothing. With
    ``estimate``, each backfill's rows (the planner's statistics) and batches."""
    files = _upto(discover(directory), to)
    conn = await connection.connect_or_fail()
    try:
        applied: set[str] = set()
        runs: dict[str, str] = {}
        if await OPS.has_migrations_table(conn):
            applied = await OPS.applied_filenames(conn)
        if await schema.schema_version(conn) > 0:
            runs = {
                r["name"]: r["status"]
                for r in await OPS.status_rows(conn, None, live_within=commands.LIVE_WITHIN)
            }
        todo = [f for f in files if f.filename not in applied]
        refusals = {f.filename: _refusal(f) for f in todo}
        # The server session's pid asked only when a file would be refused through a pooler.
        pooled = any(refusals.values()) and is_pooled(await OPS.server_pid(conn), conn)
        found = []
        for f in todo:
            state = "unfinished" if f.name in runs else "pending"
            rows = batches = None
            if estimate and f.kind == "py":
                rows, batches = await _estimate(conn, f, options)
            refused_here = refusals[f.filename] if pooled else None
            found.append(PendingFile(f, state, rows, batches, refused_here))
        return found
    finally:
        await close_quietly(conn)


def _refusal(f: MigrationFile) -> str | None:
    """Why migrate would refuse ``f`` through a pooler: a .sql file run outside a
    transaction. One that cannot be read is migrate's to report, as it applies it."""
    if f.kind != "sql":
        return None
    try:
        return through_pooler(f.filename, read_sql_migration(f.path).statements)
    except MigrationLoadError:
        return None


async def _estimate(
    conn: asyncpg.Connection, f: MigrationFile, options: RunOptions | None
) -> tuple[int | None, int | None]:
    """A backfill's rows and batches as the planner estimates them; none for a table that
    a file before it, pending too, is yet to make (or to give its key)."""
    from .target import inspect_target  # noqa: PLC0415 -- only the estimates need it

    migration = load(f)
    settings = resolve_settings(options or RunOptions(), migration.backfill)
    b = migration.backfill
    try:
        target = await inspect_target(conn, b.table, b.key_columns)
    except TargetInvalid:
        return None, None
    if target.estimate < 0:
        return None, None
    return target.estimate, math.ceil(target.estimate / settings.batch_size)


async def check(
    *, directory: Path, connection: ConnectionSettings, to: str | None = None
) -> list[PendingFile]:
    """`migrate --check`: raises :class:`Pending` (exit 3) naming what is pending or
    unfinished; writes nothing."""
    found = await pending(directory=directory, connection=connection, to=to)
    if found:
        names = ", ".join(f"{p.file.name} ({p.state})" for p in found)
        raise Pending(f"{len(found)} migration(s) pending or unfinished: {names}")
    return found


@dataclass(frozen=True)
class Applied:
    name: str
    kind: str
    how: str  # what happened, for the line migrate prints


async def migrate(  # noqa: PLR0913 -- keyword-only: a command's options
    *,
    directory: Path,
    connection: ConnectionSettings,
    options: RunOptions | None = None,
    to: str | None = None,
    handle_signals: bool = False,
    on_applied: Callable[[Applied], None] | None = None,
    on_start: Callable[[str, int, int, int], None] | None = None,
    on_progress: ProgressHook | None = None,
) -> list[Applied]:
    """Apply every pending file up to ``to``, in order; stops at the first that fails
    (:class:`MigrationFailed`, exit 1) or stops (a backfill's :class:`Stopped`, exit 3)."""
    options = options or RunOptions()
    files = _upto(discover(directory), to)
    lock_timeout = sql_lock_timeout(options)
    conn = await connection.connect_or_fail()
    done: list[Applied] = []
    try:
        async with commands.setup_errors(connection):
            session = await check_session(conn)
            applied = (
                await OPS.applied_filenames(conn) if await OPS.has_migrations_table(conn) else set()
            )
            # Every pending file is read (and a backfill loaded, once) before the first is
            # applied: one that cannot run refuses the whole migrate, nothing written.
            checked = {
                f.filename: _check_file(f, options) for f in files if f.filename not in applied
            }
            if is_pooled(session["pid"], conn):
                for filename, read in checked.items():
                    if isinstance(read, SqlMigration) and (
                        reason := through_pooler(filename, read.statements)
                    ):
                        raise refused(reason)
            await schema.ensure_schema(conn)
            applied = await OPS.applied_filenames(conn)
        for f in files:
            if f.filename in applied:
                continue
            read = checked[f.filename]
            if isinstance(read, SqlMigration):
                how = await _sql_file(conn, f, read, connection, lock_timeout)
            else:
                how = await _backfill(
                    conn,
                    read,
                    directory,
                    connection,
                    options,
                    handle_signals=handle_signals,
                    on_start=on_start,
                    on_progress=on_progress,
                )
            step = Applied(f.name, f.kind, how)
            done.append(step)
            if on_applied is not None:
                on_applied(step)
        return done
    finally:
        await close_quietly(conn)


def _check_file(f: MigrationFile, options: RunOptions) -> SqlMigration | LoadedMigration:
    """A pending file read (a backfill loaded), refused before anything is written if it
    could not run."""
    if f.kind == "sql":
        return read_sql_migration(f.path)
    migration = load(f)
    settings = resolve_settings(options, migration.backfill, project_settings())
    if migration.backfill.destructive and not settings.yes:
        raise UsageError(f"{migration.name} is destructive; pass --yes to run it")
    return migration


async def _backfill(  # noqa: PLR0913 -- keyword-only: the run and what migrate shows of it
    conn: asyncpg.Connection,
    migration: LoadedMigration,
    directory: Path,
    connection: ConnectionSettings,
    options: RunOptions,
    *,
    handle_signals: bool,
    on_start: Callable[[str, int, int, int], None] | None,
    on_progress: ProgressHook | None,
) -> str:
    f = migration.file
    result = await commands.run(
        f.name,
        directory=directory,
        connection=connection,
        options=options,
        handle_signals=handle_signals,
        on_start=None if on_start is None else functools.partial(on_start, f.name),
        on_progress=on_progress,
        migration=migration,
    )
    await OPS.record_file(conn, f.filename, "py", f.checksum())
    if result.outcome is None:
        return "completed"
    t = result.outcome.total
    return f"completed: {t.rows:,} rows changed in {t.batches:,} batch{'es' * (t.batches != 1)}"


async def _sql_file(
    conn: asyncpg.Connection,
    f: MigrationFile,
    sql: SqlMigration,
    connection: ConnectionSettings,
    lock_timeout: float,
) -> str:
    job = SqlJob(f, sql.statements, outside=sql.outside, checksum=f.checksum())
    started = time.monotonic()
    if not await run_sql_job(conn, job, connection, lock_timeout):
        return "applied by another migrate"
    where = "outside a transaction" if sql.outside else "in one transaction"
    count = len(sql.statements)
    return (
        f"applied: {count} statement{'s' if count != 1 else ''} {where},"
        f" {time.monotonic() - started:.1f} s"
    )
