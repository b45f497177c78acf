"""The server the benchmark runs on, and the identical databases each phase gets.

The table is built once per size in a template database (``VACUUM (FREEZE, ANALYZE)``
after loading, so hint bits and visibility are settled), and every timed phase runs in a
fresh ``CREATE DATABASE … TEMPLATE …`` copy of it: byte-identical content, no dead tuples,
no ops tables left over from an earlier phase.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from cryptopi_batch.demo import LOAD, SCHEMA
from cryptopi_batch.embedded import EmbeddedCluster

from .baselines import TABLE


def database_dsn(dsn: str, database: str) -> str:
    """``dsn`` pointing at another database (a URL; its path is the database)."""
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


@dataclass(frozen=True)
class WalCounters:
    lsn: str
    init_bytes: int


@dataclass
class Server:
    """The admin DSN of the server under test, and the embedded cluster if we started it."""

    admin_dsn: str
    cluster: EmbeddedCluster | None = None
    root: Path | None = None
    version: str = ""
    segment_size: int = 16 * 2**20
    settings: dict[str, str] = field(default_factory=dict)
    templates: dict[int, str] = field(default_factory=dict)
    autovacuum: bool = False  # on the benchmark table; off keeps its timing out of phases

    @classmethod
    def start(cls, dsn: str | None) -> Server:
        if dsn:
            return cls(admin_dsn=dsn)
        root = Path(tempfile.mkdtemp(prefix="cryptopi_bench_"))
        cluster = EmbeddedCluster(root / "data")
        cluster.start()
        return cls(admin_dsn=cluster.dsn("postgres"), cluster=cluster, root=root)

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)

    def dsn(self, database: str) -> str:
        return database_dsn(self.admin_dsn, database)

    async def admin(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.admin_dsn)

    async def describe(self) -> None:
        conn = await self.admin()
        try:
            self.version = await conn.fetchval("SHOW server_version")
            self.segment_size = int(
                await conn.fetchval(
                    "SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'"
                )
            )
            for name in (
                "fsync",
                "synchronous_commit",
                "shared_buffers",
                "max_wal_size",
                "min_wal_size",
                "wal_init_zero",
                "wal_recycle",
                "autovacuum",
            ):
                self.settings[name] = await conn.fetchval(f"SHOW {name}")
        finally:
            await conn.close()

    async def checkpoint(self) -> None:
        conn = await self.admin()
        try:
            await conn.execute("CHECKPOINT")
        finally:
            await conn.close()

    async def wal_counters(self) -> WalCounters:
        """Where WAL is, and how many bytes of new WAL segments were zero-filled so far
        (pg_stat_io, PostgreSQL 18+; 0 before)."""
        conn = await self.admin()
        try:
            lsn = str(await conn.fetchval("SELECT pg_current_wal_lsn()::text"))
            init = 0
            if await conn.fetchval("SELECT current_setting('server_version_num')::int") >= 180000:
                init = int(
                    await conn.fetchval(
                        "SELECT coalesce(sum(write_bytes), 0) FROM pg_stat_io"
                        " WHERE object = 'wal' AND context = 'init'"
                    )
                )
        finally:
            await conn.close()
        return WalCounters(lsn, init)

    async def wal_since(self, before: WalCounters) -> tuple[int, int]:
        """(WAL bytes written, new 16 MB segments created) since ``before``."""
        now = await self.wal_counters()
        conn = await self.admin()
        try:
            written = int(
                await conn.fetchval(
                    "SELECT pg_wal_lsn_diff($1::text::pg_lsn, $2::text::pg_lsn)",
                    now.lsn,
                    before.lsn,
                )
            )
        finally:
            await conn.close()
        return written, round((now.init_bytes - before.init_bytes) / self.segment_size)

    async def wal_stats(self, start: str, end: str) -> list[dict[str, Any]]:
        """WAL between two positions by resource manager (pg_walinspect), biggest first."""
        conn = await self.admin()
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
            rows = await conn.fetch(
                'SELECT "resource_manager/record_type" AS resource_manager, count, record_size,'
                " fpi_size, combined_size"
                " FROM pg_get_wal_stats($1::text::pg_lsn, $2::text::pg_lsn, false)"
                " WHERE count > 0 ORDER BY combined_size DESC",
                start,
                end,
            )
        finally:
            await conn.close()
        return [dict(r) for r in rows]

    async def create_table_db(self, database: str, rows: int) -> None:
        """A new database holding ``matrices.dyn_values`` with ``rows`` rows, frozen and
        analysed."""
        await self.drop(database)
        conn = await self.admin()
        try:
            await conn.execute(f'CREATE DATABASE "{database}"')
        finally:
            await conn.close()
        conn = await asyncpg.connect(self.dsn(database))
        try:
            # `cryptopi_batch demo`'s table and content; setseed makes random() repeatable
            # from one benchmark run to the next.
            await conn.execute(SCHEMA)
            await conn.execute("SELECT setseed(0.42)")
            await conn.execute(LOAD, rows)
            await conn.execute(f"VACUUM (FREEZE, ANALYZE) {TABLE}")
            if not self.autovacuum:
                # Whether and when autovacuum picks a table up during a 3 s phase is luck;
                # when it does, that phase is 10-30 % slower whatever the approach.
                await conn.execute(f"ALTER TABLE {TABLE} SET (autovacuum_enabled = false)")
        finally:
            await conn.close()

    async def template(self, rows: int) -> str:
        """The template database for ``rows`` rows, built on first use."""
        if rows not in self.templates:
            name = f"bench_template_{rows}"
            await self.create_table_db(name, rows)
            self.templates[rows] = name
        return self.templates[rows]

    async def copy(self, database: str, rows: int) -> str:
        """A fresh copy of the ``rows`` template as ``database``; returns its DSN."""
        template = await self.template(rows)
        await self.drop(database)
        conn = await self.admin()
        try:
            # FILE_COPY copies the files (checkpointing around it) instead of writing the
            # whole database into WAL.
            await conn.execute(
                f'CREATE DATABASE "{database}" TEMPLATE "{template}" STRATEGY FILE_COPY'
            )
        finally:
            await conn.close()
        return self.dsn(database)

    async def drop(self, database: str) -> None:
        conn = await self.admin()
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        finally:
            await conn.close()

    async def drop_templates(self) -> None:
        for name in self.templates.values():
            await self.drop(name)
        self.templates.clear()


async def verify_backfilled(dsn: str, rows: int) -> None:
    """Every row got its confidence, and no row was lost or added."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            f"SELECT count(*) AS total, count(*) FILTER (WHERE confidence IS NULL) AS missing"
            f" FROM {TABLE}"
        )
    finally:
        await conn.close()
    if row is None or row["total"] != rows or row["missing"] != 0:
        found = "no answer" if row is None else f"{row['total']} rows, {row['missing']} still NULL"
        raise RuntimeError(f"backfill incomplete: {found} (expected {rows} rows, 0 NULL)")


async def autovacuum_counts(dsn: str) -> tuple[int, int]:
    """(autovacuum_count, autoanalyze_count) of the table in ``dsn``'s database."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT autovacuum_count, autoanalyze_count FROM pg_stat_user_tables"
            " WHERE relid = $1::regclass",
            TABLE,
        )
    finally:
        await conn.close()
    return (0, 0) if row is None else (int(row[0]), int(row[1]))
