"""Health gates against real signals on the real server: a long transaction, a session
blocked behind a batch, a custom check, an autovacuum to prevent wraparound, a streaming
replica whose replay is paused; and the migration-wide rate budget shared by two runners.

Each test asserts on what the database holds (the rows touched once, ops.backfills' status
and waiting reason as ``status`` reports it, ops.backfill_batches' sizes and times).
"""

from __future__ import annotations

import math
import os
import pwd
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest
from helpers import PgServer, connect, seed_table
from run_support import assert_completed, run, run_together, sql_migration, write_migration

from cryptopi_batch import commands
from cryptopi_batch.db import ConnectionSettings
from cryptopi_batch.embedded import EmbeddedCluster
from cryptopi_batch.errors import Stopped
from cryptopi_batch.report import StatusRow
from cryptopi_batch.throttle import PACED_SLICE

pytestmark = pytest.mark.anyio

TABLE = "matrices.dyn_values"


async def status_of(dsn: str, directory: Path, name: str) -> StatusRow:
    rows = await commands.status(name, directory=directory, connection=ConnectionSettings(dsn=dsn))
    return rows[0]


async def until(what: Callable[[], Awaitable[Any]], timeout: float = 20.0) -> Any:
    """Poll ``what`` until it answers something true; that answer."""
    with anyio.fail_after(timeout):
        while True:
            answer = await what()
            if answer:
                return answer
            await anyio.sleep(0.1)


async def waiting(dsn: str, directory: Path, name: str, prefix: str) -> StatusRow:
    """The run's status once it is waiting with a reason that starts with ``prefix``."""

    async def look() -> StatusRow | None:
        row = await status_of(dsn, directory, name)
        ok = row.status == "waiting" and (row.waiting_reason or "").startswith(prefix)
        return row if ok else None

    return await until(look)


async def test_a_long_transaction_holds_the_run_until_it_ends(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """An application transaction with an xid older than --max-transaction-age: the run
    waits (status waiting, the reason names the gate, age, limit and pid) and changes
    nothing; the transaction ends: the run completes, every row once."""
    await seed_table(conn, rows=500)
    name = write_migration(tmp_path, "xmin", sql_migration(TABLE, batch_size=100))
    holder = await connect(dsn)
    tx = holder.transaction()
    await tx.start()
    await holder.fetchval("SELECT txid_current()")
    pid = await holder.fetchval("SELECT pg_backend_pid()")
    await anyio.sleep(1.2)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: run(dsn, tmp_path, name, max_transaction_age="1s"))
            row = await waiting(dsn, tmp_path, name, "transaction age ")
            assert row.waiting_reason is not None
            assert row.waiting_reason.endswith(f" > 1 s (pid {pid})"), row.waiting_reason
            assert await conn.fetchval(f"SELECT sum(touched) FROM {TABLE}") == 0
            await tx.rollback()
    finally:
        await holder.close()
    f = await assert_completed(conn, name, TABLE, 500)
    assert f["waiting_reason"] is None


async def test_a_custom_check_holds_with_its_reason_then_lets_go(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """--check reads a table: its text is the reason `status` shows; NULL lets the run go."""
    await seed_table(conn, rows=300)
    await conn.execute(
        "CREATE TABLE gate_state (reason text); INSERT INTO gate_state VALUES ('deploy')"
    )
    name = write_migration(tmp_path, "checked", sql_migration(TABLE, batch_size=100))
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: run(dsn, tmp_path, name, check="SELECT reason FROM gate_state"))
        row = await waiting(dsn, tmp_path, name, "check")
        assert row.waiting_reason == "check: deploy"
        assert row.rows_processed == 0
        await conn.execute("UPDATE gate_state SET reason = NULL")
    await assert_completed(conn, name, TABLE, 300)


