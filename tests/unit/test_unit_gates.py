"""Health gates' decisions with an injected clock and readings: no server, no sleeping."""

from __future__ import annotations

import pytest

from cryptopi_batch.admission import GO, Admission, BatchDone, Go, Wait
from cryptopi_batch.gates import GatePolicy, HealthGate, Reading, show


def lag_gate(limit: float = 10.0, **policy: float) -> HealthGate:
    return HealthGate("replica-lag", "replica lag", limit, policy=GatePolicy(**policy))


def test_under_half_the_limit_goes():
    gate = lag_gate()
    gate.observe(Reading(0.0, 4.9, "replica-1"))
    gate.record(BatchDone(0.0, 0.0, 10))
    assert gate.decide(0.0) == GO


def test_past_the_limit_waits_reported_with_gate_value_limit_and_source():
    gate = lag_gate()
    gate.observe(Reading(5.0, 14.2, "replica-2"))
    decision = gate.decide(5.0)
    assert decision == Wait("replica lag 14.2 s > 10 s (replica-2)", 6.0, reported=True)


def test_hysteresis_no_flapping_around_the_limit():
    """Once held, readings just under the limit keep it held; only under 80 % lets go."""
    gate = lag_gate()
    gate.observe(Reading(0.0, 10.5))
    assert isinstance(gate.decide(0.0), Wait)
    for t, value in enumerate([9.9, 10.1, 9.0, 8.1], start=1):
        gate.observe(Reading(float(t), value))
        decision = gate.decide(float(t))
        assert isinstance(decision, Wait), (value, decision)
        assert decision.reported
    assert gate.reason == "replica lag 8.1 s, waiting for < 8 s"
    gate.observe(Reading(5.0, 7.9))
    assert not gate.holding
    # Back to pacing, not to a wait: 7.9 s is past half the limit.
    assert isinstance(gate.decide(5.0), Go)


def test_backoff_doubles_while_over_and_is_capped():
    gate = lag_gate(first_backoff=1.0, max_backoff=30.0)
    now = 0.0
    gate.observe(Reading(now, 20.0))
    waits = []
    for _ in range(8):
        decision = gate.decide(now)
        assert isinstance(decision, Wait)
        waits.append(decision.until - now)
        now = decision.until
        gate.observe(Reading(now, 20.0))  # still bad when the wait ends
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_workers_asking_during_a_backoff_share_its_end():
    gate = lag_gate()
    gate.observe(Reading(0.0, 20.0))
    first, second = gate.decide(0.0), gate.decide(0.4)
    assert isinstance(first, Wait)
    assert isinstance(second, Wait)
    assert first.until == second.until == 1.0


def test_backoff_starts_over_after_a_release():
    gate = lag_gate()
    gate.observe(Reading(0.0, 20.0))
    gate.decide(0.0)
    gate.decide(1.0)  # 2 s now
    gate.observe(Reading(2.0, 1.0))
    assert gate.decide(3.0) == GO
    gate.observe(Reading(3.0, 20.0))
    decision = gate.decide(3.0)
    assert isinstance(decision, Wait)
    assert decision.until == 4.0


@pytest.mark.parametrize(
    ("value", "pause"),
    [(0.0, 0.0), (5.0, 0.0), (6.0, 0.2), (7.5, 0.5), (9.0, 0.8), (10.0, 1.0)],
)
def test_pacing_grows_linearly_from_half_the_limit(value: float, pause: float):
    gate = lag_gate(pace_pause=1.0)
    gate.observe(Reading(99.0, value))
    assert gate.pause() == pytest.approx(pause)
    gate.record(BatchDone(99.0, 100.0, 10))
    decision = gate.decide(100.0)
    if pause == 0:
        assert decision == GO
    else:
        assert isinstance(decision, Wait)
        assert not decision.reported
        assert decision.until == pytest.approx(100.0 + pause)
        assert gate.decide(100.0 + pause) == GO


def test_pacing_waits_only_after_a_batch():
    gate = lag_gate()
    gate.observe(Reading(0.0, 9.0))
    assert gate.decide(0.0) == GO  # no batch yet: nothing to space from


@pytest.mark.parametrize(
    ("reading", "reason"),
    [
        (Reading(0.0, error="timed out after 0.5 s"), "replica lag unknown: timed out after 0.5 s"),
        (
            Reading(0.0, 0.0, error="permission denied for pg_stat_replication"),
            "replica lag unknown: permission denied for pg_stat_replication",
        ),
    ],
)
def test_a_failed_sample_holds_never_goes(reading: Reading, reason: str):
    gate = lag_gate()
    gate.observe(reading)
    decision = gate.decide(0.0)
    assert decision == Wait(reason, 1.0, reported=True)


def test_a_failed_sample_does_not_release_a_held_gate():
    gate = lag_gate()
    gate.observe(Reading(0.0, 20.0))
    gate.observe(Reading(1.0, error="timed out"))
    assert gate.holding


def test_no_sample_for_too_long_holds():
    gate = HealthGate("replica-lag", "replica lag", 10.0, since=0.0)
    assert gate.decide(5.0) == GO  # the first sample is not late yet
    decision = gate.decide(11.0)
    assert isinstance(decision, Wait)
    assert decision.reported
    assert decision.reason == "replica lag unknown: no sample for 11 s"
    gate.observe(Reading(12.0, 0.0))
    gate.observe(Reading(12.5, 0.0))
    assert gate.decide(13.0) == GO


def test_a_yes_no_gate_holds_on_its_reason_and_lets_go_at_once():
    gate = HealthGate("check", "check", None)
    gate.observe(Reading(0.0, reason="deploy in progress"))
    assert gate.decide(0.0) == Wait("check: deploy in progress", 1.0, reported=True)
    gate.observe(Reading(1.0))
    assert gate.decide(1.0) == GO
    assert gate.pause() == 0.0


@pytest.mark.parametrize(
    ("value", "unit", "text"),
    [
        (14.2, "s", "14.2 s"),
        (10.0, "s", "10 s"),
        (1800.0, "s", "1800 s"),
        (0.5, "s", "0.5 s"),
        (52.0, "", "52"),
        (3.5e6, "B", "3.5 MB"),
        (20e6, "B", "20 MB"),
        (512.0, "B", "512 B"),
    ],
)
def test_values_are_shown_without_exponents(value: float, unit: str, text: str):
    assert show(value, unit) == text


def test_the_admission_reports_a_held_gates_reason():
    gate = lag_gate()
    admission = Admission([gate])
    gate.observe(Reading(0.0, 14.2, "replica-2"))
    assert isinstance(admission.decide(0.0), Wait)
    assert admission.waiting_reason == "replica lag 14.2 s > 10 s (replica-2)"
    assert not admission.may_chain(0.0)
    gate.observe(Reading(0.5, 1.0))
    assert admission.decide(1.0) == GO
    assert admission.waiting_reason is None


def test_may_wait_only_when_holding_pacing_or_without_a_good_reading():
    """Under half its limit a gate lets a COMMIT carry the next BEGIN (no wait is near)."""
    gate = lag_gate()
    assert gate.may_wait  # no reading yet
    gate.observe(Reading(0.0, 4.0))
    assert not gate.may_wait
    gate.observe(Reading(1.0, 6.0))
    assert gate.may_wait  # pacing
    gate.observe(Reading(2.0, 11.0))
    assert gate.may_wait  # holding
    gate.observe(Reading(3.0, 1.0))
    assert not gate.may_wait
    gate.observe(Reading(4.0, error="timed out"))
    assert gate.may_wait
