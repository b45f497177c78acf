"""What cryptopi_batch replaces: the single UPDATE, a hand-written keyset loop, the naive loop.

Each opens its connection before the clock starts (it times the work, not the connect),
and returns the seconds and, for the loops, one `BatchTiming` per batch. Imports asyncpg
alone: the keyset loop's script (`keyset_script`) starts as a user's own script would.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import asyncpg

TABLE = "matrices.dyn_values"
BATCH = 10_000

SINGLE = f"UPDATE {TABLE} SET confidence = 1.0 WHERE confidence IS NULL"

# The n-th key after the cursor: an index range scan of n entries. Aliased so ORDER BY
# sorts by the key column itself (REFERENCE: `id::text … ORDER BY id` sorts by the text).
_NEXT_UPPER = f"SELECT t.id AS upper FROM {TABLE} t WHERE t.id > $1 ORDER BY t.id OFFSET $2 LIMIT 1"
_KEYSET = f"UPDATE {TABLE} SET confidence = 1.0 WHERE id > $1 AND id <= $2 AND confidence IS NULL"
_CHECKPOINT_TABLE = """
CREATE TABLE IF NOT EXISTS bench_checkpoint (
    name text PRIMARY KEY, last_id bigint NOT NULL, rows bigint NOT NULL,
    batches integer NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())
"""
# RETURNING the WAL insert position costs nothing extra (same round trip) and tells which
# batches crossed into a new WAL segment.
_CHECKPOINT = (
    "UPDATE bench_checkpoint SET last_id = $2, rows = rows + $3,"
    " batches = batches + 1, updated_at = now() WHERE name = $1"
    " RETURNING pg_current_wal_insert_lsn()::text"
)

NAIVE = (
    f"UPDATE {TABLE} SET confidence = 1.0 WHERE id IN"
    f" (SELECT id FROM {TABLE} WHERE confidence IS NULL LIMIT {BATCH})"
)


@dataclass
class BatchTiming:
    """Monotonic seconds: the batch began, its boundary was found, its UPDATE ended, it
    committed."""

    began: float
    looked_up: float
    worked: float
    committed: float
    rows: int
    wal: int | None = None  # WAL insert position at the checkpoint (keyset loop)


@dataclass
class PhaseRun:
    seconds: float
    rows: int
    batches: list[BatchTiming] = field(default_factory=list)
    start: float = 0.0  # monotonic, for the writer's window
    end: float = 0.0
    extra: dict[str, object] = field(default_factory=dict)


def lsn_int(lsn: str) -> int:
    high, low = lsn.split("/")
    return (int(high, 16) << 32) + int(low, 16)


def _rows(status: str) -> int:
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


async def single_update(dsn: str) -> PhaseRun:
    conn = await asyncpg.connect(dsn)
    try:
        start = time.monotonic()
        rows = _rows(await conn.execute(SINGLE))
        end = time.monotonic()
    finally:
        await conn.close()
    return PhaseRun(end - start, rows, start=start, end=end)


async def keyset_loop(dsn: str) -> PhaseRun:
    """10k keys a batch; the boundary lookup, the UPDATE and the checkpoint row's UPDATE
    in one transaction, so a crash never loses or repeats a batch."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(_CHECKPOINT_TABLE)
        await conn.execute(
            "INSERT INTO bench_checkpoint (name, last_id, rows, batches)"
            " VALUES ('backfill', 0, 0, 0)"
        )
        start = time.monotonic()
        end_key = await conn.fetchval(f"SELECT max(id) FROM {TABLE}")
        lower = await conn.fetchval(
            "SELECT last_id FROM bench_checkpoint WHERE name = $1", "backfill"
        )
        batches: list[BatchTiming] = []
        total = 0
        while end_key is not None and lower < end_key:
            began = time.monotonic()
            async with conn.transaction():
                upper = await conn.fetchval(_NEXT_UPPER, lower, BATCH - 1)
                if upper is None:
                    upper = end_key
                looked_up = time.monotonic()
                rows = _rows(await conn.execute(_KEYSET, lower, upper))
                worked = time.monotonic()
                lsn = await conn.fetchval(_CHECKPOINT, "backfill", upper, rows)
            committed = time.monotonic()
            batches.append(BatchTiming(began, looked_up, worked, committed, rows, lsn_int(lsn)))
            total += rows
            lower = upper
        end = time.monotonic()
    finally:
        await conn.close()
    return PhaseRun(end - start, total, batches, start=start, end=end)


async def naive_loop(dsn: str) -> PhaseRun:
    """``WHERE id IN (SELECT … WHERE confidence IS NULL LIMIT n)`` until nothing changes:
    every batch scans past all the rows earlier batches already did."""
    conn = await asyncpg.connect(dsn)
    try:
        start = time.monotonic()
        batches: list[BatchTiming] = []
        total = 0
        while True:
            began = time.monotonic()
            rows = _rows(await conn.execute(NAIVE))
            done = time.monotonic()
            if rows == 0:
                break
            batches.append(BatchTiming(began, began, done, done, rows))
            total += rows
        end = time.monotonic()
    finally:
        await conn.close()
    return PhaseRun(end - start, total, batches, start=start, end=end)
