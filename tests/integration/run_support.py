"""Shared by the ``test_run*.py`` integration tests: migration files written per test, and
checks that read the database's own state (the user's table and the ops tables).

Every table these tests batch over has a ``touched int`` counter that the migrations bump
with ``touched = touched + 1``, so "exactly once" is a query, not a log line.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import anyio
import asyncpg

from cryptopi_batch import commands
from cryptopi_batch.db import ConnectionSettings
from cryptopi_batch.settings import RunOptions

STAMP = "20260101_0000"


def write_migration(directory: Path, description: str, source: str, stamp: str = STAMP) -> str:
    """Write ``<stamp>_<description>.py`` with ``source`` (dedented); returns its name."""
    directory.mkdir(parents=True, exist_ok=True)
    name = f"{stamp}_{description}"
    (directory / f"{name}.py").write_text(textwrap.dedent(source).lstrip())
    return name


def sql_migration(
    table: str, key: str | tuple[str, ...] = "id", batch_size: int = 100, extra: str = ""
) -> str:
    """The source of an ``sql=`` migration that bumps ``touched`` once per row."""
    return f'''
        """Touch every row of {table} once."""
        from cryptopi_batch import Backfill

        migration = Backfill(
            table={table!r},
            key={key!r},
            batch_size={batch_size},
            sql="UPDATE {table} SET touched = touched + 1 WHERE {{range}}",
            {extra}
        )
    '''


def touching_process(doc: str, before: str, batch_size: int = 50) -> str:
    """The source of a ``process=`` migration over matrices.dyn_values that runs the SQL
    ``before`` in each batch's transaction, then bumps ``touched`` once per row."""
    return f'''
    """{doc}"""
    from cryptopi_batch import Backfill, Batch

    async def touch(batch: Batch) -> int:
        await batch.conn.execute({before!r})
        status = await batch.execute(
            "UPDATE matrices.dyn_values SET touched = touched + 1 WHERE {{range}}")
        return int(status.split()[-1])

    migration = Backfill(table="matrices.dyn_values", key="id", batch_size={batch_size},
                         process=touch)
'''


async def run(dsn: str, directory: Path, name: str, **options: Any) -> commands.RunResult:
    return await commands.run(
        name,
        directory=directory,
        connection=ConnectionSettings(dsn=dsn),
        options=RunOptions(**options),
    )


async def run_together(
    dsn: str, directory: Path, name: str, runners: int = 2, **options: Any
) -> list[commands.RunResult]:
    """``runners`` runs of ``name`` started at once in this process, as runners on several
    hosts would be, each with ``options``; their results."""
    results: list[commands.RunResult] = []

    async def one() -> None:
        results.append(await run(dsn, directory, name, **options))

    async with anyio.create_task_group() as tg:
        for _ in range(runners):
            tg.start_soon(one)
    return results


async def back_to_schema_version_1(conn: asyncpg.Connection) -> None:
    """The ops schema as version 1 left it: without what versions 2 and 3 add."""
    await conn.execute(
        "ALTER TABLE ops.backfill_workers DROP COLUMN pid_namespace,"
        " DROP COLUMN waiting_reason;"
        " ALTER TABLE ops.backfills DROP COLUMN window_spec, DROP COLUMN window_timezone,"
        " DROP COLUMN next_window_at, DROP COLUMN max_rows_per_second,"
        " DROP COLUMN max_wal_bytes_per_second;"
        " DROP TABLE ops.migration_files;"
        " UPDATE ops.batch_schema_version SET version = 1"
    )


async def touched_histogram(conn: asyncpg.Connection, table: str) -> dict[int, int]:
    """``{touched value: number of rows}``: ``{1: n}`` means every row exactly once."""
    rows = await conn.fetch(f"SELECT touched, count(*) AS n FROM {table} GROUP BY touched")
    return {r["touched"]: r["n"] for r in rows}


async def assert_exactly_once(conn: asyncpg.Connection, table: str, rows: int) -> None:
    histogram = await touched_histogram(conn, table)
    assert histogram == ({1: rows} if rows else {}), histogram


async def backfill(conn: asyncpg.Connection, name: str) -> asyncpg.Record:
    row = await conn.fetchrow("SELECT * FROM ops.backfills WHERE name = $1", name)
    assert row is not None, f"no ops.backfills row for {name}"
    return row


async def migrations_rows(conn: asyncpg.Connection, filename: str) -> int:
    return int(
        await conn.fetchval("SELECT count(*) FROM ops.migrations WHERE filename = $1", filename)
    )


async def assert_completed(
    conn: asyncpg.Connection, name: str, table: str, rows: int, *, rows_processed: int | None = None
) -> asyncpg.Record:
    """Every row touched once, the run 'completed' with the right counters, its file name in
    ops.migrations exactly once, and every batch done."""
    await assert_exactly_once(conn, table, rows)
    f = await backfill(conn, name)
    assert f["status"] == "completed", dict(f)
    assert f["keys_done"] == rows, dict(f)
    assert f["rows_processed"] == (rows if rows_processed is None else rows_processed), dict(f)
    assert f["exhausted"] is True
    assert f["completed_at"] is not None
    assert await migrations_rows(conn, f"{name}.py") == 1
    stats = await conn.fetchrow(
        "SELECT count(*) AS batches, count(*) FILTER (WHERE status <> 'done') AS open,"
        " coalesce(sum(keys), 0) AS keys, coalesce(sum(rows), 0) AS rows"
        " FROM ops.backfill_batches WHERE backfill = $1",
        name,
    )
    assert stats["open"] == 0, dict(stats)
    assert stats["keys"] == rows, dict(stats)
    assert stats["rows"] == f["rows_processed"], dict(stats)
    assert stats["batches"] == f["batches_done"], (dict(stats), dict(f))
    return f


async def assert_batches_partition(
    conn: asyncpg.Connection, name: str, table: str, columns: list[tuple[str, str]]
) -> None:
    """The done batches' ranges are disjoint and cover every row: each row of ``table``
    lies in exactly one done batch, compared in the key's own type (and the column's
    collation), and no batch counts more keys than its range holds.

    ``columns`` lists ``(column, type)`` of the key in order.
    """
    row = "(" + ", ".join(f"t.{c}" for c, _ in columns) + ")"
    lower = (
        "(" + ", ".join(f"b.lower_key[{i + 1}]::{ty}" for i, (_, ty) in enumerate(columns)) + ")"
    )
    upper = (
        "(" + ", ".join(f"b.upper_key[{i + 1}]::{ty}" for i, (_, ty) in enumerate(columns)) + ")"
    )
    if len(columns) == 1:
        row, lower, upper = row[1:-1], lower[1:-1], upper[1:-1]
    inside = f"(b.lower_key IS NULL OR {row} > {lower}) AND {row} <= {upper}"
    bad = await conn.fetch(
        f"SELECT {row}::text AS key, count(b.id) AS n FROM {table} t"
        f" LEFT JOIN ops.backfill_batches b ON b.backfill = $1 AND b.status = 'done'"
        f" AND {inside} GROUP BY 1 HAVING count(b.id) <> 1 LIMIT 5",
        name,
    )
    assert not bad, [dict(r) for r in bad]
    counted = await conn.fetch(
        f"SELECT b.id, b.keys, (SELECT count(*) FROM {table} t WHERE {inside}) AS actual"
        f" FROM ops.backfill_batches b WHERE b.backfill = $1",
        name,
    )
    wrong = [dict(r) for r in counted if r["keys"] != r["actual"]]
    assert not wrong, wrong
