"""Helpers shared by the integration and acceptance tests.

Import them as ``from helpers import connect, run_cli, seed_table`` (pytest puts ``tests/``
on ``sys.path`` because the directory holds ``conftest.py`` and no ``__init__.py``).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg

from cryptopi_batch.embedded import EmbeddedCluster

T = TypeVar("T")

DEFAULT_TABLE = "matrices.dyn_values"

SEED_EXAMPLE = """BEGIN;


ALTER TABLE matrices.dyn_values
  ADD COLUMN confidence numeric;


UPDATE matrices.dyn_values
  SET confidence = 1.0
  WHERE confidence IS NULL;


CREATE INDEX dyn_values_confidence_idx
  ON matrices.dyn_values (confidence);


INSERT INTO ops.migrations(filename) VALUES ('20250301_add_confidence_column.sql');


COMMIT;
"""
"""The seed's example migration file, verbatim (shared/seed/MIGRATIONS.md): its own
BEGIN/COMMIT and its own ops.migrations row."""

DEFAULT_ROWS = 1_000


@dataclass(frozen=True)
class PgServer:
    """A PostgreSQL server the tests run against.

    `kind` is ``"embedded"`` (our own cluster: `cluster` is set and may be restarted) or
    ``"external"`` (the server in ``CRYPTOPI_TEST_DSN``: `cluster` is None; never restart it).
    `admin_dsn` connects as a superuser to a maintenance database.
    """

    kind: str
    admin_dsn: str
    cluster: EmbeddedCluster | None

    def dsn(self, database: str) -> str:
        """The admin DSN pointed at `database`."""
        return with_database(self.admin_dsn, database)


def with_database(dsn: str, database: str) -> str:
    """`dsn` (a ``postgresql://`` URL) with its database replaced by `database`."""
    return urlunsplit(urlsplit(dsn)._replace(path="/" + quote(database, safe="")))


def with_password(dsn: str, password: str, user: str | None = None) -> str:
    """`dsn` (a ``postgresql://`` URL) with its password replaced by `password` (and its
    user by `user`, if given)."""
    parts = urlsplit(dsn)
    user = quote(parts.username or "" if user is None else user, safe="")
    netloc = f"{user}:{quote(password, safe='')}@{parts.hostname}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def run_in_thread(func: Callable[[], Awaitable[T]]) -> T:
    """Run the coroutine `func()` to completion on a private event loop in another thread.

    For synchronous fixtures: a second loop on the test's own thread would disturb the
    loop the anyio plugin runs async tests on.
    """
    box: dict[str, T] = {}
    errors: list[BaseException] = []

    async def main() -> None:
        box["result"] = await func()

    def target() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # handed over to the calling thread
            errors.append(exc)

    thread = threading.Thread(target=target, name="run_in_thread")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return box["result"]


def query_now(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """``sql``'s rows, from a synchronous test, on a connection of its own; several
    statements without arguments go as one simple-protocol message (no rows)."""

    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn)
        try:
            if not args and ";" in sql:
                await conn.execute(sql)
                return []
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    return run_in_thread(go)


async def connect(dsn: str, *, server_settings: dict[str, str] | None = None) -> asyncpg.Connection:
    """A new asyncpg connection to `dsn`; the caller closes it."""
    return await asyncpg.connect(dsn, server_settings=server_settings)


async def seed_table(
    conn: asyncpg.Connection, table: str = DEFAULT_TABLE, rows: int = DEFAULT_ROWS
) -> None:
    """Create `table` (and its schema) shaped like the seed's ``matrices.dyn_values`` and
    fill it with `rows` rows: ids 1..rows, ``confidence`` NULL, ``touched`` 0."""
    schema, _, _ = table.rpartition(".")
    if schema:
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    await conn.execute(
        f"CREATE TABLE {table} ("
        " id bigint PRIMARY KEY, value double precision, confidence numeric,"
        " note text, touched int NOT NULL DEFAULT 0)"
    )
    await conn.execute(
        f"INSERT INTO {table} (id, value, note)"
        " SELECT i, i / 10.0, 'note ' || i FROM generate_series(1, $1::bigint) AS i",
        rows,
    )
    # Fresh statistics so plans in tests look like plans on a real table.
    await conn.execute(f"ANALYZE {table}")


def cli_argv(*args: str) -> list[str]:
    """The command line that runs the CLI with this interpreter."""
    return [sys.executable, "-m", "cryptopi_batch", *args]


def cli_env(dsn: str | None = None, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment, with ``DATABASE_URL`` set to `dsn` when given, then
    `env` applied on top."""
    full = dict(os.environ)
    if dsn is not None:
        full["DATABASE_URL"] = dsn
    if env:
        full.update(env)
    return full


def run_cli(
    *args: str,
    dsn: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m cryptopi_batch *args`` to completion and return its exit code and
    captured text output; never raises on a non-zero exit."""
    return subprocess.run(
        cli_argv(*args),
        env=cli_env(dsn, env),
        cwd=cwd,
        timeout=timeout,
        capture_output=True,
        text=True,
        check=False,
    )
