"""Transactions as a runner sends them: settings that travel with ``BEGIN``, and a batch's
``COMMIT`` that begins the next batch's transaction in the same round trip; and the
connection class that makes both possible."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar, cast

import asyncpg

if TYPE_CHECKING:
    from asyncpg.transaction import Transaction

T = TypeVar("T")


class Connection(asyncpg.Connection):
    """An asyncpg connection that can send a transaction's own settings with its ``BEGIN``,
    in the same round trip (a batch then costs one round trip less), and that calls
    :attr:`on_reply` each time the server answers a request, with rows or with an error (a
    silent connection is one that stopped answering: see ``sessions.Sessions.bounded``)."""

    _cryptopi_begin: str | None = None
    on_reply: Callable[[], None] | None = None
    _top_xact: Transaction | None  # asyncpg's, undeclared in its stubs: see begun_by_us

    async def _answered(self, request: Awaitable[T]) -> T:
        try:
            result = await request
        except asyncpg.PostgresError:
            if self.on_reply is not None:
                self.on_reply()
            raise
        if self.on_reply is not None:
            self.on_reply()
        return result

    # Every query method but the simple-protocol execute (below) goes through these two
    # private methods of asyncpg's (stable since 0.18): hooking them covers fetch,
    # fetchrow, fetchval, execute with arguments and executemany.
    async def _execute(self, *args: Any, **kwargs: Any) -> Any:
        return await self._answered(super()._execute(*args, **kwargs))  # type: ignore[misc]

    async def _executemany(self, *args: Any, **kwargs: Any) -> Any:
        return await self._answered(super()._executemany(*args, **kwargs))  # type: ignore[misc]

    @contextlib.contextmanager
    def begun_by_us(self) -> Iterator[None]:
        """While a transaction that a statement of ours began is open, asyncpg takes it for
        one of its own: ``transaction()`` inside it is then a savepoint, as in a
        transaction asyncpg began, where it would otherwise refuse "a manually started
        transaction". (``_top_xact``, asyncpg's own mark of that, is private but has
        been there since its first release.)"""
        self._top_xact = self.transaction()  # never started: it only stands for ours
        try:
            yield
        finally:
            self._top_xact = None

    def begin_with(self, statements: str) -> None:
        """Append ``statements`` (``SET LOCAL …``, our own text: never user input) to the
        next top-level ``BEGIN``, which ``Connection.transaction()`` sends as a simple
        query. :meth:`begun_without` tells the caller if that did not happen."""
        self._cryptopi_begin = statements

    def begun_without(self) -> str | None:
        """The statements :meth:`begin_with` was given if no ``BEGIN`` took them (the
        caller sends them itself), else ``None``."""
        pending, self._cryptopi_begin = self._cryptopi_begin, None
        return pending

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:
        pending = self._cryptopi_begin
        if pending is not None and not args and query.startswith("BEGIN"):
            self._cryptopi_begin = None
            query = f"{query} {pending}"
        if args:  # through _execute
            return await super().execute(query, *args, timeout=timeout)
        return await self._answered(super().execute(query, timeout=timeout))


def ours(conn: asyncpg.Connection) -> Connection | None:
    """``conn`` as a :class:`Connection` if it is one (not isinstance(): asyncpg's metaclass
    answers True for any asyncpg connection)."""
    return cast("Connection", conn) if Connection in type(conn).__mro__ else None


@contextlib.asynccontextmanager
async def transaction(conn: asyncpg.Connection, settings: str) -> AsyncIterator[None]:
    """``conn.transaction()`` whose first statements are ``settings`` (``SET LOCAL …``, or
    any statements of ours without parameters; never user input), sent with its ``BEGIN``
    when ``conn`` is a :class:`Connection`."""
    mine = ours(conn)
    if mine is not None:
        mine.begin_with(settings)
    began = False
    try:
        async with conn.transaction():
            began = True
            pending = settings if mine is None else mine.begun_without()
            if pending:
                await conn.execute(pending)
            yield
    except BaseException:
        if not began:
            # Never left armed for another BEGIN; and a BEGIN that failed half way (its
            # settings refused, the reply lost) leaves asyncpg's and the server's state
            # unknown: the connection is not used again.
            if mine is not None:
                mine.begun_without()
            conn.terminate()
        raise


class Ending:
    """How a :func:`chained_transaction` ends: its COMMIT alone, or with the next
    transaction's ``BEGIN`` when the body asked for it (:meth:`begin_next`)."""

    def __init__(self) -> None:
        self.next_begin: str | None = None
        self.began_next = False  # set once the COMMIT that carried it succeeded

    def begin_next(self, begin: str) -> None:
        self.next_begin = begin


