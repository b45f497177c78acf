"""The test server itself: reachable with the right password, not with a wrong one, and
alive again after a simulated crash."""

from __future__ import annotations

import asyncpg
import pytest
from helpers import PgServer, connect, seed_table, with_password

from cryptopi_batch.embedded import EmbeddedCluster

pytestmark = pytest.mark.anyio


async def test_the_dsn_reaches_a_fresh_database(dsn: str, pg_server: PgServer) -> None:
    conn = await connect(dsn)
    try:
        assert await conn.fetchval("SELECT current_database()") == dsn.rsplit("/", 1)[1]
        assert (
            await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'matrices'") == 0
        )
        if pg_server.kind == "embedded":
            # Benchmarks run here: commits must be durable.
            assert await conn.fetchval("SHOW fsync") == "on"
    finally:
        await conn.close()


async def test_seed_table_fills_the_seed_shaped_table(dsn: str) -> None:
    conn = await connect(dsn)
    try:
        await seed_table(conn, rows=500)
        row = await conn.fetchrow(
            "SELECT count(*) AS n, min(id) AS lo, max(id) AS hi,"
            " count(confidence) AS confident, sum(touched) AS touched FROM matrices.dyn_values"
        )
        assert row is not None
        assert dict(row) == {"n": 500, "lo": 1, "hi": 500, "confident": 0, "touched": 0}
    finally:
        await conn.close()


async def test_a_wrong_password_is_refused(dsn: str, embedded_cluster: EmbeddedCluster) -> None:
    with pytest.raises(asyncpg.InvalidPasswordError):
        await connect(with_password(dsn, "not-the-password"))


async def test_an_immediate_restart_recovers_committed_rows(
    dsn: str, embedded_cluster: EmbeddedCluster
) -> None:
    conn = await connect(dsn)
    try:
        await seed_table(conn, rows=100)
        await conn.execute("UPDATE matrices.dyn_values SET touched = 1 WHERE id <= 10")
        embedded_cluster.restart(mode="immediate")
        with pytest.raises((asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError)):
            await conn.fetchval("SELECT 1")
    finally:
        conn.terminate()

    conn = await connect(dsn)
    try:
        assert await conn.fetchval("SELECT sum(touched) FROM matrices.dyn_values") == 10
    finally:
        await conn.close()
