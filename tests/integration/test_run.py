"""`run` on a real server, asserted on the database's own state: every row of the table
touched exactly once (a ``touched = touched + 1`` counter), the run's ops.backfills row and
its ops.backfill_batches rows, and the file name in ops.migrations once.

Faults (crashes, lost connections, retried errors, a failing migration, timeouts) live in
test_run_faults.py.
"""

from __future__ import annotations

import re
import socket
import uuid
from pathlib import Path

import anyio
import asyncpg
import pytest
from helpers import seed_table
from run_support import (
    assert_batches_partition,
    assert_completed,
    assert_exactly_once,
    back_to_schema_version_1,
    backfill,
    migrations_rows,
    run,
    run_together,
    sql_migration,
    touched_histogram,
    touching_process,
    write_migration,
)

from cryptopi_batch import commands, schema
from cryptopi_batch.control import pid_namespace
from cryptopi_batch.db import ConnectionSettings
from cryptopi_batch.errors import Stopped
from cryptopi_batch.keysql import RangeQueries
from cryptopi_batch.sessions import Sessions
from cryptopi_batch.settings import TimeoutPolicy
from cryptopi_batch.store import RunStore
from cryptopi_batch.target import inspect_target
from cryptopi_batch.transactions import Connection, Ending

pytestmark = pytest.mark.anyio

TABLE = "matrices.dyn_values"
BIGINT_KEY = [("id", "bigint")]


# --- 1. both forms -----------------------------------------------------------------------


