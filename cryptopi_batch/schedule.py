"""Off-peak windows: ``--window "Mon-Fri 22:00-06:00, Sat-Sun 00:00-24:00"`` in a zone.

Pure: no I/O and no clock of its own; every instant is an argument (an aware datetime).
A window is defined in local wall time and turned into absolute intervals, day by day:
a range of day ``d`` opens at ``d`` + its start and closes at its end, on ``d`` or, for an
overnight range (end not after start), on the day after; ``24:00`` is the next midnight.
Overlapping and touching intervals merge. Daylight saving: an interval lasts what the
clocks say it does (Europe/Berlin 01:00-05:00 lasts 3 h on 2026-03-29, 5 h on
2026-10-25); a start or end at a wall time that happens twice is its first occurrence for
a start and its last for an end (the interval covers every instant whose wall time is in
the range); one at a wall time that does not exist is the first instant after the gap.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import UsageError

DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_FULL = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_DAY_NAMES = {name.lower(): i for i, name in enumerate(DAYS)} | {
    name: i for i, name in enumerate(_FULL)
}
_TIME = r"(\d{1,2}):(\d{2})(?::(\d{2}))?"
_RANGE = re.compile(rf"^(?P<days>.*?)\s*(?<![\w:]){_TIME}\s*-\s*{_TIME}$")
DAY = 86_400
ALWAYS_WITHIN = timedelta(days=8)  # a merged interval longer than a week never closes
ETA_HORIZON = timedelta(days=800)  # an ETA further out than this is not given


@dataclass(frozen=True)
class DayRange:
    """One range of a window: on ``days`` (0 = Monday), from ``start`` to ``end`` (seconds
    after midnight; an ``end`` not after ``start`` is on the next day, 86400 is 24:00)."""

    days: frozenset[int]
    start: int
    end: int

    def __str__(self) -> str:
        times = f"{_clock(self.start)}-{_clock(self.end)}"
        return times if len(self.days) == 7 else f"{_days_text(self.days)} {times}"


@dataclass(frozen=True)
class Window:
    """A parsed window in its zone. ``spec``: its normalised text (what is stored)."""

    ranges: tuple[DayRange, ...]
    zone: ZoneInfo

    @property
    def spec(self) -> str:
        return ", ".join(str(r) for r in self.ranges)

    @property
    def timezone(self) -> str:
        return self.zone.key

    def __str__(self) -> str:
        return f"{self.spec} {self.timezone}"

    def intervals(self, at: datetime) -> Iterator[tuple[datetime, datetime | None]]:
        """The merged open intervals ``[start, end)`` in UTC, in order, from the one that
        ends after ``at`` on; an ``end`` of ``None``: it never closes (the last one)."""
        day = at.astimezone(self.zone).date() - timedelta(days=2)
        block: tuple[datetime, datetime] | None = None
        while True:
            for start, end in sorted(self._day(day)):
                if block is not None and start <= block[1]:
                    block = (block[0], max(block[1], end))
                    continue
                if block is not None and block[1] > at:
                    yield block
                block = (start, end)
            if block is not None and block[1] - block[0] > ALWAYS_WITHIN:
                yield block[0], None
                return
            day += timedelta(days=1)

    def _day(self, day: date) -> Iterator[tuple[datetime, datetime]]:
        for r in self.ranges:
            if day.weekday() in r.days:
                end_day = day + timedelta(days=1 if r.end <= r.start else 0)
                start = instant(day, r.start, self.zone, last=False)
                end = instant(end_day, r.end, self.zone, last=True)
                if end > start:  # a range inside a spring-forward gap does not open
                    yield start, end

    def is_open(self, at: datetime) -> bool:
        """Whether ``at`` is inside the window."""
        start, _ = next(self.intervals(at))
        return start <= at

    def current_end(self, at: datetime) -> datetime | None:
        """When the open interval containing ``at`` closes (``None``: never); ``at``
        itself when the window is closed at ``at``."""
        start, end = next(self.intervals(at))
        return end if start <= at else at

    def next_opening(self, at: datetime) -> datetime | None:
        """The start of the first interval that opens after ``at`` (``None``: the window
        is open from ``at`` on, for good)."""
        for start, end in self.intervals(at):
            if start > at:
                return start
            if end is None:
                return None
        raise AssertionError("unreachable: intervals never ends without a None")

    def finish(self, seconds: float, at: datetime) -> datetime | None:
        """When ``seconds`` of work are done starting at ``at``, working only while the
        window is open; ``None`` beyond :data:`ETA_HORIZON`."""
        left = timedelta(seconds=max(seconds, 0.0))
        for start, end in self.intervals(at):
            begin = max(start, at)
            if begin - at > ETA_HORIZON:
                return None
            if end is None or end - begin >= left:
                return begin + left
            left -= end - begin
        raise AssertionError("unreachable")


def instant(day: date, seconds: int, zone: ZoneInfo, *, last: bool) -> datetime:
    """The UTC instant of wall time ``seconds`` after midnight of ``day`` in ``zone``: a
    time that happens twice is its first (``last``: its last) occurrence; one that does
    not exist is the first instant after the gap."""
    if seconds == DAY:  # 24:00: the next day's midnight
        day, seconds = day + timedelta(days=1), 0
    h, rest = divmod(seconds, 3600)
    wall = datetime.combine(day, time(h, *divmod(rest, 60), fold=int(last)), tzinfo=zone)
    utc = wall.astimezone(UTC)
    if utc.astimezone(zone).replace(tzinfo=None) == wall.replace(tzinfo=None):
        return utc
    # In a gap: the transition is between the instants the two offsets give.
    low = wall.replace(fold=1).astimezone(UTC)
    high = wall.replace(fold=0).astimezone(UTC)
    low, high = min(low, high), max(low, high)
    after = high.astimezone(zone).utcoffset()
    while high - low > timedelta(seconds=1):
        mid = low + (high - low) / 2
        if mid.astimezone(zone).utcoffset() == after:
            high = mid
        else:
            low = mid
    return high.replace(microsecond=0)


def zone_named(name: str | None, what: str = "--timezone") -> ZoneInfo:
    """The zone ``name`` (``None``: UTC), or a :class:`UsageError` naming it."""
    if name is None:
        return ZoneInfo("UTC")
    unknown = UsageError(
        f'{what}: unknown time zone "{name}" (an IANA name such as Europe/Berlin or UTC)'
    )
    if not name.strip() or name != name.strip():
        raise unknown
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise unknown from None


def parse_window(
    spec: str, timezone: str | None = None, what: str = "--window", zone_what: str = "--timezone"
) -> Window:
    """A window from its text and zone name (``None``: UTC); a :class:`UsageError` whose one
    line quotes the bad part otherwise (``what``, ``zone_what``: where each was given)."""
    zone = zone_named(timezone, zone_what)
    if not isinstance(spec, str) or not spec.strip():
        raise UsageError(f'{what}: empty; write e.g. "Mon-Fri 22:00-06:00"')
    ranges: list[DayRange] = []
    pending: list[str] = []  # weekday items before the piece that holds the times
    for piece in (p.strip() for p in spec.split(",")):
        if not piece:
            raise UsageError(f'{what}: "{spec}": an empty range between commas')
        if not any(c.isdigit() for c in piece):  # a weekday item of a list ("Mon,Wed,Fri ...")
            pending.append(piece)
            continue
        ranges.append(_range(piece, pending, what))
        pending = []
    if pending:
        raise UsageError(f'{what}: "{", ".join(pending)}": weekdays without a time range')
    return Window(tuple(ranges), zone)


def _range(piece: str, days_before: list[str], what: str) -> DayRange:
    shown = ", ".join([*days_before, piece])
    m = _RANGE.match(piece)
    if m is None:
        raise UsageError(
            f'{what}: "{shown}": not a range like "Mon-Fri 22:00-06:00" or "00:00-24:00"'
        )
    items = [*days_before, *(m["days"].split() if m["days"] else [])]
    days = frozenset(range(7)) if not items else _days(items, shown, what)
    start = _seconds(m.group(2), m.group(3), m.group(4), shown, what, end=False)
    end = _seconds(m.group(5), m.group(6), m.group(7), shown, what, end=True)
    if start == end:
        raise UsageError(f'{what}: "{shown}": starts and ends at the same time')
    return DayRange(days, start, end)


def _days(items: list[str], shown: str, what: str) -> frozenset[int]:
    days: set[int] = set()
    for item in (i for part in items for i in part.split(",") if i):
        first, dash, last = item.partition("-")
        a = _day(first, shown, what)
        b = _day(last, shown, what) if dash else a
        days.update((a + k) % 7 for k in range((b - a) % 7 + 1))  # Fri-Mon wraps
    return frozenset(days)


def _day(name: str, shown: str, what: str) -> int:
    day = _DAY_NAMES.get(name.strip().lower())
    if day is None:
        raise UsageError(f'{what}: "{shown}": unknown weekday "{name}" (Mon, Tue, … Sun)')
    return day


def _seconds(  # noqa: PLR0913 -- a clock time in its parts, and where it stood
    h: str, m: str, s: str | None, shown: str, what: str, *, end: bool
) -> int:
    hours, minutes, seconds = int(h), int(m), int(s or 0)
    text = f"{h}:{m}" + (f":{s}" if s is not None else "")
    if hours == 24 and minutes == 0 and seconds == 0:
        if end:
            return DAY
        raise UsageError(f'{what}: "{shown}": a range cannot start at 24:00 (write 00:00)')
    if hours > 23 or minutes > 59 or seconds > 59:
        raise UsageError(f'{what}: "{shown}": no such time of day "{text}"')
    return hours * 3600 + minutes * 60 + seconds


def parse_until(text: str, what: str = "--until") -> datetime:
    """``--until``: an ISO instant with its UTC offset (``2026-12-01T06:00+01:00``, ``Z``),
    kept with that offset; one without is refused, not read in some zone."""
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(
            f'{what}: not a date and time: "{text}" (write e.g. 2026-12-01T06:00+01:00)'
        ) from None
    if at.tzinfo is None or at.utcoffset() is None:
        raise UsageError(
            f'{what}: "{text}" has no UTC offset; write e.g. {text.strip()}+01:00 or'
            f" {text.strip()}Z"
        )
    return at


def when(at: datetime, zone: ZoneInfo) -> str:
    """An instant as people read it in ``zone``: ``22:00 Europe/Berlin (Mon 2026-12-07)``."""
    local = at.astimezone(zone)
    clock = local.strftime("%H:%M:%S" if local.second else "%H:%M")
    return f"{clock} {zone.key} ({DAYS[local.weekday()]} {local.date().isoformat()})"


def _clock(seconds: int) -> str:
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h:02d}:{m:02d}" + (f":{s:02d}" if s else "")


def _days_text(days: frozenset[int]) -> str:
    """``Mon-Fri``, ``Sat-Sun``, ``Fri-Mon``, ``Mon,Wed,Fri``: runs of days as ranges."""
    runs: list[list[int]] = []
    for d in sorted(days):
        if runs and runs[-1][-1] == d - 1:
            runs[-1].append(d)
        else:
            runs.append([d])
    if len(runs) > 1 and runs[0][0] == 0 and runs[-1][-1] == 6:  # over the week's end
        runs[-1] += runs.pop(0)
    return ",".join(DAYS[r[0]] if len(r) == 1 else f"{DAYS[r[0]]}-{DAYS[r[-1]]}" for r in runs)
