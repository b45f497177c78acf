"""`run` when the world moves under it, asserted on the database's own state: the server
restarted mid-run, a connection that goes silent (a black-holing proxy), rows inserted
behind, ahead of and above the run's key space while it runs (then `--catch-up`), and the
control commands from the command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import anyio
import asyncpg
import pytest
from anyio.abc import TaskGroup
from helpers import connect, run_cli, seed_table
from run_support import (
    assert_batches_partition,
    assert_completed,
    backfill,
    migrations_rows,
    run,
    write_migration,
)

from cryptopi_batch import schema, sessions, store
from cryptopi_batch.batch import Verdict, verdict
from cryptopi_batch.embedded import EmbeddedCluster
from cryptopi_batch.keys import KeyRange
from cryptopi_batch.keysql import RangeQueries
from cryptopi_batch.settings import TimeoutPolicy
from cryptopi_batch.store import RunStore
from cryptopi_batch.target import inspect_target

pytestmark = pytest.mark.anyio

TABLE = "matrices.dyn_values"
BIGINT_KEY = [("id", "bigint")]


def _slow_migration(sleep: float, batch_size: int = 50) -> str:
    """An ``sql=`` migration that bumps ``touched`` and sleeps ``sleep`` s once per batch
    (the sleep is an uncorrelated subquery: evaluated once per statement, not per row)."""
    return f'''
        """Touch every row of {TABLE} once, slowly."""
        from cryptopi_batch import Backfill

        migration = Backfill(
            table="{TABLE}", key="id", batch_size={batch_size},
            sql="UPDATE {TABLE} SET touched = touched + 1"
                " WHERE {{range}} AND (SELECT pg_sleep({sleep})) IS NOT NULL",
        )
    '''


async def _batches_done(conn: asyncpg.Connection, name: str) -> int:
    if not await conn.fetchval("SELECT to_regclass('ops.backfills') IS NOT NULL"):
        return 0
    done = await conn.fetchval("SELECT batches_done FROM ops.backfills WHERE name = $1", name)
    return int(done or 0)


async def _wait_for_batches(
    conn: asyncpg.Connection, name: str, n: int, timeout: float = 20
) -> int:
    """Poll the database until ``n`` batches of ``name`` committed; returns how many did."""
    with anyio.fail_after(timeout):
        while (done := await _batches_done(conn, name)) < n:  # noqa: ASYNC110 -- polls the database
            await anyio.sleep(0.005)
    return done


_RUNNER_WAITING = """
SELECT count(*) FROM pg_stat_activity
 WHERE datname = current_database() AND application_name = 'cryptopi_batch'
   AND wait_event_type = 'Lock' AND query LIKE $1
