"""The admission point: go, wait or stop before each batch, driven by an injected clock
(no server, no sleeping)."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from importlib.resources import files

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cryptopi_batch.admission import (
    GO,
    MAX_WAIT,
    Admission,
    BatchDone,
    Deadline,
    Decision,
    Go,
    Latch,
    Pacing,
    RunControl,
    Stop,
    Wait,
    wait_seconds,
)
from cryptopi_batch.settings import ThrottlePolicy
from cryptopi_batch.states import RangeState, RunState


@dataclass
class Fixed:
    """A gate that answers what it is told: stands for a window or a health gate."""

    decision: Decision
    may_wait: bool = True
    name: str = "fixed"
    learned: list[BatchDone] = field(default_factory=list)

    def decide(self, now: float) -> Decision:
        return self.decision

    def record(self, done: BatchDone) -> None:
        self.learned.append(done)


def paced(**policy: float) -> Admission:
    return Admission([Pacing(ThrottlePolicy(**policy))])  # type: ignore[arg-type]


def admit(admission: Admission, now: float) -> float:
    """Follow the admission's answers from ``now`` as a worker does: the start instant."""
    while isinstance(d := admission.decide(now), Wait):
        now += wait_seconds(d, now)
    assert isinstance(d, Go)
    return now


# --- each gate alone -------------------------------------------------------------------


def test_nothing_configured_admits_at_once_and_may_chain():
    admission = Admission()
    assert admission.decide(0.0) == GO
    assert admission.may_chain(0.0)


def test_rate_cap_waits_rows_over_rate_from_the_batch_start():
    admission = paced(max_rows_per_second=500.0)
    admission.record(BatchDone(started=10.0, ended=11.0, rows=2000))  # 4 s of budget
    assert admission.decide(11.0) == Wait("rate cap 500 rows/s", until=14.0)
    assert admission.decide(14.0) == GO
    assert admission.waiting_reason is None  # pacing is routine: not shown as waiting


def test_sleep_waits_after_each_batch():
    admission = paced(sleep=0.5)
    admission.record(BatchDone(started=2.0, ended=3.0, rows=0))
    assert admission.decide(3.0) == Wait("--sleep 0.5s between batches", until=3.5)
    assert admission.decide(3.5) == GO


def test_sleep_and_rate_cap_the_later_one_says_why():
    admission = paced(max_rows_per_second=10.0, sleep=2.0)
    admission.record(BatchDone(started=0.0, ended=1.0, rows=5))  # rate t=0.5, sleep t=3
    assert admission.decide(1.0) == Wait("--sleep 2s between batches", until=3.0)
    admission.record(BatchDone(started=3.0, ended=4.0, rows=100))  # rate t=13, sleep t=6
    assert admission.decide(4.0) == Wait("rate cap 10 rows/s", until=13.0)


@given(
    rate=st.floats(1.0, 1e5),
    batches=st.lists(st.tuples(st.integers(0, 100_000), st.floats(0.0, 30.0)), max_size=12),
)
def test_rate_cap_holds_over_any_run_of_batches(rate, batches):
    """One worker following the admission: the batches started in [s_i, s_j) changed at
    most ``rate`` rows a second over that span."""
    admission = paced(max_rows_per_second=rate)
    starts, now = [], 0.0
    for rows, took in batches:
        now = admit(admission, now)
        starts.append(now)
        now += took
        admission.record(BatchDone(started=starts[-1], ended=now, rows=rows))
    starts.append(admit(admission, now))
    for i in range(len(batches)):
        for j in range(i + 1, len(starts)):
            rows = sum(r for r, _ in batches[i:j])
            assert rows <= rate * (starts[j] - starts[i]) * (1 + 1e-9) + 1e-6


@given(sleep=st.floats(0.001, 100.0), took=st.lists(st.floats(0.0, 50.0), max_size=8))
def test_each_batch_starts_a_sleep_after_the_last_one_ended(sleep, took):
    admission = paced(sleep=sleep)
    now = admit(admission, 0.0)
    for seconds in took:
        ended = now + seconds
        admission.record(BatchDone(started=now, ended=ended, rows=1))
        now = admit(admission, ended)
        assert now == pytest.approx(ended + sleep)


def test_deadline_at_zero_admits_nothing():
    admission = Admission([Deadline.max_duration(0, now=10.0)])
    assert admission.decide(10.0) == Stop("--max-duration 0s reached")
    assert not admission.may_chain(10.0)


