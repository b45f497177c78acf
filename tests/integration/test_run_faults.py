"""`run` under faults, asserted on the database's own state: crashes at each point of a
batch, lost connections, retried errors, a migration that raises, statement timeouts.
After each, every row is touched exactly once and the ops tables tell the truth.
"""

from __future__ import annotations

import signal
import time
import uuid
from pathlib import Path

import anyio
import asyncpg
import pytest
from helpers import connect, run_cli, seed_table
from run_support import (
    assert_batches_partition,
    assert_completed,
    back_to_schema_version_1,
    backfill,
    migrations_rows,
    run,
    sql_migration,
    touching_process,
    write_migration,
)

from cryptopi_batch import commands, schema, store
from cryptopi_batch.db import APPLICATION_NAME
from cryptopi_batch.errors import BatchFailed, CouldNotStart, SourceChanged, Stopped
from cryptopi_batch.keys import KeyRange
from cryptopi_batch.keysql import RangeQueries
from cryptopi_batch.settings import TimeoutPolicy
from cryptopi_batch.store import RunStore
from cryptopi_batch.target import inspect_target

pytestmark = pytest.mark.anyio

TABLE = "matrices.dyn_values"
BIGINT_KEY = [("id", "bigint")]


async def _done_batches(conn: asyncpg.Connection) -> int:
    if not await conn.fetchval("SELECT to_regclass('ops.backfill_batches') IS NOT NULL"):
        return 0
    return int(
        await conn.fetchval("SELECT count(*) FROM ops.backfill_batches WHERE status = 'done'")
    )


# --- 5. a crash at each point of a batch, then resume -------------------------------------


# (crash point, batches committed when the 3rd batch reaches it)
CRASH_POINTS = [("before_work", 2), ("after_work", 2), ("before_commit", 2), ("after_commit", 3)]


@pytest.mark.parametrize(("point", "committed"), CRASH_POINTS)
async def test_resume_after_a_kill_at_each_point_of_a_batch(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path, point: str, committed: int
) -> None:
    await seed_table(conn, rows=1_050)
    name = write_migration(tmp_path, "touch_crash", sql_migration(TABLE, batch_size=100))
    argv = ("run", name, "--migrations-dir", str(tmp_path), "--no-progress")

    crashed = await anyio.to_thread.run_sync(
        lambda: run_cli(*argv, dsn=dsn, env={"CRYPTOPI_BATCH_CRASH_AT": f"{point}:3"})
    )

    assert crashed.returncode == -signal.SIGKILL, (crashed.returncode, crashed.stderr)
    # The checkpoint holds exactly the committed batches, and only their rows changed.
    f = await backfill(conn, name)
    assert f["status"] == "running"
    assert f["batches_done"] == committed
    assert f["keys_done"] == f["rows_processed"] == committed * 100
    histogram = await conn.fetch(
        f"SELECT touched, min(id) AS lo, max(id) AS hi, count(*) AS n FROM {TABLE}"
        " GROUP BY touched ORDER BY touched"
    )
    assert [tuple(r) for r in histogram] == [
        (0, committed * 100 + 1, 1_050, 1_050 - committed * 100),
        (1, 1, committed * 100, committed * 100),
    ]
    assert await migrations_rows(conn, f"{name}.py") == 0

    resumed = await anyio.to_thread.run_sync(lambda: run_cli(*argv, dsn=dsn))

    assert resumed.returncode == 0, resumed.stderr
    await assert_completed(conn, name, TABLE, 1_050)
    await assert_batches_partition(conn, name, TABLE, BIGINT_KEY)


# --- 6. the batch connection terminated mid-run -------------------------------------------

SLOW_TOUCH = touching_process("Touch every row, slowly: 50 ms a batch.", "SELECT pg_sleep(0.05)")

_TERMINATE = """
SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
 WHERE datname = current_database() AND application_name = 'cryptopi_batch'
   AND pid <> pg_backend_pid() AND {which}
"""


