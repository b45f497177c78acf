"""The health sampler against fake probes (no server): what each probe's answer, failure or
silence makes of its gate, the batch size cut on blocking, and the budget's share."""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from cryptopi_batch import health
from cryptopi_batch.admission import Admission, Pacing
from cryptopi_batch.db import ConnectionSettings
from cryptopi_batch.health import Blocked, BudgetRow, Holder, Replica
from cryptopi_batch.sampler import Sampler, build_gates
from cryptopi_batch.settings import HealthLimits, ThrottlePolicy
from cryptopi_batch.throttle import PACED_SLICE, BatchSizer

pytestmark = pytest.mark.anyio


class FakeConn:
    def __init__(self) -> None:
        self.closed = False

    def is_closed(self) -> bool:
        return self.closed

    def terminate(self) -> None:
        self.closed = True


@dataclass
class FakeProbes:
    """Answers what it is told; an exception is raised; ``"hang"`` never answers."""

    answers: dict[str, Any] = field(default_factory=dict)
    asked: list[str] = field(default_factory=list)

    async def _answer(self, name: str, default: Any) -> Any:
        self.asked.append(name)
        answer = self.answers.get(name, default)
        if answer == "hang":
            await anyio.sleep(60)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def wal(self, conn: Any) -> tuple[float, int]:
        return await self._answer("wal", (1000.0, 200))  # type: ignore[no-any-return]

    async def replicas(self, conn: Any) -> list[Replica]:
        return await self._answer("replicas", [])  # type: ignore[no-any-return]

    async def xmin_holders(self, conn: Any) -> list[Holder]:
        return await self._answer("xmin_holders", [])  # type: ignore[no-any-return]

    async def blocked(self, conn: Any) -> Blocked | None:
        return await self._answer("blocked", None)  # type: ignore[no-any-return]

    async def active(self, conn: Any) -> int:
        return await self._answer("active", 3)  # type: ignore[no-any-return]

    async def wraparound(self, conn: Any, table: str) -> int | None:
        return await self._answer("wraparound", None)  # type: ignore[no-any-return]

    async def check(self, conn: Any, check: Any) -> str | None:
        return await self._answer("check", None)  # type: ignore[no-any-return]

    async def budget(self, conn: Any, name: str, **kw: Any) -> BudgetRow | None:
        return await self._answer("budget", BudgetRow(None, None, 0, 1))  # type: ignore[no-any-return]


def make(probes: FakeProbes, limits: HealthLimits | None = None, **kw: Any) -> Sampler:
    limits = limits or HealthLimits()
    gates = build_gates(limits, 0.0)
    admission = Admission([Pacing(ThrottlePolicy()), *gates])
    s = Sampler(
        name="m",
        token=uuid.uuid4(),
        table="t",
        workers=kw.get("workers", 1),
        limits=limits,
        connection=None,  # type: ignore[arg-type]
        admission=admission,
        sizer=BatchSizer(ThrottlePolicy(), 1000),
        gates=gates,
        describe=lambda exc: str(exc) or type(exc).__name__,
        probes=probes,  # type: ignore[arg-type]
    )
    s.conns.conn = FakeConn()  # type: ignore[assignment]
    return s


def gate(s: Sampler, name: str) -> Any:
    return next(g for g in s.gates if g.name == name)


async def test_healthy_readings_hold_nothing():
    s = make(FakeProbes())
    await s.sample()
    assert [g.name for g in s.gates if g.holding] == []
    assert gate(s, "active-connections").limit == 100  # half of max_connections


@pytest.mark.parametrize(
    ("probe", "answer", "gate_name", "reason"),
    [
        (
            "xmin_holders",
            [Holder("pid 7", "100", 2000.0), Holder("pid 8", "90", 5.0)],
            "transaction-age",
            "transaction age 2000 s > 1800 s (pid 7)",
        ),
        (
            "replicas",
            [Replica("standby-a", 12.5, 4096.0, 0.0)],
            "replica-lag",
            "replica lag 12.5 s > 10 s (standby-a)",
        ),
        (
            "replicas",
            [Replica("standby-a", None, None, None)],
            "replica-lag",
            "replica lag unknown: pg_stat_replication is not readable (pg_read_all_stats)",
        ),
        ("active", 150, "active-connections", "active connections 150 > 100"),
        ("wraparound", 4711, "autovacuum", "autovacuum: to prevent wraparound on t (pid 4711)"),
        (
            "xmin_holders",
            RuntimeError("permission denied"),
            "transaction-age",
            "transaction age unknown: permission denied",
        ),
    ],
)
async def test_each_probe_feeds_its_gate(probe, answer, gate_name, reason):
    s = make(FakeProbes({probe: answer}))
    await s.sample()
    assert gate(s, gate_name).reason == reason


