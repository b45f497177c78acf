"""`run` through a real PgBouncer in transaction-pooling mode (docs/running.md, "PgBouncer").

The pool holds fewer server connections than the runner opens (a control connection and
one per worker), so consecutive transactions of one runner connection land on different
server sessions and the server sessions are shared between runner connections: nothing
may depend on a session. `migrate` too: its .sql files and a backfill; a file that must
run outside a transaction is refused through the pooler, writing nothing. Skipped where
no ``pgbouncer`` binary is installed (`.ci/run` installs Debian's).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import anyio
import asyncpg
import pytest
from helpers import connect, run_cli, seed_table
from run_support import assert_batches_partition, assert_completed, write_migration

from cryptopi_batch.db import STATEMENT_CACHE_ENV
from cryptopi_batch.embedded import SYSTEM_USER

pytestmark = pytest.mark.anyio

TABLE = "matrices.dyn_values"
POOL_SIZE = 2
WORKERS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def pgbouncer(dsn: str) -> Iterator[str]:
    """A PgBouncer in transaction mode in front of this test's database, with
    ``POOL_SIZE`` server connections at most; yields the DSN that goes through it."""
    with _pgbouncer(dsn, POOL_SIZE) as through:
        yield through


@pytest.fixture
def pgbouncer_resetting(dsn: str) -> Iterator[str]:
    """The same, each server session's prepared statements dropped after every transaction
    (as a session handed to another client has none of this one's)."""
    reset = "server_reset_query = DEALLOCATE ALL\nserver_reset_query_always = 1\n"
    with _pgbouncer(dsn, POOL_SIZE, reset) as through:
        yield through


@contextlib.contextmanager
def _pgbouncer(dsn: str, pool_size: int, more: str = "") -> Iterator[str]:
    binary = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")
    if binary is None:
        pytest.skip("pgbouncer is not installed")
    parts = urlsplit(dsn)
    if not parts.hostname or parts.hostname.startswith("/") or parts.password is None:
        pytest.skip("the server is not reached over TCP with a password")
    user, password = unquote(parts.username or ""), unquote(parts.password)
    database = unquote(parts.path.lstrip("/"))
    port = _free_port()
    # Not under pytest's tmp_path: its parents are private to the user running pytest, and
    # PgBouncer may run as another (below).
    home = Path(tempfile.mkdtemp(prefix="cryptopi_test_pgbouncer_"))
    (home / "userlist.txt").write_text(f'"{user}" "{password}"\n')
    (home / "pgbouncer.ini").write_text(f"""\
[databases]
{database} = host={parts.hostname} port={parts.port or 5432} dbname={database}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {home / "userlist.txt"}
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 100
logfile = {home / "pgbouncer.log"}
{more}""")
    # PgBouncer refuses to run as root: run it as the embedded server's system user.
    as_root = os.geteuid() == 0
    if as_root:
        shutil.chown(home, SYSTEM_USER)
        for f in home.iterdir():
            shutil.chown(f, SYSTEM_USER)
    process = subprocess.Popen(
        [binary, str(home / "pgbouncer.ini")],
        user=SYSTEM_USER if as_root else None,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log = (
                        (home / "pgbouncer.log").read_text()
                        if (home / "pgbouncer.log").exists()
                        else ""
                    )
                    process.kill()
                    err = process.communicate()[1].decode(errors="replace")
                    pytest.fail(f"pgbouncer did not start: {err[-1000:]} {log[-1000:]}")
                time.sleep(0.05)
        netloc = parts.netloc.rpartition("@")[0] + f"@127.0.0.1:{port}"
        yield urlunsplit(parts._replace(netloc=netloc))
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(home, ignore_errors=True)


# Each batch bumps the counter of its rows once and records which server session ran it and
# how many prepared statements that session holds.
_RECORDING = '''
    """Touch every row once, recording each batch's server session."""
    from cryptopi_batch import Backfill, Batch

    async def touch(batch: Batch) -> int:
        await batch.execute(
            "INSERT INTO batch_sessions (lower_key, pid, prepared) SELECT $1,"
            " pg_backend_pid(), (SELECT count(*) FROM pg_prepared_statements)",
            None if batch.lower is None else batch.lower[0])
        status = await batch.execute(
            "UPDATE matrices.dyn_values SET touched = touched + 1 WHERE {range}")
        return int(status.split()[-1])

    migration = Backfill(table="matrices.dyn_values", key="id", batch_size=40,
                         process=touch)
'''
ROWS = 2_000


async def _seeded(dsn: str, tmp_path: Path) -> str:
    conn = await connect(dsn)
    try:
        await seed_table(conn, rows=ROWS)
        await conn.execute(
            "CREATE TABLE batch_sessions (lower_key text, pid int NOT NULL, prepared int)"
        )
    finally:
        await conn.close()
    return write_migration(tmp_path, "touch_pooled", _RECORDING)


async def _run_cli(
    name: str, directory: Path, dsn: str, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return await anyio.to_thread.run_sync(
        lambda: run_cli(
            "run",
            name,
            "--migrations-dir",
            str(directory),
            "--no-progress",
            "--workers",
            str(WORKERS),
            dsn=dsn,
            env=env,
        )
    )


@pytest.mark.parametrize("cache", [None, "0"], ids=["cache-decided", "cache-0"])
async def test_a_run_through_pgbouncer_in_transaction_mode_applies_every_row_once(
    dsn: str, pgbouncer: str, tmp_path: Path, cache: str | None
) -> None:
    """As a user runs it, from the command line: by default the runner finds the pooler
    and prepares no statement for reuse (PgBouncer 1.18 keeps none across transactions);
    $CRYPTOPI_BATCH_STATEMENT_CACHE=0 says so explicitly."""
    name = await _seeded(dsn, tmp_path)
    env = {} if cache is None else {STATEMENT_CACHE_ENV: cache}

    done = await _run_cli(name, tmp_path, pgbouncer, env)

    assert done.returncode == 0, done.stderr
    conn = await connect(dsn)
    try:
        await assert_completed(conn, name, TABLE, ROWS)
        await assert_batches_partition(conn, name, TABLE, [("id", "bigint")])
        sessions = await conn.fetchrow(
            "SELECT count(*) AS batches, count(DISTINCT pid) AS pids FROM batch_sessions"
        )
        assert sessions is not None
        # One row per committed batch (a rolled-back attempt leaves none), and the batches
        # of WORKERS workers ran on at most POOL_SIZE server sessions: the pool was shared.
        assert sessions["batches"] == ROWS // 40
        assert 1 <= sessions["pids"] <= POOL_SIZE < WORKERS
    finally:
        await conn.close()
    # The other commands through the pooler too (a handful of statements each, no cache).
    status = await anyio.to_thread.run_sync(
        lambda: run_cli(
            "status", name, "--json", "--migrations-dir", str(tmp_path), dsn=pgbouncer, env=env
        )
    )
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["status"] == "completed"
    listed = await anyio.to_thread.run_sync(
        lambda: run_cli("list", "--migrations-dir", str(tmp_path), dsn=pgbouncer, env=env)
    )
    assert listed.returncode == 0, listed.stderr
    assert name in listed.stdout


async def test_a_statement_cache_forced_on_behind_pgbouncer_fails_the_run(
    dsn: str, pgbouncer_resetting: str, tmp_path: Path
) -> None:
    """What the decision above avoids: asyncpg's statement cache through PgBouncer 1.18 in
    transaction mode (the run stops with exit 1, resumable). The server sessions drop their
    prepared statements after each transaction: a statement cached in one transaction is
    gone in the next for sure, not only when PgBouncer happens to hand its client another
    session (which made this test pass or fail by luck)."""
    name = await _seeded(dsn, tmp_path)

    failed = await _run_cli(name, tmp_path, pgbouncer_resetting, {STATEMENT_CACHE_ENV: "100"})

    assert failed.returncode == 1, failed.stderr
    assert "prepared statement" in failed.stderr


async def test_a_direct_run_keeps_its_prepared_statements(dsn: str, tmp_path: Path) -> None:
    """On a direct connection the runner keeps asyncpg's statement cache: from its second
    batch on, a worker's session holds prepared statements (behind a pooler it holds none
    of the runner's: they would not survive the transaction)."""
    name = await _seeded(dsn, tmp_path)

    done = await _run_cli(name, tmp_path, dsn, {})

    assert done.returncode == 0, done.stderr
    conn = await connect(dsn)
    try:
        await assert_completed(conn, name, TABLE, ROWS)
        prepared = await conn.fetchval("SELECT max(prepared) FROM batch_sessions")
        assert prepared > 0
    finally:
        await conn.close()


# -- `migrate` and `rollback` through the pooler (docs/flow.md) --

MIGRATE_ROWS = 500
# migrate's lock timeout for a file's statements, and the statement timeout the database
# gives every session (as an application's role or database may): neither is a server
# default, so a session that shows one of migrate's settings shows it came from migrate.
LOCK_TIMEOUT = "7s"
APP_STATEMENT_TIMEOUT = "10min"
# Four warm server sessions handed out in turn (server_round_robin), as under other
# clients' load: consecutive transactions of one client land on different sessions.
ROUND_ROBIN_POOL = 4

_CREATE_ITEMS = f"""\
-- An ordinary file, in one transaction: the table the files after it index and change.
CREATE SCHEMA matrices;
CREATE TABLE matrices.items (
    id bigint PRIMARY KEY, value double precision NOT NULL, touched int NOT NULL DEFAULT 0);
INSERT INTO matrices.items (id, value)
SELECT g, g / 10.0 FROM generate_series(1, {MIGRATE_ROWS}) AS g;
"""
# Refused in a transaction block: run on a connection of its own, outside one, whose
# session carries the lock timeout; through a transaction pooler, refused.
_INDEX_ITEMS = """\
CREATE INDEX CONCURRENTLY items_value_idx ON matrices.items (value);
-- down
DROP INDEX CONCURRENTLY IF EXISTS matrices.items_value_idx;
"""
_ADD_FLAG = """\
ALTER TABLE matrices.items ADD COLUMN flag boolean;
COMMENT ON COLUMN matrices.items.flag IS 'value > 25; set by a backfill';
"""
_BACKFILL_FLAG = '''\
"""Set flag from value, each row once."""
from cryptopi_batch import Backfill

migration = Backfill(
    table="matrices.items",
    batch_size=40,
    sql="UPDATE matrices.items SET flag = value > 25, touched = touched + 1 WHERE {range}",
)
'''
CREATE_FILE = "20260101_0900_create_items.sql"
INDEX_FILE = "20260101_1000_index_items.sql"
FLAG_FILE = "20260101_1100_add_flag.sql"
BACKFILL_FILE = "20260101_1200_backfill_flag.py"
_SOURCES = {
    CREATE_FILE: _CREATE_ITEMS,
    INDEX_FILE: _INDEX_ITEMS,
    FLAG_FILE: _ADD_FLAG,
    BACKFILL_FILE: _BACKFILL_FLAG,
}


def _migrations_dir(directory: Path, files: list[str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for filename in files:
        (directory / filename).write_text(_SOURCES[filename])
    return directory


async def _cli(
    command: str, directory: Path, dsn: str, *args: str
) -> subprocess.CompletedProcess[str]:
    return await anyio.to_thread.run_sync(
        lambda: run_cli(
            command,
            *args,
            "--migrations-dir",
            str(directory),
            "--no-progress",
            "--lock-timeout",
            LOCK_TIMEOUT,
            dsn=dsn,
        )
    )


async def _app_statement_timeout(conn: asyncpg.Connection) -> None:
    """Every new session of this database starts with ``APP_STATEMENT_TIMEOUT`` (before
    the pooler opens its server sessions)."""
    await conn.execute(
        "DO $$BEGIN EXECUTE format('ALTER DATABASE %I SET statement_timeout = %L',"
        f" current_database(), '{APP_STATEMENT_TIMEOUT}'); END$$"
    )


async def _records(conn: asyncpg.Connection) -> list[tuple[Any, ...]]:
    """ops.migrations and ops.migration_files as they stand, in the order of the records
    (none before migrate made them)."""
    if await conn.fetchval("SELECT to_regclass('ops.migration_files') IS NULL"):
        return []
    rows = await conn.fetch(
        "SELECT m.id, m.filename, m.applied_at, f.kind, f.checksum, f.applied_at AS file_at"
        " FROM ops.migrations m LEFT JOIN ops.migration_files f USING (filename) ORDER BY m.id"
    )
    return [tuple(r) for r in rows]


async def _assert_applied_once(conn: asyncpg.Connection, files: list[str]) -> None:
    """Every file recorded once in ops.migrations, in file-name order (the order applied),
    none under another name, each with its kind in ops.migration_files."""
    records = await _records(conn)
    assert [r[1] for r in records] == files
    assert [r[3] for r in records] == [f.rsplit(".", 1)[1] for f in files]


async def _index(conn: asyncpg.Connection) -> dict[str, Any] | None:
    """The index built CONCURRENTLY: its table, valid and ready; None: there is none."""
    row = await conn.fetchrow(
        "SELECT i.indrelid::regclass::text AS tab, i.indisvalid, i.indisready"
        " FROM pg_index i WHERE i.indexrelid = to_regclass('matrices.items_value_idx')"
    )
    return None if row is None else dict(row)


async def _pooled_sessions(through: str, count: int) -> dict[int, tuple[str, str]]:
    """The lock and statement timeouts of ``count`` server sessions of the pool by pid,
    each held at once by a client of its own in an open transaction (``count``, the pool's
    size: every session it has)."""
    clients = [await connect(through) for _ in range(count)]
    try:
        seen = {}
        for c in clients:
            await c.execute("BEGIN")  # holds its server session until the ROLLBACK below
            row = await c.fetchrow(
                "SELECT pg_backend_pid() AS pid, current_setting('lock_timeout') AS lock,"
                " current_setting('statement_timeout') AS statement"
            )
            assert row is not None
            seen[int(row["pid"])] = (str(row["lock"]), str(row["statement"]))
        for c in clients:
            await c.execute("ROLLBACK")
        return seen
    finally:
        for c in clients:
            await c.close()


def _reason(where: str) -> str:
    """Why a statement run outside a transaction is refused through the pooler."""
    return (
        f"{where} must run outside a transaction, where a connection pooler cannot hold it to"
        " the lock timeout (each statement may reach another server session); run it through"
        " a direct connection to the server"
    )


def _refused(done: subprocess.CompletedProcess[str], where: str) -> None:
    """Exit 2 with one line: the file and line, why, what to do instead."""
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        f"cryptopi_batch: {_reason(where)} (nothing was written)"
    ], done.stderr


INDEX_AT = f"{INDEX_FILE}:1: CREATE INDEX CONCURRENTLY"


async def test_migrate_through_pgbouncer_refuses_a_file_outside_a_transaction_writing_nothing(
    dsn: str, tmp_path: Path
) -> None:
    """A pending CREATE INDEX CONCURRENTLY, through PgBouncer in transaction mode: its
    statements could not be held to the lock timeout (a session setting, and each
    statement may reach another server session), so migrate refuses before anything is
    written: not even the pending file before it is applied, and no session of the pool
    keeps a setting of migrate's; its dry run says so beforehand, and in production the
    refusal comes before the confirmation is asked. The same directory through a direct
    connection then applies both, each recorded once, the index valid."""
    files = [CREATE_FILE, INDEX_FILE]
    directory = _migrations_dir(tmp_path / "migrations", files)
    conn = await connect(dsn)
    try:
        await _app_statement_timeout(conn)
        with _pgbouncer(dsn, ROUND_ROBIN_POOL, "server_round_robin = 1\n") as through:
            await _pooled_sessions(through, ROUND_ROBIN_POOL)  # every session open, idle
            dry = await _cli("migrate", directory, through, "--dry-run")
            production = await _cli("migrate", directory, through, "--env", "production")

            refused = await _cli("migrate", directory, through)

            _refused(refused, INDEX_AT)
            _refused(production, INDEX_AT)  # not "pass --yes"
            sessions = await _pooled_sessions(through, ROUND_ROBIN_POOL)
        assert sorted(sessions.values()) == [("0", APP_STATEMENT_TIMEOUT)] * ROUND_ROBIN_POOL
        assert await conn.fetchval("SELECT to_regclass('matrices.items')") is None
        assert await _records(conn) == []
        # The dry run said so beforehand, under the file it refuses alone.
        assert dry.returncode == 0, dry.stderr
        assert dry.stdout.splitlines() == [
            f"{CREATE_FILE}: pending (sql)",
            f"{INDEX_FILE}: pending (sql)",
            f"  refused here: {_reason(INDEX_AT)}",
        ]
        direct = await _cli("migrate", directory, dsn, "--dry-run")
        assert direct.stdout.splitlines() == [
            f"{CREATE_FILE}: pending (sql)",
            f"{INDEX_FILE}: pending (sql)",
        ]

        done = await _cli("migrate", directory, dsn)

        assert done.returncode == 0, done.stderr
        await _assert_applied_once(conn, files)
        assert await _index(conn) == {
            "tab": "matrices.items",
            "indisvalid": True,
            "indisready": True,
        }
    finally:
        await conn.close()


async def test_migrate_through_pgbouncer_refuses_only_a_pending_file_outside_a_transaction(
    dsn: str, pgbouncer: str, tmp_path: Path
) -> None:
    """Through the pooler, the files before a pending CREATE INDEX CONCURRENTLY apply with
    --to; once the index file is applied through a direct connection, a later file through
    the pooler applies too: only a pending file run outside a transaction is refused."""
    directory = _migrations_dir(tmp_path / "migrations", [CREATE_FILE, INDEX_FILE])
    conn = await connect(dsn)
    try:
        before = await _cli("migrate", directory, pgbouncer, "--to", CREATE_FILE[:-4])

        assert before.returncode == 0, before.stderr
        await _assert_applied_once(conn, [CREATE_FILE])
        assert await _index(conn) is None

        direct = await _cli("migrate", directory, dsn)
        assert direct.returncode == 0, direct.stderr
        _migrations_dir(directory, [FLAG_FILE])

        after = await _cli("migrate", directory, pgbouncer)

        assert after.returncode == 0, after.stderr
        await _assert_applied_once(conn, [CREATE_FILE, INDEX_FILE, FLAG_FILE])
        column = "SELECT count(*) FROM pg_attribute WHERE attrelid = 'matrices.items'::regclass"
        assert await conn.fetchval(column + " AND attname = 'flag'") == 1
    finally:
        await conn.close()


@pytest.mark.parametrize("sibling", [False, True], ids=["down-section", "down-file"])
async def test_rollback_through_pgbouncer_refuses_a_down_outside_a_transaction(
    dsn: str, pgbouncer: str, tmp_path: Path, sibling: bool
) -> None:
    """An applied file whose down (its -- down section, or a sibling .down.sql) drops its
    index CONCURRENTLY: rolled back through the pooler, refused before anything is
    written, naming the file and line of the down statement (the index stays, the file
    stays recorded); through a direct connection, undone."""
    directory = _migrations_dir(tmp_path / "migrations", [CREATE_FILE, INDEX_FILE])
    where = f"{INDEX_FILE}:3: DROP INDEX CONCURRENTLY"
    if sibling:
        up, down = _INDEX_ITEMS.split("-- down\n")
        (directory / INDEX_FILE).write_text(up)
        down_file = INDEX_FILE.replace(".sql", ".down.sql")
        (directory / down_file).write_text("-- Undo.\n" + down)
        where = f"{down_file}:2: DROP INDEX CONCURRENTLY"
    done = await _cli("migrate", directory, dsn)
    assert done.returncode == 0, done.stderr
    conn = await connect(dsn)
    try:
        records = await _records(conn)

        refused = await _cli("rollback", directory, pgbouncer, INDEX_FILE[:-4], "--yes")

        _refused(refused, where)
        assert await _records(conn) == records
        assert await _index(conn) is not None

        undone = await _cli("rollback", directory, dsn, INDEX_FILE[:-4], "--yes")

        assert undone.returncode == 0, undone.stderr
        assert await _index(conn) is None
        await _assert_applied_once(conn, [CREATE_FILE])
    finally:
        await conn.close()


async def test_migrate_through_pgbouncer_applies_sql_files_and_a_backfill_in_order(
    dsn: str, pgbouncer_resetting: str, tmp_path: Path
) -> None:
    """One migrate through the pooler (its server sessions' prepared statements dropped
    after every transaction): two files in one transaction each, then a backfill over what
    they made, each after the one before (each needs it), each recorded once; every row
    changed exactly once. A second migrate applies nothing and changes no row."""
    files = [CREATE_FILE, FLAG_FILE, BACKFILL_FILE]
    directory = _migrations_dir(tmp_path / "migrations", files)

    done = await _cli("migrate", directory, pgbouncer_resetting, "--workers", str(WORKERS))

    assert done.returncode == 0, done.stderr
    conn = await connect(dsn)
    try:
        await _assert_applied_once(conn, files)
        state = await conn.fetchrow(
            "SELECT count(*) AS total, count(*) FILTER (WHERE touched = 1) AS once,"
            " count(*) FILTER (WHERE flag = (value > 25)) AS flagged FROM matrices.items"
        )
        assert state is not None
        assert dict(state) == {"total": MIGRATE_ROWS, "once": MIGRATE_ROWS, "flagged": MIGRATE_ROWS}
        run = await conn.fetchrow(
            "SELECT status, keys_done FROM ops.backfills WHERE name = $1", BACKFILL_FILE[:-3]
        )
        assert run is not None
        assert dict(run) == {"status": "completed", "keys_done": MIGRATE_ROWS}
        records = await _records(conn)

        again = await _cli("migrate", directory, pgbouncer_resetting, "--workers", str(WORKERS))

        assert again.returncode == 0, again.stderr
        assert await _records(conn) == records
        changed = await conn.fetchval("SELECT count(*) FROM matrices.items WHERE touched <> 1")
        assert changed == 0  # no row changed twice
    finally:
        await conn.close()
