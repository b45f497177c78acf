"""Health gates: go or wait on a signal PostgreSQL reports (replica lag, the oldest
transaction, sessions we block, active connections, a wraparound autovacuum, a check).

Pure: the sampler (:mod:`health`) hands each gate a :class:`Reading` now and then; the
admission asks ``decide(now)`` before each batch. No I/O, no sleeping; the clock
(monotonic seconds) is an argument, so tests drive it without a server or real time.

A gate is gradual, not on/off:

- under ``pace_from`` of its limit (half) it answers go;
- from there to the limit it adds a pause after each batch, growing linearly from 0 to
  ``pace_pause`` (routine spacing, not reported);
- past the limit, or on a sample that failed, timed out or is missing (never taken as
  healthy), it holds: ``Wait(reason, until=now + back-off, reported=True)``, the back-off
  doubling each time it runs out while the signal is still bad (1 s, 2 s, ... 30 s);
- it lets go only once the signal is back under ``resume_at`` of the limit (80 %): a
  signal hovering at the limit does not start and stop the run every second.
"""

from __future__ import annotations

from dataclasses import dataclass

from .admission import GO, BatchDone, Decision, Wait

# The gates' names, as --no-gate takes them.
REPLICA_LAG = "replica-lag"
TRANSACTION_AGE = "transaction-age"
BLOCKING = "blocking"
ACTIVE_CONNECTIONS = "active-connections"
AUTOVACUUM = "autovacuum"
CHECK = "check"
GATE_NAMES = (REPLICA_LAG, TRANSACTION_AGE, BLOCKING, ACTIVE_CONNECTIONS, AUTOVACUUM, CHECK)


@dataclass(frozen=True)
class GatePolicy:
    """How every health gate paces, holds and lets go (the same for all of them)."""

    pace_from: float = 0.5  # of the limit: pacing starts here
    pace_pause: float = 1.0  # seconds after each batch when the signal is at its limit
    resume_at: float = 0.8  # of the limit: a held gate lets go below this
    first_backoff: float = 1.0
    max_backoff: float = 30.0
    stale_after: float = 10.0  # no sample for this long counts as a failed one


@dataclass(frozen=True)
class Reading:
    """One sample of a gate's signal, taken at ``at`` (monotonic).

    ``value``: the signal (seconds, a count; for a yes/no gate 0 is go); ``where``: whose
    value it is (``replica-2``, ``pid 4711``); ``error``: why the sample failed (then
    ``value`` is ignored); ``reason``: a yes/no gate's own words for why it says wait."""

    at: float
    value: float = 0.0
    where: str = ""
    error: str | None = None
    reason: str | None = None


def show(value: float, unit: str) -> str:
    """``14.2 s``, ``10 s``, ``1800 s``, ``52``, ``3.5 MB``: three significant digits, never
    an exponent."""
    if unit == "B":
        for factor, name in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
            if abs(value) >= factor:
                return f"{_digits(value / factor)} {name}"
        return f"{_digits(value)} B"
    text = _digits(value)
    return f"{text} {unit}" if unit else text


def _digits(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}"


class HealthGate:
    """One signal against its limit (see the module's docstring). ``limit`` ``None``: a
    yes/no gate (a check, the autovacuum), which holds while a reading has a ``reason``.
    ``since``: when the gate was made; with no reading ``stale_after`` after it, it holds.
    """

    def __init__(  # noqa: PLR0913 -- the signal, its limit, and keyword-only tuning
        self,
        name: str,
        label: str,
        limit: float | None,
        *,
        unit: str = "s",
        policy: GatePolicy | None = None,
        since: float = 0.0,
    ) -> None:
        self.name = name
        self.label = label
        self.limit = limit
        self.unit = unit
        self.policy = policy or GatePolicy()
        self.reading: Reading | None = None
        self.reason: str | None = None  # while holding: why
        self._since = since
        self._backoff = 0.0
        self._until = 0.0
        self._last_end: float | None = None  # of this process's last batch (pacing)

    @property
    def holding(self) -> bool:
        return self.reason is not None

    @property
    def may_wait(self) -> bool:
        """Whether it may answer wait soon: holding, pacing, or without a good reading. Only
        then does no batch's COMMIT carry the next BEGIN: a signal comfortably under its
        limit keeps the chaining's round trip saved. (Should it hold right after such a
        COMMIT, the next transaction waits open but empty: no snapshot, xid or lock.)"""
        r = self.reading
        return self.holding or r is None or r.error is not None or self.pause() > 0

    def observe(self, reading: Reading) -> None:
        """A new sample: hold past the limit (or on a failed one), let go under the margin."""
        self.reading = reading
        bad = self._problem(reading)
        if bad is not None:
            if not self.holding:
                self._backoff = self.policy.first_backoff
                self._until = reading.at + self._backoff
            self.reason = bad
        elif self.holding:
            if self.limit is None or reading.value <= self.limit * self.policy.resume_at:
                self.reason = None
            else:  # under the limit, not yet under the margin: keep holding, say so
                self.reason = (
                    f"{self.label} {show(reading.value, self.unit)}, waiting for"
                    f" < {show(self.limit * self.policy.resume_at, self.unit)}{_at(reading)}"
                )

    def decide(self, now: float) -> Decision:
        last = self.reading.at if self.reading is not None else self._since
        if now - last > self.policy.stale_after:
            self.observe(Reading(now, error=f"no sample for {now - last:.0f} s"))
        if self.reason is not None:
            if now >= self._until:  # still bad after the back-off: back off longer
                self._backoff = min(self.policy.max_backoff, self._backoff * 2)
                self._until = now + self._backoff
            return Wait(self.reason, self._until, reported=True)
        pause = self.pause()
        if pause > 0 and self._last_end is not None and self._last_end + pause > now:
            assert self.reading is not None
            assert self.limit is not None
            return Wait(
                f"{self.label} {show(self.reading.value, self.unit)} past half of"
                f" {show(self.limit, self.unit)}: {pause:.2g} s between batches",
                self._last_end + pause,
            )
        return GO

    def pause(self) -> float:
        """The extra pause after each batch that the last reading asks for (not holding)."""
        r, p = self.reading, self.policy
        if r is None or self.limit is None or r.error is not None or self.limit <= 0:
            return 0.0
        start = self.limit * p.pace_from
        if r.value <= start:
            return 0.0
        return p.pace_pause * min(1.0, (r.value - start) / (self.limit - start))

    def record(self, done: BatchDone) -> None:
        self._last_end = done.ended if self._last_end is None else max(self._last_end, done.ended)

    def _problem(self, r: Reading) -> str | None:
        """Why ``r`` says wait, or ``None``."""
        if r.error is not None:
            return f"{self.label} unknown: {r.error}"
        if self.limit is None:
            return None if r.reason is None else f"{self.label}: {r.reason}"
        if r.value > self.limit:
            return (
                f"{self.label} {show(r.value, self.unit)} > {show(self.limit, self.unit)}{_at(r)}"
            )
        return None


def _at(r: Reading) -> str:
    return f" ({r.where})" if r.where else ""