"""


async def _wait_until_runner_waits(
    conn: asyncpg.Connection, query_like: str, timeout: float = 10
) -> None:
    """Poll until a statement of the runner matching ``query_like`` waits for a lock."""
    with anyio.fail_after(timeout):
        while not await conn.fetchval(_RUNNER_WAITING, query_like):  # noqa: ASYNC110
            await anyio.sleep(0.002)


# --- 1. the server restarts mid-run -------------------------------------------------------


async def test_a_server_restart_mid_run_completes_every_row_exactly_once(
    dsn: str, embedded_cluster: EmbeddedCluster, tmp_path: Path
) -> None:
    rows, batch = 1_000, 50
    # Both connections are lost with the server: terminated, never closed cleanly.
    watcher = await connect(dsn)
    holder = await connect(dsn)
    try:
        await seed_table(watcher, rows=rows)
        name = write_migration(tmp_path, "touch_restart", _slow_migration(0.05, batch))
        seen: dict[str, object] = {}
        # The 4th batch (ids 151..200) waits for this row: the restart hits it in flight.
        await holder.execute("BEGIN")
        await holder.execute(f"SELECT 1 FROM {TABLE} WHERE id = 175 FOR UPDATE")

        async def restart_mid_batch() -> None:
            await _wait_until_runner_waits(watcher, "%pg_sleep%")
            seen["in_flight"] = await _batches_done(watcher, name)
            seen["before"] = await watcher.fetchval("SELECT pg_postmaster_start_time()")
            await anyio.to_thread.run_sync(lambda: embedded_cluster.restart(mode="immediate"))
            seen["restarted"] = True

        with anyio.fail_after(90):
            async with anyio.create_task_group() as tg:
                tg.start_soon(restart_mid_batch)
                result = await run(dsn, tmp_path, name)
    finally:
        watcher.terminate()
        holder.terminate()

    assert seen.get("restarted"), seen
    # The restart hit the 4th batch in flight, with most of the run still to come.
    assert seen["in_flight"] == 3, seen
    assert result.outcome is not None
    conn = await connect(dsn)
    try:
        assert await conn.fetchval("SELECT pg_postmaster_start_time()") > seen["before"]
        # Every row once, the checkpoint, the batches and ops.migrations agree.
        f = await assert_completed(conn, name, TABLE, rows)
        await assert_batches_partition(conn, name, TABLE, BIGINT_KEY)
        assert list(f["frontier"]) == list(f["end_key"]) == [str(rows)]
        # What the run says it did is what ops.backfills says: a batch whose commit was
        # lost with the server and redone is not counted twice.
        total = result.outcome.total
        assert (total.rows, total.batches) == (f["rows_processed"], f["batches_done"])
        assert total.rows == rows
        assert f["last_error"] is None
        # Nothing of the run is left open or leased.
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM ops.backfill_batches WHERE backfill = $1"
                " AND (status <> 'done' OR lease_until IS NOT NULL)",
                name,
            )
            == 0
        )
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM ops.backfill_workers WHERE backfill = $1"
                " AND stopped_at IS NULL",
                name,
            )
            == 0
        )
    finally:
        await conn.close()


async def test_a_range_claimed_under_the_runners_token_that_it_does_not_hold_is_released(
    dsn: str, tmp_path: Path
) -> None:
    """What a lost asynchronous commit leaves behind after a server crash: the runner saw a
    batch commit, the server lost the commit but kept the claim before it, so a range sits
    'running' under the runner's token and no worker of it will run it. The heartbeat no
    longer extends such a range's lease, and once the runner's connection was lost (here
    its control connection is ended) it is handed back at once. Without that the run would
    wait for the range forever (the heartbeat kept its lease alive)."""
    rows, batch = 1_000, 50
    watcher = await connect(dsn)
    try:
        await seed_table(watcher, rows=rows)
        name = write_migration(tmp_path, "touch_orphan", _slow_migration(0.05, batch))
        orphan: dict[str, object] = {}

        async def orphan_a_range() -> None:
            await _wait_for_batches(watcher, name, 2)
            token = await watcher.fetchval(
                "SELECT token FROM ops.backfill_workers WHERE backfill = $1 AND stopped_at IS NULL",
                name,
            )
            target = await inspect_target(watcher, TABLE, ("id",))
            # A real claim from the frontier under the runner's token, with an hour's
            # lease: the runner never learns of it.
            c = await RunStore(name, token, RangeQueries(target), 3600).claim(
                watcher, size=batch, timeouts=TimeoutPolicy()
            )
            assert c is not None
            orphan["id"] = c.id
            # The control connection: the runner's first (its workers connect later).
            ended = await watcher.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM (SELECT pid FROM"
                " pg_stat_activity WHERE datname = current_database()"
                " AND application_name = 'cryptopi_batch' ORDER BY backend_start LIMIT 1) a"
            )
            orphan["ended"] = ended

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(orphan_a_range)
                result = await run(dsn, tmp_path, name)

        assert orphan.get("ended") == 1, orphan
        assert result.outcome is not None
        await assert_completed(watcher, name, TABLE, rows)
        await assert_batches_partition(watcher, name, TABLE, BIGINT_KEY)
        # The orphaned range was run like any other, once.
        row = await watcher.fetchrow(
            "SELECT status, rows FROM ops.backfill_batches WHERE id = $1", orphan["id"]
        )
        assert (row["status"], row["rows"]) == ("done", batch)
    finally:
        await watcher.close()


_STATES = {
    # how the batch's row reads after the connection was lost: (worker is ours, its range,
    # status), and what the runner must conclude: settled (not to be run again), counted
    "committed": (True, ("100", "150"), "done", True, True),
    "not committed": (True, ("100", "150"), "running", False, False),
    # The id issued again to another range (a claim lost in a crash): the same lower bound
    # (the same frontier, another batch size), the same upper, neither, or from the start.
    "reissued, other upper": (True, ("100", "180"), "running", True, False),
    "reissued, other lower": (True, ("120", "150"), "running", True, False),
    "reissued, other range, done": (True, ("150", "200"), "done", True, False),
    "reissued, from the start": (True, (None, "150"), "running", True, False),
    "taken by another runner": (False, ("100", "150"), "running", True, False),
}


@pytest.mark.parametrize("state", list(_STATES))
async def test_a_batch_of_unknown_outcome_is_judged_by_its_id_token_and_range(
    dsn: str, tmp_path: Path, state: str
) -> None:
    """After a lost connection a batch's outcome is unknown: the runner reads its row back
    (batch.verdict, called here directly on the row a crash could leave) before
    deciding whether to run it again. Done under its token and range: committed, counted.
    Still running under them: to be run again. Under another token, or its id naming
    another range (after a crash lost its claim, the id was issued again): no longer this
    runner's batch, given up and not counted."""
    ours, (lower, upper), status, settled, counted = _STATES[state]
    conn = await connect(dsn)
    try:
        await seed_table(conn, rows=300)
        name = write_migration(tmp_path, "touch_judged", _slow_migration(0, 50))
        await schema.ensure_schema(conn)
        await conn.execute(
            "INSERT INTO ops.backfills (name, filename, table_name, key_columns, key_types,"
            " end_key, batch_size, source_checksum) VALUES ($1, $1 || '.py', $2, '{id}',"
            " '{bigint}', '{300}', 50, 'x')",
            name,
            TABLE,
        )
        token, other = uuid.uuid4(), uuid.uuid4()
        batch_id = await conn.fetchval(
            "INSERT INTO ops.backfill_batches (backfill, lower_key, upper_key, keys, status,"
            " worker, rows, claimed_at) VALUES ($1, $2::text[], $3::text[], 50, $4, $5, 50,"
            " now()) RETURNING id",
            name,
            None if lower is None else [lower],
            [upper],
            status,
            token if ours else other,
        )
        target = await inspect_target(conn, TABLE, ("id",))
        runs = RunStore(name, token, RangeQueries(target), 60)
        claim = store.Claim(batch_id, KeyRange(("100",), ("150",)), 50, 0)

        found = await runs.range_row(conn, claim.id)
        judged = verdict(found, claim, token)
        assert (judged is not Verdict.UNSETTLED) is settled
        assert (judged is Verdict.COMMITTED) is counted
        assert found is not None
        assert found.rows == 50
        # Judging writes nothing: the row is as the crash left it.
        row = await conn.fetchrow(
            "SELECT status, worker, lower_key, upper_key FROM ops.backfill_batches WHERE id = $1",
            batch_id,
        )
        assert (row["status"], row["worker"], row["lower_key"], list(row["upper_key"])) == (
            status,
            token if ours else other,
            None if lower is None else [lower],
            [upper],
        )
    finally:
        await conn.close()


