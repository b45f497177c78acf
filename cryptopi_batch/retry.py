"""Which errors are worth another try, and the tenacity policy that tries again.

Classification is by SQLSTATE, never by message text alone: PostgreSQL uses 57014 for a
statement timeout and for an operator's cancel request, told apart by the message when it
is in English and by how long the batch ran when it is not.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
import asyncpg
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
    wait_random,
)


class Fault(enum.Enum):
    """What an error means for the batch that raised it."""

    RETRY = "retry"  # transient: roll back and run the same batch again
    RECONNECT = "reconnect"  # the connection is gone: reconnect, re-read the checkpoint
    SHRINK = "shrink"  # statement timeout: run a smaller batch
    FATAL = "fatal"  # permanent: fail fast


_RETRY_STATES = {
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "55P03",  # lock_not_available (lock_timeout)
    "55006",  # object_in_use
}
_RECONNECT_STATES = {
    "57P01",  # admin_shutdown (also pg_terminate_backend)
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now (starting up, shutting down)
    "53300",  # too_many_connections
    "53400",  # configuration_limit_exceeded
    "25P03",  # idle_in_transaction_session_timeout killed the session
}


def classify(  # noqa: PLR0911 -- a classification table: each case returns its fault
    exc: BaseException, *, conn_closed: bool = False, ran_past_timeout: bool = False
) -> Fault:
    """Map an exception from a batch to what the worker should do about it.

    ``conn_closed`` tells whether the connection the error came from is closed;
    ``ran_past_timeout`` whether the batch ran at least its statement timeout (a 57014
    whose message is not in English is a statement timeout only then).
    """
    if isinstance(exc, asyncpg.PostgresError):
        state = exc.sqlstate or ""
        if state in _RETRY_STATES:
            return Fault.RETRY
        if state in _RECONNECT_STATES or state.startswith("08"):
            return Fault.RECONNECT
        if state == "57014":
            # A statement timeout shrinks the batch; an operator's pg_cancel_backend
            # ("canceling statement due to user request") stops rather than spins. The
            # message may be in the server's language (lc_messages): then only a batch that
            # ran as long as its statement timeout can have met it.
            text = str(exc)
            if "statement timeout" in text or ("user request" not in text and ran_past_timeout):
                return Fault.SHRINK
            return Fault.FATAL
        return Fault.FATAL
    if isinstance(exc, TimeoutError):
        # Before the OSError rule: on 3.11 TimeoutError is an OSError, and a timeout of
        # ours (connect timeout, a black-holed socket) means the connection is unusable.
        return Fault.RECONNECT
    if isinstance(exc, (OSError, ConnectionError)):
        return Fault.RECONNECT
    if isinstance(exc, (asyncpg.InterfaceError, asyncpg.InternalClientError)):
        # asyncpg raises InterfaceError for misuse (fatal) and for a closed connection, and
        # now and then InternalClientError ("cannot switch to state …") on the next query
        # after its backend was terminated: the connection tells which. A migration's own
        # errors stay fatal either way.
        return Fault.RECONNECT if conn_closed else Fault.FATAL
    return Fault.FATAL


def is_transient(exc: BaseException) -> bool:
    return classify(exc) is not Fault.FATAL


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: exponential backoff with jitter, bounded by attempts and time."""

    attempts: int = 12
    max_seconds: float = 600.0
    initial_wait: float = 0.1
    max_wait: float = 10.0

    def retrying(
        self,
        retry_on: Callable[[BaseException], bool] = is_transient,
        before_sleep: Callable[[RetryCallState], Awaitable[None] | None] | None = None,
    ) -> AsyncRetrying:
        return AsyncRetrying(
            retry=retry_if_exception(retry_on),
            # Exponential backoff plus jitter, spelled the way every tenacity since 8 accepts
            # (wait_exponential_jitter's `initial` is deprecated in 9.2, absent before).
            wait=wait_exponential(multiplier=self.initial_wait, max=self.max_wait)
            + wait_random(0, self.initial_wait),
            stop=stop_after_attempt(self.attempts) | stop_after_delay(self.max_seconds),
            sleep=anyio.sleep,
            before_sleep=before_sleep,
            reraise=True,
        )


class Faults:
    """Classifies each error of one retry loop where the connection it came from is at
    hand, and answers the loop's retry predicate, which sees only the exception (an
    InterfaceError is transient only if its connection closed; a statement timeout is told
    apart from a cancel by how long the batch ran)."""

    def __init__(self, fatal: tuple[type[BaseException], ...] = ()) -> None:
        self._fatal = fatal
        self._last: tuple[BaseException, Fault] | None = None

    def tag(
        self, exc: BaseException, *, conn_closed: bool, ran_past_timeout: bool = False
    ) -> Fault:
        fault = classify(exc, conn_closed=conn_closed, ran_past_timeout=ran_past_timeout)
        self._last = (exc, fault)
        return fault

    def retryable(self, exc: BaseException) -> bool:
        if isinstance(exc, self._fatal):
            return False
        if self._last is not None and self._last[0] is exc:
            return self._last[1] is not Fault.FATAL
        return is_transient(exc)
