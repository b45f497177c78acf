"""`run` through a real PgBouncer in transaction-pooling mode (docs/running.md, "PgBouncer").

The pool holds fewer server connections than the runner opens (a control connection and
one per worker), so consecutive transactions of one runner connection land on different
server sessions and the server sessions are shared between runner connections: nothing
may depend on a session. Skipped where no ``pgbouncer`` binary is installed (`.ci/run`
installs Debian's).
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
from urllib.parse import unquote, urlsplit, urlunsplit

import anyio
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