def test_deadline_admits_until_it_then_stops():
    admission = Admission([Deadline.max_duration(5, now=10.0)])
    assert admission.decide(14.999) == GO
    assert admission.may_chain(14.999)  # a deadline never waits: it may ride a commit
    assert admission.decide(15.0) == Stop("--max-duration 5s reached")
    assert admission.stop_reason == "--max-duration 5s reached"


@pytest.mark.parametrize(
    ("state", "decision"),
    [
        (RunState.PAUSED, Stop("migration paused")),
        (RunState.CANCELLED, Stop("migration cancelled")),
        (RunState.FAILED, Stop("migration failed")),
        (RunState.RUNNING, GO),
        (RunState.WAITING, GO),
        (RunState.COMPLETED, GO),  # its workers find nothing open and end
    ],
)
def test_the_runs_state_stops_or_admits(state, decision):
    assert RunControl(state).decide(0.0) == decision
    admission = Admission()
    admission.run_state = state.value  # as read from ops.backfills.status
    assert admission.run_state is state
    assert admission.decide(0.0) == decision


def test_an_unknown_run_state_is_refused():
    with pytest.raises(ValueError, match="'paws'"):
        Admission().run_state = "paws"


def test_a_stop_request_keeps_its_first_reason():
    admission = paced(max_rows_per_second=1.0)
    assert admission.request_stop("SIGTERM received")
    assert not admission.request_stop("a batch failed")
    assert admission.decide(0.0) == Stop("SIGTERM received")
    assert admission.stop_reason == "SIGTERM received"


def test_a_stop_is_final_even_if_the_run_resumes():
    """The runner ends on a stop; `resume` then `run` continues the run (a new runner)."""
    admission = Admission()
    admission.run_state = RunState.PAUSED
    assert admission.decide(0.0) == Stop("migration paused")
    admission.run_state = RunState.RUNNING
    assert admission.decide(1.0) == Stop("migration paused")


# --- combining -------------------------------------------------------------------------


def test_stop_beats_wait_beats_go():
    wait, stop = Wait("health", until=9.0), Stop("outside window")
    assert Admission([Fixed(GO), Fixed(wait)]).decide(1.0) == wait
    assert Admission([Fixed(wait), Fixed(stop), Fixed(GO)]).decide(1.0) == stop


def test_the_first_stop_gives_the_reason():
    first, second = Stop("first"), Stop("second")
    assert Admission([Fixed(first), Fixed(second)]).decide(0.0) == first


decisions = st.one_of(
    st.just(GO),
    st.builds(Wait, st.sampled_from(["a", "b"]), st.floats(-10.0, 100.0), st.booleans()),
)


@given(answers=st.lists(decisions, max_size=6), now=st.floats(0.0, 50.0))
def test_the_longest_wait_wins(answers, now):
    decision = Admission([Fixed(a) for a in answers]).decide(now)
    live = [a for a in answers if isinstance(a, Wait) and a.until > now]
    if not live:
        assert decision == GO
    else:
        assert isinstance(decision, Wait)
        assert decision.until == max(w.until for w in live)
        assert decision in live


def test_a_wait_past_the_deadline_wakes_at_the_deadline_to_stop():
    admission = Admission([Fixed(Wait("window", until=100.0)), Deadline(50.0, "time up")])
    assert admission.decide(10.0) == Wait("window", until=50.0)
    assert admission.decide(50.0) == Stop("time up")


def test_a_reported_wait_is_the_waiting_reason_until_a_go():
    window = Fixed(Wait("outside window, opens 22:00 Europe/Berlin", 7.0, reported=True))
    admission = Admission([window, Fixed(Wait("rate cap 5 rows/s", 9.0))])
    assert admission.decide(1.0) == Wait("rate cap 5 rows/s", 9.0)  # the longer wait
    assert admission.waiting_reason == "outside window, opens 22:00 Europe/Berlin"
    window.decision = GO
    admission.decide(2.0)
    assert admission.waiting_reason is None


def test_record_reaches_the_gates_that_learn():
    learner = Fixed(GO)
    admission = Admission([learner, Deadline(5.0, "time up")])
    done = BatchDone(started=1.0, ended=2.0, rows=3)
    admission.record(done)
    assert learner.learned == [done]


