"""The batch worker's decisions, without a server: what a range's row read back after a lost
connection means, which errors are tried again, how the run's counters are corrected, and
the worker loop itself (admit → claim → split) against an in-memory store.

What is about PostgreSQL (the claim's SQL, fencing, commits) is tested on the real server
in tests/integration."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, cast

import anyio
import asyncpg
import pytest

from cryptopi_batch.admission import Admission, BatchDone, Latch, Wait
from cryptopi_batch.batch import BatchRun, Verdict, verdict
from cryptopi_batch.control import Control
from cryptopi_batch.db import ConnectionSettings
from cryptopi_batch.errors import LeaseLost
from cryptopi_batch.gates import GatePolicy, HealthGate, Reading
from cryptopi_batch.keys import KeyColumn, KeyRange, KeySpec
from cryptopi_batch.progress import Progress, Tally
from cryptopi_batch.retry import Faults, RetryPolicy
from cryptopi_batch.sessions import Sessions
from cryptopi_batch.settings import RunSettings, ThrottlePolicy
from cryptopi_batch.states import RangeState, RunState
from cryptopi_batch.stopping import StopSignal
from cryptopi_batch.store import Claim, RangeRow, RunCounters, RunStore
from cryptopi_batch.target import Target
from cryptopi_batch.throttle import BatchSizer
from cryptopi_batch.worker import BatchWorker, Crew

pytestmark = pytest.mark.anyio

TOKEN, OTHER = uuid.uuid4(), uuid.uuid4()
RANGE = KeyRange(("100",), ("150",))
CLAIM = Claim(7, RANGE, 50, 0)


# --- a batch whose commit's outcome was not seen --------------------------------------


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (RangeRow(RangeState.DONE, TOKEN, 50, RANGE), Verdict.COMMITTED),
        (RangeRow(RangeState.RUNNING, TOKEN, 0, RANGE), Verdict.UNSETTLED),
        (RangeRow(RangeState.PENDING, TOKEN, 0, RANGE), Verdict.UNSETTLED),
        # Another runner took it over after its lease lapsed: not ours to count or redo.
        (RangeRow(RangeState.DONE, OTHER, 50, RANGE), Verdict.LOST),
        (RangeRow(RangeState.RUNNING, OTHER, 0, RANGE), Verdict.LOST),
        (RangeRow(RangeState.PENDING, None, 0, RANGE), Verdict.LOST),
        # The id names another range (a crash lost the claim; the id was issued again).
        (RangeRow(RangeState.DONE, TOKEN, 10, KeyRange(("40",), ("50",))), Verdict.LOST),
        (RangeRow(RangeState.DONE, TOKEN, 50, KeyRange(None, ("150",))), Verdict.LOST),
        (None, Verdict.LOST),
    ],
)
def test_a_range_read_back_after_a_lost_connection_is_judged_by_token_and_range(
    row: RangeRow | None, expected: Verdict
) -> None:
    assert verdict(row, CLAIM, TOKEN) is expected


# --- what is tried again --------------------------------------------------------------


def test_a_lost_lease_is_never_tried_again() -> None:
    faults = Faults(fatal=(LeaseLost,))
    assert not faults.retryable(LeaseLost())


def test_an_interface_error_is_tried_again_only_if_its_connection_closed() -> None:
    faults = Faults()
    closed = asyncpg.InterfaceError("connection is closed")
    faults.tag(closed, conn_closed=True)
    assert faults.retryable(closed)
    misuse = asyncpg.InterfaceError("cannot call this in a transaction")
    faults.tag(misuse, conn_closed=False)
    assert not faults.retryable(misuse)


def test_an_error_not_tagged_is_classified_on_its_own() -> None:
    faults = Faults()
    faults.tag(asyncpg.InterfaceError("x"), conn_closed=True)
    assert faults.retryable(asyncpg.SerializationError("could not serialize"))
    assert not faults.retryable(KeyError("customer"))


def test_a_statement_timeout_in_another_language_is_told_by_how_long_the_batch_ran() -> None:
    exc = asyncpg.QueryCanceledError("Abbruch der Anweisung")
    faults = Faults()
    faults.tag(exc, conn_closed=False, ran_past_timeout=False)
    assert not faults.retryable(exc)
    faults.tag(exc, conn_closed=False, ran_past_timeout=True)
    assert faults.retryable(exc)


# --- counting -------------------------------------------------------------------------


def test_a_batch_redone_after_a_lost_commit_is_counted_once_after_the_next_beat() -> None:
    """The commit of a batch was seen, then lost with the server (asynchronous commit) and
    the batch redone: the runner saw two commits, ops.backfills one."""
    seen: list[Progress] = []
    tally = Tally(Progress(rows=1_000, keys=1_000, batches=10), seen.append)
    tally.committed(50, 50)
    tally.committed(50, 50)  # the same range, redone
    assert tally.progress == Progress(1_100, 1_100, 12)
    tally.read(RunCounters(RunState.RUNNING, rows=1_050, keys=1_050, batches=11))
    assert tally.progress == Progress(1_050, 1_050, 11)
    assert tally.since_start == Progress(50, 50, 1)
    assert seen[-1] == Progress(1_050, 1_050, 11)
    # A reading that changes nothing tells no one.
    tally.read(RunCounters(RunState.RUNNING, rows=1_050, keys=1_050, batches=11))
    assert len(seen) == 3


def test_the_batch_size_is_cut_to_a_tenth_after_a_timeout_and_never_grows_back_past_it() -> None:
    sizer = BatchSizer(ThrottlePolicy(), 10_000)
    assert sizer.cut(5_000) == 500
    assert sizer.size == 500
    assert sizer.shrink() == 50


# --- the worker loop against an in-memory store ---------------------------------------


class FakeConn:
    """Stands for a connection: the fake store answers every query."""

    def __init__(self) -> None:
        self.closed = False
        self.in_transaction = False

    def is_closed(self) -> bool:
        return self.closed

    def is_in_transaction(self) -> bool:
        return self.in_transaction

    def terminate(self) -> None:
        self.closed = True

    async def close(self, timeout: float | None = None) -> None:
        self.closed = True


class Refused(Exception):
    """The fake store's way to end a worker where the test has seen enough."""


