"""The checks before a run, shared by the commands that start one: everything that can
refuse a migration on this server, writing nothing.

:func:`preflight` inspects the session and the target table, prepares the migration's SQL
and checks the privileges it needs, in one transaction under the run's lock timeout, and
returns a :class:`Preflight` that `run` consumes. Whatever it raises is a
:class:`CouldNotStart` (exit 2), or a server error the caller maps to one.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from .db import is_pooled
from .discovery import LoadedMigration, shown
from .errors import (
    CouldNotStart,
    MigrationDefinitionError,
    MigrationLoadError,
    PermissionDenied,
)
from .keys import KeyRange, render_range
from .schema import schema_version
from .settings import RunSettings
from .sqlfiles import query
from .target import Target, inspect_target
from .transactions import transaction


@dataclass(frozen=True)
class OpsState:
    """The ops schema as the pre-flight found it."""

    version: int  # the installed ops schema's version; 0: none
    migrations: bool  # ops.migrations exists (in a shape a run can record into)


MIGRATIONS_SHAPE = (
    "it needs id (an integer with a default, e.g. serial), filename text and applied_at"
    " timestamptz (with a default), and any other column nullable or with a default"
)
"""The columns of ops.migrations that a run's completion needs: it inserts the file name
alone and reads ``id`` back."""

_INTEGERS = ("smallint", "integer", "bigint")
_TIMESTAMPS = ("timestamp with time zone", "timestamp without time zone")


def migrations_shape_problems(columns: dict[str, str], filled: set[str]) -> list[str]:
    """What keeps a run from recording its file in an ops.migrations of these ``columns``
    (name: type as format_type spells it) of which ``filled`` are filled without a value
    (nullable, or a default); empty when nothing does. Checked before anything is
    written: an insert that fails at the run's end would leave a finished run unrecorded."""
    problems: list[str] = []
    for name, types, what in (
        ("id", _INTEGERS, "an integer"),
        ("filename", ("text", "character varying"), "text"),
        ("applied_at", _TIMESTAMPS, "timestamptz"),
    ):
        if name not in columns:
            problems.append(f"no column {name}")
        elif columns[name].split("(", 1)[0] not in types:
            problems.append(f"{name} is {columns[name]}, not {what}")
    for name in ("id", "applied_at"):
        if name in columns and name not in filled:
            problems.append(f"{name} has no default")
    problems += [
        f"{name} is NOT NULL without a default"
        for name in columns
        if name not in ("id", "filename", "applied_at") and name not in filled
    ]
    return problems


@dataclass(frozen=True)
class Preflight:
    """What the pre-flight found: all a run needs to start, nothing written yet."""

    migration: LoadedMigration
    target: Target
    pooled: bool  # the connection is behind a pooler (its server session may change)
    ops: OpsState
    estimated_rows: int | None  # the planner's estimate; None: the table was never analysed


def read_only_message(*, standby: bool) -> str:
    """Why a run cannot write here: a hot standby (``pg_is_in_recovery()``), or a session
    whose transactions are read-only by default (``default_transaction_read_only``)."""
    if standby:
        return (
            "the server is read-only: it is a standby in recovery, so the DSN points at a"
            " replica; point it at the primary"
        )
    return (
        "the session is read-only: default_transaction_read_only is on (for the role, the"
        " database or the server), and a run must write; turn it off for the role that runs"
        " migrations"
    )


async def preflight(
    conn: asyncpg.Connection, migration: LoadedMigration, settings: RunSettings
) -> Preflight:
    """Check everything that can refuse ``migration`` on ``conn``'s server, writing
    nothing: the session, the ops schema, the table and key, the SQL and its privileges."""
    # Checking takes the table's locks (preparing an UPDATE takes ROW EXCLUSIVE): never
    # queue long behind DDL, as no batch does either.
    # READ ONLY: the server itself holds the checks to writing nothing.
    checks = query("read_only") + " " + settings.timeouts.local(statement=False)
    async with transaction(conn, checks):
        session = await check_session(conn)
        pooled = is_pooled(session["pid"], conn)
        target = await _check_target(conn, migration)
        ops = OpsState(await schema_version(conn), migrations=session["migrations"])
    estimate = target.estimate if target.estimate >= 0 else None
    return Preflight(migration, target, pooled, ops, estimate)


