"""The ops tables: claims, checkpoints, heartbeats and control state; and the loader of
``sql/queries.sql``'s named blocks (:func:`query`), which every module that talks to the ops
tables uses.

Static SQL lives in ``sql/queries.sql`` as named blocks; the few queries over the user's
table depend on its key and are built here from :mod:`keys`. Functions take a connection
and run in the caller's transaction unless they say otherwise. The ops schema itself is
:mod:`schema`'s; the user's table is inspected by :mod:`target`.
"""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg

from .db import pg_interval, transaction
from .keys import Bound, KeyRange, as_bound
from .planner import split_range
from .settings import TimeoutPolicy

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

    from .target import Target

_BLOCK = re.compile(r"^-- (\w+) --$", re.MULTILINE)


@functools.cache
def sql_dir() -> Traversable:
    """The package's SQL files: beside this module when installed as files (the usual
    case, without the ~3 ms of imports importlib.resources costs), else (a zip) through
    importlib.resources."""
    beside = Path(__file__).with_name("sql")
    if beside.is_dir():
        return beside
    from importlib import resources  # noqa: PLC0415 -- see above

    return resources.files("cryptopi_batch").joinpath("sql")


@functools.cache
def _queries() -> dict[str, str]:
    text = sql_dir().joinpath("queries.sql").read_text(encoding="utf-8")
    parts = _BLOCK.split(text)
    return {parts[i]: parts[i + 1].strip() for i in range(1, len(parts), 2)}


def query(name: str) -> str:
    """The named block of ``sql/queries.sql``."""
    return _queries()[name]


async def last_key(conn: asyncpg.Connection, target: Target) -> Bound | None:
    """The largest key now: the run's fixed upper end. One index probe."""
    k = target.key
    row = await conn.fetchrow(
        f"SELECT {k.text_values('t')} FROM {target.quoted} t"
        f" ORDER BY {k.order_by('t', descending=True)} LIMIT 1"
    )
    return None if row is None else tuple(row[0])


@dataclass(frozen=True)
class Claim:
    """A key range this runner owns until its lease lapses."""

    id: int
    range: KeyRange
    keys: int
    attempts: int

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Claim:
        return cls(
            row["id"],
            KeyRange(as_bound(row["lower_key"]), tuple(row["upper_key"])),
            int(row["keys"] or 0),
            int(row["attempts"]),
        )


