"""The SQL over the migration's own table, built from its key: range bounds, and the claim
and checkpoint statements that hand the next range out as they find its bound.

The only module besides the store and the schema that writes SQL; every identifier is
quoted by :mod:`keys` and every value is a bound parameter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .keys import Bound, KeyRange

if TYPE_CHECKING:
    import asyncpg

    from .target import Target


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
        self.last = (
            f"SELECT {k.text_values('t')} FROM {target.quoted} t"
            f" ORDER BY {k.order_by('t', descending=True)} LIMIT 1"
        )
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

    async def last_key(self, conn: asyncpg.Connection) -> Bound | None:
        """The largest key now: the run's fixed upper end. One index probe."""
        row = await conn.fetchrow(self.last)
        return None if row is None else tuple(row[0])
