"""Running a ``.sql`` file's statements once, as `migrate` applies a file and `rollback`
undoes one: in one transaction with its record, or (statements PostgreSQL refuses in a
transaction block) one by one under a guard transaction's lock; lock timeouts tried again
with back-off; an invalid index left by a failed CONCURRENTLY named.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
import asyncpg

from . import logs
from .db import ConnectionSettings, close_quietly
from .discovery import MigrationFile
from .errors import CouldNotStart, MigrationFailed, describe, one_line
from .opsstore import OPS
from .settings import RunOptions, RunSettings, parse_duration
from .sqlfile import Statement, concurrently, outside_form
from .transactions import transaction

LOCK_RETRIES = 6
"""Tries of a file's transaction (or of a statement outside one) that hit the lock timeout,
with back-off between them: 0.5 s, 1 s, 2 s, 4 s, 8 s."""


@dataclass(frozen=True)
class SqlJob:
    """Statements of a ``.sql`` file run once: its own (then recorded as applied), or with
    ``undo`` its down section (then its records removed), under migrate's lock on it."""

    file: MigrationFile
    statements: tuple[Statement, ...]
    outside: bool  # statement by statement, each in its own transaction
    undo: bool = False
    checksum: str = ""
    source: str = ""  # the file its statements' lines count in, if not ``file`` (a .down.sql)

    @property
    def where(self) -> str:
        """The file named with a statement's line."""
        return self.source or self.file.filename

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

    async def finish(self, conn: asyncpg.Connection, since: int) -> None:
        """Record it (``since``: ops.migrations' last id when its transaction began), or
        with ``undo`` remove its records."""
        if self.undo:
            await OPS.forget_file(conn, self.file.filename)
        else:
            await OPS.record_sql_file(conn, self.file.filename, "sql", self.checksum, since=since)


def through_pooler(where: str, statements: tuple[Statement, ...]) -> str | None:
    """Why ``statements`` cannot run through a pooler, if one must run outside a
    transaction: its lock timeout is a session setting (docs/flow.md, "Lock timeouts")."""
    found = next(((s, f) for s in statements if (f := outside_form(s)) is not None), None)
    if found is None:
        return None
    first, form = found
    return (
        f"{where}:{first.line}: {form} must run outside a transaction, where a connection"
        " pooler cannot hold it to the lock timeout (each statement may reach another server"
        " session); run it through a direct connection to the server"
    )


def refused(reason: str) -> CouldNotStart:
    """A file refused before anything is written."""
    return CouldNotStart(f"{reason} (nothing was written)")


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
                since = await OPS.last_migration_id(conn)
                for statement in job.statements:
                    await _execute(conn, job, statement)
                await job.finish(conn, since)
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
            f"{job.where}:{statement.line}: {_describe(exc)}; rolled back, {job.left}"
        ) from None


def _describe(exc: asyncpg.PostgresError) -> str:
    return one_line(describe(exc))


def lock_timeout(options: RunOptions) -> float:
    """The lock timeout a .sql file's statements run under: ``--lock-timeout``, else a
    batch's default."""
    given = parse_duration(options.lock_timeout, "--lock-timeout")
    return RunSettings().timeouts.lock_timeout if given is None else given


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
                # Its own statements committed apart: none of theirs is this transaction's.
                await job.finish(conn, await OPS.last_migration_id(conn))
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
                f"{job.where}:{statement.line}: {_describe(exc)} (run outside a"
                f" transaction: {applied}{'still recorded' if job.undo else 'not recorded'}){drops}"
            ) from None
        else:
            return
