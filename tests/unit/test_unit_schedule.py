"""Off-peak windows: parsing and arithmetic in absolute instants, with injected instants
(no clock, no server)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cryptopi_batch.admission import (
    GO,
    MAX_WAIT,
    Admission,
    BatchDone,
    Deadline,
    Go,
    Stop,
    Wait,
    wait_seconds,
)
from cryptopi_batch.errors import UsageError
from cryptopi_batch.schedule import Window, parse_until, parse_window, when
from cryptopi_batch.window_gate import WindowGate

BERLIN = ZoneInfo("Europe/Berlin")
SYDNEY = ZoneInfo("Australia/Sydney")


def local(text: str, zone: ZoneInfo = BERLIN, fold: int = 0) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=zone, fold=fold)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def first(window: Window, at: datetime) -> tuple[datetime, datetime | None]:
    return next(window.intervals(at))


# 2026-12-04 is a Friday.
def test_overnight_range_wraps_to_the_next_day() -> None:
    w = parse_window("Mon-Fri 22:00-06:00", "Europe/Berlin")
    friday_night = local("2026-12-04T23:30")
    assert w.is_open(friday_night)
    assert w.current_end(friday_night) == local("2026-12-05T06:00")  # Saturday morning
    saturday_night = local("2026-12-05T23:00")
    assert not w.is_open(saturday_night)
    assert w.current_end(saturday_night) == saturday_night
    assert w.next_opening(saturday_night) == local("2026-12-07T22:00")  # Monday
    # Monday 02:00 belongs to Sunday's range, and Sunday has none.
    assert not w.is_open(local("2026-12-07T02:00"))


def test_several_ranges_and_weekday_lists() -> None:
    w = parse_window("Mon,Wed,Fri 12:00-13:00, Sat-Sun 00:00-24:00", "Europe/Berlin")
    assert w.spec == "Mon,Wed,Fri 12:00-13:00, Sat-Sun 00:00-24:00"
    assert w.is_open(local("2026-12-04T12:30"))  # Friday
    assert not w.is_open(local("2026-12-03T12:30"))  # Thursday
    # Friday's range and the weekend are separate; the weekend is one interval.
    assert w.next_opening(local("2026-12-04T12:30")) == local("2026-12-05T00:00")
    assert w.current_end(local("2026-12-05T10:00")) == local("2026-12-07T00:00")
    assert w.next_opening(local("2026-12-05T10:00")) == local("2026-12-07T12:00")


def test_wrapping_weekday_range_and_no_weekdays_means_every_day() -> None:
    assert parse_window("Fri-Mon 10:00-11:00").ranges[0].days == {0, 4, 5, 6}
    assert parse_window("Fri-Mon 10:00-11:00").spec == "Fri-Mon 10:00-11:00"
    assert parse_window("sunday,Tue-Wed,mon 10:00-11:00").spec == "Sun-Wed 10:00-11:00"
    every = parse_window("10:00-11:00")
    assert every.ranges[0].days == set(range(7))
    assert every.next_opening(utc("2026-12-04T10:30")) == utc("2026-12-05T10:00")


def test_a_window_ending_at_midnight_and_the_whole_day() -> None:
    w = parse_window("Fri 18:00-24:00")
    assert w.current_end(utc("2026-12-04T23:59:59")) == utc("2026-12-05T00:00")
    assert not w.is_open(utc("2026-12-05T00:00"))
    always = parse_window("00:00-24:00", "Europe/Berlin")
    assert always.current_end(utc("2026-03-29T01:30")) is None  # never closes, DST or not
    assert always.next_opening(utc("2026-03-29T01:30")) is None


@pytest.mark.parametrize(
    ("day", "hours", "utc_start"),
    [
        ("2026-03-28", 4, "2026-03-28T00:00"),  # an ordinary night
        ("2026-03-29", 3, "2026-03-29T00:00"),  # spring forward: 02:00-03:00 does not exist
        ("2026-10-25", 5, "2026-10-24T23:00"),  # fall back: 02:00-03:00 happens twice
    ],
)
def test_daylight_saving_changes_the_length(day: str, hours: int, utc_start: str) -> None:
    w = parse_window("01:00-05:00", "Europe/Berlin")
    start, end = first(w, local(f"{day}T00:30"))
    assert start == utc(utc_start)
    assert end is not None
    assert end - start == timedelta(hours=hours)


def test_a_start_that_happens_twice_starts_once_at_the_first() -> None:
    w = parse_window("02:30-04:00", "Europe/Berlin")
    start, end = first(w, utc("2026-10-25T00:00"))
    assert start == local("2026-10-25T02:30", fold=0).astimezone(UTC) == utc("2026-10-25T00:30")
    assert end == utc("2026-10-25T03:00")
    # The second 02:30 is inside the same interval, not a second opening.
    assert w.is_open(local("2026-10-25T02:45", fold=1))
    assert w.next_opening(utc("2026-10-25T00:30")) == utc("2026-10-26T01:30")


def test_a_start_that_does_not_exist_starts_at_the_first_instant_after() -> None:
    w = parse_window("02:30-04:00", "Europe/Berlin")
    start, end = first(w, utc("2026-03-29T00:00"))
    assert start == utc("2026-03-29T01:00")  # 03:00 CEST, the first instant after the gap
    assert end == utc("2026-03-29T02:00")


def test_a_southern_hemisphere_zone() -> None:
    # Sydney: clocks go back on 2026-04-05 (03:00 → 02:00), forward on 2026-10-04.
    w = parse_window("Sun 01:00-05:00", "Australia/Sydney")
    april, _ = first(w, local("2026-04-05T00:00", SYDNEY))
    assert next(w.intervals(april))[1] - april == timedelta(hours=5)  # type: ignore[operator]
    october, _ = first(w, local("2026-10-04T00:00", SYDNEY))
    assert next(w.intervals(october))[1] - october == timedelta(hours=3)  # type: ignore[operator]
    assert w.is_open(local("2026-10-04T04:30", SYDNEY))


def test_a_clock_jumping_backwards_is_answered_for_the_instant_asked() -> None:
    w = parse_window("Fri 22:00-23:00")
    assert not w.is_open(utc("2026-12-04T23:30"))
    # The clock is set back an hour: the same window is open again, until 23:00.
    assert w.is_open(utc("2026-12-04T22:30"))
    assert w.current_end(utc("2026-12-04T22:30")) == utc("2026-12-04T23:00")
    assert w.next_opening(utc("2026-12-04T21:00")) == utc("2026-12-04T22:00")


def test_finish_counts_only_open_time() -> None:
    # 2M keys at 1M keys/hour with a 4-hour nightly window: done the night after next.
    w = parse_window("22:00-02:00")
    now = utc("2026-12-04T12:00")
    seconds = 2_000_000 / (1_000_000 / 3600)
    assert w.finish(seconds, now) == utc("2026-12-05T00:00")
    assert w.finish(5 * 3600, now) == utc("2026-12-05T23:00")  # 4 h tonight, 1 h tomorrow
    assert w.finish(60, utc("2026-12-04T23:00")) == utc("2026-12-04T23:01")  # open now
    assert w.finish(1e12, now) is None  # beyond the horizon


@pytest.mark.parametrize(
    ("spec", "zone", "message"),
    [
        ("Mon-Fry 22:00-06:00", None, '--window: "Mon-Fry 22:00-06:00": unknown weekday "Fry"'),
        ("25:00-06:00", None, '--window: "25:00-06:00": no such time of day "25:00"'),
        ("10:60-11:00", None, '--window: "10:60-11:00": no such time of day "10:60"'),
        ("24:00-06:00", None, '--window: "24:00-06:00": a range cannot start at 24:00'),
        ("10:00-10:00", None, '--window: "10:00-10:00": starts and ends at the same time'),
        ("Mon 10:00", None, '--window: "Mon 10:00": not a range like'),
        ("Mon, Tue", None, '--window: "Mon, Tue": weekdays without a time range'),
        ("Mon 10:00-11:00,", None, '--window: "Mon 10:00-11:00,": an empty range'),
        ("", None, "--window: empty"),
        ("10:00-11:00", "Europe/Berln", '--timezone: unknown time zone "Europe/Berln"'),
        ("10:00-11:00", "", '--timezone: unknown time zone ""'),
        ("10:00-11:00", "../etc/passwd", '--timezone: unknown time zone "../etc/passwd"'),
        ("10:00-11:00", "/usr/share/zoneinfo/UTC", "--timezone: unknown time zone"),
    ],
)
def test_invalid_windows_name_the_bad_part(spec: str, zone: str | None, message: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_window(spec, zone)
    assert caught.value.exit_code == 2
    assert str(caught.value.message).startswith(message)
    assert "\n" not in caught.value.message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2026-12-01T06:00", '--until: "2026-12-01T06:00" has no UTC offset'),
        ("tomorrow", '--until: not a date and time: "tomorrow"'),
        ("2026-13-01T06:00+01:00", "--until: not a date and time"),
    ],
)
def test_invalid_until(text: str, message: str) -> None:
    with pytest.raises(UsageError, match="^" + message.replace("(", r"\(")):
        parse_until(text)


def test_until_is_an_absolute_instant() -> None:
    assert parse_until("2026-12-01T06:00+01:00") == utc("2026-12-01T05:00")
    assert parse_until("2026-12-01T06:00Z") == utc("2026-12-01T06:00")


def test_when_reads_in_the_window_zone() -> None:
    assert when(utc("2026-12-07T21:00"), BERLIN) == "22:00 Europe/Berlin (Mon 2026-12-07)"


WINDOWS = st.sampled_from(
    [
        "Mon-Fri 22:00-06:00, Sat-Sun 00:00-24:00",
        "01:00-05:00",
        "02:30-03:30",
        "Sun 02:00-02:30, Wed 12:00-12:00:30",
        "Fri-Mon 23:00-01:00",
    ]
)
ZONES = st.sampled_from(["UTC", "Europe/Berlin", "Australia/Sydney", "America/New_York"])
INSTANTS = st.datetimes(
    min_value=datetime(2026, 1, 1), max_value=datetime(2027, 12, 31), timezones=st.just(UTC)
)


@settings(max_examples=200, deadline=None)
@given(WINDOWS, ZONES, INSTANTS)
def test_next_opening_is_never_in_the_past(spec: str, zone: str, at: datetime) -> None:
    w = parse_window(spec, zone)
    opening = w.next_opening(at)
    assert opening is not None
    assert opening > at
    assert w.is_open(opening)
    assert not w.is_open(opening - timedelta(microseconds=1)) or w.current_end(
        opening - timedelta(microseconds=1)
    ) == opening - timedelta(microseconds=1)


@settings(max_examples=200, deadline=None)
@given(WINDOWS, ZONES, INSTANTS)
def test_inside_exactly_when_is_open_says_so(spec: str, zone: str, at: datetime) -> None:
    w = parse_window(spec, zone)
    # The instant's own wall time against the ranges, away from daylight-saving changes.
    wall = at.astimezone(w.zone)
    if (wall + timedelta(hours=30)).utcoffset() != (wall - timedelta(hours=30)).utcoffset():
        return
    seconds = wall.hour * 3600 + wall.minute * 60 + wall.second
    day = wall.weekday()
    inside = any(
        (day in r.days and r.start <= seconds < (r.end if r.end > r.start else 86_400))
        or (r.end <= r.start and (day - 1) % 7 in r.days and seconds < r.end)
        for r in w.ranges
    )
    assert w.is_open(at) == inside
    end = w.current_end(at)
    assert end is None or (end > at) == inside


# --- the window as a gate, with injected clocks ---------------------------------------


class Clock:
    """A wall clock and a monotonic one that move together (or not: a jump)."""

    def __init__(self, at: datetime) -> None:
        self.at = at
        self.mono = 1000.0

    def wall(self) -> datetime:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)
        self.mono += seconds


def gate(spec: str, zone: str, clock: Clock, **kw: bool) -> WindowGate:
    return WindowGate(parse_window(spec, zone), wall=clock.wall, **kw)


def test_gate_goes_inside_and_waits_outside_until_the_next_opening() -> None:
    clock = Clock(local("2026-12-04T23:00"))  # Friday
    g = gate("Mon-Fri 22:00-06:00", "Europe/Berlin", clock)
    assert g.decide(clock.mono) == GO
    clock.advance(7 * 3600 + 30 * 60)  # Saturday 06:30
    decision = g.decide(clock.mono)
    assert decision == Wait(
        "outside window, opens 22:00 Europe/Berlin (Mon 2026-12-07)",
        until=clock.mono + (local("2026-12-07T22:00") - clock.at).total_seconds(),
        reported=True,
    )
    assert g.opens_at == local("2026-12-07T22:00")


def test_gate_admits_no_batch_that_would_end_after_the_window() -> None:
    clock = Clock(utc("2026-12-04T21:59:00"))
    g = gate("22:00-23:00", "UTC", clock)
    g.record(BatchDone(0.0, 30.0, 100))  # batches take 30 s
    clock.at = utc("2026-12-04T22:58:20")
    assert g.decide(clock.mono) == GO  # 30 s + 1 s margin end by 22:58:51
    clock.at = utc("2026-12-04T22:59:30")  # would end at 23:00:01
    assert isinstance(g.decide(clock.mono), Wait)


def test_gate_follows_a_clock_jumping_backwards() -> None:
    clock = Clock(utc("2026-12-04T23:30"))
    g = gate("22:00-23:00", "UTC", clock)
    assert isinstance(g.decide(clock.mono), Wait)
    clock.at = utc("2026-12-04T22:30")  # set back an hour, the monotonic clock unmoved
    assert g.decide(clock.mono) == GO


def test_exit_outside_window_stops() -> None:
    clock = Clock(utc("2026-12-04T12:00"))
    g = gate("22:00-23:00", "UTC", clock, exit_outside=True)
    assert g.decide(clock.mono) == Stop(
        "outside the window 22:00-23:00 UTC; it opens 22:00 UTC (Fri 2026-12-04)"
    )


def test_a_worker_sleeps_in_slices_until_the_opening_and_goes() -> None:
    clock = Clock(utc("2026-12-04T12:00"))
    admission = Admission([gate("22:00-23:00", "UTC", clock)])
    slices = 0
    while isinstance(d := admission.decide(clock.mono), Wait):
        assert admission.waiting_reason == "outside window, opens 22:00 UTC (Fri 2026-12-04)"
        seconds = wait_seconds(d, clock.mono)
        assert 0 < seconds <= MAX_WAIT
        clock.advance(seconds)
        slices += 1
    assert d == GO
    assert clock.at == utc("2026-12-04T22:00")
    assert slices == 600
    assert admission.waiting_reason is None


def test_until_stops_before_a_batch_that_would_end_after_it() -> None:
    deadline = Deadline.until(100.0, "2026-12-01T06:00+01:00", now=0.0)
    admission = Admission([deadline])
    admission.record(BatchDone(0.0, 20.0, 10))
    assert admission.decide(78.0) == GO  # ends at 99 at the latest
    assert admission.decide(79.5) == Stop("--until 2026-12-01T06:00+01:00 reached")


@settings(max_examples=300, deadline=None)
@given(
    WINDOWS,
    ZONES,
    INSTANTS,
    st.lists(st.floats(min_value=0, max_value=4 * 3600), min_size=1, max_size=30),
)
def test_no_admitted_batch_is_predicted_to_end_after_the_window(
    spec: str, zone: str, at: datetime, durations: list[float]
) -> None:
    clock = Clock(at)
    g = gate(spec, zone, clock)
    for seconds in durations:
        g.record(BatchDone(0.0, seconds, 1))
    decision = g.decide(clock.mono)
    end = g.window.current_end(at)
    predicted = at + timedelta(seconds=g.recent.p95)
    if isinstance(decision, Go):
        assert g.window.is_open(at)
        assert end is None or predicted < end
    else:
        assert isinstance(decision, Wait)
        assert decision.until > clock.mono
        assert g.opens_at is not None
        assert g.opens_at > at