# --- 2. a black-holed connection ---------------------------------------------------------


class BlackHoleProxy:
    """A TCP proxy on 127.0.0.1 in front of the server. :meth:`black_hole` makes every
    connection open at that moment go silent: its sockets stay open and the bytes read from
    either side are dropped. Connections made later are forwarded as usual. Everything is
    closed on leaving the ``async with``."""

    def __init__(self, host: str, port: int) -> None:
        self._upstream = (host, port)
        self._links: list[dict[str, object]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self.port = 0
        self.accepted = 0
        self.silenced = 0

    async def __aenter__(self) -> BlackHoleProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for w in self._writers:  # every pump then reads its end of file and returns
            w.transport.abort()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=5)
            for t in pending:
                t.cancel()
        await self._server.wait_closed()

    def black_hole(self) -> int:
        """Silence every connection open now; returns how many."""
        for link in self._links:
            link["silent"] = True
        self.silenced = len(self._links)
        return self.silenced

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.append(writer)
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.transport.abort()
            return
        self._writers.append(up_writer)
        link: dict[str, object] = {"silent": False}
        self._links.append(link)
        await asyncio.gather(
            self._pump(reader, up_writer, link),
            self._pump(up_reader, writer, link),
            return_exceptions=True,
        )

    @staticmethod
    async def _pump(
        src: asyncio.StreamReader, dst: asyncio.StreamWriter, link: dict[str, object]
    ) -> None:
        try:
            while data := await src.read(65536):
                if not link["silent"]:
                    dst.write(data)
                    await dst.drain()
        finally:
            if not link["silent"]:  # a silenced link keeps its sockets open
                dst.transport.abort()


