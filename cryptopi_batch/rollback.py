"""`rollback NAME`: run a migration's ``down`` and remove its records.

A backfill's ``down=`` (SQL with ``{range}``, or a ``process``) runs as a batched,
resumable run of its own, kept in ops.backfills as ``NAME:down`` (direction ``down``); once
it completed, one transaction removes the file's ops.migrations and ops.migration_files
rows and both runs, so that `migrate` applies it again. A ``.sql`` file's ``-- down``
section (or its sibling ``NAME.down.sql``) runs as migrate runs a file, and its records go
in the same transaction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import commands, schema
from .db import ConnectionSettings, close_quietly, is_pooled
from .discovery import LoadedMigration, MigrationFile, discover, load, resolve, shown
from .errors import UsageError
from .opsstore import OPS
from .settings import RunOptions
from .sqlfile import outside_transaction, read_sql_migration
from .sqlrun import SqlJob, lock_timeout, refused, run_sql_job, through_pooler
from .transactions import transaction


class Irreversible(UsageError):
    """The migration was declared irreversible: it has no down."""


@dataclass(frozen=True)
class Undo:
    """What a rollback will undo, said before it does (and asked to confirm)."""

    file: MigrationFile
    what: str  # e.g. "down= SQL over matrices.dyn_values in batches of 1,000"


def plan_undo(directory: Path, name: str) -> tuple[Undo, LoadedMigration | SqlJob]:
    """The file ``name`` names and what undoes it; refuses one without a down (exit 2)."""
    file = resolve(discover(directory), name)
    if file.kind == "sql":
        sql = read_sql_migration(file.path)
        if sql.down is None:
            raise Irreversible(
                f"{file.name} was declared irreversible: {shown(file.path)} has no -- down"
                f" section and there is no {file.name}.down.sql"
            )
        outside = any(outside_transaction(s) for s in sql.down)
        source = "" if sql.down_path is None else sql.down_path.name
        job = SqlJob(file, sql.down, outside=outside, undo=True, source=source)
        count = len(sql.down)
        return Undo(file, f"its -- down section ({count} statement{'s' * (count != 1)})"), job
    migration = load(file)
    b = migration.backfill
    if b.down is None:
        raise Irreversible(f"{file.name} was declared irreversible: its Backfill has no down=")
    down = dataclasses.replace(
        migration,
        backfill=dataclasses.replace(
            b,
            sql=b.down if isinstance(b.down, str) else None,
            process=None if isinstance(b.down, str) else b.down,
            down=None,
            destructive=False,
        ),
        direction="down",
    )
    form = "down= SQL" if isinstance(b.down, str) else "down= process"
    return Undo(file, f"its {form} over {b.table} in batches of {b.batch_size:,}"), down


@dataclass(frozen=True)
class RolledBack:
    name: str
    rows: int | None  # a backfill's down run: the rows it changed


async def rollback(  # noqa: PLR0913 -- keyword-only: the rollback, and the CLI's hooks into it
    name: str,
    *,
    directory: Path,
    connection: ConnectionSettings,
    options: RunOptions | None = None,
    handle_signals: bool = False,
    confirm: Callable[[Undo], None] | None = None,
) -> RolledBack:
    """Undo migration ``name`` and remove its records. ``confirm(undo)`` is asked once
    everything that refuses the rollback has been checked, before anything is written."""
    options = options or RunOptions()
    undo, how = plan_undo(directory, name)
    filename = undo.file.filename
    conn = await connection.connect_or_fail()
    try:
        async with commands.setup_errors(connection):
            recorded = await commands.recorded(conn, filename)
            started = await schema.schema_version(conn) > 0 and (
                await OPS.run_row(conn, undo.file.name) is not None
            )
            refusal = through_pooler(how.where, how.statements) if isinstance(how, SqlJob) else None
            if refusal is not None and not is_pooled(await OPS.server_pid(conn), conn):
                refusal = None  # a direct connection holds the session
        if not recorded and not started:
            raise UsageError(f"{undo.file.name} is not applied; nothing to roll back")
        if refusal is not None:
            raise refused(refusal)
        if confirm is not None:
            confirm(undo)
        if isinstance(how, SqlJob):
            await run_sql_job(conn, how, connection, lock_timeout(options))
            return RolledBack(undo.file.name, None)
        result = await commands.run(
            how.name,
            directory=directory,
            connection=connection,
            options=dataclasses.replace(options, yes=True),
            handle_signals=handle_signals,
            migration=how,
        )
        async with transaction(conn, ""):
            await OPS.forget_file(conn, filename)
            await OPS.forget_runs(conn, undo.file.name)
        rows = None if result.outcome is None else result.outcome.total.rows
        return RolledBack(undo.file.name, rows)
    finally:
        await close_quietly(conn)
