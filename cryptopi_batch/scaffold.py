"""`new DESCRIPTION`: a new migration file named with the current UTC stamp, a ``Backfill``
skeleton (or, with ``sql``, a ``.sql`` file with its ``-- down`` section), like ``alembic
revision``."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import anyio

from .db import ConnectionSettings, close_quietly
from .discovery import FILE_NAME, shown
from .errors import ConnectionFailed, UsageError
from .keys import quote_ident, split_qualified
from .target import inspect_target

_NOT_SLUG = re.compile(r"[^a-z0-9]+")

PY_TEMPLATE = '''"""{description}"""

from cryptopi_batch import Backfill

migration = Backfill(
    table={table!r},
    key={key!r},
    batch_size=1_000,
    # The change each batch makes; {{range}} bounds it to the batch's keys. As written it
    # changes nothing: replace it with your UPDATE (or DELETE, INSERT … SELECT).
    sql={sql!r},
    # What `rollback` runs, in batches too; leave it out if the change cannot be undone
    # (and say why in the docstring).
    # down="UPDATE {table} SET … WHERE {{range}}",
)
'''

PY_PLACEHOLDERS = {"table": "SCHEMA.TABLE", "key": "id"}
"""What a skeleton made without --table says until it is filled in."""

SQL_TEMPLATE = """-- {description}
--
-- Applied once by `migrate`, in one transaction with its record in ops.migrations (no
-- BEGIN/COMMIT needed). CREATE INDEX CONCURRENTLY, VACUUM and the like make the file run
-- outside a transaction: keep them in a file of their own.


-- down
-- What `rollback` runs. Delete this section if the change cannot be undone, and say why
-- above.
"""


@dataclass(frozen=True)
class NewFile:
    path: Path
    key_checked: bool  # the table and key were checked against a database


def slug(description: str) -> str:
    """``description`` as a file name's part: lower-case letters, digits and ``_``."""
    # Accents dropped (café → cafe); what has no ASCII letter in it goes.
    ascii_text = unicodedata.normalize("NFKD", description).encode("ascii", "ignore").decode()
    cleaned = _NOT_SLUG.sub("_", ascii_text.lower()).strip("_")
    if not cleaned:
        raise UsageError(
            f"description {description!r} has no letter or digit to name the file with"
        )
    return cleaned


async def new_migration(  # noqa: PLR0913 -- keyword-only: a command's options
    description: str,
    *,
    directory: Path,
    connection: ConnectionSettings | None,
    sql: bool = False,
    table: str | None = None,
    key: str | None = None,
    now: datetime | None = None,
) -> NewFile:
    """Write the new file and return its path. With ``table`` and a ``connection`` that
    connects, the table and key are checked first (a wrong one: exit 2, nothing written);
    a database out of reach leaves them unchecked."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d_%H%M")
    name = f"{stamp}_{slug(description)}"
    if sql and (table or key):
        raise UsageError("--table and --key are for a backfill (.py), not --sql")
    path = directory / f"{name}.{'sql' if sql else 'py'}"
    assert FILE_NAME.match(path.name)
    taken = [p for p in (path.with_suffix(".py"), path.with_suffix(".sql")) if p.exists()]
    if taken:
        raise UsageError(f"{shown(taken[0])} exists; not overwritten")
    keys = tuple(k.strip() for k in (key or "id").split(",") if k.strip())
    if not keys:
        raise UsageError("--key: no column named (e.g. --key id, or --key tenant_id,id)")
    if table is not None:
        try:
            split_qualified(table)
        except ValueError as exc:
            raise UsageError(f"--table: {exc}") from None
    checked = False
    if table is not None and connection is not None:
        checked = await _check_table(connection, table, keys)
    shown_table, first = table or PY_PLACEHOLDERS["table"], quote_ident(keys[0])
    if sql:
        text = SQL_TEMPLATE.format(description=description.strip())
    else:
        text = PY_TEMPLATE.format(
            description=description.strip().replace("\\", "\\\\").replace('"""', "'''"),
            table=table or PY_PLACEHOLDERS["table"],
            key=keys[0] if len(keys) == 1 else keys,
            sql=f"UPDATE {shown_table} SET {first} = {first} WHERE {{range}} AND false",
        )
    await anyio.to_thread.run_sync(_write, path, text)
    return NewFile(path, checked)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("x", encoding="utf-8") as out:  # never over a file made meanwhile
        out.write(text)


async def _check_table(connection: ConnectionSettings, table: str, keys: tuple[str, ...]) -> bool:
    try:
        conn = await connection.connect_or_fail()
    except ConnectionFailed:
        return False
    try:
        await inspect_target(conn, table, keys)
        return True
    finally:
        await close_quietly(conn)
