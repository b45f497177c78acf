"""The pre-flight (``preflight.preflight``): what it finds and what it refuses, with nothing
written: no ops schema, no row of the user's table changed."""

from __future__ import annotations

import uuid
from pathlib import Path

import asyncpg
import pytest
from helpers import seed_table, with_password
from run_support import assert_completed, run, sql_migration, write_migration

from cryptopi_batch.discovery import LoadedMigration, discover, load, resolve
from cryptopi_batch.errors import CouldNotStart
from cryptopi_batch.keys import KeyColumn
from cryptopi_batch.preflight import preflight, read_only_message
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


# --- ops.migrations of another shape ------------------------------------------------------

# Made before the first run (by the seed's tooling, or by hand): the columns after
# "CREATE TABLE ops.migrations".
OTHER_SHAPES = {
    "no_filename": (
        "(id serial PRIMARY KEY, name text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now())",
        "no column filename, name is NOT NULL without a default",
    ),
    "integer_filename": (
        "(id serial PRIMARY KEY, filename integer NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now())",
        "filename is integer, not text",
    ),
    "no_id": (
        "(filename text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
        "no column id",
    ),
    "id_without_default": (
        "(id integer PRIMARY KEY, filename text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now())",
        "id has no default",
    ),
    "no_applied_at": ("(id serial PRIMARY KEY, filename text NOT NULL)", "no column applied_at"),
    "required_extra_column": (
        "(id serial PRIMARY KEY, filename text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now(),"
        " checksum text NOT NULL)",
        "checksum is NOT NULL without a default",
    ),
}

SHAPES_THAT_WORK = {
    "seed": "(id serial PRIMARY KEY, filename text NOT NULL,"
    " applied_at timestamptz NOT NULL DEFAULT now())",
    "extra_columns": "(id serial PRIMARY KEY, filename text NOT NULL,"
    " applied_at timestamptz NOT NULL DEFAULT now(), checksum text,"
    " applied_by text NOT NULL DEFAULT current_user)",
    "identity_and_varchar": "(id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
    " filename varchar(255) NOT NULL, applied_at timestamp DEFAULT now())",
}


@pytest.mark.parametrize("shape", list(OTHER_SHAPES))
async def test_an_ops_migrations_of_another_shape_exits_2_and_creates_nothing(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path, shape: str
) -> None:
    await seed_table(conn, rows=100)
    columns, problem = OTHER_SHAPES[shape]
    await conn.execute(f"CREATE SCHEMA ops; CREATE TABLE ops.migrations {columns}")
    name = write_migration(tmp_path, "touch_all", sql_migration(TABLE))

    with pytest.raises(CouldNotStart) as refused:
        await run(dsn, tmp_path, name)

    assert refused.value.exit_code == 2
    assert refused.value.message == (
        f"ops.migrations has another shape: {problem}; it needs id (an integer with a"
        " default, e.g. serial), filename text and applied_at timestamptz (with a default),"
        " and any other column nullable or with a default"
    )
    tables = await conn.fetchval(
        "SELECT array_agg(relname::text) FROM pg_class WHERE relnamespace = 'ops'::regnamespace"
        " AND relkind = 'r'"
    )
    assert tables == ["migrations"]  # nothing else created
    assert await conn.fetchval("SELECT count(*) FROM ops.migrations") == 0
    assert await conn.fetchval(f"SELECT sum(touched) FROM {TABLE}") == 0


@pytest.mark.parametrize("shape", list(SHAPES_THAT_WORK))
async def test_an_ops_migrations_a_run_can_record_into_is_used_as_it_is(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path, shape: str
) -> None:
    await seed_table(conn, rows=250)
    await conn.execute(f"CREATE SCHEMA ops; CREATE TABLE ops.migrations {SHAPES_THAT_WORK[shape]}")
    name = write_migration(tmp_path, "touch_all", sql_migration(TABLE))

    result = await run(dsn, tmp_path, name)

    assert not result.already_completed
    await assert_completed(conn, name, TABLE, 250)


# --- a read-only server or session ------------------------------------------------------