@dataclass
class FakeStore:
    claims: list[Claim | None] = field(default_factory=list)
    open_left: int = 0
    calls: list[tuple[str, Any]] = field(default_factory=list)
    token: uuid.UUID = TOKEN

    async def claim(self, conn: object, *, size: int, **_: Any) -> Claim | None:
        self.calls.append(("claim", size))
        c = self.claims.pop(0) if self.claims else None
        if c is not None:
            _["on_claim"](c.id)
        return c

    async def split(self, conn: object, c: Claim, size: int, **_: Any) -> Claim:
        self.calls.append(("split", size))
        raise Refused

    async def open_ranges(self, conn: object) -> int:
        self.calls.append(("open_ranges", None))
        return self.open_left


def _crew(store: FakeStore, admission: Admission, batch_size: int = 100) -> Crew:
    settings = RunSettings(batch_size=batch_size, retry=RetryPolicy(attempts=1))
    connection = ConnectionSettings(dsn="postgresql://nowhere.invalid/x")
    sessions = Sessions(connection, 30.0, settings.retry, str)
    conn = cast("asyncpg.Connection", FakeConn())
    run_store = cast("RunStore", store)
    control = Control(
        conn=conn,
        store=run_store,
        sessions=sessions,
        connection=connection,
        settings=settings,
        describe=str,
        end_key=None,
    )
    target = Target("t", KeySpec((KeyColumn("id", "bigint"),)), 1_000)
    return Crew(
        store=run_store,
        work="UPDATE t SET x = 1 WHERE {range}",
        target=target,
        settings=settings,
        sessions=sessions,
        control=control,
        stop=StopSignal(admission),
        sizer=BatchSizer(settings.throttle, batch_size),
        tally=Tally(Progress()),
        describe=str,
        begin="BEGIN;",
        spare=[cast("asyncpg.Connection", FakeConn())],
    )


async def test_no_batch_is_claimed_past_the_deadline() -> None:
    store = FakeStore(claims=[CLAIM])
    crew = _crew(store, Admission.for_run(ThrottlePolicy(), max_duration=0, now=0.0))
    await BatchWorker(crew, 0).run()
    assert store.calls == []
    assert crew.stop.reason == "--max-duration 0s reached"
    assert crew.failure is None


