"""One immutable settings object for a run, made of small policies.

Precedence: command-line option, else what the migration declares, else (for the window
and its zone) the project's ``[tool.cryptopi_batch]`` in pyproject.toml, else the default
here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from .db import pg_interval
from .errors import UsageError
from .migration import Backfill
from .retry import RetryPolicy
from .transactions import set_local

if TYPE_CHECKING:
    from .schedule import Window

T = TypeVar("T")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|min|m|h)?\s*$")
_UNIT = {None: 1.0, "ms": 0.001, "s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0}


# PostgreSQL takes a timeout in milliseconds as a 32-bit integer (~24.8 days).
MAX_TIMEOUT = 2_147_483.647
# ops.backfills.batch_size and ops.backfill_batches' counts are integers.
MAX_BATCH_SIZE = 2_147_483_647


def parse_duration(
    value: str | float | None, what: str, most: float = float("inf")
) -> float | None:
    """Seconds from ``2.5``, ``"500ms"``, ``"30s"``, ``"5min"`` or ``"2h"``; at most
    ``most``."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNIT[m.group(2)]
    else:
        raise UsageError(f"{what}: not a duration: {value!r} (try 500ms, 30s, 5min, 2h)")
    if not 0 <= seconds < float("inf"):
        raise UsageError(f"{what} must be a finite duration, not negative")
    if seconds > most:
        raise UsageError(f"{what} must be at most {most:g} s, not {value!r}")
    return seconds


def _count(value: object, what: str, most: int) -> int:
    """A whole number from 1 to ``most``."""
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= most:
        raise UsageError(f"{what} must be a whole number from 1 to {most:,}, not {value!r}")
    return value


@dataclass(frozen=True)
class ThrottlePolicy:
    """Pacing between batches and the batch size's bounds."""

    max_rows_per_second: float | None = None
    sleep: float = 0.0
    target_batch_seconds: float | None = None
    min_batch_size: int = 10
    max_batch_size: int = 1_000_000


@dataclass(frozen=True)
class TimeoutPolicy:
    """Set for each batch's transaction only (``set_config(…, true)``)."""

    lock_timeout: float = 2.0
    statement_timeout: float = 30.0
    # Off: a batch's commit does not wait for its WAL to reach disk. A server crash can
    # lose the last batches' commits, but each with its own checkpoint, so `run` redoes
    # them; the run's own completion (and a stop) commits synchronously, making every
    # batch before it durable. See docs/design.md.
    synchronous_commit: bool = False

    def local(self, *, statement: bool = True, **more: str) -> str:
        """``SET LOCAL`` statements for one transaction: the lock timeout, the statement
        timeout unless ``statement`` is false (a first start may count a whole table), and
        ``more`` settings."""
        timeouts = {"lock_timeout": pg_interval(self.lock_timeout)}
        if statement:
            timeouts["statement_timeout"] = pg_interval(self.statement_timeout)
        return set_local(**timeouts, **more)


@dataclass(frozen=True)
class HealthLimits:
    """The health gates' limits (see docs/operating.md for why these defaults) and the WAL
    budget. Resolved by :func:`limits.resolve_health`."""

    max_replica_lag: float = 10.0
    replica_dsns: tuple[str, ...] = ()
    max_transaction_age: float = 1800.0
    max_blocking: float = 1.0
    max_active_connections: int | None = None  # None: half the server's max_connections
    check: str | None = None
    checks: tuple[Any, ...] = ()  # the migration's async callables, each given a connection
    off: frozenset[str] = frozenset()  # gates switched off
    max_wal_rate: float | None = None  # bytes per second, for the whole migration


@dataclass(frozen=True)
class SchedulePolicy:
    """When batches may start: inside ``window`` (``None``: any time), and none that
    would end after ``until`` (an aware instant)."""

    window: Window | None = None
    exit_outside_window: bool = False  # outside the window: exit 3, not wait
    until: datetime | None = None


@dataclass(frozen=True)
class RunSettings:
    """Everything ``run`` needs besides the migration and the connection."""

    batch_size: int = 1_000
    workers: int = 1
    throttle: ThrottlePolicy = field(default_factory=ThrottlePolicy)
    timeouts: TimeoutPolicy = field(default_factory=TimeoutPolicy)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_duration: float | None = None
    schedule: SchedulePolicy = field(default_factory=SchedulePolicy)
    lease_seconds: float = 60.0
    force: bool = False
    restart: bool = False
    catch_up: bool = False
    yes: bool = False
    progress: bool = False
    health: HealthLimits = field(default_factory=HealthLimits)


@dataclass(frozen=True)
class RunOptions:
    """What the command line said; ``None`` means "not given"."""

    batch_size: int | None = None
    workers: int | None = None
    max_rows_per_second: float | None = None
    sleep: str | float | None = None
    target_batch_seconds: str | float | None = None
    lock_timeout: str | float | None = None
    statement_timeout: str | float | None = None
    synchronous_commit: bool | None = None
    max_duration: str | float | None = None
    window: str | None = None
    timezone: str | None = None
    exit_outside_window: bool = False
    until: str | None = None
    lease_seconds: float | None = None
    force: bool = False
    restart: bool = False
    catch_up: bool = False
    yes: bool = False
    progress: bool = False
    max_replica_lag: str | float | None = None
    replica_dsn: tuple[str, ...] = ()
    max_transaction_age: str | float | None = None
    max_blocking: str | float | None = None
    max_active_connections: int | None = None
    check: str | None = None
    no_gate: tuple[str, ...] = ()
    no_gates: bool = False
    max_wal_rate: str | float | None = None


