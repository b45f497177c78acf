"""The commands, as plain async functions: the CLI only adapts them.

Each returns a result object or raises a :class:`CryptopiBatchError` whose ``exit_code``
the CLI exits with.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import structlog

from . import schema
from .db import ConnectionSettings, close_quietly
from .discovery import LoadedMigration, discover, load, project_settings, resolve
from .errors import (
    ConnectionFailed,
    CouldNotStart,
    PermissionDenied,
    Stopped,
    UsageError,
)
from .keys import as_bound
from .opsstore import OPS
from .preflight import preflight
from .settings import RunOptions, TimeoutPolicy, resolve_settings
from .start import nothing_to_do, record_budgets, record_window, start_or_resume
from .states import RunState
from .transactions import Connection, transaction
from .window_gate import not_now, utc_now

if TYPE_CHECKING:
    from .progress import ProgressHook
    from .report import StatusRow
    from .runner import Outcome

log = structlog.get_logger("cryptopi_batch")

LIVE_WITHIN = 10.0
"""A runner whose heartbeat (each second) is older than this many seconds is not counted as
live by ``status``: a killed run shows as interrupted within seconds, not after its lease."""


@dataclass(frozen=True)
class RunResult:
    name: str
    already_completed: bool
    outcome: Outcome | None


def find_migration(directory: Path, name: str) -> LoadedMigration:
    return load(resolve(discover(directory), name))


async def run(  # noqa: PLR0913 -- keyword-only: the run, and the CLI's hooks into it
    name: str,
    *,
    directory: Path,
    connection: ConnectionSettings,
    options: RunOptions | None = None,
    handle_signals: bool = False,
    on_start: Callable[[int, int, int], None] | None = None,
    on_progress: ProgressHook | None = None,
    migration: LoadedMigration | None = None,
) -> RunResult:
    """Run migration ``name``, or resume it where it stopped.

    Everything that can refuse the run (the name, the file, the connection, the
    pre-flight's checks, a changed source, a cancelled run) is checked before anything is
    written. ``on_start(keys_done, keys_total, rows_processed)`` is called once the run is
    about to start batches, with the run's numbers so far (of every process and session);
    ``on_progress`` with the run's counters as they change.
    """
    from .health import prepare_check  # noqa: PLC0415 -- as the runner
    from .progress import Progress  # noqa: PLC0415 -- with the runner, below
    from .runner import Runner  # noqa: PLC0415 -- only `run` needs it (and anyio's tasks)

    # ``migration``: already loaded (migrate's), or another than the file's own (rollback's
    # down run).
    migration = migration or find_migration(directory, name)
    settings = resolve_settings(options or RunOptions(), migration.backfill, project_settings())
    if migration.backfill.destructive and not settings.yes:
        raise UsageError(f"{migration.name} is destructive; pass --yes to run it")
    conn = await connection.connect_or_fail()
    # The workers' connections are opened while the checks run, not after them: with the
    # statement cache of a direct connection, the common case (a pooler is found below).
    direct = connection.behind_pooler(False)
    opening: list[asyncio.Future[Connection]] = [
        # the worker tasks', and the health sampler's (the runner hands it the first)
        asyncio.ensure_future(direct.connect())
        for _ in range(settings.workers + 1)
    ]
    try:
        async with setup_errors(connection):
            checked = await preflight(conn, migration, settings)
            await prepare_check(conn, settings.health.check, settings.timeouts.local())
            target = checked.target
            refused = not_now(settings.schedule, utc_now())
            if refused is not None and not await nothing_to_do(conn, migration, checked, settings):
                # --exit-outside-window, a past --until: exit 3 having written nothing
                raise Stopped(f"{migration.name}: {refused}; nothing was written")
            connection = connection.behind_pooler(checked.pooled)
            if connection.statement_cache_size != direct.statement_cache_size:
                # Behind a pooler: the workers connect without a cache. Those opened with
                # one have run nothing yet.
                for spare in await _opened(opening, cancel=True):
                    spare.terminate()
            if checked.ops.version < schema.SCHEMA_VERSION:
                await schema.ensure_schema(conn, settings.timeouts.local(statement=False))
            row = await start_or_resume(conn, migration, target, settings)
        if row is None or row["status"] == RunState.COMPLETED:
            return RunResult(migration.name, True, None)
        await record_window(conn, row, settings)
        await record_budgets(conn, migration.name, settings)
        if on_start is not None:
            on_start(
                int(row["keys_done"]), int(row["keys_estimate"] or 0), int(row["rows_processed"])
            )
        runner = Runner(
            name=migration.name,
            filename=migration.file.filename,
            work=migration.backfill.work,
            target=target,
            settings=settings,
            connection=connection,
            handle_signals=handle_signals,
            on_progress=on_progress,
            end_key=as_bound(row["end_key"]),
            start=Progress(
                int(row["rows_processed"]), int(row["keys_done"]), int(row["batches_done"])
            ),
            connections=await _opened(opening),
        )
        outcome = await runner.execute(conn)
        return RunResult(migration.name, False, outcome)
    finally:
        await close_quietly(conn)
        for spare in await _opened(opening, cancel=True):  # not handed to a runner
            await close_quietly(spare)


async def _opened(
    opening: list[asyncio.Future[Connection]], *, cancel: bool = False
) -> list[asyncpg.Connection]:
    """The connections among ``opening`` that opened (each handed out once: the list is
    emptied), waiting for those still opening unless ``cancel``; one that failed is left
    to its worker, which connects (and retries) by itself. A cancellation of the caller
    is not swallowed."""
    if cancel:
        for future in opening:
            future.cancel()
    if opening:
        await asyncio.wait(opening)
    done: list[asyncpg.Connection] = [
        f.result() for f in opening if not f.cancelled() and f.exception() is None
    ]
    opening.clear()
    return done


@contextlib.asynccontextmanager
async def setup_errors(connection: ConnectionSettings) -> AsyncIterator[None]:
    """Before a run's first batch, and in the other commands, a lost connection or a
    refused privilege means the command could not start (exit 2); the set-up's writes are
    each one transaction, so nothing is half written."""
    try:
        yield
    except asyncpg.InsufficientPrivilegeError as exc:
        raise PermissionDenied(connection.redact(f"permission denied: {exc}")) from None
    except asyncpg.LockNotAvailableError as exc:
        raise CouldNotStart(
            f"locked by another session (the table, or the run's own row in"
            f" ops.backfills): {exc}; nothing was written, run again later"
        ) from None
    except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError) as exc:
        raise ConnectionFailed(
            connection.redact(f"lost the connection while starting: {exc or type(exc).__name__}")
        ) from None


async def status(
    name: str | None, *, directory: Path | None, connection: ConnectionSettings
) -> list[StatusRow]:
    """Progress, rate, ETA, state and why, for one migration or all of them."""
    from .report import StatusRow, status_row  # noqa: PLC0415 -- see control()

    wanted = filename = None
    if name is not None:
        if directory:
            file = resolve(discover(directory), name)
            wanted, filename = file.name, file.filename
        else:
            wanted, filename = name, f"{name}.py"
    conn = await connection.connect_or_fail()
    try:
        applied = False
        async with setup_errors(connection):  # a refused privilege: exit 2, as for `run`
            runners: dict[str, list[asyncpg.Record]] = {}
            rows: list[asyncpg.Record] = []
            if await schema.schema_version(conn) > 0:
                rows = await OPS.status_rows(conn, wanted, live_within=LIVE_WITHIN)
                runners = await OPS.status_runners(conn, wanted, live_within=LIVE_WITHIN)
            if filename is not None and not rows:
                applied = await recorded(conn, filename)
        now = utc_now()
        found = [status_row(r, now, runners.get(r["name"], [])) for r in rows]
        if wanted is not None and not found:
            # As `list` says: recorded in ops.migrations without a batched run, it is done.
            found = [(StatusRow.applied if applied else StatusRow.pending)(wanted)]
        return found
    finally:
        await close_quietly(conn)


async def list_migrations(*, directory: Path, connection: ConnectionSettings) -> list[StatusRow]:
    """Every migration in the directory with its kind and state, then the files recorded in
    ops.migrations that the directory lacks; flagged: those, and files changed after they
    were applied."""
    from .report import StatusRow, status_row  # noqa: PLC0415 -- see control()

    files = discover(directory)
    conn = await connection.connect_or_fail()
    try:
        by_name: dict[str, StatusRow] = {}
        applied: dict[str, datetime] = {}
        checksums: dict[str, str] = {}
        async with setup_errors(connection):
            version = await schema.schema_version(conn)
            if version > 0:
                by_name = {
                    r["name"]: status_row(r, utc_now())
                    for r in await OPS.status_rows(conn, None, live_within=LIVE_WITHIN)
                }
            if await OPS.has_migrations_table(conn):
                applied = await OPS.applied_times(conn)
            if version >= FILES_VERSION:
                checksums = {k: r["checksum"] for k, r in (await OPS.file_records(conn)).items()}
    finally:
        await close_quietly(conn)
    # A batched run's own row speaks for it (also after --restart of a completed run);
    # ops.migrations only for files without one (applied by other tooling, .sql files).
    found = []
    for f in files:
        row = by_name.get(f.name) or (
            StatusRow.applied if f.filename in applied else StatusRow.pending
        )(f.name)
        changed = checksums.get(f.filename) not in (None, f.checksum())
        flag = "changed after it was applied" if changed else None
        found.append(_listed(row, f.kind, applied.get(f.filename), flag))
    present = {f.filename for f in files}
    found += [
        _listed(
            StatusRow.applied(Path(name).stem),
            Path(name).suffix.lstrip(".") or "?",
            when,
            "recorded in ops.migrations; no such file in the directory",
        )
        for name, when in sorted(applied.items())
        if name not in present
    ]
    return found


FILES_VERSION = 3
"""The ops schema version that added ops.migration_files."""


async def recorded(conn: asyncpg.Connection, filename: str) -> bool:
    """Whether ``filename`` is recorded in ops.migrations, if there is one (the seed's
    tooling makes it before any run of ours)."""
    return await OPS.has_migrations_table(conn) and await OPS.is_applied(conn, filename)


def _listed(row: StatusRow, kind: str, applied_at: datetime | None, flag: str | None) -> StatusRow:
    """A `list` row: the file's kind, when it was recorded, what is odd about it."""
    when = None if applied_at is None else applied_at.isoformat()
    return dataclasses.replace(row, kind=kind, applied_at=when, flag=flag)


@dataclass(frozen=True)
class ControlResult:
    name: str
    before: RunState  # the stored state when the command was said
    status: RunState  # the stored state after it
    line: str  # what the command says (docs/cli.md, "pause, resume, cancel")

    @property
    def changed(self) -> bool:
        return self.status != self.before


async def control(
    command: str, name: str, *, directory: Path, connection: ConnectionSettings
) -> ControlResult:
    """``pause``, ``resume`` or ``cancel`` a migration, from any host.

    Running workers read the status in each batch's commit and stop after it (exit 3).
    What each command does in each state is :func:`control_rules.reply`'s table: a run
    already where the command asks is left as it is; one the command cannot act on (never
    started, completed; a cancelled run paused) raises :class:`UsageError` (exit 2),
    nothing changed.
    """
    # Imported here, as report below: `run` never needs them, and its start is timed.
    from .control_rules import EXIT_OK, RunFacts, reply  # noqa: PLC0415

    file = resolve(discover(directory), name)
    resolved = file.name
    conn = await connection.connect_or_fail()
    try:
        # The row locked while deciding: a runner's checkpoint or another command waits,
        # and the state decided on is the state changed.
        async with setup_errors(connection), transaction(conn, TimeoutPolicy().local()):
            row = None
            if await schema.schema_version(conn) > 0:
                row = await OPS.lock_run(conn, resolved)
            if row is None:
                # Recorded in ops.migrations without a run (by this tool or the seed's
                # tooling): completed, as `list` says.
                applied = await recorded(conn, file.filename)
                state = RunState.COMPLETED if applied else None
                raise UsageError(reply(command, RunFacts(resolved, state)).line)
            before = RunState(row["status"])
            facts = RunFacts(
                resolved,
                before,
                live_runners=await OPS.live_runners(conn, resolved, live_within=LIVE_WITHIN),
                keys_done=int(row["keys_done"]),
            )
            decided = reply(command, facts)
            if decided.exit_code != EXIT_OK:
                raise UsageError(decided.line)
            if decided.new_state is not None:
                await OPS.set_state(conn, resolved, decided.new_state, when=(before,))
        return ControlResult(resolved, before, decided.new_state or before, decided.line)
    finally:
        await close_quietly(conn)
