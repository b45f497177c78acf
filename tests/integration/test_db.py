"""db.transaction: a transaction's own settings sent with its BEGIN, and what is left
when that BEGIN fails."""

from __future__ import annotations

import asyncpg
import pytest

from cryptopi_batch.db import ConnectionSettings, set_local, transaction

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
        dsn: str, plain: bool) -> None:
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
