"""Test tiers and the PostgreSQL servers the tests run against.

Tests under ``tests/integration`` are marked ``integration``, those under
``tests/acceptance`` ``acceptance``. A test that asks for ``dsn`` (or ``pg_server``) runs
once per backend: ``embedded`` always, ``external`` when ``CRYPTOPI_TEST_DSN`` is set; the
backend is part of the test id, so ``-k external`` selects it. The server starts only when
a test first asks for it, so unit tests never start one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from helpers import PgServer, connect, run_in_thread

from cryptopi_batch.embedded import EmbeddedCluster

TESTS_DIR = Path(__file__).parent
TIER_MARKERS = {"integration": pytest.mark.integration, "acceptance": pytest.mark.acceptance}
EXTERNAL_DSN_ENV = "CRYPTOPI_TEST_DSN"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        try:
            tier = item.path.relative_to(TESTS_DIR).parts[0]
        except ValueError:
            continue
        if tier in TIER_MARKERS:
            item.add_marker(TIER_MARKERS[tier])


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """asyncpg runs on asyncio only."""
    return "asyncio"


def _backends() -> list[str]:
    return ["embedded", "external"] if os.environ.get(EXTERNAL_DSN_ENV) else ["embedded"]


@pytest.fixture(scope="session", params=_backends())
def pg_server(request: pytest.FixtureRequest) -> Iterator[PgServer]:
    """The PostgreSQL server of this backend, started once per session."""
    if request.param == "external":
        yield PgServer(kind="external", admin_dsn=os.environ[EXTERNAL_DSN_ENV], cluster=None)
        return
    # Not under pytest's basetemp: every pytest session chmods that to 0700, and a second
    # session started beside this one would lock the server's OS user out of its datadir.
    root = Path(tempfile.mkdtemp(prefix="cryptopi_test_pg_"))
    cluster = EmbeddedCluster(root / "data")
    try:
        cluster.start()
        yield PgServer(kind="embedded", admin_dsn=cluster.dsn("postgres"), cluster=cluster)
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def embedded_cluster(pg_server: PgServer) -> EmbeddedCluster:
    """The embedded cluster, for tests that restart or crash the server; skips on an
    external server, which tests must not restart."""
    if pg_server.cluster is None:
        pytest.skip("needs the embedded cluster (restarts the server)")
    return pg_server.cluster


async def _admin(admin_dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def dsn(pg_server: PgServer) -> Iterator[str]:
    """The DSN of a new, empty database for this test alone, dropped afterwards."""
    name = f"test_{uuid.uuid4().hex}"
    run_in_thread(lambda: _admin(pg_server.admin_dsn, f'CREATE DATABASE "{name}"'))
    try:
        yield pg_server.dsn(name)
    finally:
        # FORCE: a test may leave connections behind (a killed CLI, a failed assertion).
        run_in_thread(
            lambda: _admin(pg_server.admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        )


@pytest.fixture
async def conn(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to this test's database, closed afterwards."""
    c = await connect(dsn)
    try:
        yield c
    finally:
        await c.close()