@pytest.mark.parametrize("state", [RunState.PAUSED, RunState.CANCELLED, RunState.FAILED])
async def test_a_run_paused_cancelled_or_failed_elsewhere_claims_nothing(
    state: RunState,
) -> None:
    store = FakeStore(claims=[CLAIM])
    crew = _crew(store, Admission())
    crew.stop.run_state(state)
    await BatchWorker(crew, 0).run()
    assert store.calls == []
    assert crew.stop.reason == f"migration {state}"


async def test_a_worker_ends_when_nothing_is_left_to_claim_or_open() -> None:
    store = FakeStore(claims=[None], open_left=0)
    crew = _crew(store, Admission())
    await BatchWorker(crew, 0).run()
    assert store.calls == [("claim", 100), ("open_ranges", None)]
    assert crew.failure is None
    assert not crew.stop.requested


async def test_an_open_range_far_bigger_than_todays_size_is_cut_to_it_first() -> None:
    """A remainder from before a shrink (5,000 keys, today's size 100) is cut before it
    runs; when the cut fails (retries spent), the worker fails and the range is still held,
    to be handed back with the runner's others as it stops."""
    big = Claim(9, KeyRange(None, ("5000",)), 5_000, 0)
    store = FakeStore(claims=[big])
    crew = _crew(store, Admission())
    await BatchWorker(crew, 0).run()
    assert store.calls == [("claim", 100), ("split", 100)]
    assert isinstance(crew.failure, Refused)
    assert crew.stop.reason == "a batch failed"
    assert big.id in crew.control.held


async def test_a_paced_worker_sees_the_end_of_the_run_without_waiting_out_its_pause() -> None:
    """The last batch committed and claimed nothing; the rate cap asks for a minute's
    pause before the next batch: the worker finds nothing left and ends now."""
    store = FakeStore(claims=[None], open_left=0)
    admission = Admission.for_run(ThrottlePolicy(max_rows_per_second=1.0), None, 0.0)
    admission.record(BatchDone(started=time.monotonic(), ended=time.monotonic(), rows=60))
    assert isinstance(admission.decide(time.monotonic()), Wait)
    crew = _crew(store, admission)
    with anyio.fail_after(5):  # the pause is a minute
        await BatchWorker(crew, 0).run()
    assert store.calls == [("claim", 100), ("open_ranges", None)]
    assert crew.failure is None


# --- the first batch waits for the health gates' first readings -----------------------


class Batches:
    """Stands in for the batch run: notes the claim it is given and when, then ends the
    worker."""

    def __init__(self) -> None:
        self.ran: list[Claim] = []
        self.started: float | None = None

    async def run(self, conn: object, c: Claim) -> tuple[object, Claim | None]:
        self.ran.append(c)
        self.started = self.started or time.monotonic()
        raise Refused


@pytest.mark.parametrize("opened_during_claim", [False, True])
async def test_the_first_batch_starts_once_the_first_readings_are_in_not_a_poll_later(
    opened_during_claim: bool,
) -> None:
    """The range is claimed while the latch (the sampler's first round) is shut; the batch
    starts as soon as it opens, whether that is during the claim (the decision taken
    before it is stale) or while the worker waits (it is woken), never a poll later."""
    latch = Latch("health", "the health gates' first readings", poll=60.0)
    store = FakeStore(claims=[CLAIM])
    crew = _crew(store, Admission([latch]))
    worker = BatchWorker(crew, 0)
    batch = Batches()
    worker._batches = cast("BatchRun", batch)
    opened_at: list[float] = []

    def open_latch() -> None:
        opened_at.append(time.monotonic())
        crew.stop.release(latch)

    if opened_during_claim:
        claim = store.claim

        async def claim_then_open(conn: object, **kw: Any) -> Claim | None:
            c = await claim(conn, **kw)
            open_latch()
            return c

        store.claim = claim_then_open  # type: ignore[method-assign]
    with anyio.fail_after(5):  # a missed wake would sleep the latch's 60 s poll
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            if not opened_during_claim:
                await anyio.sleep(0.05)
                assert batch.started is None  # claimed, and waiting
                assert store.calls == [("claim", 100)]
                open_latch()
    assert batch.started is not None
    assert batch.started - opened_at[0] < 1.0
    assert store.calls == [("claim", 100)]
    assert isinstance(crew.failure, Refused)


