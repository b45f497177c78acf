"""What a user writes: :class:`Backfill`, and the :class:`Batch` its ``process`` receives."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import MigrationDefinitionError
from .keys import Bound, KeyRange, KeySpec, has_range, render_range, split_qualified

if TYPE_CHECKING:
    import asyncpg

Process = Callable[["Batch"], Awaitable[int | None]]
"""``async def process(batch) -> rows``: the Python form of a batch's work."""

Check = Callable[["asyncpg.Connection"], Awaitable[bool | str | None]]
"""``async def check(conn) -> bool | str | None``: a health check of the migration's own,
asked about once a second: ``True`` or ``None`` is go, ``False`` or a reason is wait."""

Work = str | Process
"""A batch's work: SQL with ``{range}``, or a ``process`` coroutine function."""


@dataclass(frozen=True, kw_only=True)
class Backfill:
    """A batched backfill over ``table``'s ``key``.

    Exactly one of ``sql`` (a statement with ``{range}``) and ``process`` (an async function
    taking a :class:`Batch` and returning the number of rows it changed). ``down`` takes the
    same two forms and is what ``rollback`` runs. The remaining fields are defaults that
    command-line options override; durations are in seconds.
    """

    table: str
    key: str | tuple[str, ...] = "id"
    batch_size: int = 1_000
    sql: str | None = None
    process: Process | None = None
    down: Work | None = None
    destructive: bool = False
    workers: int | None = None
    max_rows_per_second: float | None = None
    sleep: float | None = None
    target_batch_seconds: float | None = None
    lock_timeout: float | None = None
    statement_timeout: float | None = None
    synchronous_commit: bool | None = None
    window: str | None = None
    timezone: str | None = None
    # Health gates and the WAL budget (see docs/operating.md); None: the default.
    max_replica_lag: float | str | None = None
    max_transaction_age: float | str | None = None
    max_blocking: float | str | None = None
    max_active_connections: int | None = None
    check: str | None = None
    checks: tuple[Check, ...] = ()
    no_gate: tuple[str, ...] = ()
    max_wal_rate: float | str | None = None
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if (self.sql is None) == (self.process is None):
            raise MigrationDefinitionError("Backfill needs exactly one of sql= and process=")
        if self.sql is not None and not has_range(self.sql):
            raise MigrationDefinitionError("Backfill sql= must contain {range}")
        if self.down is not None and isinstance(self.down, str) and not has_range(self.down):
            raise MigrationDefinitionError("Backfill down= SQL must contain {range}")
        if self.process is not None:
            _check_process("process=", self.process)
        if self.down is not None and not isinstance(self.down, str):
            _check_process("down=", self.down)
        if self.synchronous_commit is not None and not isinstance(self.synchronous_commit, bool):
            raise MigrationDefinitionError("Backfill synchronous_commit= must be True or False")
        if (
            not isinstance(self.batch_size, int)
            or isinstance(self.batch_size, bool)
            or self.batch_size < 1
        ):
            raise MigrationDefinitionError("Backfill batch_size= must be a positive integer")
        if not isinstance(self.destructive, bool):
            raise MigrationDefinitionError("Backfill destructive= must be True or False")
        try:
            split_qualified(self.table)
        except ValueError as exc:
            raise MigrationDefinitionError(f"Backfill table=: {exc}") from None
        if not isinstance(self.checks, (tuple, list)) or not all(
            inspect.iscoroutinefunction(c) for c in self.checks
        ):
            raise MigrationDefinitionError(
                "Backfill checks= must be a list of async functions (async def check(conn))"
            )
        if isinstance(self.no_gate, str) or not isinstance(self.no_gate, (tuple, list)):
            raise MigrationDefinitionError("Backfill no_gate= must be a list of gate names")
        if not self.key_columns or not all(isinstance(k, str) and k for k in self.key_columns):
            raise MigrationDefinitionError("Backfill key= must name one column or a tuple of them")

    @property
    def key_columns(self) -> tuple[str, ...]:
        return (self.key,) if isinstance(self.key, str) else tuple(self.key)

    @property
    def work(self) -> Work:
        return self.sql if self.sql is not None else self.process  # type: ignore[return-value]


def _check_process(option: str, work: object) -> None:
    """Refuse, when the file loads, a ``process=`` (or ``down=``) that the first batch
    would fail on: not an ``async def`` function (a plain function, a lambda, a class, an
    async generator) or not callable with the one :class:`Batch`."""
    call = None if inspect.isclass(work) else getattr(work, "__call__", None)  # noqa: B004
    if not (inspect.iscoroutinefunction(work) or inspect.iscoroutinefunction(call)):
        raise MigrationDefinitionError(
            f"Backfill {option} must be an async function (async def process(batch)),"
            f" not {_kind(work)}"
        )
    assert callable(work)
    try:
        signature = inspect.signature(work)
    except (TypeError, ValueError):  # no signature to read: the call decides
        return
    try:
        signature.bind(None)
    except TypeError:
        raise MigrationDefinitionError(
            f"Backfill {option} must take one argument, the Batch; it takes {signature}"
        ) from None


def _kind(work: object) -> str:
    if inspect.isasyncgenfunction(work):
        return "an async generator"
    if inspect.isclass(work):
        return "a class"
    if inspect.isfunction(work) or inspect.ismethod(work):
        return "a plain function"
    return f"an object of type {type(work).__name__}"


class Batch:
    """One batch, as a ``process`` function sees it.

    ``conn`` is the batch's connection, inside the batch's transaction: whatever it does
    commits with the checkpoint or not at all. ``lower`` (exclusive, ``None`` for the first
    batch) and ``upper`` (inclusive) are the key bounds in PostgreSQL's text form.
    ``fetch``/``fetchrow``/``fetchval``/``execute`` expand ``{range}`` (or ``{range:alias}``
    for a qualified key) into the bound predicate; the bounds are numbered after the query's
    own ``$n`` arguments.
    """

    def __init__(self, conn: asyncpg.Connection, key: KeySpec, rng: KeyRange) -> None:
        self.conn = conn
        self.key = key
        self.range = rng

    @property
    def lower(self) -> Bound | None:
        return self.range.lower

    @property
    def upper(self) -> Bound:
        return self.range.upper

    def render(self, query: str, nargs: int = 0) -> tuple[str, list[str]]:
        """The query with ``{range}`` expanded, and the bound values to append to its args."""
        return render_range(query, self.key, self.range, nargs)

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        sql, bounds = self.render(query, len(args))
        return await self.conn.fetch(sql, *args, *bounds)

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        sql, bounds = self.render(query, len(args))
        return await self.conn.fetchrow(sql, *args, *bounds)

    async def fetchval(self, query: str, *args: Any) -> Any:
        sql, bounds = self.render(query, len(args))
        return await self.conn.fetchval(sql, *args, *bounds)

    async def execute(self, query: str, *args: Any) -> str:
        """Run a statement; returns PostgreSQL's status tag (``"UPDATE 42"``)."""
        sql, bounds = self.render(query, len(args))
        return await self.conn.execute(sql, *args, *bounds)


def rows_from_status(status: str) -> int:
    """The row count of a status tag such as ``UPDATE 42`` or ``INSERT 0 7``."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


async def run_work(work: Work, batch: Batch) -> int:
    """Run one batch's work inside its transaction; returns the rows it changed."""
    if isinstance(work, str):
        return rows_from_status(await batch.execute(work))
    rows = await work(batch)
    return int(rows or 0)