async def test_a_probe_that_does_not_answer_holds_its_gate_and_drops_the_connection(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setattr(health, "PROBE_BOUND", 0.05)
    s = make(FakeProbes({"active": "hang"}))
    conn = s.conns.conn
    await s.sample()
    assert gate(s, "active-connections").reason == (
        "active connections unknown: no answer within 0.05 s"
    )
    assert conn is not None
    assert conn.is_closed()  # made anew at the next round


async def test_a_check_holds_with_its_reason():
    s = make(FakeProbes({"check": "deploy"}), HealthLimits(check="SELECT 1"))
    await s.sample()
    assert gate(s, "check").reason == "check: deploy"


async def test_blocking_past_the_limit_cuts_the_batch_size_once():
    s = make(FakeProbes({"blocked": Blocked(1.5, 10, 20)}))
    await s.sample()
    assert gate(s, "blocking").reason == "blocking 1.5 s > 1 s (pid 10 behind pid 20)"
    assert s.sizer.size == 100
    await s.sample()  # still blocked: held, not cut again
    assert s.sizer.size == 100


async def test_switched_off_gates_are_not_sampled():
    probes = FakeProbes({"wraparound": 4711})
    s = make(probes, HealthLimits(off=frozenset({"autovacuum"})))
    await s.sample()
    assert "autovacuum" not in [g.name for g in s.gates]
    assert "wraparound" not in probes.asked  # its probe never runs
    assert "xmin_holders" in probes.asked  # the gates left on are sampled


async def test_the_rate_budget_is_shared_by_live_workers():
    s = make(FakeProbes({"budget": BudgetRow(1000.0, None, 0, 4)}), workers=1)
    await s.sample()
    pacing = next(g for g in s.admission.gates if isinstance(g, Pacing))
    assert pacing.pacer.policy.max_rows_per_second == 250.0


async def test_the_batch_size_follows_this_runners_share_of_the_budget():
    """A share of 25,000 rows/s: batches of its 20 ms slice, 500 keys (the declared size
    is 1,000); the budget gone, the declared size again."""
    probes = FakeProbes({"budget": BudgetRow(100_000.0, None, 0, 4)})
    s = make(probes, workers=1)
    await s.sample()
    assert s.sizer.keys() == math.ceil(25_000 * PACED_SLICE) == 500
    probes.answers["budget"] = BudgetRow(None, None, 0, 4)
    await s.sample()
    assert s.sizer.keys() == 1000


async def test_throttle_changed_is_logged_when_the_holding_gate_changes_not_its_value():
    probes = FakeProbes({"xmin_holders": [Holder("pid 7", "1", 2000.0)]})
    s = make(probes)
    with capture_logs() as logs:
        for t, age in enumerate([2000.0, 2001.0, 2002.0]):
            probes.answers["xmin_holders"] = [Holder("pid 7", "1", age)]
            await s.sample()
            s.admission.decide(float(t) * 100)  # a worker asks again after its back-off
        probes.answers["xmin_holders"] = []
        await s.sample()
        s.admission.decide(1000.0)
        await s.sample()
    changes = [(e["gate"], e["waiting_reason"]) for e in logs if e["event"] == "throttle_changed"]
    assert changes == [
        ("transaction age", "transaction age 2000 s > 1800 s (pid 7)"),
        (None, None),
    ]


@pytest.mark.parametrize(("reply_age", "holding"), [(0.0, True), (12.0, False)])
async def test_replica_lag_from_positions_counts_to_the_standbys_last_report(
    reply_age: float, holding: bool
):
    """The primary passed the standby's replay position 15 s ago: 15 s behind if it just
    said so; if its report is 12 s old, only 3 s are known (it may have caught up since)."""
    now = time.monotonic()
    probes = FakeProbes({"replicas": [Replica("standby-a", None, 4096.0, 150.0, reply_age)]})
    s = make(probes)
    s.history.add(now - 20, 100.0)
    s.history.add(now - 15, 200.0)
    await s.sample()
    assert gate(s, "replica-lag").holding is holding
    reading = gate(s, "replica-lag").reading
    assert reading.value == pytest.approx(15.0 - reply_age, abs=0.5)


async def test_a_replica_that_cannot_be_reached_is_named_with_why_never_its_password():
    """--replica-dsn to a port nobody listens on: the gate holds with the connection's own
    error (was a bare "no connection"), the DSN's password redacted."""
    dsn = "postgresql://watcher:s3cret-pw@127.0.0.1:1/postgres"
    s = make(FakeProbes(), HealthLimits(replica_dsns=(dsn,)))
    s.connection = s.conns.connection = ConnectionSettings(dsn=dsn)
    await s.sample()
    reason = gate(s, "replica-lag").reason
    assert reason.startswith("replica lag unknown: replica-1: ")
    assert "no connection" not in reason
    assert "refused" in reason.lower() or "connect" in reason.lower()
    assert "s3cret" not in reason


@pytest.mark.parametrize(
    ("first", "then", "released"),
    [
        ("deploy", None, 1),  # held, then let go: the waiting workers are woken
        ("deploy", "deploy", 0),  # still held
        (None, None, 0),  # never held
        (None, "deploy", 0),  # held from now on
    ],
)
async def test_a_gate_that_lets_go_wakes_the_waiting_workers(
    first: str | None, then: str | None, released: int
) -> None:
    woken: list[float] = []
    probes = FakeProbes({"check": first})
    s = make(probes, HealthLimits(check="SELECT 1"))
    s.on_release = lambda: woken.append(time.monotonic())
    await s.sample()
    probes.answers["check"] = then
    await s.sample()
    assert len(woken) == released
