"""``demo``: an embedded PostgreSQL, a seeded table, the example migration with its bar."""

from __future__ import annotations

from pathlib import Path

import asyncpg

from .embedded import EmbeddedCluster

SCHEMA = """
CREATE SCHEMA IF NOT EXISTS matrices;
CREATE TABLE matrices.dyn_values (
    id bigint PRIMARY KEY,
    matrix_id integer NOT NULL,
    value double precision NOT NULL,
    confidence numeric,
    note text
);
"""
"""The seed's table, as the demo and the benchmarks build it."""

LOAD = """
INSERT INTO matrices.dyn_values (id, matrix_id, value, note)
SELECT g, g % 1000, random(), CASE WHEN g % 7 = 0 THEN ' Mixed Case ' END
  FROM generate_series(1, $1::bigint) AS g
"""
"""``$1`` rows with ``confidence`` NULL (what the example migration fills)."""


def start_cluster(root: Path) -> EmbeddedCluster:
    root.mkdir(parents=True, exist_ok=True)
    cluster = EmbeddedCluster(root / "data")
    cluster.start()
    return cluster


async def seed(dsn: str, rows: int) -> None:
    """(Re)create ``matrices.dyn_values`` with ``rows`` rows whose confidence is NULL."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "DROP SCHEMA IF EXISTS ops CASCADE; DROP TABLE IF EXISTS matrices.dyn_values"
        )
        await conn.execute(SCHEMA)
        await conn.execute(LOAD, rows)
        await conn.execute("ANALYZE matrices.dyn_values")
    finally:
        await conn.close()
