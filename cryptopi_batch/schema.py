"""The ops schema: its version, and its creation and upgrades.

The schema is versioned by the files of ``sql/versions`` (``NNNN_what.sql``, applied in
order) and one row of ``ops.batch_schema_version``. Every runner upgrades it at start, once,
however many start together.
"""

from __future__ import annotations

import asyncpg

from .errors import PermissionDenied
from .sqlfiles import query, sql_dir
from .transactions import transaction

SCHEMA_VERSION = 3
_LOCK_KEY = "cryptopi_batch.schema"


def _version_files() -> list[tuple[int, str]]:
    folder = sql_dir().joinpath("versions")
    found = [
        (int(f.name.split("_", 1)[0]), f.read_text(encoding="utf-8"))
        for f in folder.iterdir()
        if f.name.endswith(".sql")
    ]
    return sorted(found)


# The schema is created only when it is missing: CREATE SCHEMA IF NOT EXISTS asks for CREATE
# on the database first, which a role given an existing ops schema may well lack.
_LOCKED_VERSION_TABLE = (
    f"SELECT pg_advisory_xact_lock(hashtext('{_LOCK_KEY}'));"
    " DO $$BEGIN IF to_regnamespace('ops') IS NULL THEN CREATE SCHEMA ops; END IF; END$$;"
    " CREATE TABLE IF NOT EXISTS ops.batch_schema_version ("
    " component text PRIMARY KEY, version integer NOT NULL,"
    " upgraded_at timestamptz NOT NULL DEFAULT now());"
)
_SET_VERSION = (
    "INSERT INTO ops.batch_schema_version (component, version) VALUES"
    f" ('cryptopi_batch', {SCHEMA_VERSION}) ON CONFLICT (component) DO UPDATE"
    " SET version = EXCLUDED.version, upgraded_at = now()"
    " WHERE ops.batch_schema_version.version < EXCLUDED.version;"
)


async def schema_version(conn: asyncpg.Connection) -> int:
    """The installed ops schema version; 0 when none is installed. Writes nothing."""
    if not await conn.fetchval(query("schema_version")):
        return 0
    return int(await conn.fetchval(query("schema_version_read")) or 0)


async def ensure_schema(conn: asyncpg.Connection, settings: str = "") -> None:
    """Create or upgrade the ops schema, once, however many runners start together.

    A transaction-scoped advisory lock serialises the upgrade (it works through PgBouncer's
    transaction pooling, unlike a session lock); the version is re-read under the lock.
    ``settings`` (``SET LOCAL …``) apply to that transaction: `run` gives it its lock
    timeout, so an upgrade that must alter a table in use never queues long for it.
    """
    if await schema_version(conn) >= SCHEMA_VERSION:
        return
    try:
        # The lock and the version table come with BEGIN; the upgrade and its version
        # with one message: a first run's set-up costs four round trips, not ten.
        async with transaction(conn, settings + _LOCKED_VERSION_TABLE):
            current = int(await conn.fetchval(query("schema_version_read")) or 0)
            upgrade = [sql for version, sql in _version_files() if version > current]
            await conn.execute("\n".join([*upgrade, _SET_VERSION]))
    except asyncpg.InsufficientPrivilegeError as exc:
        raise PermissionDenied(f"cannot create the ops schema: {exc}") from None
