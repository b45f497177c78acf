"""The health gates' limits and the WAL budget, from the command line over the migration's
declarations over the defaults (see :class:`settings.HealthLimits` for the defaults)."""

from __future__ import annotations

import re
from typing import Any

from .db import InvalidDsn, parse_dsn
from .errors import UsageError
from .gates import GATE_NAMES
from .migration import Backfill
from .settings import HealthLimits, RunOptions, _pick, parse_duration

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|kB|KB|MB|GB|KiB|MiB|GiB)?\s*$")
_BYTES = {
    None: 1,
    "B": 1,
    "kB": 1000,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
}


def parse_size(value: str | float | None, what: str) -> float | None:
    """Bytes from ``20MB``, ``512kB``, ``1GiB`` or a number of bytes; more than 0."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        size = float(value)
    elif isinstance(value, str) and (m := _SIZE.match(value)):
        size = float(m.group(1)) * _BYTES[m.group(2)]
    else:
        raise UsageError(f"{what}: not a size: {value!r} (try 20MB, 512kB, 1GiB)")
    if not 0 < size < float("inf"):
        raise UsageError(f"{what} must be a size of more than 0 bytes, not {value!r}")
    return size


def gate_names(names: tuple[str, ...] | list[str], what: str) -> frozenset[str]:
    """Gate names as --no-gate takes them (``replica-lag`` or ``replica_lag``)."""
    found = set()
    for name in names:
        norm = str(name).strip().lower().replace("_", "-")
        if norm not in GATE_NAMES:
            raise UsageError(f"{what}: no gate {name!r} (the gates: {', '.join(GATE_NAMES)})")
        found.add(norm)
    return frozenset(found)


def resolve_health(options: RunOptions, backfill: Backfill) -> HealthLimits:
    """The command line's limits over the migration's over the defaults."""
    d = HealthLimits()

    def duration(cli: Any, declared: Any, option: str, default: float) -> float:
        value = parse_duration(_pick(cli, declared), option)
        return default if value is None else value

    connections = _pick(options.max_active_connections, backfill.max_active_connections)
    if connections is not None and (
        not isinstance(connections, int) or isinstance(connections, bool) or connections < 1
    ):
        raise UsageError(
            "--max-active-connections (or max_active_connections=) must be a whole number"
            f" from 1, not {connections!r}"
        )
    check = _pick(options.check, backfill.check)
    if check is not None and not str(check).strip():
        raise UsageError("--check (or check=) must be a query, not blank")
    off = gate_names(options.no_gate, "--no-gate") | gate_names(backfill.no_gate, "no_gate=")
    if options.no_gates:
        off = frozenset(GATE_NAMES)
    for dsn in options.replica_dsn:
        if not dsn.strip():
            raise UsageError("--replica-dsn: it is blank")
        try:
            parse_dsn(dsn)
        except InvalidDsn as exc:
            raise UsageError(f"--replica-dsn: {exc}") from None
    return HealthLimits(
        max_replica_lag=duration(
            options.max_replica_lag,
            backfill.max_replica_lag,
            "--max-replica-lag (or max_replica_lag=)",
            d.max_replica_lag,
        ),
        replica_dsns=tuple(options.replica_dsn),
        max_transaction_age=duration(
            options.max_transaction_age,
            backfill.max_transaction_age,
            "--max-transaction-age (or max_transaction_age=)",
            d.max_transaction_age,
        ),
        max_blocking=duration(
            options.max_blocking,
            backfill.max_blocking,
            "--max-blocking (or max_blocking=)",
            d.max_blocking,
        ),
        max_active_connections=connections,
        check=check,
        checks=tuple(backfill.checks),
        off=off,
        max_wal_rate=parse_size(
            _pick(options.max_wal_rate, backfill.max_wal_rate), "--max-wal-rate (or max_wal_rate=)"
        ),
    )