async def test_a_check_returning_false_and_a_python_check(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """A boolean check: false holds ("returned false"); a migration's async check takes a
    connection and its reason is shown; both true: the run completes."""
    await seed_table(conn, rows=200)
    await conn.execute(
        "CREATE TABLE flags (go bool, why text); INSERT INTO flags VALUES (false, 'busy')"
    )
    name = write_migration(
        tmp_path,
        "py_checked",
        f'''
        """Held by a Python check."""
        from cryptopi_batch import Backfill

        async def quiet(conn):
            return await conn.fetchval("SELECT why FROM flags")

        migration = Backfill(table={TABLE!r}, batch_size=100, checks=[quiet],
                             sql="UPDATE {TABLE} SET touched = touched + 1 WHERE {{range}}")
        ''',
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: run(dsn, tmp_path, name, check="SELECT go FROM flags"))
        row = await waiting(dsn, tmp_path, name, "check")
        assert row.waiting_reason in {"check: returned false", "check quiet: busy"}
        await conn.execute("UPDATE flags SET go = true")
        row = await waiting(dsn, tmp_path, name, "check quiet: busy")
        await conn.execute("UPDATE flags SET why = NULL")
    await assert_completed(conn, name, TABLE, 200)


async def test_a_session_blocked_behind_a_batch_shrinks_the_batches(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """An application UPDATE waits on a row the first batch holds (it sleeps 3 s after its
    UPDATE): past --max-blocking the batch size drops to a tenth, so the batches after it
    hold a tenth of the rows' locks; the session's wait ends with that batch."""
    await seed_table(conn, rows=400)
    name = write_migration(
        tmp_path,
        "blocking",
        f'''
        """The first batch holds its rows' locks for 3 s."""
        from cryptopi_batch import Backfill, Batch

        async def touch(batch: Batch) -> int:
            status = await batch.execute(
                "UPDATE {TABLE} SET touched = touched + 1 WHERE {{range}}")
            if batch.lower is None:
                await batch.conn.execute("SELECT pg_sleep(3)")
            return int(status.split()[-1])

        migration = Backfill(table={TABLE!r}, batch_size=100, process=touch)
        ''',
    )
    app = await connect(dsn)
    waited: list[float] = []

    async def application() -> None:
        # The first batch has its rows locked once it sleeps.
        await until(
            lambda: conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(3)%'"
            )
        )
        began = time.monotonic()
        await app.execute(f"UPDATE {TABLE} SET note = 'app' WHERE id = 1")
        waited.append(time.monotonic() - began)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(application)
            await run(dsn, tmp_path, name, max_blocking="500ms")
    finally:
        await app.close()
    await assert_completed(conn, name, TABLE, 400)
    sizes = [
        r["keys"]
        for r in await conn.fetch(
            "SELECT keys FROM ops.backfill_batches WHERE backfill = $1 ORDER BY id", name
        )
    ]
    assert sizes[0] == 100
    assert max(sizes[1:]) <= 10, sizes
    assert waited
    assert waited[0] < 3.5  # the batch's own 3 s, no more


async def test_too_many_active_sessions_hold_the_run(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """Two application sessions running a query at once, past --max-active-connections 1:
    the run waits; they finish: it completes. The run's own sessions do not count."""
    await seed_table(conn, rows=300)
    name = write_migration(tmp_path, "busy", sql_migration(TABLE, batch_size=100))
    busy = [await connect(dsn) for _ in range(2)]
    try:
        async with anyio.create_task_group() as tg:
            for session in busy:
                tg.start_soon(session.execute, "SELECT pg_sleep(3)")
            await until(
                lambda: conn.fetchval(
                    "SELECT count(*) = 2 FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(3)'"
                )
            )
            tg.start_soon(lambda: run(dsn, tmp_path, name, max_active_connections=1))
            row = await waiting(dsn, tmp_path, name, "active connections ")
            assert row.waiting_reason is not None
            assert row.waiting_reason.endswith(" > 1"), row.waiting_reason
            assert row.rows_processed == 0
    finally:
        for session in busy:
            await session.close()
    await assert_completed(conn, name, TABLE, 300)


# An autovacuum to prevent wraparound, made real: the table's own freeze age at its least
# (autovacuum_freeze_max_age 100000, its minimum), that many transaction ids used up, and
# the launcher looking every second. The cost settings make that vacuum crawl (a page every
# few tenths of a second) until they are reset: a running autovacuum re-reads them (PG 16+)
# and finishes. Freeze ages 0 make it freeze every row, so that no other follows it.
FREEZE_MAX_AGE = 100_000
CRAWL = {"autovacuum_vacuum_cost_delay": "100", "autovacuum_vacuum_cost_limit": "1"}
LOOK_OFTEN = {"autovacuum_naptime": "1"}
FORCED_VACUUM = """
SELECT clock_timestamp() AS at,
       (SELECT a.pid FROM pg_stat_activity a
          JOIN pg_stat_progress_vacuum v ON v.pid = a.pid
         WHERE v.datname = current_database() AND v.relid = $1::regclass
           AND a.backend_type = 'autovacuum worker'
           AND a.query = 'autovacuum: VACUUM ' || $1 || ' (to prevent wraparound)'
         LIMIT 1) AS pid
"""


async def alter_system(conn: asyncpg.Connection, settings: Mapping[str, str | None]) -> None:
    """ALTER SYSTEM SET each of ``settings`` (RESET where ``None``), then reload."""
    for setting, value in settings.items():
        if value is None:
            await conn.execute(f"ALTER SYSTEM RESET {setting}")
        else:
            await conn.execute(f"ALTER SYSTEM SET {setting} = '{value}'")
    await conn.execute("SELECT pg_reload_conf()")


async def use_up_xids(conn: asyncpg.Connection, n: int) -> None:
    """``n`` transactions that each take a transaction id and commit (not waiting for the
    WAL flush: a fraction of a second for 100,000)."""
    await conn.execute("SET synchronous_commit = off")
    try:
        await conn.execute(
            f"DO $$BEGIN FOR i IN 1..{n} LOOP PERFORM pg_current_xact_id(); COMMIT; END LOOP; END$$"
        )
    finally:
        await conn.execute("RESET synchronous_commit")


async def forced_vacuum(conn: asyncpg.Connection) -> tuple[int | None, datetime]:
    """The pid of the autovacuum to prevent wraparound on TABLE (``None``: none runs), and
    the server's clock when it looked."""
    row = await conn.fetchrow(FORCED_VACUUM, TABLE)
    assert row is not None
    return row["pid"], row["at"]


async def test_an_autovacuum_to_prevent_wraparound_holds_the_run_until_it_ends(
    pg_server: PgServer, dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """A real autovacuum to prevent wraparound runs on the table as the run starts: the run
    waits (status waiting, its reason and its runner's name the vacuum's pid) and commits no
    batch for seconds; the vacuum finishes: the run completes, every row once, every batch
    committed after the vacuum was last seen."""
    if pg_server.cluster is None:
        pytest.skip("needs the embedded cluster (changes server-wide autovacuum settings)")
    if conn.get_server_version().major < 16:
        pytest.skip("PostgreSQL < 16: a running autovacuum never re-reads its cost settings")
    rows = 30_000
    await seed_table(conn, rows=rows)
    await conn.execute(
        f"ALTER TABLE {TABLE} SET (autovacuum_enabled = false,"  # no vacuum but the forced one
        f" autovacuum_freeze_max_age = {FREEZE_MAX_AGE}, autovacuum_freeze_min_age = 0,"
        " autovacuum_freeze_table_age = 0)"
    )
    name = write_migration(tmp_path, "wraparound", sql_migration(TABLE, batch_size=1_000))
    age = f"SELECT age(relfrozenxid) FROM pg_class WHERE oid = '{TABLE}'::regclass"

    async def vacuum_pid() -> int | None:
        return (await forced_vacuum(conn))[0]

    async def run_row() -> asyncpg.Record:
        f = await conn.fetchrow(
            "SELECT status, waiting_reason, batches_done, rows_processed,"
            " (SELECT count(*) FROM ops.backfill_batches b"
            "   WHERE b.backfill = f.name AND b.status = 'done') AS done,"
            f" (SELECT sum(touched) FROM {TABLE}) AS touched"
            " FROM ops.backfills f WHERE f.name = $1",
            name,
        )
        assert f is not None
        return f

    try:
        await alter_system(conn, {**CRAWL, **LOOK_OFTEN})
        await use_up_xids(conn, FREEZE_MAX_AGE + 1_000)
        pid = await until(vacuum_pid, 30.0)  # an autovacuum to prevent wraparound, running
        reason = f"autovacuum: to prevent wraparound on {TABLE} (pid {pid})"
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: run(dsn, tmp_path, name))

            async def settled() -> StatusRow | None:  # waiting, or done with the run
                row = await status_of(dsn, tmp_path, name)
                return None if row.status in ("pending", "running") else row

            row = await until(settled, 20.0)  # waiting, or (wrongly) done
            assert (row.status, row.waiting_reason) == ("waiting", reason), row
            # It stays held, through several back-off steps, while the vacuum runs.
            watched = time.monotonic() + 3.0
            while time.monotonic() < watched:
                row = await status_of(dsn, tmp_path, name)
                assert (row.status, row.waiting_reason) == ("waiting", reason), row
                assert [r.waiting_reason for r in row.runners] == [reason], row.runners
                f = await run_row()
                assert f["waiting_reason"] == reason, dict(f)
                counts = (f["batches_done"], f["rows_processed"], f["done"], f["touched"])
                assert counts == (0, 0, 0, 0), dict(f)
                await anyio.sleep(0.25)
            still, last_seen = await forced_vacuum(conn)
            assert still == pid, "the vacuum ended before the hold was watched"

            # Its cost settings reset, the vacuum speeds up and finishes.
            await alter_system(conn, dict.fromkeys(CRAWL))
            deadline = time.monotonic() + 20.0
            while True:
                still, at = await forced_vacuum(conn)
                if still is None:
                    break
                last_seen = at
                assert time.monotonic() < deadline, f"pid {still} still vacuums after 20 s"
                await anyio.sleep(0.1)
            assert await conn.fetchval(age) < FREEZE_MAX_AGE  # frozen: no other one comes

            async def completed() -> asyncpg.Record | None:
                f = await run_row()
                return f if f["status"] == "completed" else None

            await until(completed, 60.0)
    finally:
        await alter_system(conn, dict.fromkeys([*CRAWL, *LOOK_OFTEN]))
    f = await assert_completed(conn, name, TABLE, rows)
    assert f["waiting_reason"] is None
    first = await conn.fetchval(
        "SELECT min(finished_at) FROM ops.backfill_batches WHERE backfill = $1", name
    )
    assert first > last_seen, (first, last_seen)


def _chown_to(cluster: EmbeddedCluster, path: Path) -> None:
    if cluster.system_user is not None:
        entry = pwd.getpwnam(cluster.system_user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


@pytest.fixture
def replica(embedded_cluster: EmbeddedCluster) -> Iterator[EmbeddedCluster]:
    """A streaming replica of the embedded server, made with its own pg_basebackup -R and
    started on another port. Skips where there is no pg_basebackup."""
    if not (embedded_cluster.bin_dir / "pg_basebackup").exists():
        pytest.skip("no pg_basebackup beside the embedded server")
    root = Path(tempfile.mkdtemp(prefix="cryptopi_test_replica_"))
    data = root / "data"
    data.mkdir()
    for path in (root, data):
        _chown_to(embedded_cluster, path)
    data.chmod(0o700)
    embedded_cluster.run(
        "pg_basebackup",
        "-R",
        "-X",
        "stream",
        "-c",
        "fast",
        "-D",
        str(data),
        "-d",
        embedded_cluster.dsn(),
    )
    standby = EmbeddedCluster(data, bin_dir=embedded_cluster.bin_dir)
    try:
        standby.start()
        yield standby
    finally:
        standby.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


async def _paused(standby_dsn: str) -> asyncpg.Connection:
    """A connection to the standby, its replay paused (returned once it is)."""
    sconn = await connect(standby_dsn)
    await sconn.execute("SELECT pg_wal_replay_pause()")
    await until(lambda: sconn.fetchval("SELECT pg_get_wal_replay_pause_state() = 'paused'"), 10)
    return sconn


@pytest.mark.parametrize("seen_from", ["primary", "replica-dsn"])
async def test_a_paused_replica_holds_the_run_until_replay_resumes(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path, replica: EmbeddedCluster, seen_from: str
) -> None:
    """A real streaming replica whose replay is paused while a run goes on: the run waits
    with reason "replica lag"; replay resumed: it completes, every row once. Seen from the
    primary's pg_stat_replication, or from the replica itself (--replica-dsn)."""
    database = dsn.rsplit("/", 1)[1]
    rows = 20_000
    await seed_table(conn, rows=rows)
    name = write_migration(tmp_path, "replicated", sql_migration(TABLE, batch_size=200))
    sconn = await _paused(replica.dsn(database))
    options: dict[str, Any] = {"max_replica_lag": "1s", "max_rows_per_second": 2000}
    if seen_from == "replica-dsn":
        await anyio.sleep(1.5)  # the last transaction the replica replayed is this old
        options["replica_dsn"] = (replica.dsn(database),)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: run(dsn, tmp_path, name, **options))
            row = await waiting(dsn, tmp_path, name, "replica lag ")
            assert " > 1 s (" in (row.waiting_reason or ""), row.waiting_reason
            if seen_from == "replica-dsn":
                assert (row.waiting_reason or "").endswith("(replica-1)"), row.waiting_reason
            held = row.rows_processed
            assert held < rows
            await sconn.execute("SELECT pg_wal_replay_resume()")
    finally:
        await sconn.close()
    await assert_completed(conn, name, TABLE, rows)


async def _rate(conn: asyncpg.Connection, name: str, skip_first: float) -> float:
    """The migration's rows per second from its batches' finish times, leaving out the
    first ``skip_first`` seconds (runners still registering) and the last half second (one
    runner done, the other on its last batch)."""
    batches = await conn.fetch(
        "SELECT extract(epoch FROM finished_at)::float8 AS at, rows FROM ops.backfill_batches"
        " WHERE backfill = $1 ORDER BY finished_at",
        name,
    )
    lo, hi = batches[0]["at"] + skip_first, batches[-1]["at"] - 0.5
    assert hi - lo > 3, "too short a run to measure"
    inside = [b for b in batches if lo < b["at"] <= hi]
    # Rows between the first and the last batch inside, over the time between them.
    return float(sum(b["rows"] for b in inside[1:]) / (inside[-1]["at"] - inside[0]["at"]))


async def test_two_runners_share_the_migrations_rate_budget(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """Two runners with --max-rows-per-second R change R rows a second together (not 2R):
    the budget is stored with the run and each takes its workers' share."""
    rows, budget = 12_000, 2_000.0
    await seed_table(conn, rows=rows)
    name = write_migration(tmp_path, "budgeted", sql_migration(TABLE, batch_size=100))
    async with anyio.create_task_group() as tg:
        for _ in range(2):
            tg.start_soon(lambda: run(dsn, tmp_path, name, max_rows_per_second=budget))
    f = await assert_completed(conn, name, TABLE, rows)
    assert f["max_rows_per_second"] == budget
    runners = await conn.fetchval(
        "SELECT count(DISTINCT worker) FROM ops.backfill_batches WHERE backfill = $1", name
    )
    assert runners == 2
    rate = await _rate(conn, name, skip_first=1.5)
    assert abs(rate - budget) / budget < 0.1, rate


async def test_a_budget_is_stored_once_as_the_runner_starts_and_kept_on_resume(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """Stored as the runner starts, before any batch (a run stopped before its first has
    it), and a runner started without one takes it: its batches hold the cap's slice (100
    keys at 5,000 rows/s; a remainder of up to twice that runs whole), not the declared
    1,000."""
    await seed_table(conn, rows=1_000)
    name = write_migration(tmp_path, "kept", sql_migration(TABLE, batch_size=1_000))
    with pytest.raises(Stopped):
        await run(dsn, tmp_path, name, max_rows_per_second=5_000, max_duration="0s")
    stored = await conn.fetchrow(
        "SELECT max_rows_per_second, batches_done FROM ops.backfills WHERE name = $1", name
    )
    assert (stored["max_rows_per_second"], stored["batches_done"]) == (5_000, 0)
    await run(dsn, tmp_path, name)  # no budget given: the stored one applies
    done = await assert_completed(conn, name, TABLE, 1_000)
    assert done["max_rows_per_second"] == 5_000
    biggest = await conn.fetchval(
        "SELECT max(keys) FROM ops.backfill_batches WHERE backfill = $1 AND status = 'done'",
        name,
    )
    assert biggest <= 2 * math.ceil(5_000 * PACED_SLICE)


async def test_under_a_rate_cap_batches_hold_the_caps_slice_and_keep_to_the_cap(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """batch_size=5,000 under --max-rows-per-second 20,000: every batch holds at most the
    cap's 20 ms slice (400 keys), fifty short batches a second, and the run still keeps to
    the cap (a batch that starts a little late is counted from when it was due)."""
    rows, budget = 100_000, 20_000.0
    ceiling = math.ceil(budget * PACED_SLICE)
    await seed_table(conn, rows=rows)
    name = write_migration(tmp_path, "sliced", sql_migration(TABLE, batch_size=5_000))
    await run(dsn, tmp_path, name, max_rows_per_second=budget)
    await assert_completed(conn, name, TABLE, rows)
    largest = await conn.fetchval(
        "SELECT max(keys) FROM ops.backfill_batches WHERE backfill = $1", name
    )
    assert largest == ceiling
    rate = await _rate(conn, name, skip_first=0.5)
    assert abs(rate - budget) / budget < 0.1, rate


async def test_status_shows_both_runners_and_their_shares_of_the_budget(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """While two runners with --max-rows-per-second R run, status lists both live runners
    with the budget and a share of R/2 each (one worker each): the shares add up to R."""
    rows, budget = 6_000, 1_000.0
    await seed_table(conn, rows=rows)
    name = write_migration(tmp_path, "budget_shares", sql_migration(TABLE, batch_size=50))

    async def both() -> StatusRow | None:
        row = await status_of(dsn, tmp_path, name)
        return row if len(row.runners) == 2 else None

    seen: list[StatusRow] = []

    async def watch() -> None:
        seen.append(await until(both))

    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: run_together(dsn, tmp_path, name, max_rows_per_second=budget))
        tg.start_soon(watch)
    [row] = seen
    assert row.max_rows_per_second == budget
    assert row.status in ("running", "waiting")  # waiting: paced by the budget just then
    assert [(r.workers, r.rows_per_second_share) for r in row.runners] == [(1, budget / 2)] * 2
    assert sum(r.rows_per_second_share or 0 for r in row.runners) == budget
    pids = await conn.fetch("SELECT host, pid FROM ops.backfill_workers WHERE backfill = $1", name)
    assert {(r.host, r.pid) for r in row.runners} <= {(p["host"], p["pid"]) for p in pids}
    await assert_completed(conn, name, TABLE, rows)


async def test_two_runners_share_the_migrations_wal_budget(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """Two runners with --max-wal-rate W: the server's WAL rate while they run stays
    within 10 % of W (all of the server's WAL is put down to the run)."""
    rows, budget = 20_000, 300_000.0
    await seed_table(conn, rows=rows)
    # Nothing else writes WAL meanwhile: no autovacuum of the fresh table in the window
    # measured (its burst of page images is WAL the budget counts, and a window of a few
    # seconds cannot average it out).
    await conn.execute(f"ALTER TABLE {TABLE} SET (autovacuum_enabled = false)")
    name = write_migration(tmp_path, "wal_budgeted", sql_migration(TABLE, batch_size=100))
    positions: list[tuple[float, float]] = []
    done = anyio.Event()

    async def watch() -> None:
        while not done.is_set():
            at = time.monotonic()
            lsn = await conn.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')")
            positions.append((at, float(lsn)))
            await anyio.sleep(0.25)

    async def runners() -> None:
        async with anyio.create_task_group() as inner:
            for _ in range(2):
                inner.start_soon(lambda: run(dsn, tmp_path, name, max_wal_rate="300kB"))
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        tg.start_soon(runners)
    f = await assert_completed(conn, name, TABLE, rows)
    assert f["max_wal_bytes_per_second"] == budget
    # After the first seconds (a row's WAL is taken to be a page until measured), up to
    # the last second (one runner may be done).
    start, end = positions[0][0] + 6, positions[-1][0] - 1
    assert end - start > 3, "too short a run to measure"
    inside = [p for p in positions if start <= p[0] <= end]
    rate = (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])
    assert abs(rate - budget) / budget < 0.1, rate
