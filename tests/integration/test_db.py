"""transactions.transaction: a transaction's own settings sent with its BEGIN, and what is left
when that BEGIN fails; transactions.chained_transaction: a COMMIT that begins the next one."""

from __future__ import annotations

import asyncpg
import pytest

from cryptopi_batch.db import ConnectionSettings
from cryptopi_batch.transactions import (
    CommitUnknown,
    Ending,
    chained_transaction,
    set_local,
    transaction,
)

pytestmark = pytest.mark.anyio


async def test_the_settings_hold_in_the_transaction_only(dsn: str) -> None:
    conn = await ConnectionSettings(dsn=dsn).connect()
    try:
        before = await conn.fetchval("SHOW lock_timeout")
        async with transaction(conn, set_local(lock_timeout="1234ms")):
            assert await conn.fetchval("SHOW lock_timeout") == "1234ms"
            async with conn.transaction():  # a savepoint, as in a process= batch
                assert await conn.fetchval("SELECT 1") == 1
        assert await conn.fetchval("SHOW lock_timeout") == before
        # Nothing stays armed: a plain transaction afterwards has the session's settings.
        async with conn.transaction():
            assert await conn.fetchval("SHOW lock_timeout") == before
    finally:
        await conn.close()


@pytest.mark.parametrize("plain", [False, True], ids=["ours", "asyncpg"])
async def test_a_begin_whose_settings_fail_leaves_no_connection_to_reuse(
    dsn: str, plain: bool
) -> None:
    """Refused settings: the error is raised, and the connection, whose transaction state
    is then unknown, is closed rather than handed back half in a transaction."""
    conn = (await asyncpg.connect(dsn)) if plain else await ConnectionSettings(dsn=dsn).connect()
    try:
        with pytest.raises(asyncpg.PostgresError, match="lock_timeout"):
            async with transaction(conn, set_local(lock_timeout="not a duration")):
                pytest.fail("the transaction must not begin")
        assert conn.is_closed() is (not plain)
    finally:
        conn.terminate()


_BEGIN = "BEGIN; " + set_local(lock_timeout="1234ms")


async def _xact(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT pg_current_xact_id()::text::bigint"))


async def test_a_commit_that_begins_the_next_transaction(dsn: str) -> None:
    """The first COMMIT commits the work and opens the next transaction with the settings;
    the next one runs in it without a BEGIN of its own, and its COMMIT alone leaves none
    open."""
    conn = await ConnectionSettings(dsn=dsn).connect()
    other = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TEMP TABLE t (n int)")  # temp: this session's own
        await other.execute("CREATE TABLE chained (n int)")
        async with chained_transaction(conn, _BEGIN, begun=False) as first:
            await conn.execute("INSERT INTO chained VALUES (1)")
            first_xact = await _xact(conn)
            first.begin_next(_BEGIN)
        assert first.began_next
        assert conn.is_in_transaction()
        assert await other.fetchval("SELECT count(*) FROM chained") == 1  # committed
        async with chained_transaction(conn, _BEGIN, begun=True) as second:
            assert await conn.fetchval("SHOW lock_timeout") == "1234ms"  # its SET LOCAL
            await conn.execute("INSERT INTO chained VALUES (2)")
            assert await _xact(conn) != first_xact
            assert await other.fetchval("SELECT count(*) FROM chained") == 1  # not yet
        assert not second.began_next
        assert not conn.is_in_transaction()
        assert await other.fetchval("SELECT count(*) FROM chained") == 2
        assert await conn.fetchval("SHOW lock_timeout") != "1234ms"
    finally:
        await other.execute("DROP TABLE IF EXISTS chained")
        await other.close()
        await conn.close()


async def test_a_failed_body_rolls_back_what_the_commit_began(dsn: str) -> None:
    conn = await ConnectionSettings(dsn=dsn).connect()
    try:
        await conn.execute("CREATE TEMP TABLE t (n int)")
        async with chained_transaction(conn, _BEGIN, begun=False) as ending:
            ending.begin_next(_BEGIN)

        async def failing() -> None:
            async with chained_transaction(conn, _BEGIN, begun=True):
                await conn.execute("INSERT INTO t VALUES (1)")
                raise ZeroDivisionError

        with pytest.raises(ZeroDivisionError):
            await failing()
        assert not conn.is_in_transaction()
        assert await conn.fetchval("SELECT count(*) FROM t") == 0
    finally:
        await conn.close()


async def test_a_commit_that_fails_begins_nothing(dsn: str) -> None:
    """A deferred constraint fails the COMMIT: the server skips the BEGIN after it, the
    work is rolled back, and the connection is left with no transaction, ready for use."""
    conn = await ConnectionSettings(dsn=dsn).connect()
    try:
        await conn.execute("CREATE TEMP TABLE u (n int UNIQUE DEFERRABLE INITIALLY DEFERRED)")
        ending = Ending()

        async def duplicate() -> None:
            nonlocal ending
            async with chained_transaction(conn, _BEGIN, begun=False) as ending:
                await conn.execute("INSERT INTO u VALUES (1), (1)")
                ending.begin_next(_BEGIN)

        with pytest.raises(asyncpg.UniqueViolationError):
            await duplicate()
        assert ending.next_begin is not None
        assert not ending.began_next
        assert not conn.is_closed()
        assert not conn.is_in_transaction()
        assert await conn.fetchval("SELECT count(*) FROM u") == 0
    finally:
        await conn.close()


async def test_a_commit_whose_next_begin_fails_is_of_unknown_outcome(dsn: str) -> None:
    """An error after the COMMIT of the message (here a refused setting of the next
    transaction) cannot be told from one in the COMMIT: the connection is closed and the
    caller told the outcome is unknown (it reads it back). Here the work did commit."""
    conn = await ConnectionSettings(dsn=dsn).connect()
    other = await asyncpg.connect(dsn)
    try:
        await other.execute("CREATE TABLE unknown_outcome (n int)")

        async def bad_next() -> None:
            async with chained_transaction(conn, _BEGIN, begun=False) as ending:
                await conn.execute("INSERT INTO unknown_outcome VALUES (1)")
                ending.begin_next("BEGIN; SET LOCAL lock_timeout = 'not a duration';")

        with pytest.raises(CommitUnknown) as raised:
            await bad_next()
        assert isinstance(raised.value.__cause__, asyncpg.InvalidParameterValueError)
        assert conn.is_closed()
        assert await other.fetchval("SELECT count(*) FROM unknown_outcome") == 1
    finally:
        await other.execute("DROP TABLE IF EXISTS unknown_outcome")
        await other.close()
        conn.terminate()


async def test_no_work_runs_outside_a_transaction_marked_as_begun(dsn: str) -> None:
    """A connection marked begun that has no transaction open is refused before the body
    runs: its work and checkpoint would otherwise each commit on their own."""
    conn = await ConnectionSettings(dsn=dsn).connect()
    try:

        async def stale() -> None:
            async with chained_transaction(conn, _BEGIN, begun=True):
                pytest.fail("the body must not run")

        with pytest.raises(RuntimeError, match="no transaction"):
            await stale()
    finally:
        await conn.close()