async def test_sql_form_touches_every_row_once(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    await seed_table(conn, rows=1_234)
    name = write_migration(tmp_path, "touch_sql", sql_migration(TABLE, batch_size=100))

    result = await run(dsn, tmp_path, name)

    assert result.already_completed is False
    assert result.outcome is not None
    assert result.outcome.progress.rows == 1_234
    f = await assert_completed(conn, name, TABLE, 1_234)
    assert f["batches_done"] == 13  # 12 full batches of 100 and one of 34
    assert f["filename"] == f"{name}.py"
    assert list(f["end_key"]) == ["1234"]
    await assert_batches_partition(conn, name, TABLE, BIGINT_KEY)


async def test_process_form_touches_every_row_once(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    await seed_table(conn, rows=1_001)
    # Only even ids are changed: rows_processed counts what process() returned.
    name = write_migration(
        tmp_path,
        "touch_process",
        '''
        """Touch every row, in Python; count the even ids as processed."""
        from cryptopi_batch import Backfill, Batch

        async def touch(batch: Batch) -> int:
            rows = await batch.fetch("SELECT id FROM matrices.dyn_values WHERE {range}")
            ids = [r["id"] for r in rows]
            await batch.execute(
                "UPDATE matrices.dyn_values d SET touched = d.touched + 1"
                " FROM unnest($1::bigint[]) AS u(id) WHERE d.id = u.id", ids)
            return sum(1 for i in ids if i % 2 == 0)

        migration = Backfill(table="matrices.dyn_values", key="id", batch_size=64,
                             process=touch)
    ''',
    )

    result = await run(dsn, tmp_path, name)

    assert result.outcome is not None
    f = await assert_completed(conn, name, TABLE, 1_001, rows_processed=500)
    assert f["batches_done"] == 16  # ceil(1001 / 64)
    await assert_batches_partition(conn, name, TABLE, BIGINT_KEY)


async def test_a_process_batch_may_use_savepoints(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """``batch.conn.transaction()`` inside a batch is a savepoint (writing-migrations.md),
    in the first batch and in those whose transaction the commit before began: what it
    keeps commits with the batch, what it rolls back does not."""
    await seed_table(conn, rows=250)
    name = write_migration(
        tmp_path,
        "savepoints",
        '''
        """Touch every row inside a savepoint; a second savepoint is rolled back."""
        from cryptopi_batch import Backfill, Batch

        class Undone(Exception):
            pass

        async def touch(batch: Batch) -> int:
            async with batch.conn.transaction():
                status = await batch.execute(
                    "UPDATE matrices.dyn_values SET touched = touched + 1 WHERE {range}")
            try:
                async with batch.conn.transaction():
                    await batch.execute(
                        "UPDATE matrices.dyn_values SET touched = touched + 10 WHERE {range}")
                    raise Undone
            except Undone:
                pass
            return int(status.split()[-1])

        migration = Backfill(table="matrices.dyn_values", batch_size=100, process=touch)
    ''',
    )

    result = await run(dsn, tmp_path, name)

    assert result.outcome is not None
    await assert_completed(conn, name, TABLE, 250)
    await assert_exactly_once(conn, TABLE, 250)


# --- 2. every key type -------------------------------------------------------------------


async def _run_key_case(
    dsn: str,
    conn: asyncpg.Connection,
    tmp_path: Path,
    table: str,
    key: str | tuple[str, ...],
    columns: list[tuple[str, str]],
    batch_size: int,
) -> None:
    await conn.execute(f"ANALYZE {table}")
    n = int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
    assert n % batch_size != 0, "the batch size must not divide the row count"
    name = write_migration(
        tmp_path, "touch_keys", sql_migration(table, key=key, batch_size=batch_size)
    )
    result = await run(dsn, tmp_path, name)
    assert result.outcome is not None
    f = await assert_completed(conn, name, table, n)
    assert f["batches_done"] == -(-n // batch_size)
    await assert_batches_partition(conn, name, table, columns)


async def test_bigint_key_sparse_and_negative(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    # Negative and positive ids of every digit count, with gaps of varying width: the
    # text form's order ('-10' < '-9', '10' < '9') differs from the key's.
    await conn.execute(
        "CREATE TABLE sparse (id bigint PRIMARY KEY, touched int NOT NULL DEFAULT 0)"
    )
    await conn.execute(
        "INSERT INTO sparse (id) SELECT i * i * sign(i)::int FROM generate_series(-700, 700) i"
        " UNION SELECT v FROM unnest(ARRAY[-9223372036854775808, 9223372036854775807,"
        " 3, -3, 1000001]::bigint[]) v ON CONFLICT DO NOTHING"
    )
    await _run_key_case(dsn, conn, tmp_path, "sparse", "id", [("id", "bigint")], 97)


async def test_integer_key(dsn: str, conn: asyncpg.Connection, tmp_path: Path) -> None:
    await conn.execute("CREATE TABLE ints (id integer PRIMARY KEY, touched int NOT NULL DEFAULT 0)")
    await conn.execute("INSERT INTO ints (id) SELECT i * 3 FROM generate_series(-500, 500) i")
    await _run_key_case(dsn, conn, tmp_path, "ints", "id", [("id", "integer")], 100)


async def test_uuid_key(dsn: str, conn: asyncpg.Connection, tmp_path: Path) -> None:
    await conn.execute("CREATE TABLE uuids (id uuid PRIMARY KEY, touched int NOT NULL DEFAULT 0)")
    await conn.execute(
        "INSERT INTO uuids (id) SELECT gen_random_uuid() FROM generate_series(1, 1037)"
    )
    await _run_key_case(dsn, conn, tmp_path, "uuids", "id", [("id", "uuid")], 100)


# Mixed case, digits, punctuation and accents: byte order (C) and a linguistic order differ.
_TEXT_VALUES = (
    "SELECT w FROM (SELECT (ARRAY['a','B','c','D','é','E','_','z','Z','1'])"
    "[1 + i % 10] || (ARRAY['x','Y','ä','-'])[1 + (i / 10) % 4] || i::text AS w"
    " FROM generate_series(1, 1111) i) s"
)


async def test_text_key_default_collation(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    await conn.execute("CREATE TABLE words (k text PRIMARY KEY, touched int NOT NULL DEFAULT 0)")
    await conn.execute(f"INSERT INTO words (k) {_TEXT_VALUES}")
    await _run_key_case(dsn, conn, tmp_path, "words", "k", [("k", "text")], 100)


async def _non_c_collation(conn: asyncpg.Connection) -> str | None:
    """A collation under which 'a' < 'B' (false in byte order), created if need be."""

    async def orders_linguistically(name: str) -> bool:
        try:
            return bool(await conn.fetchval(f"SELECT 'a' < 'B' COLLATE \"{name}\""))
        except asyncpg.PostgresError:
            return False

    for (name,) in await conn.fetch(
        "SELECT collname FROM pg_collation WHERE collisdeterministic ORDER BY collname"
    ):
        if await orders_linguistically(name):
            return str(name)
    attempts = [
        "CREATE COLLATION test_linguistic (provider = icu, locale = 'und')",
        *(
            f"CREATE COLLATION test_linguistic (provider = libc, locale = '{loc}')"
            for loc in ("en_US.utf8", "en_US.UTF-8", "de_DE.utf8", "en_GB.utf8")
        ),
    ]
    for ddl in attempts:
        try:
            await conn.execute(ddl)
        except asyncpg.PostgresError:
            continue
        if await orders_linguistically("test_linguistic"):
            return "test_linguistic"
        await conn.execute("DROP COLLATION test_linguistic")
    return None


async def test_text_key_non_c_collation(dsn: str, conn: asyncpg.Connection, tmp_path: Path) -> None:
    collation = await _non_c_collation(conn)
    if collation is None:
        pytest.skip(
            "this server has no collation that orders text other than by bytes"
            " (built without ICU, no libc locales)"
        )
    await conn.execute(
        f'CREATE TABLE words (k text COLLATE "{collation}" PRIMARY KEY,'
        " touched int NOT NULL DEFAULT 0)"
    )
    await conn.execute(f"INSERT INTO words (k) {_TEXT_VALUES}")
    # The data set really orders differently from bytes under this collation.
    assert not await conn.fetchval(
        'SELECT array_agg(k ORDER BY k) = array_agg(k ORDER BY k COLLATE "C") FROM words'
    )
    await _run_key_case(dsn, conn, tmp_path, "words", "k", [("k", "text")], 100)


@pytest.mark.parametrize("type_", ["timestamp", "timestamptz"])
async def test_timestamp_keys(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path, type_: str
) -> None:
    await conn.execute(
        f"CREATE TABLE events (at {type_} PRIMARY KEY, touched int NOT NULL DEFAULT 0)"
    )
    # Microsecond precision, irregular gaps, across a daylight saving change in Berlin,
    # and far in the past and the future.
    await conn.execute(
        "INSERT INTO events (at) SELECT DISTINCT ('2026-03-29 00:30:00+01'::timestamptz"
        " + make_interval(secs => i * 7.123457 + (i % 13) * 0.000001))"
        f"::{type_} FROM generate_series(1, 1200) i"
        f" UNION SELECT '1901-12-14 00:00:00.000001'::{type_}"
        f" UNION SELECT '2999-01-01 23:59:59.999999'::{type_}"
    )
    await conn.execute("SET TimeZone = 'Europe/Berlin'")
    await _run_key_case(dsn, conn, tmp_path, "events", "at", [("at", type_)], 100)


async def test_composite_key(dsn: str, conn: asyncpg.Connection, tmp_path: Path) -> None:
    # Many rows share the first column: batch bounds fall inside a group and the second
    # column must decide.
    await conn.execute(
        "CREATE TABLE pairs (a bigint NOT NULL, b text NOT NULL,"
        " touched int NOT NULL DEFAULT 0, PRIMARY KEY (a, b))"
    )
    await conn.execute(
        "INSERT INTO pairs (a, b) SELECT (i % 7) - 3, 'k' || i FROM generate_series(1, 1049) i"
    )
    await _run_key_case(
        dsn, conn, tmp_path, "pairs", ("a", "b"), [("a", "bigint"), ("b", "text")], 100
    )


async def test_a_quoted_table_name_with_dots_and_capitals(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """``table=`` is read as SQL reads it: quoted parts as written, dots included."""
    await conn.execute('CREATE SCHEMA "Odd.Schema"')
    await conn.execute(
        'CREATE TABLE "Odd.Schema"."Dyn.Values" (id bigint PRIMARY KEY,'
        " touched int NOT NULL DEFAULT 0)"
    )
    await conn.execute('INSERT INTO "Odd.Schema"."Dyn.Values" (id) SELECT generate_series(1, 333)')
    table = '"Odd.Schema"."Dyn.Values"'
    sql = f"UPDATE {table} SET touched = touched + 1 WHERE {{range}}"
    name = write_migration(
        tmp_path,
        "touch_odd",
        f'''
        """Touch every row of an oddly named table once."""
        from cryptopi_batch import Backfill

        migration = Backfill(table={table!r}, key="id", batch_size=50, sql={sql!r})
    ''',
    )
    result = await run(dsn, tmp_path, name)
    assert result.outcome is not None
    await assert_completed(conn, name, table, 333)
    await assert_batches_partition(conn, name, table, BIGINT_KEY)


# --- 3, 4. empty table; a rerun is a no-op -----------------------------------------------


async def test_empty_table_completes_with_nothing_but_the_ops_rows(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    await seed_table(conn, rows=0)
    name = write_migration(tmp_path, "touch_empty", sql_migration(TABLE))

    result = await run(dsn, tmp_path, name)

    assert result.outcome is not None
    assert result.outcome.progress.batches == 0
    f = await assert_completed(conn, name, TABLE, 0)
    assert f["end_key"] is None
    assert f["batches_done"] == 0
    assert await conn.fetchval("SELECT count(*) FROM ops.backfill_batches") == 0
    assert await conn.fetchval("SELECT count(*) FROM ops.migrations") == 1
    assert await conn.fetchval("SELECT count(*) FROM matrices.dyn_values") == 0


@pytest.mark.parametrize(
    ("declared", "option", "expected", "pooled"),
    [
        (None, None, "off", False),
        (True, None, "on", False),
        (True, False, "off", False),
        (None, True, "on", False),
        (None, None, "off", True),
        (True, None, "on", True),
    ],
)
async def test_each_batch_transaction_sets_its_own_timeouts_and_commit_mode(
    dsn: str,
    conn: asyncpg.Connection,
    tmp_path: Path,
    declared: bool | None,
    option: bool | None,
    expected: str,
    pooled: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What a batch's transaction runs under, read inside it: the lock and statement
    timeouts, and synchronous_commit (off unless the migration or the option says on).
    On a direct connection they travel with BEGIN; behind a pooler (``pooled``: the
    session cannot be named once for all) in a statement of their own."""
    if pooled:

        async def behind_a_pooler(self: Sessions, conn: asyncpg.Connection) -> None:
            return None

        monkeypatch.setattr(Sessions, "identify", behind_a_pooler)
    await seed_table(conn, rows=250)
    await conn.execute("CREATE TABLE seen (lock text, stmt text, sync text)")
    name = write_migration(
        tmp_path,
        "settings_seen",
        f'''
        """Record each batch transaction's settings."""
        from cryptopi_batch import Backfill, Batch

        async def look(batch: Batch) -> int:
            await batch.conn.execute(
                "INSERT INTO seen SELECT current_setting('lock_timeout'),"
                " current_setting('statement_timeout'), current_setting('synchronous_commit')")
            return 0

        migration = Backfill(table="matrices.dyn_values", batch_size=100, process=look,
                             synchronous_commit={declared!r})
    ''',
    )

    await run(dsn, tmp_path, name, lock_timeout="1500ms", synchronous_commit=option)

    seen = await conn.fetch("SELECT DISTINCT lock, stmt, sync FROM seen")
    assert [tuple(r) for r in seen] == [("1500ms", "30s", expected)]
    assert await conn.fetchval("SELECT count(*) FROM seen") == 3
    # Set for the transaction only: a new transaction on any session has the server's.
    assert await conn.fetchval("SHOW synchronous_commit") == "on"


@pytest.mark.parametrize("sleep", [None, 0.3], ids=["at-once", "paced"])
async def test_each_batch_is_a_transaction_of_its_own_begun_when_it_starts(
    dsn: str,
    conn: asyncpg.Connection,
    tmp_path: Path,
    sleep: float | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Batches that follow one another at once have their BEGIN sent with the COMMIT of
    the batch before (one round trip less each); still, every batch runs in a transaction
    of its own, and none is left open while the run waits: with a pause between batches,
    each begins only when its batch starts."""
    sent: list[str] = []
    execute = Connection.execute

    async def spy(self: Connection, query: str, *args: object, **kw: object) -> str:
        sent.append(query)
        return await execute(self, query, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(Connection, "execute", spy)
    await seed_table(conn, rows=250)
    await conn.execute("CREATE TABLE seen (xact bigint, waited interval)")
    name = write_migration(
        tmp_path,
        "transactions_seen",
        '''
        """Record each batch's transaction, and how long it was open before its work."""
        from cryptopi_batch import Backfill, Batch

        async def look(batch: Batch) -> int:
            await batch.conn.execute(
                "INSERT INTO seen SELECT pg_current_xact_id()::text::bigint,"
                " clock_timestamp() - now()")
            status = await batch.execute(
                "UPDATE matrices.dyn_values SET touched = touched + 1 WHERE {range}")
            return int(status.split()[-1])

        migration = Backfill(table="matrices.dyn_values", batch_size=100, process=look)
    ''',
    )

    await run(dsn, tmp_path, name, sleep=sleep)

    await assert_exactly_once(conn, TABLE, 250)
    seen = await conn.fetch("SELECT xact, waited FROM seen")
    assert len({r["xact"] for r in seen}) == len(seen) == 3
    assert max(r["waited"] for r in seen).total_seconds() < 0.15
    chained = [q for q in sent if q.startswith("COMMIT; BEGIN")]
    assert len(chained) == (0 if sleep else 2)  # the last batch's COMMIT claims nothing


async def test_a_commit_of_unknown_outcome_is_read_back_not_failed(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second batch's COMMIT succeeds but the BEGIN it carries fails: the worker cannot
    tell, reconnects, finds its batch done in the ops tables, and the run completes with
    every row once. The next range, which that commit claimed and no worker holds, goes
    back to pending at once, not after its lease (a minute)."""
    begin_next = Ending.begin_next
    calls = 0

    def fail_the_second(self: Ending, begin: str) -> None:
        nonlocal calls
        calls += 1
        bad = " SET LOCAL lock_timeout = 'not a duration';" if calls == 2 else ""
        begin_next(self, begin + bad)

    monkeypatch.setattr(Ending, "begin_next", fail_the_second)
    await seed_table(conn, rows=450)
    name = write_migration(tmp_path, "touch_unknown", sql_migration(TABLE, batch_size=100))

    with anyio.fail_after(30):
        result = await run(dsn, tmp_path, name, lease_seconds=60)

    assert calls >= 3
    assert result.outcome is not None
    await assert_completed(conn, name, TABLE, 450)
    await assert_batches_partition(conn, name, TABLE, BIGINT_KEY)


async def test_rerun_of_a_completed_migration_is_a_no_op(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    await seed_table(conn, rows=450)
    name = write_migration(tmp_path, "touch_twice", sql_migration(TABLE, batch_size=100))
    await run(dsn, tmp_path, name)
    before = dict(await backfill(conn, name))
    batches_before = await conn.fetchval("SELECT count(*) FROM ops.backfill_batches")

    again = await run(dsn, tmp_path, name)

    assert again.already_completed is True
    assert again.outcome is None
    await assert_completed(conn, name, TABLE, 450)
    assert dict(await backfill(conn, name)) == before
    assert await conn.fetchval("SELECT count(*) FROM ops.backfill_batches") == batches_before
    assert await migrations_rows(conn, f"{name}.py") == 1


async def _slow_batches(conn: asyncpg.Connection) -> None:
    """Every batch's UPDATE of the table takes at least 0.2 s (a statement trigger)."""
    await conn.execute("""
        CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_sleep(0.2); RETURN NULL; END $$;
        CREATE TRIGGER slow AFTER UPDATE ON matrices.dyn_values
        FOR EACH STATEMENT EXECUTE FUNCTION slow()""")


async def test_list_and_status_agree_after_a_restart_of_a_completed_run(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """ops.migrations keeps the file (it completed once), but the run's own row, started
    over and stopped part-way, is what both commands report."""
    await seed_table(conn, rows=450)
    name = write_migration(tmp_path, "touch_again", sql_migration(TABLE, batch_size=100))
    await run(dsn, tmp_path, name)
    await conn.execute(f"UPDATE {TABLE} SET touched = 0")
    await _slow_batches(conn)
    with pytest.raises(Stopped):
        await run(dsn, tmp_path, name, restart=True, max_duration="0.1s")
    connection = ConnectionSettings(dsn=dsn)
    listed = {
        r.name: r.status
        for r in await commands.list_migrations(directory=tmp_path, connection=connection)
    }
    [status] = await commands.status(name, directory=tmp_path, connection=connection)
    assert listed[name] == status.status == "pending"
    assert status.interrupted
    assert await migrations_rows(conn, f"{name}.py") == 1


async def test_a_file_already_recorded_in_ops_migrations_is_not_run_again(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """Recorded in ops.migrations without a run of its own (applied by other tooling): `run`
    is a no-op, as for a completed run, and `status` says completed as `list` does;
    `--restart` runs it all the same."""
    await seed_table(conn, rows=300)
    name = write_migration(tmp_path, "touch_recorded", sql_migration(TABLE, batch_size=100))
    await schema.ensure_schema(conn)
    await conn.execute("INSERT INTO ops.migrations (filename) VALUES ($1)", f"{name}.py")
    connection = ConnectionSettings(dsn=dsn)

    result = await run(dsn, tmp_path, name)

    assert result.already_completed
    assert await conn.fetchval(f"SELECT sum(touched) FROM {TABLE}") == 0
    assert await conn.fetchval("SELECT count(*) FROM ops.backfills") == 0
    [status] = await commands.status(name, directory=tmp_path, connection=connection)
    listed = {
        r.name: r.status
        for r in await commands.list_migrations(directory=tmp_path, connection=connection)
    }
    assert status.status == listed[name] == "completed"

    restarted = await run(dsn, tmp_path, name, restart=True)

    assert restarted.outcome is not None
    await assert_exactly_once(conn, TABLE, 300)
    assert await migrations_rows(conn, f"{name}.py") == 1


async def test_status_rate_counts_each_batch_to_its_end(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """A batch's finish is when its checkpoint ran, not when its transaction began (now()):
    batches of 100 keys that take 0.2 s each cannot show more than 500 keys/s."""
    await seed_table(conn, rows=2_000)
    name = write_migration(tmp_path, "touch_slowly", sql_migration(TABLE, batch_size=100))
    await _slow_batches(conn)
    with pytest.raises(Stopped):
        await run(dsn, tmp_path, name, max_duration="0.5s")
    [status] = await commands.status(
        name, directory=tmp_path, connection=ConnectionSettings(dsn=dsn)
    )

    assert status.batches >= 1
    assert status.rows_per_second is not None
    assert 0 < status.rows_per_second <= 100 / 0.2


async def test_a_max_duration_of_zero_stops_before_the_first_batch(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """No batch starts past --max-duration: at 0 none does (it ran one before, the
    deadline's task not having run yet), and the stop is a resumable one."""
    await seed_table(conn, rows=300)
    name = write_migration(tmp_path, "touch_none", sql_migration(TABLE, batch_size=100))
    with pytest.raises(Stopped, match="max-duration"):
        await run(dsn, tmp_path, name, workers=2, max_duration="0s")
    assert await touched_histogram(conn, TABLE) == {0: 300}
    assert (await backfill(conn, name))["batches_done"] == 0
    result = await run(dsn, tmp_path, name)
    assert result.outcome is not None
    await assert_exactly_once(conn, TABLE, 300)


# --- 10. workers -------------------------------------------------------------------------


async def test_three_workers_share_the_work_exactly_once(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    await seed_table(conn, rows=3_001)
    name = write_migration(tmp_path, "touch_workers", sql_migration(TABLE, batch_size=50))

    result = await run(dsn, tmp_path, name, workers=3)

    assert result.outcome is not None
    await assert_completed(conn, name, TABLE, 3_001)
    await assert_batches_partition(conn, name, TABLE, BIGINT_KEY)
    workers = await conn.fetchval(
        "SELECT workers FROM ops.backfill_workers WHERE backfill = $1", name
    )
    assert workers == 3


@pytest.mark.parametrize(
    "same_namespace", [True, False], ids=["same-pid-namespace", "other-pid-namespace"]
)
async def test_a_runner_gone_from_this_host_is_retired_only_in_the_same_pid_namespace(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path, same_namespace: bool
) -> None:
    """A runner starting finds another on its host whose pid is gone, holding a range with
    an hour's lease. In this process's pid namespace that pid is its process, gone: it is
    retired and its range handed back at once. From another pid namespace (a container
    that took the host's name) the pid says nothing here: it is left to its lease."""
    await seed_table(conn, rows=300)
    name = write_migration(tmp_path, "touch_hosts", sql_migration(TABLE, batch_size=100))
    with pytest.raises(Stopped):
        await run(dsn, tmp_path, name, max_duration="0s")  # the run's row and ops schema
    async with await anyio.open_process(["true"]) as child:
        await child.wait()  # its pid is gone
    token = uuid.uuid4()
    namespace = pid_namespace() if same_namespace else "pid:[1]"
    await conn.execute(
        "INSERT INTO ops.backfill_workers (token, backfill, host, pid, workers, pid_namespace)"
        " VALUES ($1, $2, $3, $4, 1, $5)",
        token,
        name,
        socket.gethostname(),
        child.pid,
        namespace,
    )
    target = await inspect_target(conn, TABLE, ("id",))
    held = await RunStore(name, token, RangeQueries(target), 3600).claim(
        conn, size=100, timeouts=TimeoutPolicy()
    )
    assert held is not None

    with pytest.raises(Stopped):
        await run(dsn, tmp_path, name, max_duration="0s")  # registers, and looks around

    stopped = await conn.fetchval(
        "SELECT stopped_at FROM ops.backfill_workers WHERE token = $1", token
    )
    lease_left = await conn.fetchval(
        "SELECT extract(epoch FROM lease_until - now()) FROM ops.backfill_batches WHERE id = $1",
        held.id,
    )
    if same_namespace:
        assert stopped is not None
        assert lease_left < 0
    else:
        assert stopped is None
        assert lease_left > 3000


async def test_a_runner_that_dies_mid_run_on_this_host_is_retired_by_the_heartbeat(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """Two runners on one host; one dies (its process gone) holding a range with an hour's
    lease, after the other started. The survivor's heartbeat sees the dead pid in its own
    pid namespace, as a start does, and takes the range over at once instead of waiting
    out the lease: the run completes within seconds, every row once."""
    rows = 600
    await seed_table(conn, rows=rows)
    name = write_migration(
        tmp_path, "touch_peer", touching_process("Slow.", "SELECT pg_sleep(0.02)", 50)
    )
    with pytest.raises(Stopped):
        await run(dsn, tmp_path, name, max_duration="0s")  # the run's row and ops schema
    target = await inspect_target(conn, TABLE, ("id",))
    token = uuid.uuid4()
    peer = await anyio.open_process(["sleep", "60"])
    try:
        await conn.execute(
            "INSERT INTO ops.backfill_workers (token, backfill, host, pid, workers,"
            " pid_namespace) VALUES ($1, $2, $3, $4, 1, $5)",
            token,
            name,
            socket.gethostname(),
            peer.pid,
            pid_namespace(),
        )
        # The peer holds the run's first range, with an hour's lease.
        held = await RunStore(name, token, RangeQueries(target), 3600).claim(
            conn, size=50, timeouts=TimeoutPolicy()
        )
        assert held is not None

        async def kill_the_peer_once_the_survivor_runs() -> None:
            with anyio.fail_after(20):
                while not await conn.fetchval(  # noqa: ASYNC110 -- polls the database
                    "SELECT batches_done >= 2 FROM ops.backfills WHERE name = $1", name
                ):
                    await anyio.sleep(0.01)
            peer.kill()
            await peer.wait()

        with anyio.fail_after(30):  # the peer's lease is an hour
            async with anyio.create_task_group() as tg:
                tg.start_soon(kill_the_peer_once_the_survivor_runs)
                result = await run(dsn, tmp_path, name)
    finally:
        if peer.returncode is None:
            peer.kill()
            await peer.wait()
    assert result.outcome is not None
    await assert_completed(conn, name, TABLE, rows)
    done_by = await conn.fetchval(
        "SELECT worker FROM ops.backfill_batches WHERE id = $1 AND status = 'done'", held.id
    )
    assert done_by not in (None, token)
    assert (
        await conn.fetchval("SELECT stopped_at FROM ops.backfill_workers WHERE token = $1", token)
        is not None
    )


async def test_two_runners_upgrade_a_version_1_ops_schema_and_resume_its_run(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """A run started under version 1 of the ops schema (without the runners' pid
    namespaces), resumed by two runners at once: the schema is upgraded once, under its
    lock, and the run completes with every row once."""
    await seed_table(conn, rows=1_000)
    name = write_migration(tmp_path, "touch_upgrade", sql_migration(TABLE, batch_size=50))
    with pytest.raises(Stopped):
        await run(dsn, tmp_path, name, max_duration="0s")
    await back_to_schema_version_1(conn)
    assert await schema.schema_version(conn) == 1

    results = await run_together(dsn, tmp_path, name)

    assert len(results) == 2
    assert await schema.schema_version(conn) == schema.SCHEMA_VERSION == 3
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM ops.backfill_workers WHERE pid_namespace IS NOT NULL"
        )
        == 2
    )
    await assert_completed(conn, name, TABLE, 1_000)
    await assert_batches_partition(conn, name, TABLE, BIGINT_KEY)


# --- 11. the range lookup uses the index -------------------------------------------------


def _plan_text(rows: list[asyncpg.Record]) -> str:
    return "\n".join(r[0] for r in rows)


@pytest.mark.parametrize("kind", ["bigint", "text"])
async def test_the_range_lookup_is_an_index_range_scan(conn: asyncpg.Connection, kind: str) -> None:
    if kind == "bigint":
        await seed_table(conn, rows=50_000)
        table, key = TABLE, ("id",)
        lower, upper = ("20000",), ("50000",)
    else:
        await conn.execute("CREATE TABLE words (k text PRIMARY KEY, v int)")
        await conn.execute(
            "INSERT INTO words SELECT md5(i::text), i FROM generate_series(1, 50000) i"
        )
        await conn.execute("ANALYZE words")
        table, key = "words", ("k",)
        lower, upper = ("4",), ("c",)
    target = await inspect_target(conn, table, key)
    queries = RangeQueries(target)

    for sql, params in (
        (queries.nth_after, [*lower, *upper, 999]),
        (queries.nth_from_start, [*upper, 999]),
    ):
        plan = _plan_text(await conn.fetch("EXPLAIN " + sql, *params))
        assert "Index Only Scan" in plan or "Index Scan" in plan, plan
        assert "Sort" not in plan, plan
        assert "Seq Scan" not in plan, plan
        # And it answers: the 1000th key after the lower bound exists.
        assert await conn.fetchrow(sql, *params) is not None

    # Reading the n-th key touches about n index entries, not the whole range.
    analyzed = _plan_text(
        await conn.fetch(
            "EXPLAIN (ANALYZE, BUFFERS, FORMAT TEXT) " + queries.nth_after, *lower, *upper, 999
        )
    )
    scanned = [
        float(m.group(1))
        for m in re.finditer(r"Index (?:Only )?Scan.*actual time=\S+ rows=([\d.]+)", analyzed)
    ]
    assert scanned == [1000.0], analyzed


# --- 12. two runners at once -------------------------------------------------------------


async def test_two_runners_at_once_complete_exactly_once(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    await seed_table(conn, rows=2_017)
    name = write_migration(
        tmp_path,
        "touch_two_runners",
        '''
        """Touch every row, slowly enough that both runners get batches."""
        from cryptopi_batch import Backfill, Batch

        async def touch(batch: Batch) -> int:
            await batch.conn.execute("SELECT pg_sleep(0.01)")
            return int((await batch.execute(
                "UPDATE matrices.dyn_values SET touched = touched + 1 WHERE {range}"
            )).split()[-1])

        migration = Backfill(table="matrices.dyn_values", key="id", batch_size=40,
                             process=touch)
    ''',
    )
    results = await run_together(dsn, tmp_path, name)

    assert len(results) == 2
    await assert_completed(conn, name, TABLE, 2_017)
    await assert_batches_partition(conn, name, TABLE, BIGINT_KEY)
    assert await conn.fetchval("SELECT count(*) FROM ops.migrations") == 1
    # Both joined the same run and both did some of it.
    per_worker = await conn.fetch(
        "SELECT worker, count(*) AS n FROM ops.backfill_batches WHERE backfill = $1"
        " GROUP BY worker",
        name,
    )
    assert len(per_worker) == 2, [dict(r) for r in per_worker]
    assert await conn.fetchval("SELECT count(*) FROM ops.backfill_workers") == 2