@pytest.mark.parametrize(
    ("gates", "chains"),
    [
        ([], True),
        ([Pacing(ThrottlePolicy())], True),
        ([Pacing(ThrottlePolicy(target_batch_seconds=1.0))], True),  # sizes, never waits
        ([Deadline(100.0, "time up")], True),
        ([Pacing(ThrottlePolicy(max_rows_per_second=1e9))], False),
        ([Pacing(ThrottlePolicy(sleep=0.001))], False),
        ([Fixed(GO, may_wait=True)], False),  # a window that is open now
        ([Deadline(0.0, "time up")], False),
    ],
)
def test_may_chain_only_when_nothing_may_wait(gates, chains):
    assert Admission(gates).may_chain(1.0) is chains


def test_may_chain_is_false_once_stopping():
    admission = Admission()
    admission.request_stop("SIGINT received")
    assert not admission.may_chain(0.0)


# --- properties ------------------------------------------------------------------------

policies = st.builds(
    ThrottlePolicy,
    max_rows_per_second=st.one_of(st.none(), st.floats(0.1, 1e6)),
    sleep=st.sampled_from([0.0, 0.001, 0.5, 3.0]),
)
batches = st.lists(st.tuples(st.floats(0.0, 1e4), st.floats(0.0, 100.0), st.integers(0, 10**6)))


@settings(max_examples=200)
@given(
    policy=policies,
    done=batches,
    extra=st.lists(decisions, max_size=3),
    deadline=st.one_of(st.none(), st.floats(0.0, 2e4)),
    asked=st.lists(st.floats(0.0, 2e4), min_size=1, max_size=5),
)
def test_a_wait_is_never_in_the_past(policy, done, extra, deadline, asked):
    gates = [Pacing(policy), *(Fixed(d) for d in extra)]
    if deadline is not None:
        gates.append(Deadline(deadline, "time up"))
    admission = Admission(gates)
    for start, took, rows in done:
        admission.record(BatchDone(started=start, ended=start + took, rows=rows))
    for now in asked:
        decision = admission.decide(now)
        if isinstance(decision, Wait):
            assert decision.until > now
            assert 0.0 < wait_seconds(decision, now) <= MAX_WAIT


@given(policy=policies, done=batches, now=st.floats(0.0, 2e4), later=st.floats(0.0, 1e4))
def test_a_go_stays_go_until_a_batch_is_recorded(policy, done, now, later):
    admission = Admission([Pacing(policy)])
    for start, took, rows in done:
        admission.record(BatchDone(started=start, ended=start + took, rows=rows))
    assume(admission.decide(now) == GO)
    assert admission.decide(now + later) == GO


def test_wait_seconds():
    assert wait_seconds(GO, 5.0) == 0.0
    assert wait_seconds(Stop("x"), 5.0) == 0.0
    assert wait_seconds(Wait("x", 7.5), 5.0) == 2.5
    assert wait_seconds(Wait("x", 7.5), 9.0) == 0.0  # asked late: at once
    assert wait_seconds(Wait("x", 5.0 + 3600), 5.0) == MAX_WAIT  # re-read the clock


def test_decisions_are_values():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Wait("x", 1.0).until = 2.0  # type: ignore[misc]
    assert Go() == GO


# --- states ----------------------------------------------------------------------------


def _checked(column_table: str) -> set[str]:
    """The values the initial schema's CHECK allows for ``status`` in ``column_table``."""
    sql = (files("cryptopi_batch") / "sql" / "versions" / "0001_initial.sql").read_text()
    block = sql[sql.index(f"CREATE TABLE {column_table}") :]
    allowed = re.search(r"status IN \(([^)]*)\)", block)
    assert allowed is not None
    return set(re.findall(r"'(\w+)'", allowed.group(1)))


def test_states_are_the_ops_tables_values():
    assert _checked("ops.backfills") == set(RunState) - {"pending", "waiting"}
    assert _checked("ops.backfill_batches") == set(RangeState)
    assert f"{RunState.PAUSED}" == "paused"
    assert {s for s in RunState if s.stops_runners} == {"paused", "cancelled", "failed"}


def test_a_latch_holds_unreported_and_forbids_chaining_until_opened() -> None:
    """The health gates' first readings: the first batch waits for them (not shown as
    `waiting`, a routine start), and no COMMIT carries a BEGIN before they are in."""
    latch = Latch("health", "the health gates' first readings", poll=1.0)
    admission = Admission([latch])
    decision = admission.decide(10.0)
    assert decision == Wait("the health gates' first readings", 11.0)
    assert admission.waiting_reason is None
    assert not admission.may_chain(10.0)
    latch.opened = True
    assert admission.decide(10.5) == GO
    assert admission.may_chain(10.5)