class RangeQueries:
    """The queries over the user's table, built once per run: range bounds, and the claim
    and checkpoint statements that find the next range's bound as they hand it out."""

    def __init__(self, target: Target) -> None:
        self.target = target
        k = target.key
        w = k.width
        lower, upper = k.params(1), k.params(1 + w)
        self.nth_after = self._nth(lower, upper, f"${2 * w + 1}::bigint")
        self.nth_from_start = self._nth(None, k.params(1), f"${w + 1}::bigint")
        self.claim_next = self._handing_out(checkpoint=False)
        self.checkpoint = self._handing_out(checkpoint=True)

    def _nth(self, lower: str | None, upper: str, offset: str) -> str:
        """The key ``offset`` keys after ``lower``, no further than ``upper``: an index range
        scan of that many entries, never an OFFSET from the table's start. The key is turned
        into text outside the scan, once, not for each entry it skips (3x faster)."""
        k, t = self.target.key, self.target.quoted
        return (
            f"SELECT {k.text_values('s', raw=True)} FROM (SELECT {k.select_list('t')}"
            f" FROM {t} t WHERE {k.between(lower, upper, 't')}"
            f" ORDER BY {k.order_by('t')} OFFSET {offset} LIMIT 1) s"
        )

    def _count(self, lower: str | None, upper: str) -> str:
        k = self.target.key
        return f"SELECT count(*) FROM {self.target.quoted} t WHERE {k.between(lower, upper, 't')}"

    def _handing_out(self, *, checkpoint: bool) -> str:
        """One statement that hands out the range after the run's frontier, to the end or
        to the batch size's n-th key: it locks the run's row, finds the bound through the
        index, moves the frontier and inserts the claimed range. With ``checkpoint`` it
        first marks the caller's batch done and counts it (in the batch's own transaction),
        and claims only when asked to (``$8``) and the run is still running.

        Parameters without ``checkpoint``: $1 name, $2 token, $3 batch size, $4 lease
        seconds. With it: $1 batch id, $2 token, $3 rows, $4 duration ms, $5 attempts,
        $6 name, $7 next batch size, $8 claim the next range, $9 lease seconds, and a hint:
        $10 a frontier and $11 the n-th key after it for that size, found beforehand
        (NULLs: none; see :func:`look_ahead`); $12 and $13 the batch's upper and lower
        bounds (fencing on the range too: a claim lost with an asynchronous commit may see
        its id issued again, after a crash, to another range). Returns the
        run's status and the claimed range (NULLs when none was claimed); no row at all
        means nothing was claimed (without ``checkpoint``) or that the caller no longer
        owns its batch (with it).
        """
        k = self.target.key
        if checkpoint:
            name, token, size, lease = "$6", "$2", "$7::integer", "$9"
        else:
            name, token, size, lease = "$1", "$2", "$3::integer", "$4"

        def bound(array: str) -> str:
            return k.cast(k.elements(array))

        def either(when_null: str, otherwise: str, lower: str) -> str:
            return f"CASE WHEN {lower} IS NULL THEN ({when_null}) ELSE ({otherwise}) END"

        end = bound("c.end_key")
        nth = either(
            self._nth(None, end, f"{size} - 1"),
            self._nth(bound("c.frontier"), end, f"{size} - 1"),
            "c.frontier",
        )
        if checkpoint:
            # A bound looked up ahead, while the batch worked, from where the frontier was
            # expected to be ($10) for this very size: used only if the frontier is there.
            nth = f"CASE WHEN c.frontier = $10::text[] THEN $11::text[] ELSE {nth} END"
        # Counted only for the last range (fewer keys left than the batch size).
        count = either(
            self._count(None, bound("l.end_key")),
            self._count(bound("l.lower"), bound("l.end_key")),
            "l.lower",
        )
        done = counters = ""
        joined = "nxt n"
        if checkpoint:
            done = """b AS (
    UPDATE ops.backfill_batches
       SET status = 'done', rows = $3, duration_ms = $4, attempts = $5,
           finished_at = clock_timestamp(),
           lease_until = NULL, last_error = NULL
     WHERE id = $1 AND worker = $2 AND status = 'running'
       AND upper_key = $12::text[] AND lower_key IS NOT DISTINCT FROM $13::text[]
    RETURNING keys),
"""
            counters = """rows_processed = f.rows_processed + $3, keys_done = f.keys_done + b.keys,
           batches_done = f.batches_done + 1, batch_size = $7, updated_at = clock_timestamp(),
           last_error = CASE WHEN f.status = 'running' THEN NULL ELSE f.last_error END,
           waiting_reason = NULL,
           """
            joined = "b LEFT JOIN nxt n ON true"  # the counters move, claim or not
        return f"""WITH {done}cur AS (
    SELECT frontier, end_key, exhausted, status FROM ops.backfills
     WHERE name = {name}{" AND EXISTS (SELECT FROM b)" if checkpoint else ""} FOR UPDATE),
look AS MATERIALIZED (
    SELECT c.frontier AS lower, c.end_key, {nth} AS nth
      FROM cur c
     WHERE {"$8 AND " if checkpoint else ""}c.status = 'running' AND NOT c.exhausted),
nxt AS (
    SELECT l.lower, COALESCE(l.nth, l.end_key) AS upper,
           l.nth IS NULL OR l.nth = l.end_key AS last,
           CASE WHEN l.nth IS NULL THEN {count} ELSE {size} END AS keys
      FROM look l),
f AS (
    UPDATE ops.backfills f
       SET {counters}frontier = COALESCE(n.upper, f.frontier),
           exhausted = f.exhausted OR COALESCE(n.last, false)
      FROM {joined}
     WHERE f.name = {name}
    RETURNING f.status),
ins AS (
    INSERT INTO ops.backfill_batches (backfill, lower_key, upper_key, keys, status, worker,
                                      claimed_at, lease_until)
    SELECT {name}, lower, upper, keys, 'running', {token}, now(),
           now() + make_interval(secs => {lease})
      FROM nxt
    RETURNING id, lower_key, upper_key, keys, attempts)
SELECT f.status, i.id, i.lower_key, i.upper_key, i.keys, i.attempts
  FROM f LEFT JOIN ins i ON true"""

    async def nth(self, conn: asyncpg.Connection, rng: KeyRange, n: int) -> Bound | None:
        """The ``n``-th key in ``rng`` (1-based), or ``None`` if it holds fewer keys."""
        sql = self.nth_after if rng.lower is not None else self.nth_from_start
        row = await conn.fetchrow(sql, *rng.params(), n - 1)
        return None if row is None else tuple(row[0])


# --- claims -------------------------------------------------------------------------

_CLAIM_SETTINGS = (
    "SELECT pg_backend_pid() AS pid, now() AS xact_start,"
    " set_config('synchronous_commit', 'off', true),"
    " set_config('lock_timeout', $1, true),"
    " set_config('statement_timeout', $2, true)"
)