async def _terminate_when(conn: asyncpg.Connection, done: int, which: str) -> int:
    """Once ``done`` batches committed, terminate the runner's backends that match
    ``which``; returns how many were terminated."""
    # Polls the database: the run's progress is visible there, not as an event here.
    while await _done_batches(conn) < done:  # noqa: ASYNC110
        await anyio.sleep(0.005)
    with anyio.fail_after(10):
        while True:
            n = int(await conn.fetchval(_TERMINATE.format(which=which)))
            if n:
                return n
            await anyio.sleep(0.002)


async def test_a_terminated_batch_connection_reconnects_and_completes(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    await seed_table(conn, rows=1_000)
    name = write_migration(tmp_path, "touch_terminated", SLOW_TOUCH)
    killed: list[int] = []

    async def killer() -> None:
        for done in (3, 8, 13):
            killed.append(
                await _terminate_when(conn, done, "state = 'active' AND query LIKE '%pg_sleep%'")
            )

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(killer)
            result = await run(dsn, tmp_path, name)

    assert killed == [1, 1, 1]
    assert result.outcome is not None
    await assert_completed(conn, name, TABLE, 1_000)
    await assert_batches_partition(conn, name, TABLE, BIGINT_KEY)
    # Each terminated batch ran again, once, on a new connection.
    retried = await conn.fetchval(
        "SELECT count(*) FROM ops.backfill_batches WHERE backfill = $1 AND attempts = 2", name
    )
    assert retried == 3
    assert (
        await conn.fetchval(
            "SELECT max(attempts) FROM ops.backfill_batches WHERE backfill = $1", name
        )
        == 2
    )


async def test_every_runner_connection_terminated_mid_run_still_completes(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """The control connection (heartbeat, finalize) is lost too, not just a batch's."""
    await seed_table(conn, rows=1_000)
    name = write_migration(tmp_path, "touch_all_terminated", SLOW_TOUCH)
    killed: list[int] = []

    async def killer() -> None:
        killed.append(await _terminate_when(conn, 5, "true"))

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(killer)
            result = await run(dsn, tmp_path, name)

    assert killed
    assert killed[0] >= 2
    assert result.outcome is not None
    await assert_completed(conn, name, TABLE, 1_000)


# --- 7. serialization failures and deadlocks are retried ---------------------------------

_INJECT = """
CREATE SEQUENCE fault_40001;
CREATE SEQUENCE fault_40p01;
-- nextval() is not rolled back with the failed batch: it decides which attempt fails.
CREATE FUNCTION inject_fault() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.id = 250 THEN
        IF nextval('fault_40001') = 1 THEN
            RAISE EXCEPTION 'injected serialization failure' USING ERRCODE = '40001';
        END IF;
    ELSIF NEW.id = 750 THEN
        IF nextval('fault_40p01') <= 2 THEN
            RAISE EXCEPTION 'injected deadlock' USING ERRCODE = '40P01';
        END IF;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER inject_fault BEFORE UPDATE ON matrices.dyn_values
    FOR EACH ROW EXECUTE FUNCTION inject_fault();
"""


async def test_serialization_failures_and_deadlocks_are_retried(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    await seed_table(conn, rows=1_030)
    await conn.execute(_INJECT)
    name = write_migration(tmp_path, "touch_retried", sql_migration(TABLE, batch_size=100))

    result = await run(dsn, tmp_path, name)

    assert result.outcome is not None
    await assert_completed(conn, name, TABLE, 1_030)
    await assert_batches_partition(conn, name, TABLE, BIGINT_KEY)
    attempts = {
        tuple(r["upper_key"]): r["attempts"]
        for r in await conn.fetch(
            "SELECT upper_key, attempts FROM ops.backfill_batches WHERE backfill = $1", name
        )
    }
    assert attempts.pop(("300",)) == 2  # 40001 once
    assert attempts.pop(("800",)) == 3  # 40P01 twice
    assert set(attempts.values()) == {1}
    # The faults fired as planned (1 + 1 and 2 + 1 calls of nextval).
    assert await conn.fetchval("SELECT last_value FROM fault_40001") == 2
    assert await conn.fetchval("SELECT last_value FROM fault_40p01") == 3
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM ops.backfill_batches WHERE last_error IS NOT NULL"
        )
        == 0
    )


# --- 8. the migration raises; a fixed file resumes with --force ---------------------------

FAILING = '''
    """Touch every row; the 3rd batch raises."""
    from cryptopi_batch import Backfill, Batch

    async def touch(batch: Batch) -> int:
        status = await batch.execute(
            "UPDATE matrices.dyn_values SET touched = touched + 1 WHERE {range}")
        if batch.lower == ("200",):
            raise ValueError("bad row in the third batch")
        return int(status.split()[-1])

    migration = Backfill(table="matrices.dyn_values", key="id", batch_size=100,
                         process=touch)
'''


async def test_a_failing_migration_keeps_its_checkpoint_and_resumes_when_fixed(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    await seed_table(conn, rows=1_010)
    name = write_migration(tmp_path, "touch_failing", FAILING)

    with pytest.raises(BatchFailed) as failed:
        await run(dsn, tmp_path, name)

    assert failed.value.exit_code == 1
    f = await backfill(conn, name)
    assert f["status"] == "failed"
    assert "ValueError" in f["last_error"]
    assert "bad row in the third batch" in f["last_error"]
    assert f["batches_done"] == 2
    assert f["keys_done"] == f["rows_processed"] == 200
    # The two committed batches stay; the failed one rolled back.
    assert await conn.fetchval(f"SELECT count(*) FROM {TABLE} WHERE touched = 1") == 200
    assert await conn.fetchval(f"SELECT count(*) FROM {TABLE} WHERE touched = 1 AND id > 200") == 0
    assert await migrations_rows(conn, f"{name}.py") == 0

    # Fixed: the same name, another source.
    write_migration(
        tmp_path,
        "touch_failing",
        FAILING.replace('raise ValueError("bad row in the third batch")', "pass"),
    )
    with pytest.raises(SourceChanged) as changed:
        await run(dsn, tmp_path, name)
    assert changed.value.exit_code == 2
    assert dict(await backfill(conn, name)) == dict(f)  # refused: nothing written
    assert await conn.fetchval(f"SELECT count(*) FROM {TABLE} WHERE touched = 1") == 200

    # The failed batch's range is taken up again at once, not after its lease lapses.
    with anyio.fail_after(20):
        result = await run(dsn, tmp_path, name, force=True)

    assert result.outcome is not None
    await assert_completed(conn, name, TABLE, 1_010)
    await assert_batches_partition(conn, name, TABLE, BIGINT_KEY)
    assert (await backfill(conn, name))["last_error"] is None


# --- 9. a statement timeout shrinks the batch ---------------------------------------------

SLOW_WHEN_BIG = '''
    """Touch every row; a batch of more than 30 keys is slower than the timeout."""
    from cryptopi_batch import Backfill, Batch

    async def touch(batch: Batch) -> int:
        keys = await batch.fetchval("SELECT count(*) FROM matrices.dyn_values WHERE {range}")
        if keys > 30:
            await batch.conn.execute("SELECT pg_sleep(0.3)")
        status = await batch.execute(
            "UPDATE matrices.dyn_values SET touched = touched + 1 WHERE {range}")
        return int(status.split()[-1])

    migration = Backfill(table="matrices.dyn_values", key="id", batch_size=100,
                         process=touch)
'''


async def test_a_statement_timeout_retries_with_a_smaller_batch(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    await seed_table(conn, rows=230)
    name = write_migration(tmp_path, "touch_timeout", SLOW_WHEN_BIG)

    with anyio.fail_after(60):
        result = await run(dsn, tmp_path, name, statement_timeout="200ms")

    assert result.outcome is not None
    f = await assert_completed(conn, name, TABLE, 230)
    await assert_batches_partition(conn, name, TABLE, BIGINT_KEY)
    assert f["batch_size"] < 100
    assert f["batches_done"] > 3  # more than ceil(230 / 100)
    # No committed batch holds more keys than the work could do within the timeout.
    assert (
        await conn.fetchval("SELECT max(keys) FROM ops.backfill_batches WHERE backfill = $1", name)
        <= 30
    )
    # The first batch timed out at least once before it committed, smaller.
    first = await conn.fetchrow(
        "SELECT * FROM ops.backfill_batches WHERE backfill = $1 AND lower_key IS NULL", name
    )
    assert first["attempts"] >= 2
    assert first["keys"] < 100


_FAIL_ONE_SPLIT = """
CREATE SEQUENCE fault_split;
CREATE FUNCTION fail_one_split() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF nextval('fault_split') = 1 THEN
        RAISE EXCEPTION 'injected serialization failure' USING ERRCODE = '40001';
    END IF;
    RETURN NEW;
END $$;
-- A split cuts a running range's upper bound; a checkpoint sets 'done', and a claim
-- leaves the bounds as they are (of a pending range, or of a running one whose lease
-- lapsed): only split_batch matches.
CREATE TRIGGER fail_one_split BEFORE UPDATE ON ops.backfill_batches FOR EACH ROW
    WHEN (OLD.status = 'running' AND NEW.status = 'running'
          AND OLD.upper_key IS DISTINCT FROM NEW.upper_key)
    EXECUTE FUNCTION fail_one_split();
"""


async def test_a_split_that_fails_right_after_its_claim_is_tried_again_still_held(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """A range claimed whole and then cut to the batch size, whose cut fails transiently:
    the claim committed, the cut did not. The cut is tried again on the same claim, which
    the runner still holds (its lease kept alive by the heartbeat): no wait for the lease
    to lapse, no range lost or run twice."""
    await seed_table(conn, rows=300)
    name = write_migration(tmp_path, "touch_split", sql_migration(TABLE, batch_size=50))
    migration = commands.find_migration(tmp_path, name)
    await schema.ensure_schema(conn)
    # What a run stopped after shrinking its batches leaves: the key space handed out, and
    # one pending remainder six times the batch size.
    await conn.execute(
        "INSERT INTO ops.backfills (name, filename, table_name, key_columns, key_types,"
        " end_key, frontier, exhausted, batch_size, source_checksum) VALUES ($1, $2, $3,"
        " '{id}', '{bigint}', '{300}', '{300}', true, 50, $4)",
        name,
        migration.file.filename,
        TABLE,
        migration.checksum,
    )
    await conn.execute(
        "INSERT INTO ops.backfill_batches (backfill, lower_key, upper_key, keys, status)"
        " VALUES ($1, NULL, '{300}', 300, 'pending')",
        name,
    )
    await conn.execute(_FAIL_ONE_SPLIT)

    started = time.monotonic()
    with anyio.fail_after(30):
        result = await run(dsn, tmp_path, name, lease_seconds=30)
    elapsed = time.monotonic() - started

    assert result.outcome is not None
    await assert_completed(conn, name, TABLE, 300)
    await assert_batches_partition(conn, name, TABLE, BIGINT_KEY)
    # The first cut failed and was tried again at once, still held (not after the 30 s
    # lease, which the bound below leaves ample room under); so was each remainder cut
    # while it held more than twice the batch size (300 -> 250 -> 200 -> 150 -> 100): five
    # cuts in all. The first range's work ran once.
    assert await conn.fetchval("SELECT last_value FROM fault_split") == 5
    assert elapsed < 15
    first = await conn.fetchrow(
        "SELECT keys, attempts FROM ops.backfill_batches WHERE backfill = $1 AND lower_key IS NULL",
        name,
    )
    assert (first["keys"], first["attempts"]) == (50, 1)


# --- more: repeated kills with several workers; a lock timeout -----------------------------


async def test_repeated_kills_with_three_workers_then_resume(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    await seed_table(conn, rows=2_000)
    name = write_migration(tmp_path, "touch_kills", sql_migration(TABLE, batch_size=50))
    argv = ("run", name, "--migrations-dir", str(tmp_path), "--no-progress", "--workers", "3")

    for crash_at in ("before_commit:4", "after_work:2", "after_commit:5", "before_work:3"):
        crashed = await anyio.to_thread.run_sync(
            lambda c=crash_at: run_cli(*argv, dsn=dsn, env={"CRYPTOPI_BATCH_CRASH_AT": c})
        )
        assert crashed.returncode == -signal.SIGKILL, (crash_at, crashed.stderr)
        # The checkpoint matches the table exactly: no row twice, none changed uncounted.
        state = await conn.fetchrow(
            f"SELECT max(touched) AS most, sum(touched) AS changed FROM {TABLE}"
        )
        f = await backfill(conn, name)
        assert state["most"] <= 1, crash_at
        assert state["changed"] == f["keys_done"] == f["rows_processed"], crash_at
        done = await conn.fetchval(
            "SELECT coalesce(sum(keys), 0) FROM ops.backfill_batches"
            " WHERE backfill = $1 AND status = 'done'",
            name,
        )
        assert done == f["keys_done"], crash_at

    resumed = await anyio.to_thread.run_sync(lambda: run_cli(*argv, dsn=dsn))

    assert resumed.returncode == 0, resumed.stderr
    await assert_completed(conn, name, TABLE, 2_000)
    await assert_batches_partition(conn, name, TABLE, BIGINT_KEY)


LOCKS_SIDE = touching_process(
    "Touch every row; each batch also reads a side table another session may lock.",
    "SELECT count(*) FROM side",
)


async def test_a_lock_timeout_behind_an_exclusive_lock_is_retried(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    await seed_table(conn, rows=1_000)
    await conn.execute("CREATE TABLE side (n int)")
    name = write_migration(tmp_path, "touch_locked", LOCKS_SIDE)
    holder = await connect(dsn)

    async def hold_lock() -> None:
        while await _done_batches(conn) < 3:  # noqa: ASYNC110 -- polls the database
            await anyio.sleep(0.002)
        async with holder.transaction():
            await holder.execute("LOCK TABLE side IN ACCESS EXCLUSIVE MODE")
            await anyio.sleep(1.0)

    try:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(hold_lock)
                result = await run(dsn, tmp_path, name, lock_timeout="100ms")
    finally:
        await holder.close()

    assert result.outcome is not None
    await assert_completed(conn, name, TABLE, 1_000)
    await assert_batches_partition(conn, name, TABLE, BIGINT_KEY)
    # The batch that met the lock gave up after 100 ms (not a second), and then ran again.
    assert (
        await conn.fetchval(
            "SELECT max(attempts) FROM ops.backfill_batches WHERE backfill = $1", name
        )
        >= 2
    )


async def test_a_table_locked_while_the_run_checks_it_is_reported_as_locked(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """Preparing the migration's statement takes the table's lock: held by another session
    past the lock timeout, the run could not start (exit 2), says the table is locked (not
    that its SQL is wrong) and writes nothing."""
    await seed_table(conn, rows=100)
    name = write_migration(tmp_path, "touch_behind_lock", sql_migration(TABLE, batch_size=50))
    holder = await connect(dsn)
    try:
        async with holder.transaction():
            await holder.execute(f"LOCK TABLE {TABLE} IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(CouldNotStart, match="locked by another session") as refused:
                await run(dsn, tmp_path, name, lock_timeout="200ms")
    finally:
        await holder.close()

    assert refused.value.exit_code == 2
    assert not await conn.fetchval("SELECT to_regclass('ops.backfills') IS NOT NULL")
    assert await conn.fetchval(f"SELECT sum(touched) FROM {TABLE}") == 0


async def test_a_split_behind_a_table_lock_gives_up_after_the_lock_timeout(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """Cutting a range reads the user's table: behind DDL's lock it waits no longer than the
    batch's lock timeout (then the caller retries), and changes nothing."""
    await seed_table(conn, rows=300)
    name = write_migration(tmp_path, "touch_cut", sql_migration(TABLE, batch_size=50))
    await schema.ensure_schema(conn)
    await conn.execute(
        "INSERT INTO ops.backfills (name, filename, table_name, key_columns, key_types,"
        " end_key, frontier, exhausted, batch_size, source_checksum) VALUES ($1, $1 || '.py',"
        " $2, '{id}', '{bigint}', '{300}', '{300}', true, 50, 'x')",
        name,
        TABLE,
    )
    token = uuid.uuid4()
    batch_id = await conn.fetchval(
        "INSERT INTO ops.backfill_batches (backfill, upper_key, keys, status, worker)"
        " VALUES ($1, '{300}', 300, 'running', $2) RETURNING id",
        name,
        token,
    )
    ranges = RangeQueries(await inspect_target(conn, TABLE, ("id",)))
    claim = store.Claim(batch_id, KeyRange(None, ("300",)), 300, 0)
    holder, splitter = await connect(dsn), await connect(dsn)
    try:
        async with holder.transaction():
            await holder.execute(f"LOCK TABLE {TABLE} IN ACCESS EXCLUSIVE MODE")
            with anyio.fail_after(5), pytest.raises(asyncpg.LockNotAvailableError):
                await RunStore(name, token, ranges, 60).split(
                    splitter, claim, 50, timeouts=TimeoutPolicy(lock_timeout=0.1)
                )
    finally:
        await holder.close()
        await splitter.close()
    row = await conn.fetchrow(
        "SELECT upper_key, keys FROM ops.backfill_batches WHERE id = $1", batch_id
    )
    assert (list(row["upper_key"]), row["keys"]) == (["300"], 300)
    assert await conn.fetchval("SELECT count(*) FROM ops.backfill_batches") == 1


async def test_a_start_waits_for_the_runs_locked_row_no_longer_than_the_lock_timeout(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """Starting or resuming locks the run's row (and reads the table): behind a session
    that holds that row, it gives up after the lock timeout (exit 2) instead of queueing."""
    await seed_table(conn, rows=300)
    name = write_migration(tmp_path, "touch_held", sql_migration(TABLE, batch_size=50))
    with pytest.raises(Stopped):
        await run(dsn, tmp_path, name, max_duration="0s")
    holder = await connect(dsn)
    try:
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM ops.backfills WHERE name = $1 FOR UPDATE", name)
            with anyio.fail_after(10), pytest.raises(CouldNotStart) as refused:
                await run(dsn, tmp_path, name, lock_timeout="200ms")
    finally:
        await holder.close()
    assert refused.value.exit_code == 2
    assert (await backfill(conn, name))["status"] == "running"


@pytest.mark.parametrize(
    "table", ["ops.backfill_workers", "ops.migrations"], ids=["registering", "finalizing"]
)
async def test_the_run_never_queues_long_behind_a_lock_on_its_ops_tables(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path, table: str
) -> None:
    """Registering the runner and completing the run wait on the ops tables under the
    batch's lock timeout, retried, as batches do: a session holding the table (here for
    1.5 s) is waited out in short waits, never one long queue that a stuck session would
    make endless; the run then completes."""
    await seed_table(conn, rows=300)
    name = write_migration(tmp_path, "touch_behind", sql_migration(TABLE, batch_size=100))
    await schema.ensure_schema(conn)
    holder, watcher = await connect(dsn), await connect(dsn)
    longest = 0.0
    try:
        await holder.execute("BEGIN")
        # SHARE: readers pass, writers wait (as behind CREATE INDEX without CONCURRENTLY).
        await holder.execute(f"LOCK TABLE {table} IN SHARE MODE")

        async def watch() -> None:
            nonlocal longest
            while True:
                waited = await watcher.fetchval(
                    "SELECT max(extract(epoch FROM clock_timestamp() - query_start))"
                    " FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND datname = current_database() AND application_name = $1",
                    APPLICATION_NAME,
                )
                longest = max(longest, float(waited or 0))
                await anyio.sleep(0.05)

        result: commands.RunResult | None = None

        async def run_it() -> None:
            nonlocal result
            result = await run(dsn, tmp_path, name, lock_timeout="200ms")

        with anyio.fail_after(30):
            async with anyio.create_task_group() as watching:
                watching.start_soon(watch)
                async with anyio.create_task_group() as running:
                    running.start_soon(run_it)
                    await anyio.sleep(1.5)
                    await holder.execute("COMMIT")
                watching.cancel_scope.cancel()
    finally:
        await holder.close()
        await watcher.close()
    assert result is not None
    assert result.outcome is not None
    await assert_completed(conn, name, TABLE, 300)
    assert 0.1 < longest < 1.0  # it did wait on the lock, in short waits


async def test_a_schema_upgrade_waits_for_a_table_in_use_no_longer_than_the_lock_timeout(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """Upgrading the ops schema alters a table other sessions read: behind one that keeps
    it open (an operator's idle transaction), the start gives up after the lock timeout
    (exit 2, the schema as it was) instead of queueing, with every other ops statement
    queued behind it."""
    await seed_table(conn, rows=300)
    name = write_migration(tmp_path, "touch_upgrade_held", sql_migration(TABLE, batch_size=100))
    with pytest.raises(Stopped):
        await run(dsn, tmp_path, name, max_duration="0s")
    await back_to_schema_version_1(conn)
    holder = await connect(dsn)
    try:
        async with holder.transaction():
            await holder.fetchval("SELECT count(*) FROM ops.backfill_workers")
            with anyio.fail_after(10), pytest.raises(CouldNotStart) as refused:
                await run(dsn, tmp_path, name, lock_timeout="200ms")
            assert refused.value.exit_code == 2
            assert await schema.schema_version(conn) == 1
    finally:
        await holder.close()
    result = await run(dsn, tmp_path, name)
    assert result.outcome is not None
    assert await schema.schema_version(conn) == schema.SCHEMA_VERSION


async def test_a_claim_that_meets_the_statement_timeout_claims_fewer_keys(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """Claiming a range of the batch size times out (here: inserting any range of 100 keys
    or more sleeps past the statement timeout): the next try claims a tenth as many keys,
    as a batch that timed out is cut, instead of trying the same size until the run
    fails."""
    await seed_table(conn, rows=300)
    name = write_migration(tmp_path, "touch_claims", sql_migration(TABLE, batch_size=100))
    await schema.ensure_schema(conn)
    await conn.execute("""
        CREATE FUNCTION slow_claim() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.keys >= 100 THEN PERFORM pg_sleep(2); END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER slow_claim BEFORE INSERT ON ops.backfill_batches
            FOR EACH ROW EXECUTE FUNCTION slow_claim()""")

    with anyio.fail_after(60):
        result = await run(dsn, tmp_path, name, statement_timeout="300ms")

    assert result.outcome is not None
    await assert_completed(conn, name, TABLE, 300)
    await assert_batches_partition(conn, name, TABLE, BIGINT_KEY)
    assert (
        await conn.fetchval("SELECT max(keys) FROM ops.backfill_batches WHERE backfill = $1", name)
        <= 10
    )
