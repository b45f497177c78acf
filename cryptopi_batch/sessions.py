"""The server sessions behind a runner's connections: which transaction each is in, and
ending them when their connection goes silent or a second signal aborts the run.

Closing our socket is not enough to end a transaction: a backend notices a vanished
client only when it next talks to it, after its statement, which may run (holding its row
locks) until the statement timeout. So each transaction a runner begins is named by its
server session's pid and a start time, and ended from another connection when need be;
only a session still in that very transaction is ended, never one reused since (a pooler).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime
from typing import TypeVar

import anyio
import asyncpg
import structlog
from tenacity import RetryCallState

from .db import ConnectionSettings, close_quietly, is_pooled, pg_interval
from .retry import Fault, Faults, RetryPolicy
from .settings import TimeoutPolicy
from .sqlfiles import query
from .transactions import ours

log = structlog.get_logger("cryptopi_batch")
T = TypeVar("T")

# A request that gets no reply within the statement timeout plus this much (or twice the
# statement timeout, if longer) has lost its connection: see Sessions.bounded.
REPLY_MARGIN = 5.0

Xact = tuple[int, datetime, bool]
"""A server session to end if need be: pid, a start time, and whether that is the session's
start (a direct connection) or its transaction's (behind a pooler)."""


ServerSession = tuple[int, datetime]
"""A server session's pid and a start: the session's own, or its transaction's."""


async def session_identity(conn: asyncpg.Connection) -> ServerSession | None:
    """The server session ``conn`` talks to (pid, backend start)."""
    row = await conn.fetchrow(query("session_identity"))
    return None if row is None else (row["pid"], row["backend_start"])


async def batch_settings(
    conn: asyncpg.Connection, timeouts: TimeoutPolicy, idle: float
) -> ServerSession:
    """Set a batch transaction's settings as a statement of their own (behind a pooler);
    returns the session and the transaction's start, naming this very transaction."""
    row = await conn.fetchrow(
        query("batch_settings"),
        pg_interval(timeouts.lock_timeout),
        pg_interval(timeouts.statement_timeout),
        pg_interval(idle),
        "on" if timeouts.synchronous_commit else "off",
    )
    assert row is not None  # a SELECT without FROM returns its row
    return row["pid"], row["xact_start"]


async def end_sessions(
    conn: asyncpg.Connection, sessions: Sequence[tuple[int, datetime, bool]]
) -> None:
    """End each session named by its pid and a start: the session's own (``True``) or its
    transaction's (``False``: only while it is still in that transaction)."""
    pids, starts, whole = (list(x) for x in zip(*sessions, strict=True))
    await conn.execute(query("end_sessions"), pids, starts, whole)