async def claim(
    conn: asyncpg.Connection,
    name: str,
    token: uuid.UUID,
    lease: float,
    ranges: RangeQueries,
    *,
    size: int,
    timeouts: TimeoutPolicy,
    on_begin: Callable[[int, Any], None] | None = None,
    on_claim: Callable[[int], None] | None = None,
) -> Claim | None:
    """Claim the next range: an open one (a split's remainder, a lapsed lease) first,
    else a new one of ``size`` keys from the frontier. ``None`` when nothing is left to
    hand out.

    Runs its own transaction with ``synchronous_commit`` off: a claim lost in a crash is
    harmless (its range is simply claimed again), and WAL order guarantees no batch commit
    survives without the claim before it. The batch's lock and statement timeouts apply:
    the run's row is locked here, and batches' checkpoints wait on it.
    ``on_begin(pid, xact_start)`` learns the server transaction the claim runs in, and
    ``on_claim(id)`` the claimed range's id before the claim commits.
    """
    async with conn.transaction():
        session = await conn.fetchrow(
            _CLAIM_SETTINGS,
            pg_interval(timeouts.lock_timeout),
            pg_interval(timeouts.statement_timeout),
        )
        if on_begin is not None and session is not None:
            on_begin(session["pid"], session["xact_start"])
        row = await conn.fetchrow(query("claim_open"), name, token, lease)
        if row is None:
            row = await conn.fetchrow(ranges.claim_next, name, token, size, lease)
        if row is None:
            return None
        if on_claim is not None:
            on_claim(row["id"])
        return Claim.from_row(row)


async def split(
    conn: asyncpg.Connection,
    c: Claim,
    token: uuid.UUID,
    size: int,
    ranges: RangeQueries,
    *,
    timeouts: TimeoutPolicy,
) -> Claim:
    """Cut claim ``c`` to its first ``size`` keys; the rest becomes a pending range that
    any worker may claim. Returns the smaller claim (``c`` itself if it cannot be cut).

    One short transaction under the batch's lock and statement timeouts: finding the cut
    reads the user's table, which must never queue long behind DDL."""
    if size >= c.keys:
        return c
    # synchronous_commit off, as for a claim: a cut lost in a crash is made again.
    async with transaction(conn, timeouts.local(synchronous_commit="off")):
        halves = split_range(c.range, await ranges.nth(conn, c.range, size))
        if halves is None:
            return c
        head, tail = halves
        await conn.fetchval(
            query("split_batch"), c.id, token, list(head.upper), size, list(tail.upper), c.keys
        )  # tail.upper: c's own (fencing)
    return Claim(c.id, head, size, c.attempts)


async def look_ahead(
    conn: asyncpg.Connection, ranges: RangeQueries, rng: KeyRange, n: int, timeouts: TimeoutPolicy
) -> Bound | None:
    """The ``n``-th key in ``rng``, read in a short transaction of its own under the batch's
    lock and statement timeouts (it must never queue behind DDL): a worker asks for the
    next range's bound on another connection while its batch works, and hands it to
    :func:`checkpoint`, which then skips the index scan if the frontier is where it was
    expected. The run's row is not read or locked here."""
    async with transaction(conn, timeouts.local()):
        return await ranges.nth(conn, rng, n)


async def checkpoint(
    conn: asyncpg.Connection,
    c: Claim,
    token: uuid.UUID,
    *,
    name: str,
    rows: int,
    seconds: float,
    attempts: int,
    batch_size: int,
    claim_next: bool,
    lease: float,
    ranges: RangeQueries,
    hint: tuple[Bound, Bound] | None = None,
) -> tuple[str, Claim | None] | None:
    """Mark ``c`` done and count it, in the caller's (the batch's) transaction, and, if
    ``claim_next``, claim the next ``batch_size`` keys from the frontier in the same
    statement: the claim costs no transaction of its own and commits or vanishes with the
    batch. Returns the run's status and the new claim (``None`` when the run is not
    running or the frontier reached the end), or ``None`` when this runner no longer owns
    ``c`` (the caller rolls the batch back). ``hint``: a frontier and the ``batch_size``-th
    key after it, from :func:`look_ahead`.
    """
    after, nth = (None, None) if hint is None else (list(hint[0]), list(hint[1]))
    lower = None if c.range.lower is None else list(c.range.lower)
    row = await conn.fetchrow(
        ranges.checkpoint,
        c.id,
        token,
        rows,
        seconds * 1000.0,
        attempts,
        name,
        batch_size,
        claim_next,
        lease,
        after,
        nth,
        list(c.range.upper),
        lower,
    )
    if row is None:
        return None
    return row["status"], None if row["id"] is None else Claim.from_row(row)


async def fetch(conn: asyncpg.Connection, name: str, *args: Any) -> list[asyncpg.Record]:
    return await conn.fetch(query(name), *args)
