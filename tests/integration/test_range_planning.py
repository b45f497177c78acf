"""Property tests of key-range planning on a real server, through the statements that plan.

The next range is planned in SQL: ``RangeQueries.claim_next`` (run by ``RunStore.claim`` when no
open range is left) and ``RangeQueries.checkpoint`` (a batch marked done, and the next range
claimed in the same statement) lock the run's row, find the batch size's n-th key after the
frontier through the index (or the run's fixed end, with a count of the keys left), move the
frontier, set ``exhausted`` and insert the claimed range. ``RunStore.split`` cuts a claim after
its n-th key; the remainder is a pending range the next ``RunStore.claim`` takes first.

Each key kind has a real table with a unique index (sparse bigint with its extremes, dense
small integers around zero, uuid, composite (integer, text), text under the database's
collation and under a linguistic one); hypothesis draws the keys, the run's end (any key),
its checkpoint (none, or any key up to the end) and the calls: claims with a batch size
changing at every step, splits, batches marked done or checkpointed (claiming the next range
or not), leases left to lapse, several claims held at once. The model checks every range as
it is handed out against the keys in the database's index order; at the end the database
itself is asked, with the key's own comparison (type and collation), whether each key after
the checkpoint up to the end lies in exactly one handed-out range and no other key in any.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cryptopi_batch import schema, sqlfiles, store
from cryptopi_batch.keys import Bound, KeyRange, as_bound
from cryptopi_batch.keysql import RangeQueries
from cryptopi_batch.settings import TimeoutPolicy
from cryptopi_batch.store import RunStore
from cryptopi_batch.target import inspect_target

pytestmark = pytest.mark.anyio

NAME = "20260101_0000_plan"
LEASE = 60.0
SIZES = st.one_of(st.integers(1, 4), st.integers(1, 12))

# Text keys: a small alphabet where case, punctuation, digits and accents collide often under
# a linguistic collation, and any other character PostgreSQL's text holds (no NUL).
_common = st.sampled_from("aAbBzZeE-_ .,'019éÉ")
_chars = st.one_of(_common, st.characters(codec="utf-8", exclude_characters="\x00"))
# Under a libc linguistic collation, printable Latin-1 only: glibc's rules for other scripts
# and control characters are not what this test is about.
_latin = st.one_of(_common, st.characters(codec="latin-1", exclude_categories=("Cc",)))


def _texts(max_size: int, chars: st.SearchStrategy[str] = _chars) -> st.SearchStrategy[str]:
    return st.text(chars, max_size=max_size)


_INT64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class Kind:
    """A key shape: its table, how to draw its keys, and how SQL compares them."""

    table: str
    columns: tuple[tuple[str, str], ...]  # (name, type) in index order
    ddl: str
    key: st.SearchStrategy[Any]  # one key value (unused with a universe)
    max_keys: int = 60
    special: tuple[Any, ...] = ()  # values a drawn set of keys often includes
    universe: tuple[Any, ...] = ()  # when set, every key is one of these (a dense kind)
    record: Callable[[Any], tuple[Any, ...]] = lambda v: (v,)
    needs_collation: str | None = None

    def row(self) -> str:
        cols = [f"t.{c}" for c, _ in self.columns]
        return cols[0] if len(cols) == 1 else "(" + ", ".join(cols) + ")"

    def value(self, array: str) -> str:
        """The key value held in the ``text[]`` expression ``array``, cast to its type
        (written here, not taken from keys.py: the oracle must not share the product's
        rendering)."""
        cols = [f"({array})[{i + 1}]::{ty}" for i, (_, ty) in enumerate(self.columns)]
        return cols[0] if len(cols) == 1 else "(" + ", ".join(cols) + ")"

    def inside(self, lower: str, upper: str) -> str:
        """``lower < key <= upper`` for ``text[]`` bounds (lower NULL: from the start)."""
        row = self.row()
        return f"({lower} IS NULL OR {row} > {self.value(lower)}) AND {row} <= {self.value(upper)}"

    def text_values(self) -> str:
        return "ARRAY[" + ", ".join(f"t.{c}::text" for c, _ in self.columns) + "]"

    def order_by(self) -> str:
        return ", ".join(f"t.{c}" for c, _ in self.columns)


KINDS = {
    # Sparse over the whole bigint range, extremes included.
    "sparse_bigint": Kind(
        "plan_sparse",
        (("k", "bigint"),),
        "CREATE TABLE plan_sparse (k bigint PRIMARY KEY)",
        st.integers(*_INT64),
        special=(*_INT64, _INT64[0] + 1, _INT64[1] - 1, -1, 0, 1),
    ),
    # Small, dense, around zero: "-1" < "-10" as text, not as integers.
    "dense_negative": Kind(
        "plan_dense",
        (("k", "integer"),),
        "CREATE TABLE plan_dense (k integer PRIMARY KEY)",
        st.nothing(),
        max_keys=36,
        universe=tuple(range(-30, 6)),
    ),
    "uuid": Kind(
        "plan_uuid", (("k", "uuid"),), "CREATE TABLE plan_uuid (k uuid PRIMARY KEY)", st.uuids()
    ),
    # Two columns compared as a row, through a unique index (not a primary key).
    "composite": Kind(
        "plan_composite",
        (("a", "integer"), ("b", "text")),
        "CREATE TABLE plan_composite (a integer NOT NULL, b text NOT NULL);"
        " CREATE UNIQUE INDEX plan_composite_ab ON plan_composite (a, b)",
        st.tuples(st.integers(-5, 5), _texts(3)),
        record=lambda v: v,
    ),
    # Text under the database's own collation.
    "text": Kind(
        "plan_text", (("k", "text"),), "CREATE TABLE plan_text (k text PRIMARY KEY)", _texts(6)
    ),
    # Text under a linguistic collation (glibc's en_US), when the server has it: "-a" < "a"
    # < "a-" < "A" < "b", unlike the code point order of Python's strings or a C collation.
    "text_linguistic": Kind(
        "plan_text_en",
        (("k", "text"),),
        'CREATE TABLE plan_text_en (k text COLLATE "en_US" PRIMARY KEY)',
        _texts(6, _latin),
        needs_collation="en_US",
    ),
}


@dataclass(frozen=True)
class Index:
    """The table's keys as text-form bounds, in the index's (the database's) order."""

    bounds: tuple[Bound, ...]

    def position(self, bound: Bound | None) -> int:
        """The position of ``bound``; -1 for ``None`` (before the first key)."""
        return -1 if bound is None else self.bounds.index(bound)

    def keys_in(self, lower: Bound | None, upper: Bound) -> tuple[Bound, ...]:
        return self.bounds[self.position(lower) + 1 : self.position(upper) + 1]


@dataclass
class Plan:
    """What the database should hold, as the test drives it."""

    index: Index
    checkpoint: Bound | None
    end: Bound
    frontier: Bound | None
    exhausted: bool = False
    held: dict[int, store.Claim] = field(default_factory=dict)  # running, ours, live lease
    open: dict[int, store.Claim] = field(default_factory=dict)  # pending or lapsed
    handed: dict[int, KeyRange] = field(default_factory=dict)  # every range, as it is now
    checkpointed: dict[int, int] = field(default_factory=dict)  # id -> keys, done that way


@dataclass(frozen=True)
class Context:
    conn: asyncpg.Connection
    kind: Kind
    ranges: RangeQueries
    token: uuid.UUID

    @property
    def store(self) -> RunStore:
        return RunStore(NAME, self.token, self.ranges, LEASE)


async def _setup(
    conn: asyncpg.Connection, kind: Kind, values: Any, end_at: int, checkpoint_at: int | None
) -> tuple[Context, Plan]:
    """The kind's table holding exactly ``values``, and the run's row as a start (or a
    resume from the checkpoint) writes it."""
    await schema.ensure_schema(conn)
    if await conn.fetchval("SELECT to_regclass($1) IS NULL", kind.table):
        await conn.execute(kind.ddl)
    await conn.execute(f"TRUNCATE {kind.table}")
    await conn.copy_records_to_table(kind.table, records=[kind.record(v) for v in values])
    rows = await conn.fetch(
        f"SELECT {kind.text_values()} FROM {kind.table} t ORDER BY {kind.order_by()}"
    )
    index = Index(tuple(tuple(r[0]) for r in rows))
    assert len(index.bounds) == len(values)
    end = index.bounds[end_at]
    checkpoint = None if checkpoint_at is None else index.bounds[checkpoint_at]

    target = await inspect_target(conn, kind.table, tuple(c for c, _ in kind.columns))
    await conn.execute("DELETE FROM ops.backfills WHERE name = $1", NAME)  # and its batches
    await conn.execute(
        sqlfiles.query("insert_backfill"),
        NAME,
        f"{NAME}.py",
        target.table,
        list(target.key.names),
        [c.type for c in target.key.columns],
        list(end),
        5,
        len(index.bounds),
        "checksum",
        "up",
    )
    if checkpoint is not None:
        await conn.execute(
            "UPDATE ops.backfills SET frontier = $2 WHERE name = $1", NAME, list(checkpoint)
        )
    ctx = Context(conn, kind, RangeQueries(target), uuid.uuid4())
    return ctx, Plan(index, checkpoint, end, frontier=checkpoint)


async def _from_frontier(ctx: Context, plan: Plan, c: store.Claim, size: int) -> None:
    """``c`` was planned from the frontier with ``size``: it starts at the frontier and holds
    the next ``size`` keys, or every key left up to the end (then it is the last)."""
    assert not plan.exhausted, f"a range was handed out after the end: {c}"
    assert c.id not in plan.handed, f"range {c.id} handed out again from the frontier"
    assert c.range.lower == plan.frontier, (c.range, plan.frontier)
    left = plan.index.keys_in(plan.frontier, plan.end)
    if len(left) > size:
        assert c.range.upper == left[size - 1], (c.range, size)
        assert c.keys == size, (c, size)
    else:
        assert c.range.upper == plan.end, (c.range, size, left)
        assert c.keys == len(left), (c, left)
    # No batch is wasted on an empty range, unless the checkpoint already is the end.
    assert left or (plan.frontier == plan.checkpoint == plan.end), c
    assert c.attempts == 0
    plan.frontier = c.range.upper
    plan.exhausted = c.range.upper == plan.end
    plan.handed[c.id] = c.range
    plan.held[c.id] = c
    row = await ctx.conn.fetchrow(
        "SELECT frontier, exhausted FROM ops.backfills WHERE name = $1", NAME
    )
    assert row is not None
    assert (as_bound(row["frontier"]), row["exhausted"]) == (plan.frontier, plan.exhausted)


async def _claim(ctx: Context, plan: Plan, size: int) -> store.Claim | None:
    c = await ctx.store.claim(ctx.conn, size=size, timeouts=TimeoutPolicy())
    if plan.open:
        # An open range (a split's remainder, a lapsed lease) is taken before the frontier.
        assert c is not None, "an open range was left behind"
        assert c.id in plan.open, (c, plan.open)
        was = plan.open.pop(c.id)
        assert (c.range, c.keys) == (was.range, was.keys), (c, was)
        plan.held[c.id] = c
    elif plan.exhausted:
        assert c is None, f"a range was handed out after the end: {c}"
    else:
        assert c is not None, "the frontier stopped before the end"
        await _from_frontier(ctx, plan, c, size)
    return c


async def _split(ctx: Context, plan: Plan, c: store.Claim, size: int) -> None:
    head = await ctx.store.split(ctx.conn, c, size, timeouts=TimeoutPolicy())
    keys = plan.index.keys_in(c.range.lower, c.range.upper)
    assert len(keys) == c.keys, (c, keys)
    new = await ctx.conn.fetch(
        "SELECT id, lower_key, upper_key, keys, attempts FROM ops.backfill_batches"
        " WHERE backfill = $1 AND id <> ALL($2::bigint[])",
        NAME,
        list(plan.handed),
    )
    if size >= c.keys:
        assert head == c
        assert not new, [dict(r) for r in new]
        return
    assert head.range == KeyRange(c.range.lower, keys[size - 1]), (c, size, head)
    assert (head.id, head.keys) == (c.id, size)
    assert len(new) == 1, [dict(r) for r in new]
    tail = store.Claim.from_row(new[0])
    assert tail.range == KeyRange(head.range.upper, c.range.upper), (c, tail)
    assert tail.keys == c.keys - size
    plan.held[c.id] = head
    plan.handed[c.id] = head.range
    plan.handed[tail.id] = tail.range
    plan.open[tail.id] = tail


async def _mark_done(ctx: Context, plan: Plan, c: store.Claim) -> None:
    await ctx.conn.execute(
        "UPDATE ops.backfill_batches SET status = 'done', worker = NULL,"
        " lease_until = NULL WHERE id = $1",
        c.id,
    )
    del plan.held[c.id]


async def _checkpoint(
    ctx: Context, plan: Plan, c: store.Claim, size: int, claim_next: bool
) -> None:
    """``c`` done through the checkpoint statement, which also claims the next ``size``
    keys from the frontier when asked to, open ranges or not; for every other range with
    the bound looked up beforehand, as a worker does while its batch runs."""
    hint = None
    if c.id % 2 and plan.frontier is not None and not plan.exhausted:
        bound = await ctx.store.look_ahead(
            ctx.conn, KeyRange(plan.frontier, plan.end), size, TimeoutPolicy()
        )
        hint = None if bound is None else (plan.frontier, bound)
    async with ctx.conn.transaction():
        settled = await ctx.store.checkpoint(
            ctx.conn,
            c,
            rows=c.keys,
            seconds=0.001,
            attempts=1,
            batch_size=size,
            claim_next=claim_next,
            hint=hint,
        )
    assert settled is not None, "the checkpoint lost a batch it owns"
    status, nxt = settled.state, settled.next
    assert status == "running"
    del plan.held[c.id]
    plan.checkpointed[c.id] = c.keys
    if claim_next and not plan.exhausted:
        assert nxt is not None, "the frontier stopped before the end"
        await _from_frontier(ctx, plan, nxt, size)
    else:
        assert nxt is None, f"a range was handed out after the end, or unasked: {nxt}"


async def _lapse(ctx: Context, plan: Plan, c: store.Claim) -> None:
    """Its runner died: the lease lapses, and the range is open to a claim again."""
    await ctx.conn.execute(
        "UPDATE ops.backfill_batches SET lease_until = now() - interval '1 second' WHERE id = $1",
        c.id,
    )
    del plan.held[c.id]
    plan.open[c.id] = c


@dataclass(frozen=True)
class Step:
    """One drawn call: a claim, or something done to a held claim (picked by ``which``,
    modulo the number held; a claim when none is held)."""

    action: str
    size: int
    which: int
    claim_next: bool


steps = st.builds(
    Step,
    st.sampled_from(["claim", "claim", "split", "done", "checkpoint", "checkpoint", "lapse"]),
    SIZES,
    st.integers(0, 100),
    st.booleans(),
)


async def _drive(ctx: Context, plan: Plan, script: list[Step], drain: list[int]) -> None:
    """The drawn calls, then, to be sure of the end, every held range done and claims
    (of the ``drain`` sizes in turn) until nothing is left: each frontier claim holds a
    key, so that ends unless planning is broken."""
    for step in script:
        held = sorted(plan.held)
        if step.action == "claim" or not held:
            await _claim(ctx, plan, step.size)
            continue
        c = plan.held[held[step.which % len(held)]]
        if step.action == "split":
            await _split(ctx, plan, c, step.size)
        elif step.action == "done":
            await _mark_done(ctx, plan, c)
        elif step.action == "checkpoint":
            await _checkpoint(ctx, plan, c, step.size, step.claim_next)
        else:
            await _lapse(ctx, plan, c)
    for c in list(plan.held.values()):
        await _mark_done(ctx, plan, c)
    for i in range(len(plan.index.bounds) + len(plan.open) + 2):
        c = await _claim(ctx, plan, drain[i % len(drain)])
        if c is None:
            return
        await _mark_done(ctx, plan, c)
    raise AssertionError(f"claims never ran out: {len(plan.handed)} ranges handed out")


async def _assert_database(ctx: Context, plan: Plan) -> None:
    conn, kind = ctx.conn, ctx.kind
    f = await conn.fetchrow("SELECT * FROM ops.backfills WHERE name = $1", NAME)
    assert f is not None
    assert f["exhausted"], "every range handed out, yet not exhausted"
    assert as_bound(f["frontier"]) == plan.end
    assert f["keys_done"] == sum(plan.checkpointed.values())
    assert f["batches_done"] == len(plan.checkpointed)

    batches = await conn.fetch(
        f"SELECT b.id, b.lower_key, b.upper_key, b.keys, b.status,"
        f" (SELECT count(*) FROM {kind.table} t"
        f"   WHERE {kind.inside('b.lower_key', 'b.upper_key')}) AS actual"
        f" FROM ops.backfill_batches b WHERE b.backfill = $1",
        NAME,
    )
    assert {
        b["id"]: KeyRange(as_bound(b["lower_key"]), tuple(b["upper_key"])) for b in batches
    } == plan.handed
    assert all(b["status"] == "done" for b in batches), [dict(b) for b in batches]
    # Each range's keys as claimed (or as cut by a split) are the keys it holds.
    wrong = [dict(b) for b in batches if b["keys"] != b["actual"]]
    assert not wrong, wrong
    if plan.checkpoint == plan.end:
        # Nothing was left: one empty range, the last, and nothing else.
        assert [(b["lower_key"], b["upper_key"], b["actual"]) for b in batches] == [
            (list(plan.end), list(plan.end), 0)
        ]
    else:
        empty = [dict(b) for b in batches if b["actual"] == 0]
        assert not empty, f"empty ranges handed out: {empty}"

    # Every key after the checkpoint up to the end in exactly one range; no other in any.
    covered = await conn.fetch(
        f"SELECT {kind.text_values()} AS key, count(b.id) AS n FROM {kind.table} t"
        f" LEFT JOIN ops.backfill_batches b ON b.backfill = $1"
        f" AND {kind.inside('b.lower_key', 'b.upper_key')}"
        f" GROUP BY {kind.order_by()}",
        NAME,
    )
    expected = set(plan.index.keys_in(plan.checkpoint, plan.end))
    got = {tuple(r["key"]): r["n"] for r in covered}
    assert len(got) == len(plan.index.bounds)
    wrong_cover = {k: n for k, n in got.items() if n != (1 if k in expected else 0)}
    assert not wrong_cover, f"keys covered a wrong number of times: {wrong_cover}"


@dataclass(frozen=True)
class Run:
    values: Any  # the table's keys
    end_at: int  # the run's end: any key (fixed when the run starts)
    checkpoint_at: int | None  # None: a fresh run; else any key up to the end, or the end
    script: list[Step]
    drain: list[int]


def _keys(draw: st.DrawFn, kind: Kind, n: int) -> set[Any]:
    """``n`` distinct keys of ``kind``."""
    if kind.universe:  # n keys of a small range, without the rejections of a unique draw
        return set(draw(st.permutations(kind.universe), label="keys")[:n])
    special: set[Any] = set()
    if kind.special:
        special = draw(st.sets(st.sampled_from(kind.special), max_size=n), label="special")
    others = n - len(special)
    return special | draw(
        st.sets(kind.key.filter(lambda v: v not in special), min_size=others, max_size=others),
        label="keys",
    )


@st.composite
def runs(draw: st.DrawFn, kind: Kind) -> Run:
    """Everything drawn up front: a draw inside the async test would raise hypothesis's
    StopTest (a BaseException) through anyio's runner task, which does not survive it."""
    # Few keys, or enough for a dozen ranges or more: left alone, hypothesis draws mostly
    # small sets; the first branch is where it shrinks to.
    n = draw(
        st.one_of(st.integers(1, 8), st.integers(kind.max_keys // 2, kind.max_keys)), label="n"
    )
    values = _keys(draw, kind, n)
    # Most runs' ends are the last key or close to it (keys inserted after the start lie
    # beyond it), most checkpoints near the start: weighted so, as hypothesis draws bounded
    # integers about evenly, and an even draw of both leaves few keys between them.
    end_at = (
        n
        - 1
        - draw(
            st.one_of(st.just(0), st.integers(0, 3), st.integers(0, n - 1)).filter(
                lambda after: after < n
            ),
            label="keys_after_end",
        )
    )
    checkpoint_at = draw(
        st.one_of(st.none(), st.integers(0, min(end_at, 3)), st.integers(0, end_at)),
        label="checkpoint_at",
    )
    script = draw(st.lists(steps, min_size=min(n, 20), max_size=2 * n + 6), label="script")
    drain = draw(st.lists(SIZES, min_size=1, max_size=6), label="drain_sizes")
    return Run(values, end_at, checkpoint_at, script, drain)


async def _has_collation(conn: asyncpg.Connection, name: str) -> bool:
    """Whether the collation exists for this database and works (a libc collation needs
    the locale installed; an ICU one a server built with ICU)."""
    try:
        await conn.fetchval(f"SELECT 'a' < 'B' COLLATE \"{name}\"")
    except asyncpg.PostgresError:
        return False
    return True


async def _check(conn: asyncpg.Connection, kind_name: str, run: Run) -> None:
    """Every key after the checkpoint up to the end handed out exactly once, by ranges
    planned as they should be; see the module's docstring."""
    kind = KINDS[kind_name]
    if kind.needs_collation and not await _has_collation(conn, kind.needs_collation):
        pytest.skip(f"the server has no {kind.needs_collation} collation")
    ctx, plan = await _setup(conn, kind, run.values, run.end_at, run.checkpoint_at)
    await _drive(ctx, plan, run.script, run.drain)
    await _assert_database(ctx, plan)


# One test per key kind, as @given's strategy cannot depend on a pytest parameter; each
# example reuses the kind's table (emptied and filled again) and the run's row (dropped and
# inserted again) in the test's database.
PROPERTY = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _property_of(kind: str) -> Callable[..., Any]:
    @PROPERTY
    @given(run=runs(KINDS[kind]))
    async def test(conn: asyncpg.Connection, run: Run) -> None:
        await _check(conn, kind, run)

    return test


test_sparse_bigint_keys = _property_of("sparse_bigint")
test_dense_negative_integer_keys = _property_of("dense_negative")
test_uuid_keys = _property_of("uuid")
test_composite_int_text_keys = _property_of("composite")
test_text_keys_in_the_database_collation = _property_of("text")
test_text_keys_in_a_linguistic_collation = _property_of("text_linguistic")


async def test_an_empty_table_hands_out_nothing(conn: asyncpg.Connection) -> None:
    """No key at start: no end key, exhausted from the start, no claim."""
    kind = KINDS["sparse_bigint"]
    await schema.ensure_schema(conn)
    await conn.execute(kind.ddl)
    target = await inspect_target(conn, kind.table, ("k",))
    assert await RangeQueries(target).last_key(conn) is None
    await conn.execute(
        sqlfiles.query("insert_backfill"),
        NAME,
        f"{NAME}.py",
        target.table,
        ["k"],
        ["bigint"],
        None,
        5,
        0,
        "checksum",
        "up",
    )
    c = await RunStore(NAME, uuid.uuid4(), RangeQueries(target), LEASE).claim(
        conn, size=5, timeouts=TimeoutPolicy()
    )
    assert c is None
    assert await conn.fetchval("SELECT count(*) FROM ops.backfill_batches") == 0


async def test_the_checkpoint_takes_a_bound_found_ahead_only_for_the_frontier_it_was_for(
    conn: asyncpg.Connection,
) -> None:
    """The look-ahead's bound is used as is when the frontier is where it was looked up
    from (it saves the checkpoint its index scan); for any other frontier it is ignored and
    the bound found in the statement."""
    kind = KINDS["sparse_bigint"]
    ctx, _ = await _setup(conn, kind, set(range(1, 101)), end_at=99, checkpoint_at=None)
    first = await ctx.store.claim(conn, size=10, timeouts=TimeoutPolicy())
    assert first is not None
    assert first.range.upper == ("10",)

    async def checkpoint(c: store.Claim, hint: tuple[Bound, Bound]) -> store.Claim:
        async with conn.transaction():
            settled = await ctx.store.checkpoint(
                conn,
                c,
                rows=c.keys,
                seconds=0.001,
                attempts=1,
                batch_size=10,
                claim_next=True,
                hint=hint,
            )
        assert settled is not None
        assert settled.next is not None
        return settled.next

    # For this frontier: taken as is (a real look-ahead would say 20; 13 shows it is used).
    second = await checkpoint(first, (("10",), ("13",)))
    assert (second.range.lower, second.range.upper, second.keys) == (("10",), ("13",), 10)
    # For another frontier: ignored.
    third = await checkpoint(second, (("10",), ("17",)))
    assert (third.range.lower, third.range.upper) == (("13",), ("23",))
    assert list(await conn.fetchval("SELECT frontier FROM ops.backfills")) == ["23"]


async def test_the_checkpoint_fences_on_the_range_as_well_as_the_id(
    conn: asyncpg.Connection,
) -> None:
    """After a crash that lost a claim's asynchronous commit, its id may be issued again to
    another range claimed under the same token (two workers of one runner). A checkpoint
    for the old claim must not mark that range done."""
    kind = KINDS["sparse_bigint"]
    ctx, _ = await _setup(conn, kind, set(range(1, 101)), end_at=99, checkpoint_at=None)
    lost = await ctx.store.claim(conn, size=10, timeouts=TimeoutPolicy())
    assert lost is not None
    # The same id, owned by the same token, now names keys 40..50.
    await conn.execute(
        "UPDATE ops.backfill_batches SET lower_key = '{40}', upper_key = '{50}' WHERE id = $1",
        lost.id,
    )
    async with conn.transaction():
        settled = await ctx.store.checkpoint(
            conn,
            lost,
            rows=10,
            seconds=0.001,
            attempts=1,
            batch_size=10,
            claim_next=True,
        )
    assert settled is None
    row = await conn.fetchrow(
        "SELECT status, rows FROM ops.backfill_batches WHERE id = $1", lost.id
    )
    assert (row["status"], row["rows"]) == ("running", None)