@contextlib.asynccontextmanager
async def _proxied(dsn: str) -> AsyncIterator[tuple[BlackHoleProxy, str]]:
    parts = urlsplit(dsn)
    if not parts.hostname or parts.hostname.startswith("/"):
        pytest.skip("the server is not reached over TCP")
    async with BlackHoleProxy(parts.hostname, parts.port or 5432) as proxy:
        auth = parts.netloc.rpartition("@")[0]
        netloc = f"{auth}@127.0.0.1:{proxy.port}" if auth else f"127.0.0.1:{proxy.port}"
        yield proxy, urlunsplit(parts._replace(netloc=netloc))


_STALE_SESSIONS = """
SELECT count(*) FROM pg_stat_activity
 WHERE datname = current_database() AND application_name = 'cryptopi_batch'
   AND state LIKE 'idle in transaction%'
"""


async def _hold_table_lock(dsn: str, release: anyio.Event) -> None:
    locker = await connect(dsn)
    try:
        async with locker.transaction():
            await locker.execute(f"LOCK TABLE {TABLE} IN ACCESS EXCLUSIVE MODE")
            await release.wait()
    finally:
        await locker.close()


@pytest.mark.parametrize("moment", ["batch", "split"])
async def test_a_black_holed_connection_is_given_up_and_the_run_completes(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path, moment: str
) -> None:
    """The proxy goes silent just as the server lets a statement of the runner through
    that was waiting for a lock held here: the batch's UPDATE (its transaction then holds
    the batch's rows, and will claim the next range too); or, after the batch hit its
    statement timeout, the lookup that splits it. The server finishes the statement; its
    reply is lost."""
    rows, batch = 1_000, 50
    await seed_table(conn, rows=rows)
    name = write_migration(tmp_path, "touch_black_hole", _slow_migration(0.05, batch))
    seen: dict[str, float] = {}
    holder = await connect(dsn)
    held = holder.transaction()
    await held.start()
    # the 4th batch (ids 151..200) waits for this row
    await holder.execute(f"SELECT 1 FROM {TABLE} WHERE id = 175 FOR UPDATE")
    release = anyio.Event()

    async def black_hole(proxy: BlackHoleProxy, tg: TaskGroup) -> None:
        if moment == "batch":
            waiting = "%pg_sleep%"
        else:
            # The batch waits for the row until its statement timeout; a table lock queued
            # meanwhile makes the split's range lookup wait after it.
            await _wait_until_runner_waits(conn, "%pg_sleep%")
            tg.start_soon(_hold_table_lock, dsn, release)
            waiting = "%OFFSET%"
        await _wait_until_runner_waits(conn, waiting)
        seen["accepted"] = proxy.accepted
        seen["silenced"] = proxy.black_hole()
        seen["at"] = time.monotonic()
        await held.commit()
        release.set()
        seen["done_then"] = await _batches_done(conn, name)

    try:
        async with _proxied(dsn) as (proxy, proxied_dsn):
            with anyio.fail_after(40):  # a hang fails here, not at pytest's timeout
                async with anyio.create_task_group() as tg:
                    tg.start_soon(black_hole, proxy, tg)
                    # A lock wait longer than the statement timeout is a statement timeout.
                    result = await run(
                        proxied_dsn,
                        tmp_path,
                        name,
                        statement_timeout="1s",
                        lock_timeout="5s" if moment == "split" else "1s",
                    )
            finished = time.monotonic()

            # The worker's and the control connection went silent mid-run; the runner
            # made new ones.
            assert seen["silenced"] >= 2, seen
            assert seen["done_then"] < rows // batch - 2, seen
            assert proxy.accepted > seen["accepted"], (proxy.accepted, seen)
            # The silenced transaction was ended on the server, not left holding its
            # locks: its socket is still open, only the runner could have ended it.
            assert await conn.fetchval(_STALE_SESSIONS) == 0
    finally:
        await holder.close()

    # Noticed within a bounded time after the silence, not at some TCP timeout.
    assert finished - seen["at"] < 25, finished - seen["at"]
    assert result.outcome is not None
    f = await assert_completed(conn, name, TABLE, rows)
    await assert_batches_partition(conn, name, TABLE, BIGINT_KEY)
    assert list(f["frontier"]) == list(f["end_key"]) == [str(rows)]
    retried = await conn.fetch(
        "SELECT upper_key, attempts FROM ops.backfill_batches WHERE backfill = $1"
        " AND attempts <> 1",
        name,
    )
    # The batch caught in the silence (or timed out before it) ran again on a new
    # connection, and only once (above).
    assert [(list(r["upper_key"]), r["attempts"]) for r in retried] == [(["200"], 2)]
    if moment == "split":  # the timeout shrank the batches, though the split was lost
        assert f["batch_size"] < batch