class Sessions:
    """The server sessions of one runner's connections."""

    def __init__(
        self,
        connection: ConnectionSettings,
        statement_timeout: float,
        retry: RetryPolicy,
        describe: Callable[[BaseException], str],
    ) -> None:
        self._connection = connection
        self._retry = retry
        self._statement_timeout = statement_timeout
        self._describe = describe
        # Connection -> the transaction last begun on it (a claim's or a batch's): the
        # server session to end if the connection goes silent or the run is aborted.
        self._xacts: weakref.WeakKeyDictionary[asyncpg.Connection, Xact] = (
            weakref.WeakKeyDictionary()
        )
        # Connection -> its server session when it talks to the server directly, None
        # behind a pooler: see identify.
        self._direct: weakref.WeakKeyDictionary[asyncpg.Connection, ServerSession | None] = (
            weakref.WeakKeyDictionary()
        )

    def began(self, conn: asyncpg.Connection, session: ServerSession, *, whole: bool) -> None:
        """``conn`` began a transaction in ``session``: the session's own start (``whole``,
        a direct connection) or the transaction's."""
        self._xacts[conn] = (*session, whole)

    async def identify(self, conn: asyncpg.Connection) -> ServerSession | None:
        """The server session of ``conn`` (pid, start), asked once per connection, if it
        talks to the server directly: then the pid the server announced at connect is its
        own. Behind a pooler (another pid) ``None``: its session may change with every
        transaction, which must then name itself (:func:`batch_settings`)."""
        if conn not in self._direct:
            session = await session_identity(conn)
            direct = session is not None and not is_pooled(session[0], conn)
            self._direct[conn] = session if direct else None
        return self._direct[conn]

    async def end_all(self) -> None:
        """After a second signal: end the sessions whose transaction is still open, so the
        server rolls them back now."""
        xacts = list(self._xacts.values())
        self._xacts.clear()
        await self._end(xacts)

    async def _end(self, xacts: list[Xact]) -> None:
        """End the server sessions ``xacts`` names, from a new connection; best effort,
        bounded."""
        if not xacts:
            return
        with anyio.move_on_after(5):
            conn: asyncpg.Connection | None = None
            try:
                conn = await self._connection.connect()
                await end_sessions(conn, xacts)
            except Exception as exc:  # best effort, whatever the connection raises
                log.warning("abort_cleanup_failed", error=self._describe(exc))
            finally:
                await close_quietly(conn)

    def reply_bound(self) -> float | None:
        """How long a request may wait for its reply before its connection counts as lost;
        ``None`` (forever) when the statement timeout is off."""
        t = self._statement_timeout
        return t + max(t, REPLY_MARGIN) if t > 0 else None

    @contextlib.asynccontextmanager
    async def bounded(self, conn: asyncpg.Connection) -> AsyncIterator[None]:
        """Give up on ``conn`` when what runs inside waits longer than the reply bound for
        an answer: from its start, then from each answer the server gave (a batch of many
        statements may take longer in all; each one is bounded).

        The server enforces the statement timeout, but over a silent connection (a
        black-holed socket, a lost NAT entry) its verdict never arrives and asyncpg would
        wait forever. Then ``conn`` is terminated, never reused; the server session of a
        transaction begun inside is ended, so it does not sit idle in transaction holding
        its locks; and :class:`TimeoutError` (the commit's outcome is unknown) is raised.
        """
        bound = self.reply_bound()
        self._xacts.pop(conn, None)
        mine = ours(conn)
        try:
            with anyio.fail_after(bound) as scope:
                if mine is not None and bound is not None:
                    mine.on_reply = lambda: setattr(scope, "deadline", anyio.current_time() + bound)
                try:
                    yield
                finally:
                    if mine is not None:
                        mine.on_reply = None
        except Exception as exc:
            if not scope.cancel_called:
                raise
            # Whatever escaped the cancelled scope (asyncpg's rollback of an interrupted
            # transaction may raise its own error), the connection is silent.
            conn.terminate()
            xact = self._xacts.pop(conn, None)
            log.warning("connection_silent", seconds=bound, session=xact[0] if xact else None)
            if xact is not None:
                await self._end([xact])
            raise TimeoutError(f"no reply from the server within {bound:g} s") from exc

    async def connect(self) -> asyncpg.Connection:
        return await self._connection.connect()

    async def with_conn(
        self,
        conn: asyncpg.Connection | None,
        op: Callable[[asyncpg.Connection], Awaitable[T]],
        on_shrink: Callable[[], object] | None = None,
    ) -> tuple[asyncpg.Connection, T]:
        """Run ``op`` on ``conn`` (or a new connection), each request bounded, reconnecting
        and retrying what is transient; returns the connection to go on with and the
        result. ``on_shrink`` is told when ``op`` met the statement timeout (a claim's
        range lookup: the next try claims fewer keys)."""
        live = conn
        faults = Faults()
        retrying = self._retry.retrying(retry_on=faults.retryable, before_sleep=self._log_retry)
        async for attempt in retrying:
            with attempt:
                try:
                    if live is None or live.is_closed():
                        live = await self._connection.connect()
                    async with self.bounded(live):
                        result = await op(live)
                except Exception as exc:
                    fault = faults.tag(exc, conn_closed=live is None or live.is_closed())
                    if fault is Fault.RECONNECT and live is not None:
                        live.terminate()
                        live = None
                    elif fault is Fault.SHRINK and on_shrink is not None:
                        on_shrink()
                    raise
                return live, result
        raise AssertionError("unreachable: tenacity reraises")

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning(
            "claim_retrying",
            attempt=state.attempt_number,
            error=self._describe(exc) if exc else None,
            wait=round(state.upcoming_sleep, 3),
        )