@pytest.mark.parametrize("scope", ["role", "database"])
async def test_a_read_only_session_exits_2_and_writes_nothing(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path, scope: str
) -> None:
    """default_transaction_read_only on the role or the database: one line that says the
    session is read-only (it used to be an "unexpected error", exit 1)."""
    await seed_table(conn, rows=100)
    name = write_migration(tmp_path, "touch_all", sql_migration(TABLE))
    role, password = f"cb_ro_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    database = await conn.fetchval("SELECT current_database()")
    await conn.execute(
        f"CREATE ROLE {role} LOGIN PASSWORD '{password}';"
        f' GRANT CREATE ON DATABASE "{database}" TO {role};'
        f" GRANT USAGE ON SCHEMA matrices TO {role}; GRANT SELECT, UPDATE ON {TABLE} TO {role}"
    )
    if scope == "role":
        await conn.execute(f"ALTER ROLE {role} SET default_transaction_read_only = on")
    else:
        await conn.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
    try:
        with pytest.raises(CouldNotStart) as refused:
            await run(with_password(dsn, password, user=role), tmp_path, name)
    finally:
        await conn.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")

    assert refused.value.exit_code == 2
    assert refused.value.message == read_only_message(standby=False)
    assert refused.value.message.startswith("the session is read-only: ")
    await nothing_written(conn)


# --- an existing ops schema, without CREATE on the database ------------------------------


@pytest.mark.parametrize("given", ["owned", "granted"])
async def test_an_existing_ops_schema_is_used_without_create_on_the_database(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path, given: str
) -> None:
    """An administrator made schema ops for a role that may not create schemas: the role's
    run creates its tables there and completes (CREATE SCHEMA IF NOT EXISTS refused it)."""
    await seed_table(conn, rows=250)
    name = write_migration(tmp_path, "touch_all", sql_migration(TABLE))
    role, password = f"cb_ops_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    await conn.execute(
        f"CREATE ROLE {role} LOGIN PASSWORD '{password}';"
        f" GRANT USAGE ON SCHEMA matrices TO {role}; GRANT SELECT, UPDATE ON {TABLE} TO {role}"
    )
    if given == "owned":
        await conn.execute(f"CREATE SCHEMA ops AUTHORIZATION {role}")
    else:
        await conn.execute(f"CREATE SCHEMA ops; GRANT USAGE, CREATE ON SCHEMA ops TO {role}")
    try:
        assert not await conn.fetchval(
            "SELECT has_database_privilege($1, current_database(), 'CREATE')", role
        )
        result = await run(with_password(dsn, password, user=role), tmp_path, name)
        assert not result.already_completed
        await assert_completed(conn, name, TABLE, 250)
    finally:
        await conn.execute(f"DROP OWNED BY {role} CASCADE; DROP ROLE {role}")


# --- the privileges the statement needs -----------------------------------------------

# What the role may do beyond SELECT on the table, and whether the migration's UPDATE of
# `touched` may then run.
GRANTS = {
    "column_update": ("GRANT UPDATE (touched) ON {table} TO {role}", True),
    "table_update": ("GRANT UPDATE ON {table} TO {role}", True),
    "other_column_update": ("GRANT UPDATE (note) ON {table} TO {role}", False),
    "no_update": ("", False),
}


@pytest.mark.parametrize("grant", list(GRANTS))
async def test_the_privileges_the_statement_needs_are_checked_column_by_column(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path, grant: str
) -> None:
    """UPDATE on the one column the statement sets is enough (it was refused, as UPDATE on
    the table was asked for); without it, exit 2 before anything is written."""
    await seed_table(conn, rows=250)
    name = write_migration(tmp_path, "touch_all", sql_migration(TABLE))
    role, password = f"cb_col_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    statement, allowed = GRANTS[grant]
    await conn.execute(
        f"CREATE ROLE {role} LOGIN PASSWORD '{password}';"
        f" GRANT USAGE ON SCHEMA matrices TO {role}; GRANT SELECT ON {TABLE} TO {role};"
        f" CREATE SCHEMA ops AUTHORIZATION {role}; {statement.format(table=TABLE, role=role)}"
    )
    try:
        if allowed:
            await run(with_password(dsn, password, user=role), tmp_path, name)
            await assert_completed(conn, name, TABLE, 250)
        else:
            with pytest.raises(CouldNotStart) as refused:
                await run(with_password(dsn, password, user=role), tmp_path, name)
            assert refused.value.exit_code == 2
            assert refused.value.message.endswith(
                f"{name}.py: permission denied for table dyn_values"
            )
            assert not await conn.fetchval("SELECT to_regclass('ops.backfills') IS NOT NULL")
            assert await conn.fetchval(f"SELECT sum(touched) FROM {TABLE}") == 0
    finally:
        await conn.execute(f"DROP OWNED BY {role} CASCADE; DROP ROLE {role}")