class CuttingStore(FakeStore):
    async def split(self, conn: object, c: Claim, size: int, **_: Any) -> Claim:
        self.calls.append(("split", size))
        return Claim(c.id, c.range, size, c.attempts)


async def test_a_range_claimed_before_the_budgets_share_was_read_is_cut_before_its_batch():
    """The first range is claimed while the sampler takes its first readings, at the size
    the whole budget allows (800 keys at 40,000 rows/s); the share read meanwhile is a
    quarter (200 keys): the batch runs on a range cut to it."""
    store = CuttingStore(claims=[Claim(7, RANGE, 800, 0)])
    admission = Admission()
    crew = _crew(store, admission, batch_size=1_000)
    crew.sizer = BatchSizer(ThrottlePolicy(max_rows_per_second=40_000.0), 1_000)
    batches = Batches()
    worker = BatchWorker(crew, 0)
    worker._batches = cast("BatchRun", batches)
    claim = store.claim

    async def claim_then_share(conn: object, **kw: Any) -> Claim | None:
        c = await claim(conn, **kw)
        crew.sizer.pace(10_000.0)  # the sampler's first round: a quarter of the budget
        return c

    store.claim = claim_then_share  # type: ignore[method-assign]
    with anyio.fail_after(5):
        await worker.run()
    assert store.calls == [("claim", 800), ("split", 200)]
    assert [c.keys for c in batches.ran] == [200]


async def test_a_range_whose_transaction_the_last_commit_began_is_not_cut():
    """The last batch's COMMIT began this batch's transaction on the connection (a range
    its checkpoint claimed): the range runs at its size, no split is tried on a connection
    with a transaction open (asyncpg refuses one inside it)."""
    store = CuttingStore(claims=[Claim(7, RANGE, 800, 0)])
    crew = _crew(store, Admission(), batch_size=100)
    cast("FakeConn", crew.spare[0]).in_transaction = True
    batches = Batches()
    worker = BatchWorker(crew, 0)
    worker._batches = cast("BatchRun", batches)
    await worker.run()
    assert store.calls == [("claim", 100)]
    assert [c.keys for c in batches.ran] == [800]


@pytest.mark.parametrize(("workers", "looks"), [(1, True), (2, False)])
async def test_the_look_ahead_runs_for_one_worker_only(workers: int, looks: bool) -> None:
    """With several worker tasks the others' checkpoints move the frontier past where a
    range ends: the look-ahead's bound would go unused, so it is not looked up."""
    settings = RunSettings(workers=workers)
    connection = ConnectionSettings(dsn="postgresql://nowhere.invalid/x")
    control = Control(
        conn=cast("asyncpg.Connection", FakeConn()),
        store=cast("RunStore", FakeStore()),
        sessions=Sessions(connection, 30.0, settings.retry, str),
        connection=connection,
        settings=settings,
        describe=str,
        end_key=("1000",),
    )
    started: list[object] = []

    class Tasks:
        def start_soon(self, func: object, *args: object) -> None:
            started.append(func)

    ahead = control.look_ahead(CLAIM, 100, cast("anyio.abc.TaskGroup", Tasks()))
    assert (ahead is not None, len(started)) == (looks, int(looks))


async def test_a_worker_held_by_a_health_gate_goes_once_it_lets_go_not_at_its_back_off() -> None:
    """A gate holds with a minute's back-off; the sampler sees it let go and nudges
    (Sampler.on_release): the waiting worker starts its batch at once."""
    gate = HealthGate("check", "check", None, policy=GatePolicy(first_backoff=60.0))
    gate.observe(Reading(time.monotonic(), reason="deploy"))
    store = FakeStore(claims=[CLAIM])
    crew = _crew(store, Admission([gate]))
    worker = BatchWorker(crew, 0)
    batch = Batches()
    worker._batches = cast("BatchRun", batch)
    with anyio.fail_after(5):  # without the nudge: the back-off's 60 s
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            await anyio.sleep(0.05)
            assert store.calls == [("claim", 100)]  # claimed: waiting on the gate, not before
            assert batch.started is None  # held
            gate.observe(Reading(time.monotonic()))
            let_go = time.monotonic()
            crew.stop.nudge()
    assert batch.started is not None
    assert batch.started - let_go < 1.0