async def check_session(conn: asyncpg.Connection) -> asyncpg.Record:
    """The session as the pre-flight reads it, refusing what refuses every migration: a
    read-only server or session, an ops.migrations a run cannot record into (also
    ``migrate``'s first check)."""
    session = await conn.fetchrow(query("preflight_session"))
    assert session is not None
    if session["standby"] or session["read_only"]:
        raise CouldNotStart(read_only_message(standby=session["standby"]))
    if session["migrations"]:
        columns = dict(zip(session["migrations_columns"], session["migrations_types"], strict=True))
        problems = migrations_shape_problems(columns, set(session["migrations_filled"]))
        if problems:
            raise CouldNotStart(
                f"ops.migrations has another shape: {', '.join(problems)}; {MIGRATIONS_SHAPE}"
            )
    return session


async def _check_target(conn: asyncpg.Connection, migration: LoadedMigration) -> Target:
    backfill = migration.backfill
    # SELECT: the range lookups read the key. What the SQL itself needs, its EXPLAIN finds.
    target = await inspect_target(conn, backfill.table, backfill.key_columns, ["SELECT"])
    if isinstance(backfill.work, str):
        statement = await _check_statement(conn, migration, target, backfill.work, "SQL")
        await _check_privileges(conn, migration, statement, 2 * target.key.width)
    if isinstance(backfill.down, str):
        # Prepared only: nothing runs it yet, and `run` need not be allowed what it does.
        await _check_statement(conn, migration, target, backfill.down, "down= SQL")
    return target


async def _check_statement(
    conn: asyncpg.Connection, migration: LoadedMigration, target: Target, sql: str, what: str
) -> str:
    """Prepare (never run) the migration's SQL in both forms a batch runs it in (the first
    batch's, bounded above only, and the later ones'), so a typo fails before anything is
    written; and prove that ``{range}`` is in the SQL itself: each form takes exactly the
    bounds' parameters, as text. ``{range}`` in a comment or a string literal expands
    there, harmlessly, and would leave the statement unbounded. Returns the later form."""
    path, width = shown(migration.file.path), target.key.width
    probe = ("",) * width
    for rng in (KeyRange(None, probe), KeyRange(probe, probe)):
        statement, bounds = render_range(sql, target.key, rng, 0)
        try:
            prepared = await conn.prepare(statement)
        except asyncpg.InsufficientPrivilegeError as exc:
            raise PermissionDenied(f"{path}: {exc}") from None
        except (asyncpg.LockNotAvailableError, asyncpg.PostgresConnectionError):
            raise  # the table is locked, or the server went away: the caller says so
        except asyncpg.PostgresError as exc:
            raise MigrationLoadError(f"{path}: its {what} does not prepare: {exc}") from None
        types = [t.name for t in prepared.get_parameters()]
        if len(types) < len(bounds):
            raise MigrationDefinitionError(
                f"{path}: {{range}} must appear in its {what} itself, not in a comment"
                " or a string literal"
            )
        if types != ["text"] * len(bounds):
            raise MigrationDefinitionError(
                f"{path}: its {what} takes parameters of its own ($n), and a migration"
                " in SQL passes none: use process= to pass values"
            )
    return statement


async def _check_privileges(
    conn: asyncpg.Connection, migration: LoadedMigration, statement: str, bounds: int
) -> None:
    """The privileges ``statement`` needs, as its batches will need them: column by column
    (an ``UPDATE`` of one column needs ``UPDATE`` on that column only), on every table it
    reads or writes. A prepare checks none of them; EXPLAIN (never ANALYZE: nothing runs)
    starts the executor, which does. The bounds are NULL: the plan does not matter."""
    try:
        async with conn.transaction():  # a savepoint: an error leaves the checks' going
            await conn.fetch(query("explain").format(statement=statement), *[None] * bounds)
    except asyncpg.InsufficientPrivilegeError as exc:
        raise PermissionDenied(f"{shown(migration.file.path)}: {exc}") from None
    except (asyncpg.LockNotAvailableError, asyncpg.PostgresConnectionError):
        raise
    except asyncpg.PostgresError:
        pass  # a statement EXPLAIN does not take (it prepared): its first batch will tell
