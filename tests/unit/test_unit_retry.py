"""Error classification and the retry loop, without a database and without real waits."""

from __future__ import annotations

import asyncpg
import pytest

from cryptopi_batch.retry import Fault, RetryPolicy, classify, is_transient

# Waits of at most a millisecond: the loop is exercised, the clock barely.
FAST = RetryPolicy(attempts=4, initial_wait=0.0, max_wait=0.001)


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.SerializationError("could not serialize access"),  # 40001
        asyncpg.DeadlockDetectedError("deadlock detected"),  # 40P01
        asyncpg.LockNotAvailableError("canceling statement due to lock timeout"),  # 55P03
    ],
)
def test_transient_conflicts_retry_the_same_batch(exc):
    assert classify(exc) is Fault.RETRY


def test_statement_timeout_shrinks_the_batch():
    exc = asyncpg.QueryCanceledError("canceling statement due to statement timeout")
    assert exc.sqlstate == "57014"
    assert classify(exc) is Fault.SHRINK


def test_an_operators_cancel_is_fatal_not_a_shrink():
    exc = asyncpg.QueryCanceledError("canceling statement due to user request")
    assert exc.sqlstate == "57014"
    assert classify(exc) is Fault.FATAL


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.PostgresConnectionError("connection exception"),  # 08000
        asyncpg.ClientCannotConnectError("cannot connect"),  # 08001
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle"),  # 08003
        asyncpg.ConnectionFailureError("connection failure"),  # 08006
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.CannotConnectNowError("the database system is starting up"),  # 57P03
        asyncpg.TooManyConnectionsError("sorry, too many clients already"),  # 53300
    ],
)
def test_lost_or_refused_connections_reconnect(exc):
    assert classify(exc) is Fault.RECONNECT


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(111, "Connection refused"),
        ConnectionResetError(104, "Connection reset by peer"),
        OSError(113, "No route to host"),
        TimeoutError(),
    ],
)
def test_socket_errors_reconnect(exc):
    assert classify(exc) is Fault.RECONNECT


def test_interface_error_reconnects_only_when_the_connection_is_closed():
    exc = asyncpg.InterfaceError("cannot perform operation: connection is closed")
    assert classify(exc, conn_closed=True) is Fault.RECONNECT
    assert classify(exc, conn_closed=False) is Fault.FATAL
    assert classify(exc) is Fault.FATAL


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.UndefinedTableError('relation "nope" does not exist'),
        asyncpg.InsufficientPrivilegeError("permission denied for table t"),
        asyncpg.PostgresSyntaxError('syntax error at or near "UPDAET"'),
        asyncpg.UniqueViolationError("duplicate key value violates unique constraint"),
        asyncpg.DataError("invalid data"),
        asyncpg.InvalidTextRepresentationError("invalid input syntax for type integer"),
        ValueError("a bug in process()"),
        KeyError("column"),
    ],
)
def test_permanent_errors_are_fatal(exc):
    assert classify(exc) is Fault.FATAL
    assert not is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.UndefinedTableError("relation does not exist"),
        ValueError("x"),
    ],
)
def test_a_closed_connection_does_not_make_a_permanent_error_transient(exc):
    assert classify(exc, conn_closed=True) is Fault.FATAL


def test_message_text_does_not_override_the_sqlstate():
    """Only 57014 looks at the message: a unique violation that mentions a statement
    timeout is still fatal."""
    exc = asyncpg.UniqueViolationError("statement timeout")
    assert classify(exc) is Fault.FATAL


class Operation:
    """Raises ``failures`` one by one, then succeeds; counts its calls."""

    def __init__(self, *failures: BaseException) -> None:
        self.failures = list(failures)
        self.calls = 0

    async def run(self, policy: RetryPolicy, **retrying) -> None:
        async for attempt in policy.retrying(**retrying):
            with attempt:
                self.calls += 1
                if self.failures:
                    raise self.failures.pop(0)


@pytest.mark.anyio
async def test_retrying_does_not_retry_a_value_error():
    op = Operation(ValueError("bug"))
    with pytest.raises(ValueError, match="bug"):
        await op.run(FAST)
    assert op.calls == 1


@pytest.mark.anyio
async def test_retrying_gives_up_a_fatal_error_after_one_attempt():
    op = Operation(asyncpg.UndefinedTableError("gone"))
    with pytest.raises(asyncpg.UndefinedTableError):
        await op.run(FAST)
    assert op.calls == 1


@pytest.mark.anyio
async def test_retrying_retries_transient_errors_until_success():
    op = Operation(
        asyncpg.SerializationError("x"), asyncpg.DeadlockDetectedError("y"), ConnectionResetError()
    )
    await op.run(FAST)
    assert op.calls == 4


@pytest.mark.anyio
async def test_retrying_stops_after_the_attempts_and_reraises_the_last_error():
    op = Operation(*(asyncpg.SerializationError(f"try {i}") for i in range(10)))
    with pytest.raises(asyncpg.SerializationError, match="try 3"):
        await op.run(FAST)
    assert op.calls == FAST.attempts


@pytest.mark.anyio
async def test_retrying_uses_the_callers_predicate():
    policy = RetryPolicy(attempts=3, initial_wait=0.0, max_wait=0.001)
    op = Operation(*(ValueError("x") for _ in range(5)))
    with pytest.raises(ValueError, match="x"):
        await op.run(policy, retry_on=lambda e: isinstance(e, ValueError))
    assert op.calls == 3


def test_asyncpgs_internal_error_from_a_closed_connection_reconnects():
    """What asyncpg 0.32 raises now and then on the next query after its backend was
    terminated."""
    exc = asyncpg.InternalClientError(
        "cannot switch to state 11; another operation (2) is in progress"
    )
    assert classify(exc, conn_closed=True) is Fault.RECONNECT
    assert classify(exc, conn_closed=False) is Fault.FATAL


def test_a_statement_timeout_in_another_language_shrinks_only_after_the_timeout():
    """lc_messages may translate the message: a 57014 that does not say it in English is
    a statement timeout only if the batch ran as long as its timeout."""
    german = asyncpg.QueryCanceledError("storniere Anfrage wegen Zeitüberschreitung")
    assert classify(german, ran_past_timeout=True) is Fault.SHRINK
    assert classify(german, ran_past_timeout=False) is Fault.FATAL
    operator = asyncpg.QueryCanceledError("canceling statement due to user request")
    assert classify(operator, ran_past_timeout=True) is Fault.FATAL
