"""The migration's table, checked against the catalog: it exists, its key is NOT NULL and
covered by a unique index, and the session may read it.

Reads the catalog only; the queries are the named blocks ``inspect_target``, ``relkind``
and ``count_rows`` of ``sql/queries.sql``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from .errors import PermissionDenied, TargetInvalid
from .keys import KeyColumn, KeySpec, quote_qualified, split_qualified
from .sqlfiles import query

# What else a name in pg_class may be (relkind), for the message when it is not a table.
_NOT_TABLES = {
    "v": "a view",
    "m": "a materialized view",
    "f": "a foreign table",
    "S": "a sequence",
    "i": "an index",
    "I": "an index",
    "c": "a composite type",
}


@dataclass(frozen=True)
class Target:
    """The table a migration batches over, checked against the catalog."""

    table: str  # as regclass prints it
    key: KeySpec
    estimate: int  # pg_class.reltuples: -1 when never analysed

    @property
    def quoted(self) -> str:
        return quote_qualified(self.table)


async def inspect_target(
    conn: asyncpg.Connection,
    table: str,
    key: tuple[str, ...],
    privileges: Sequence[str] = ("SELECT",),
) -> Target:
    """Check that ``table`` exists, ``key`` is NOT NULL and covered by a unique index, and
    the session has ``privileges`` on the table.

    Reads the catalog only, in one query. Raises :class:`TargetInvalid` (or
    :class:`PermissionDenied`) with one line that says what is wrong.
    """
    parts = split_qualified(table)
    schema, name = (None, parts[0]) if len(parts) == 1 else parts
    row = await conn.fetchrow(query("inspect_target"), schema, name, list(key), list(privileges))
    if row is None:
        kind = await conn.fetchval(query("relkind"), table)
        if kind in _NOT_TABLES:
            raise TargetInvalid(f"{table} is {_NOT_TABLES[kind]}, not a table")
        raise TargetInvalid(f"table {table} does not exist")
    types = dict(zip(key, row["types"], strict=True))
    missing = [k for k in key if types[k] is None]
    if missing:
        raise TargetInvalid(f"table {table} has no column {', '.join(missing)}")
    nullable = list(row["nullable"])
    if nullable:
        raise TargetInvalid(
            f"key column {', '.join(nullable)} of {table} is nullable; a key must be NOT NULL"
        )
    if not row["unique_index"]:
        raise TargetInvalid(
            f"key ({', '.join(key)}) of {table} is not covered by a unique"
            " index or primary key on exactly those columns"
        )
    if row["missing_privileges"]:
        raise PermissionDenied(
            f"permission denied: {row['missing_privileges'][0]} on {row['table_name']}"
        )
    spec = KeySpec(tuple(KeyColumn(k, types[k]) for k in key))
    return Target(row["table_name"], spec, int(row["estimate"]))


async def estimate_rows(conn: asyncpg.Connection, target: Target) -> int:
    """The planner's row estimate; a table never analysed is counted (once, at a run's first
    start only: resuming never scans the table)."""
    if target.estimate >= 0:
        return target.estimate
    # The table's name is quoted by us, from the catalog's own spelling.
    return int(await conn.fetchval(query("count_rows").format(table=target.quoted)))
