"""The ops tables as the commands see them: runs started, resumed, restarted, paused or
reported, and the migrations applied. One typed method per named block of
``sql/queries.sql``; a runner's own queries (claims, checkpoints, heartbeats) are
:class:`store.RunStore`'s."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

import asyncpg

from .db import pg_interval
from .keys import Bound
from .sqlfiles import query
from .states import RunState

if TYPE_CHECKING:
    from .target import Target


class OpsStore:
    """The ops tables as the commands see them: one typed method per query about runs and
    applied migrations. Stateless; each method runs on the connection it is given, in the
    caller's transaction (or none)."""

    async def run_row(self, conn: asyncpg.Connection, name: str) -> asyncpg.Record | None:
        """A run's row of ops.backfills."""
        return await conn.fetchrow(query("get_backfill"), name)

    async def lock_run(self, conn: asyncpg.Connection, name: str) -> asyncpg.Record | None:
        """A run's row, locked until the transaction ends (start, resume, restart)."""
        return await conn.fetchrow(query("lock_backfill"), name)

    async def delete_run(self, conn: asyncpg.Connection, name: str) -> None:
        """Forget a run and its ranges (``--restart``)."""
        await conn.execute(query("delete_backfill"), name)

    async def insert_run(  # noqa: PLR0913 -- keyword-only: the columns of a new run
        self,
        conn: asyncpg.Connection,
        *,
        name: str,
        filename: str,
        target: Target,
        end: Bound | None,
        batch_size: int,
        estimate: int,
        checksum: str,
        direction: str = "up",
    ) -> None:
        """A new run over ``target``'s keys up to ``end`` (``None``: an empty table)."""
        await conn.execute(
            query("insert_backfill"),
            name,
            filename,
            target.table,
            list(target.key.names),
            [c.type for c in target.key.columns],
            None if end is None else list(end),
            batch_size,
            estimate,
            checksum,
            direction,
        )

    async def reopen_run(
        self, conn: asyncpg.Connection, name: str, *, checksum: str, batch_size: int
    ) -> asyncpg.Record | None:
        """A run set running again (a resume), with the source and batch size it resumes
        with; returns its row."""
        return await conn.fetchrow(query("reopen_backfill"), name, checksum, batch_size)

    async def extend_run(
        self, conn: asyncpg.Connection, name: str, *, end: Bound, more_keys: int
    ) -> None:
        """A completed run reopened up to a new end (``--catch-up``)."""
        await conn.execute(query("catch_up_backfill"), name, list(end), more_keys)

    async def record_window(
        self, conn: asyncpg.Connection, name: str, spec: str | None, zone: str | None
    ) -> None:
        """The window (normalised) and its zone the run is started with (``None``: any
        time)."""
        await conn.execute(query("record_window"), name, spec, zone)

    async def record_budgets(
        self,
        conn: asyncpg.Connection,
        name: str,
        rows_per_second: float | None,
        wal_bytes_per_second: float | None,
    ) -> None:
        """The budgets a runner was started with, kept by the run (``None``: the stored one
        stays)."""
        await conn.execute(query("record_budgets"), name, rows_per_second, wal_bytes_per_second)

    async def set_state(
        self, conn: asyncpg.Connection, name: str, state: RunState, *, when: Sequence[RunState]
    ) -> bool:
        """Set a run's state if it is in one of ``when``; whether it was."""
        changed = await conn.fetchval(query("set_status"), name, state, [str(s) for s in when])
        return changed is not None

    async def live_runners(self, conn: asyncpg.Connection, name: str, *, live_within: float) -> int:
        """How many of a run's runners are alive: not stopped, a heartbeat within
        ``live_within`` seconds."""
        return int(await conn.fetchval(query("live_runners"), name, live_within))

    async def status_rows(
        self, conn: asyncpg.Connection, name: str | None, *, live_within: float
    ) -> list[asyncpg.Record]:
        """Every run's row (or ``name``'s) with its live runners (a heartbeat within
        ``live_within`` seconds) and its recent rates."""
        return await conn.fetch(query("status_rows"), name, live_within)

    async def status_runners(
        self, conn: asyncpg.Connection, name: str | None, *, live_within: float
    ) -> dict[str, list[asyncpg.Record]]:
        """Every run's (or ``name``'s) live runners, as :meth:`status_rows` counts them, by
        run: host, pid, workers and waiting reason, the earliest started first."""
        by_run: dict[str, list[asyncpg.Record]] = {}
        for r in await conn.fetch(query("status_runners"), name, live_within):
            by_run.setdefault(r["backfill"], []).append(r)
        return by_run

    async def has_migrations_table(self, conn: asyncpg.Connection) -> bool:
        """Whether ops.migrations exists."""
        return bool(await conn.fetchval(query("migrations_table")))

    async def is_applied(self, conn: asyncpg.Connection, filename: str) -> bool:
        """Whether ops.migrations records ``filename``."""
        return bool(await conn.fetchval(query("is_applied"), filename))

    async def applied_filenames(self, conn: asyncpg.Connection) -> set[str]:
        """Every file name ops.migrations records."""
        return {r["filename"] for r in await conn.fetch(query("applied_filenames"))}

    # -- the migrate flow (migrate, list, rollback) --

    async def lock_file(self, conn: asyncpg.Connection, filename: str, *, wait: bool) -> bool:
        """migrate's lock on ``filename`` until the transaction ends; without ``wait``,
        whether it was free."""
        if wait:
            await conn.execute(query("migrate_lock"), file_lock_key(filename))
            return True
        return bool(await conn.fetchval(query("migrate_try_lock"), file_lock_key(filename)))

    async def guard_file(self, conn: asyncpg.Connection, filename: str) -> None:
        """:meth:`lock_file` without waiting, leaving the transaction no snapshot; raises
        LockNotAvailableError (the transaction failed) when another migrate holds it."""
        await conn.execute(query("migrate_guard_lock").format(key=file_lock_key(filename)))

    async def set_lock_timeout(
        self, conn: asyncpg.Connection, seconds: float, *, local: bool
    ) -> None:
        """A lock timeout and no statement timeout, for the transaction (``local``) or the
        session (a file run outside a transaction)."""
        await conn.execute(query("set_lock_timeout"), pg_interval(seconds), local)

    async def server_pid(self, conn: asyncpg.Connection) -> int:
        """The pid of the server session that answers (a pooler's connection announces
        another: see db.is_pooled)."""
        return int(await conn.fetchval(query("server_pid")))

    async def reset_timeouts(self, conn: asyncpg.Connection) -> None:
        """The session's timeouts back to their defaults (after :meth:`set_lock_timeout`
        for the session)."""
        await conn.execute(query("reset_timeouts"))

    async def last_migration_id(self, conn: asyncpg.Connection) -> int:
        """ops.migrations' last id (0: none), as a file's transaction starts."""
        return int(await conn.fetchval(query("last_migration_id")))

    async def record_sql_file(
        self, conn: asyncpg.Connection, filename: str, kind: str, checksum: str, *, since: int
    ) -> None:
        """Record an applied file once, in the caller's transaction, begun when ``since``
        was ops.migrations' last id (see the block)."""
        await conn.execute(query("record_sql_file"), filename, kind, checksum, since)

    async def record_file(
        self, conn: asyncpg.Connection, filename: str, kind: str, checksum: str
    ) -> None:
        """A completed backfill's file kind and checksum (the run recorded ops.migrations)."""
        await conn.execute(query("record_file"), filename, kind, checksum)

    async def forget_file(self, conn: asyncpg.Connection, filename: str) -> None:
        """A rolled-back migration's records, in the caller's transaction."""
        await conn.execute(query("forget_migration"), filename)
        if await conn.fetchval(query("migration_files_table")):  # an ops schema before v3
            await conn.execute(query("forget_migration_file"), filename)

    async def forget_runs(self, conn: asyncpg.Connection, name: str) -> None:
        """A rolled-back backfill's runs, up and down (see the block forget_runs)."""
        await conn.execute(query("forget_runs"), name)

    async def invalid_indexes(self, conn: asyncpg.Connection) -> set[str]:
        """Every invalid index, qualified and quoted."""
        return {r["name"] for r in await conn.fetch(query("invalid_indexes"))}

    async def file_records(self, conn: asyncpg.Connection) -> dict[str, asyncpg.Record]:
        """ops.migration_files by file name."""
        return {r["filename"]: r for r in await conn.fetch(query("migration_files"))}

    async def table_facts(self, conn: asyncpg.Connection, table: str) -> asyncpg.Record:
        """What every batch over ``table`` fires or is held to (see the block plan_table)."""
        row = await conn.fetchrow(query("plan_table"), table)
        assert row is not None
        return row

    async def explain(
        self, conn: asyncpg.Connection, statement: str, bounds: Sequence[str]
    ) -> list[str]:
        """The plan of ``statement`` (ours: the migration's SQL, range expanded) as text."""
        rows = await conn.fetch(query("explain_text").format(statement=statement), *bounds)
        return [r[0] for r in rows]

    async def count_rows(self, conn: asyncpg.Connection, quoted_table: str) -> int:
        """The table's exact row count (a full scan)."""
        return int(await conn.fetchval(query("count_rows").format(table=quoted_table)))

    async def applied_times(self, conn: asyncpg.Connection) -> dict[str, datetime]:
        """When ops.migrations recorded each file name."""
        return {r["filename"]: r["applied_at"] for r in await conn.fetch(query("applied_at"))}


def file_lock_key(filename: str) -> int:
    """migrate's advisory lock key for a file (a signed 64-bit integer)."""
    digest = hashlib.sha256(f"cryptopi_batch.migrate:{filename}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


OPS = OpsStore()
"""The one ops store the commands use."""
