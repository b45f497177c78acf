"""The pre-flight (``preflight.preflight``): what it finds and what it refuses, with nothing
written: no ops schema, no row of the user's table changed."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest
from helpers import seed_table
from run_support import sql_migration, write_migration

from cryptopi_batch.discovery import LoadedMigration, discover, load, resolve
from cryptopi_batch.keys import KeyColumn
from cryptopi_batch.preflight import preflight
from cryptopi_batch.settings import RunSettings

pytestmark = pytest.mark.anyio

TABLE = "matrices.dyn_values"


def loaded(directory: Path, description: str, source: str) -> LoadedMigration:
    name = write_migration(directory, description, source)
    return load(resolve(discover(directory), name))


async def nothing_written(conn: asyncpg.Connection) -> None:
    assert await conn.fetchval("SELECT to_regnamespace('ops') IS NULL")
    assert await conn.fetchval(f"SELECT sum(touched) FROM {TABLE}") == 0


async def test_preflight_finds_the_target_and_the_ops_schema_and_writes_nothing(
    conn: asyncpg.Connection, tmp_path: Path
) -> None:
    await seed_table(conn, rows=300)
    migration = loaded(tmp_path, "touch_all", sql_migration(TABLE))

    found = await preflight(conn, migration, RunSettings())

    assert found.migration is migration
    assert found.target.table == TABLE
    assert found.target.key.columns == (KeyColumn("id", "bigint"),)
    assert found.pooled is False  # a direct connection
    assert found.ops.version == 0
    assert found.estimated_rows == 300  # analysed by seed_table
    await nothing_written(conn)