@contextlib.asynccontextmanager
async def chained_transaction(
    conn: Connection, begin: str, *, begun: bool
) -> AsyncIterator[Ending]:
    """A transaction opened with ``begin`` (``BEGIN; SET LOCAL …``: our own text, never user
    input), or, if ``begun``, the one the previous chained transaction's COMMIT already
    opened with it. Its COMMIT may open the next one in the same round trip (see
    :class:`Ending`): a batch then costs one round trip less.

    Only for a connection straight to the server, and only when the next transaction
    starts at once: an open transaction takes no lock and no snapshot before its first
    statement, but it must not idle (the server ends it after its
    ``idle_in_transaction_session_timeout``). The server answers such a message in order
    and stops at the first error: a failed COMMIT leaves no transaction open.

    Inside, ``conn.transaction()`` is a savepoint, as in asyncpg's own transaction."""
    if begun and not conn.is_in_transaction():
        # Never work outside a transaction: the work and the checkpoint would commit apart.
        raise RuntimeError("no transaction is open on a connection marked as begun")
    if not begun:
        try:
            await conn.execute(begin)
        except BaseException:
            # A BEGIN that failed half way (its settings refused, the reply lost) leaves
            # the server's state unknown: the connection is not used again.
            conn.terminate()
            raise
    ending = Ending()
    try:
        with conn.begun_by_us():
            yield ending
    except BaseException:
        # As asyncpg's own transaction does; a ROLLBACK that fails propagates instead.
        await conn.execute("ROLLBACK;")
        raise
    if ending.next_begin is None:
        await conn.execute("COMMIT;")
        return
    try:
        await conn.execute(f"COMMIT; {ending.next_begin}")
    except asyncpg.PostgresError as exc:
        if conn.is_closed() or (exc.sqlstate or "")[:2] in _COMMIT_FAILED:
            raise  # the connection is gone, or the COMMIT itself failed: nothing committed
        # Any other error (a cancel, a refused setting) may have hit the COMMIT or the
        # BEGIN after it: whether the transaction committed is not known here.
        conn.terminate()
        raise CommitUnknown(f"the outcome of COMMIT is unknown: {exc}") from exc
    except BaseException:
        if not conn.is_closed() and conn.is_in_transaction():
            conn.terminate()  # its state is unknown: not used again
        raise
    ending.began_next = True


# What only a COMMIT raises, never the BEGIN and SET LOCALs after it: integrity constraint
# violations (deferred constraints) and transaction rollbacks (serialization failures).
_COMMIT_FAILED = ("23", "40")


class CommitUnknown(ConnectionError):
    """A COMMIT whose outcome is unknown; its connection was closed. A connection lost during
    a COMMIT is the same case: the caller reads the outcome back from the database."""


def begin_with(settings: str) -> str:
    """``BEGIN`` followed by ``settings`` (``SET LOCAL …``: our own text), one message."""
    return f"BEGIN; {settings}"


def set_local(**settings: str) -> str:
    """``SET LOCAL name = 'value';`` for each setting (our own values, never user input)."""
    return " ".join(f"SET LOCAL {name} = '{value}';" for name, value in settings.items())