# --- 3. rows inserted while the run is in progress ----------------------------------------


async def _touched(conn: asyncpg.Connection, where: str) -> dict[int, int]:
    """``{touched: rows}`` over the rows of ``TABLE`` matching ``where``."""
    found = await conn.fetch(
        f"SELECT touched, count(*) AS n FROM {TABLE} WHERE {where} GROUP BY touched"
    )
    return {r["touched"]: r["n"] for r in found}


async def test_rows_inserted_during_a_run_and_catch_up(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    # Even ids only, 2..2000: odd ids are gaps a concurrent insert can fill.
    await seed_table(conn, rows=0)
    await conn.execute(f"INSERT INTO {TABLE} (id) SELECT generate_series(2, 2000, 2)")
    await conn.execute(f"ANALYZE {TABLE}")
    evens, end = 1_000, 2_000
    name = write_migration(tmp_path, "touch_inserted", _slow_migration(0.05, 50))
    seen: dict[str, int] = {}

    async def insert_mid_run() -> None:
        await _wait_for_batches(conn, name, 3)
        async with conn.transaction():
            # Lock the run's row: no claim moves the frontier while the rows go in.
            f = await conn.fetchrow(
                "SELECT frontier, end_key FROM ops.backfills WHERE name = $1 FOR UPDATE", name
            )
            assert f["frontier"] is not None
            assert list(f["end_key"]) == [str(end)]
            done_upper = await conn.fetchval(
                "SELECT max(upper_key[1]::bigint) FROM ops.backfill_batches"
                " WHERE backfill = $1 AND status = 'done'",
                name,
            )
            frontier = int(f["frontier"][0])
            seen.update(done_upper=done_upper, frontier=frontier)
            # Behind the cursor: odd ids inside ranges already committed.
            await conn.execute(
                f"INSERT INTO {TABLE} (id) SELECT generate_series(1, $1::bigint, 2)", done_upper - 1
            )
            # Ahead of the cursor, below the end: odd ids in ranges not claimed yet.
            await conn.execute(
                f"INSERT INTO {TABLE} (id) SELECT generate_series($1::bigint, $2, 2)",
                end - 199,
                end - 1,
            )
            # Above the run's fixed end.
            await conn.execute(
                f"INSERT INTO {TABLE} (id) SELECT generate_series($1::bigint, $2)",
                end + 1,
                end + 150,
            )

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(insert_mid_run)
            result = await run(dsn, tmp_path, name)

    # The inserts landed mid-run: the cursor had not reached the rows ahead of it.
    assert seen["frontier"] < end - 200, seen
    behind = seen["done_upper"] // 2  # odd ids 1 .. done_upper - 1
    assert behind >= 3 * 25, seen
    assert result.outcome is not None
    even = "id % 2 = 0 AND id <= 2000"
    assert await _touched(conn, even) == {1: evens}
    assert await _touched(conn, "id % 2 = 1 AND id < 1800") == {0: behind}  # behind: missed
    assert await _touched(conn, "id % 2 = 1 AND id BETWEEN 1801 AND 1999") == {1: 100}  # ahead
    assert await _touched(conn, "id > 2000") == {0: 150}  # above the end: not this run's
    f = await backfill(conn, name)
    assert f["status"] == "completed"
    assert list(f["end_key"]) == list(f["frontier"]) == [str(end)]
    assert f["keys_done"] == f["rows_processed"] == evens + 100
    assert await migrations_rows(conn, f"{name}.py") == 1

    caught_up = await run(dsn, tmp_path, name, catch_up=True)

    assert caught_up.already_completed is False
    assert caught_up.outcome is not None
    assert caught_up.outcome.progress.rows == 150
    assert await _touched(conn, "id > 2000") == {1: 150}
    assert await _touched(conn, even) == {1: evens}
    assert await _touched(conn, "id % 2 = 1 AND id < 1800") == {0: behind}
    assert await _touched(conn, "id % 2 = 1 AND id BETWEEN 1801 AND 1999") == {1: 100}
    f = await backfill(conn, name)
    assert f["status"] == "completed"
    assert list(f["end_key"]) == list(f["frontier"]) == [str(end + 150)]
    assert f["keys_done"] == f["rows_processed"] == evens + 100 + 150
    assert await migrations_rows(conn, f"{name}.py") == 1
    # Nothing new above the end now: a second catch-up is a no-op.
    again = await run(dsn, tmp_path, name, catch_up=True)
    assert again.already_completed is True
    assert await _touched(conn, "true") == {1: evens + 100 + 150, 0: behind}


# --- 4. pause, resume, cancel and options before the command, from the CLI -----------------


def _closed_port_dsn() -> str:
    """A DSN to a port on 127.0.0.1 where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"postgresql://nobody:secret@127.0.0.1:{port}/nowhere"


async def test_control_commands_and_options_before_the_command_on_the_cli(
    dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    await seed_table(conn, rows=300)
    migrations = tmp_path / "migrations"
    name = write_migration(migrations, "touch_cli", _slow_migration(0, 50))
    where = ("--migrations-dir", str(migrations))

    def cli(*args: str, env_dsn: str | None = dsn):
        return anyio.to_thread.run_sync(lambda: run_cli(*args, dsn=env_dsn, cwd=tmp_path))

    # A run killed after its second batch: 'running', with nobody running it.
    crashed = await anyio.to_thread.run_sync(
        lambda: run_cli(
            "run",
            name,
            *where,
            "--no-progress",
            dsn=dsn,
            cwd=tmp_path,
            env={"CRYPTOPI_BATCH_CRASH_AT": "after_commit:2"},
        )
    )
    assert crashed.returncode < 0, crashed.stderr
    before = await backfill(conn, name)
    assert (before["status"], before["batches_done"]) == ("running", 2)

    async def step(command: str, status: str, *args: str) -> None:
        result = await cli(*args)
        assert result.returncode == 0, (command, result.stderr)
        assert (await backfill(conn, name))["status"] == status, command

    await step("pause", "paused", "pause", name, *where)
    await step("pause again", "paused", "pause", name, *where)  # already: no change, exit 0
    await step("resume", "running", "resume", name, *where)
    await step("pause, options first", "paused", *where, "pause", name)
    await step("resume, options first", "running", "--dsn", dsn, *where, "resume", name)
    await step("cancel", "cancelled", "cancel", name, *where)
    # Only the status moved: the checkpoint is as the crash left it.
    after = await backfill(conn, name)
    for column in ("batches_done", "keys_done", "rows_processed", "frontier", "end_key"):
        assert after[column] == before[column], column

    unknown = await cli("pause", "no_such_migration", *where)
    assert unknown.returncode == 2, unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1, unknown.stderr
    assert "no_such_migration" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    assert unknown.stdout == ""
    assert (await backfill(conn, name))["status"] == "cancelled"

    # --dsn before the command is used; DATABASE_URL points where nothing listens.
    closed = _closed_port_dsn()
    refused = await cli("status", "--json", env_dsn=closed)
    assert refused.returncode == 2, refused.stderr  # DATABASE_URL alone: no server there
    shown = await cli("--dsn", dsn, "status", "--json", env_dsn=closed)
    assert shown.returncode == 0, shown.stderr
    objects = [json.loads(line) for line in shown.stdout.splitlines()]
    assert [(o["name"], o["status"], o["batches"]) for o in objects] == [(name, "cancelled", 2)]
    assert "secret" not in refused.stderr + shown.stderr + shown.stdout


# A batch of four statements, each well within the statement timeout, longer in all than
# one statement may wait for its answer.
_MANY_STATEMENTS = f'''
    """Touch every row once, in four slow statements a batch."""
    from cryptopi_batch import Backfill, Batch

    async def touch(batch: Batch) -> int:
        for _ in range(3):
            await batch.execute("SELECT pg_sleep(0.6)")
        status = await batch.execute(
            "UPDATE {TABLE} SET touched = touched + 1 WHERE {{range}}"
            " AND (SELECT pg_sleep(0.6)) IS NOT NULL")
        return int(status.split()[-1])

    migration = Backfill(table="{TABLE}", key="id", batch_size=100, process=touch)
'''


async def test_a_batch_longer_than_one_reply_bound_is_not_taken_for_a_silent_connection(
    dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reply bound (the statement timeout plus a margin) applies to each answer the
    server owes, not to the whole batch: four statements of 0.6 s under a 1 s statement
    timeout, a 2 s bound here, commit at their first attempt."""
    monkeypatch.setattr(sessions, "REPLY_MARGIN", 0.2)
    conn = await connect(dsn)
    try:
        await seed_table(conn, rows=200)
        name = write_migration(tmp_path, "touch_many", _MANY_STATEMENTS)
        with anyio.fail_after(60):
            result = await run(dsn, tmp_path, name, statement_timeout="1s")
        assert result.outcome is not None
        await assert_completed(conn, name, TABLE, 200)
        assert (
            await conn.fetchval(
                "SELECT max(attempts) FROM ops.backfill_batches WHERE backfill = $1", name
            )
            == 1
        )
    finally:
        await conn.close()
