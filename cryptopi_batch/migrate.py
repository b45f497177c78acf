"""`migrate`: every pending migration of the directory, in file-name order, up to the
first that fails. A ``.sql`` file runs once, in one transaction with its record (or, when
it holds a statement PostgreSQL refuses in a transaction, statement by statement and
recorded afterwards); a ``.py`` migration runs as `run` runs it, and migrate goes on only
once it completed.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import asyncpg

from . import commands, logs, schema
from .db import ConnectionSettings, close_quietly, transaction
from .discovery import MigrationFile, discover, load, resolve
from .errors import MigrationFailed, Pending, one_line
from .settings import RunOptions, resolve_settings
from .sqlfile import Statement, concurrently, read_sql_migration
from .store import OPS

LOCK_RETRIES = 6
"""Tries of a file's transaction (or of a statement outside one) that hit the lock timeout,
with back-off between them: 0.5 s, 1 s, 2 s, 4 s, 8 s."""


@dataclass(frozen=True)
class PendingFile:
    """A file `migrate` would run: its state (``pending``, or ``unfinished`` for a backfill
    whose run started), and for a backfill the estimated rows and batches."""

    file: MigrationFile
    state: str
    rows: int | None = None
    batches: int | None = None


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
    """The files `migrate` would run, in order; writes nothing. With ``estimate``, each
    backfill's rows (the planner's statistics) and batches."""
    from .target import inspect_target  # noqa: PLC0415 -- only the estimates need it

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
        found = []
        for f in files:
            if f.filename in applied:
                continue
            state = "unfinished" if f.name in runs else "pending"
            rows = batches = None
            if estimate and f.kind == "py":
                migration = load(f)
                settings = resolve_settings(options or RunOptions(), migration.backfill)
                b = migration.backfill
                target = await inspect_target(conn, b.table, b.key_columns)
                if target.estimate >= 0:
                    rows = target.estimate
                    batches = max(math.ceil(rows / settings.batch_size), 1 if rows else 0)
            found.append(PendingFile(f, state, rows, batches))
        return found
    finally:
        await close_quietly(conn)


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


async def migrate(
    *,
    directory: Path,
    connection: ConnectionSettings,
    options: RunOptions | None = None,
    to: str | None = None,
    handle_signals: bool = False,
    on_applied: Callable[[Applied], None] | None = None,
) -> list[Applied]:
    """Apply every pending file up to ``to``, in order; stops at the first that fails
    (:class:`MigrationFailed`, exit 1) or stops (a backfill's :class:`Stopped`, exit 3)."""
    options = options or RunOptions()
    files = _upto(discover(directory), to)
    lock_timeout = _lock_timeout(options)
    conn = await connection.connect_or_fail()
    done: list[Applied] = []
    try:
        async with commands.setup_errors(connection):
            await schema.ensure_schema(conn)
            applied = await OPS.applied_filenames(conn)
        for f in files:
            if f.filename in applied:
                continue
            if f.kind == "py":
                how = await _backfill(
                    conn, f, directory, connection, options, handle_signals=handle_signals
                )
            else:
                how = await _sql_file(conn, f, connection, lock_timeout)
            step = Applied(f.name, f.kind, how)
            done.append(step)
            if on_applied is not None:
                on_applied(step)
        return done
    finally:
        await close_quietly(conn)


def _lock_timeout(options: RunOptions) -> float:
    from .settings import RunSettings, parse_duration  # noqa: PLC0415

    given = parse_duration(options.lock_timeout, "--lock-timeout")
    return RunSettings().timeouts.lock_timeout if given is None else given


async def _backfill(
    conn: asyncpg.Connection,
    f: MigrationFile,
    directory: Path,
    connection: ConnectionSettings,
    options: RunOptions,
    *,
    handle_signals: bool,
) -> str:
    result = await commands.run(
        f.name,
        directory=directory,
        connection=connection,
        options=options,
        handle_signals=handle_signals,
    )
    await OPS.record_file(conn, f.filename, "py", f.checksum())
    if result.outcome is None:
        return "completed"
    t = result.outcome.total
    return f"completed: {t.rows:,} rows changed in {t.batches:,} batch{'es' * (t.batches != 1)}"


async def _sql_file(
    conn: asyncpg.Connection, f: MigrationFile, connection: ConnectionSettings, lock_timeout: float
) -> str:
    sql = read_sql_migration(f.path)
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


@dataclass(frozen=True)
class SqlJob:
    """Statements of a ``.sql`` file run once: its own (then recorded as applied), or with
    ``undo`` its down section (then its records removed), under migrate's lock on it."""

    file: MigrationFile
    statements: tuple[Statement, ...]
    outside: bool  # statement by statement, each in its own transaction
    undo: bool = False
    checksum: str = ""

    @property
    def left(self) -> str:
        """What a failure leaves, for its message."""
        return (
            "nothing of its down applied, still recorded"
            if self.undo
            else ("nothing of it applied, not recorded")
        )

    async def due(self, conn: asyncpg.Connection) -> bool:
        """Not done yet (by another process meanwhile)."""
        return await OPS.is_applied(conn, self.file.filename) == self.undo

    async def finish(self, conn: asyncpg.Connection) -> None:
        if self.undo:
            await OPS.forget_file(conn, self.file.filename)
        else:
            await OPS.record_sql_file(conn, self.file.filename, "sql", self.checksum)


async def run_sql_job(
    conn: asyncpg.Connection, job: SqlJob, connection: ConnectionSettings, lock_timeout: float
) -> bool:
    """Run ``job``; False: another process did it meanwhile."""
    if job.outside:
        return await _outside(job, connection, lock_timeout)
    return await _in_transaction(conn, job, lock_timeout)


async def _in_transaction(conn: asyncpg.Connection, job: SqlJob, timeout: float) -> bool:
    """The statements and the record in one transaction, tried again after a lock
    timeout."""
    f = job.file
    for attempt in range(LOCK_RETRIES):
        try:
            async with transaction(conn, ""):
                await _lock(conn, f.filename)
                if not await job.due(conn):
                    return False
                await OPS.set_lock_timeout(conn, timeout, local=True)
                for statement in job.statements:
                    await _execute(conn, job, statement)
                await job.finish(conn)
        except asyncpg.LockNotAvailableError as exc:
            await _back_off(job, attempt, exc)
        except asyncpg.PostgresError as exc:
            raise MigrationFailed(
                f"{f.filename}: {_describe(exc)}; rolled back, {job.left}"
            ) from None
        else:
            return True
    raise AssertionError("unreachable")  # _back_off raises on the last try


async def _lock(conn: asyncpg.Connection, filename: str) -> None:
    if not await OPS.lock_file(conn, filename, wait=False):
        logs.line(
            f"{filename}: another migrate is applying it; waiting",
            event="migrate_waiting",
            filename=filename,
        )
        await OPS.lock_file(conn, filename, wait=True)


async def _execute(conn: asyncpg.Connection, job: SqlJob, statement: Statement) -> None:
    try:
        await conn.execute(statement.text)
    except asyncpg.LockNotAvailableError:
        raise
    except asyncpg.PostgresError as exc:
        raise MigrationFailed(
            f"{job.file.filename}:{statement.line}: {_describe(exc)}; rolled back, {job.left}"
        ) from None


def _describe(exc: asyncpg.PostgresError) -> str:
    return one_line(f"{type(exc).__name__} ({exc.sqlstate}): {exc}")


async def _back_off(job: SqlJob, attempt: int, exc: asyncpg.PostgresError) -> None:
    f = job.file
    if attempt + 1 >= LOCK_RETRIES:
        raise MigrationFailed(
            f"{f.filename}: {_describe(exc)}, {LOCK_RETRIES} times; {job.left}; run again"
            " when the table is free"
        ) from None
    delay = 0.5 * 2**attempt
    logs.line(
        f"{f.filename}: lock timeout; trying again in {delay:g} s",
        event="migrate_lock_timeout",
        level="warning",
        filename=f.filename,
        attempt=attempt + 1,
    )
    await anyio.sleep(delay)


async def _outside(job: SqlJob, connection: ConnectionSettings, timeout: float) -> bool:
    """Statements PostgreSQL refuses to run in a transaction block: one by one, each its own
    transaction, then the record. A second connection holds migrate's lock on the file in
    an open transaction meanwhile (it keeps no snapshot, which a CREATE INDEX CONCURRENTLY
    would wait for)."""
    guard = await connection.connect_or_fail()
    conn = await connection.connect_or_fail()
    try:
        async with _guarded(guard, job.file.filename):
            # Read on the other connection: the guard's transaction keeps no snapshot.
            if not await job.due(conn):
                return False
            await OPS.set_lock_timeout(conn, timeout, local=False)
            before = await OPS.invalid_indexes(conn)
            for n, statement in enumerate(job.statements):
                await _outside_statement(conn, job, statement, n, before)
            async with transaction(conn, ""):
                await job.finish(conn)
            await OPS.reset_timeouts(conn)
        return True
    finally:
        await close_quietly(conn)
        await close_quietly(guard)


@contextlib.asynccontextmanager
async def _guarded(guard: asyncpg.Connection, filename: str) -> AsyncIterator[None]:
    """An open transaction on ``guard`` holding migrate's lock on ``filename``, tried every
    half second until free (see the block migrate_guard_lock)."""
    said = False
    while True:
        locked = False
        try:
            async with transaction(guard, ""):
                await OPS.guard_file(guard, filename)
                locked = True
                yield
                return
        except asyncpg.LockNotAvailableError:
            if locked:  # the body's, not the lock's
                raise
            if not said:
                said = True
                logs.line(
                    f"{filename}: another migrate is applying it; waiting",
                    event="migrate_waiting",
                    filename=filename,
                )
            await anyio.sleep(0.5)


async def _outside_statement(
    conn: asyncpg.Connection, job: SqlJob, statement: Statement, n: int, before: set[str]
) -> None:
    f = job.file
    for attempt in range(LOCK_RETRIES):
        try:
            await conn.execute(statement.text)
        except asyncpg.PostgresError as exc:
            left = sorted(await OPS.invalid_indexes(conn) - before)
            if isinstance(exc, asyncpg.LockNotAvailableError) and not (
                concurrently(statement) and left
            ):
                await _back_off(job, attempt, exc)
                continue
            applied = f"the {n} statement(s) before it stay applied; " if n else ""
            drops = "".join(
                f"; it left index {i} invalid: drop it with DROP INDEX CONCURRENTLY IF EXISTS {i};"
                for i in left
            )
            raise MigrationFailed(
                f"{f.filename}:{statement.line}: {_describe(exc)} (run outside a"
                f" transaction: {applied}{'still recorded' if job.undo else 'not recorded'}){drops}"
            ) from None
        else:
            return