def _pick(cli: T | None, declared: T) -> T:
    """The command line's value when given, else the migration's declaration."""
    return cli if cli is not None else declared


def _until(text: str) -> datetime:
    from .schedule import parse_until  # noqa: PLC0415 -- see _window

    return parse_until(text)


def _window(options: RunOptions, backfill: Backfill, project: Mapping[str, Any]) -> Window | None:
    """The window and its zone, each from the command line, else the migration, else the
    project; an error names where the bad value came from."""
    sources = (
        (options.window, options.timezone, "--window", "--timezone"),
        (backfill.window, backfill.timezone, "window=", "timezone="),
        (project.get("window"), project.get("timezone"), *_PROJECT),
    )
    spec = next(((value, what) for value, _, what, _ in sources if value is not None), None)
    zone = next(((value, what) for _, value, _, what in sources if value is not None), None)
    for value, what in (x for x in (spec, zone) if x is not None):
        if not isinstance(value, str):
            raise UsageError(f"{what} must be a string, not {value!r}")
    if spec is None and zone is None:
        return None
    # zoneinfo and the window grammar (~4 ms of imports) only for a run that has a window
    from .schedule import parse_window, zone_named  # noqa: PLC0415

    if zone is not None:
        zone_named(zone[0], zone[1])  # a bad zone is refused also without a window
    if spec is None:
        return None
    if zone is None:
        return parse_window(spec[0], None, spec[1])
    return parse_window(spec[0], zone[0], spec[1], zone[1])


_PROJECT = ("[tool.cryptopi_batch] window", "[tool.cryptopi_batch] timezone")


def resolve_settings(
    options: RunOptions, backfill: Backfill, project: Mapping[str, Any] | None = None
) -> RunSettings:
    """Merge the command line over the migration's declarations over the project's
    ``[tool.cryptopi_batch]`` (``project``: the window and its zone) over the defaults."""
    defaults = RunSettings()
    # Each value comes from the command line or the migration: the message names both.
    batch_size = _count(
        _pick(options.batch_size, backfill.batch_size),
        "--batch-size (or batch_size=)",
        MAX_BATCH_SIZE,
    )
    workers = _count(
        _pick(_pick(options.workers, backfill.workers), defaults.workers),
        "--workers (or workers=)",
        1_000,
    )
    rate = _pick(options.max_rows_per_second, backfill.max_rows_per_second)
    if rate is not None and (
        not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0 < rate < float("inf")
    ):
        raise UsageError(
            "--max-rows-per-second (or max_rows_per_second=) must be a positive"
            f" number, not {rate!r}"
        )
    sleep = parse_duration(_pick(options.sleep, backfill.sleep), "--sleep (or sleep=)") or 0.0
    target = parse_duration(
        _pick(options.target_batch_seconds, backfill.target_batch_seconds),
        "--target-batch-seconds (or target_batch_seconds=)",
    )
    lock = parse_duration(
        _pick(options.lock_timeout, backfill.lock_timeout),
        "--lock-timeout (or lock_timeout=)",
        MAX_TIMEOUT,
    )
    stmt = parse_duration(
        _pick(options.statement_timeout, backfill.statement_timeout),
        "--statement-timeout (or statement_timeout=)",
        MAX_TIMEOUT,
    )
    lease = _pick(options.lease_seconds, defaults.lease_seconds)
    if not 1 <= lease <= MAX_TIMEOUT:  # also each batch's idle_in_transaction_session_timeout
        raise UsageError(f"--lease-seconds must be from 1 to {MAX_TIMEOUT:g}")
    return RunSettings(
        batch_size=batch_size,
        workers=workers,
        throttle=ThrottlePolicy(
            max_rows_per_second=rate, sleep=sleep, target_batch_seconds=target or None
        ),
        timeouts=TimeoutPolicy(
            lock_timeout=defaults.timeouts.lock_timeout if lock is None else lock,
            statement_timeout=defaults.timeouts.statement_timeout if stmt is None else stmt,
            synchronous_commit=bool(
                _pick(
                    _pick(options.synchronous_commit, backfill.synchronous_commit),
                    defaults.timeouts.synchronous_commit,
                )
            ),
        ),
        max_duration=parse_duration(options.max_duration, "--max-duration"),
        schedule=SchedulePolicy(
            window=_window(options, backfill, project or {}),
            exit_outside_window=options.exit_outside_window,
            until=None if options.until is None else _until(options.until),
        ),
        lease_seconds=lease,
        force=options.force,
        restart=options.restart,
        catch_up=options.catch_up,
        yes=options.yes,
        progress=options.progress,
        health=_health(options, backfill),
    )


def _health(options: RunOptions, backfill: Backfill) -> HealthLimits:
    from .limits import resolve_health  # noqa: PLC0415 -- limits imports this module

    return resolve_health(options, backfill)
