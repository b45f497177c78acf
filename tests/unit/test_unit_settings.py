"""Durations and the precedence of run settings: command line > migration > default."""

from __future__ import annotations

import pytest

from cryptopi_batch.arguments import build_parser, run_options
from cryptopi_batch.errors import MigrationDefinitionError, UsageError
from cryptopi_batch.migration import Backfill
from cryptopi_batch.settings import RunOptions, RunSettings, parse_duration, resolve_settings

SQL = "UPDATE t SET x = 1 WHERE {range}"


def backfill(**declared) -> Backfill:
    return Backfill(table="t", sql=SQL, **declared)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("2s", 2.0),
        ("2sec", 2.0),
        ("1.5s", 1.5),
        ("5min", 300.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("30", 30.0),
        (" 10 s ", 10.0),
        ("0", 0.0),
    ],
)
def test_parse_duration_reads_units(text, seconds):
    assert parse_duration(text, "--x") == pytest.approx(seconds)


@pytest.mark.parametrize(("number", "seconds"), [(1.5, 1.5), (2, 2.0), (0, 0.0)])
def test_parse_duration_takes_numbers_as_seconds(number, seconds):
    result = parse_duration(number, "--x")
    assert result == seconds
    assert isinstance(result, float)


def test_parse_duration_of_nothing_is_nothing():
    assert parse_duration(None, "--x") is None


@pytest.mark.parametrize(
    "text", ["", "abc", "5 minutes", "2d", "1e3", "-1s", "1,5s", "s", "2S", "1h30m", "inf", "nan"]
)
def test_parse_duration_refuses_what_is_not_a_duration(text):
    with pytest.raises(UsageError, match="--sleep"):
        parse_duration(text, "--sleep")


def test_parse_duration_refuses_a_negative_number():
    with pytest.raises(UsageError, match="negative"):
        parse_duration(-0.5, "--sleep")


# --- resolve_settings -------------------------------------------------------------------


def test_without_options_or_declarations_the_defaults_apply():
    settings = resolve_settings(RunOptions(), backfill())
    defaults = RunSettings()
    assert settings.batch_size == Backfill.batch_size  # the migration's own default
    assert settings.workers == defaults.workers
    assert settings.throttle.max_rows_per_second is None
    assert settings.throttle.sleep == 0.0
    assert settings.throttle.target_batch_seconds is None
    assert settings.timeouts == defaults.timeouts
    assert settings.max_duration is None
    assert settings.lease_seconds == defaults.lease_seconds


def test_the_migrations_declarations_beat_the_defaults():
    settings = resolve_settings(
        RunOptions(),
        backfill(
            batch_size=250,
            workers=3,
            max_rows_per_second=1000.0,
            sleep=0.25,
            target_batch_seconds=2.0,
            lock_timeout=0.5,
            statement_timeout=60.0,
        ),
    )
    assert settings.batch_size == 250
    assert settings.workers == 3
    assert settings.throttle.max_rows_per_second == 1000.0
    assert settings.throttle.sleep == 0.25
    assert settings.throttle.target_batch_seconds == 2.0
    assert settings.timeouts.lock_timeout == 0.5
    assert settings.timeouts.statement_timeout == 60.0


def test_the_command_line_beats_the_migration():
    settings = resolve_settings(
        RunOptions(
            batch_size=50,
            workers=2,
            max_rows_per_second=10.0,
            sleep="100ms",
            target_batch_seconds="3s",
            lock_timeout="1s",
            statement_timeout="5min",
            max_duration="2h",
            lease_seconds=5.0,
        ),
        backfill(
            batch_size=250,
            workers=3,
            max_rows_per_second=1000.0,
            sleep=0.25,
            target_batch_seconds=2.0,
            lock_timeout=0.5,
            statement_timeout=60.0,
        ),
    )
    assert settings.batch_size == 50
    assert settings.workers == 2
    assert settings.throttle.max_rows_per_second == 10.0
    assert settings.throttle.sleep == pytest.approx(0.1)
    assert settings.throttle.target_batch_seconds == 3.0
    assert settings.timeouts.lock_timeout == 1.0
    assert settings.timeouts.statement_timeout == 300.0
    assert settings.max_duration == 7200.0
    assert settings.lease_seconds == 5.0


def test_an_explicit_zero_on_the_command_line_beats_the_migration():
    """0 is a value, not "not given": `--sleep 0` and `--lock-timeout 0` override."""
    settings = resolve_settings(
        RunOptions(sleep="0", lock_timeout="0"), backfill(sleep=2.0, lock_timeout=5.0)
    )
    assert settings.throttle.sleep == 0.0
    assert settings.timeouts.lock_timeout == 0.0


def test_flags_pass_through():
    settings = resolve_settings(
        RunOptions(force=True, restart=True, catch_up=True, yes=True, progress=True), backfill()
    )
    assert (
        settings.force,
        settings.restart,
        settings.catch_up,
        settings.yes,
        settings.progress,
    ) == (True, True, True, True, True)


@pytest.mark.parametrize(
    ("options", "declared", "complaint"),
    [
        (RunOptions(batch_size=0), {}, "--batch-size"),
        (RunOptions(batch_size=-5), {}, "--batch-size"),
        (RunOptions(workers=0), {}, "--workers"),
        (RunOptions(workers=-1), {}, "--workers"),
        (RunOptions(), {"workers": 0}, "--workers"),
        (RunOptions(max_rows_per_second=0.0), {}, "--max-rows-per-second"),
        (RunOptions(max_rows_per_second=-1.0), {}, "--max-rows-per-second"),
        (RunOptions(), {"max_rows_per_second": 0.0}, "--max-rows-per-second"),
        (RunOptions(sleep="soon"), {}, "--sleep"),
        (RunOptions(), {"sleep": -1.0}, "--sleep"),
        (RunOptions(target_batch_seconds="fast"), {}, "--target-batch-seconds"),
        (RunOptions(lock_timeout="-1s"), {}, "--lock-timeout"),
        (RunOptions(statement_timeout="1 hour"), {}, "--statement-timeout"),
        (RunOptions(max_duration="forever"), {}, "--max-duration"),
        # Past what PostgreSQL or the ops tables hold: refused before anything is written.
        (RunOptions(batch_size=2**31), {}, "--batch-size"),
        (RunOptions(statement_timeout="100000000h"), {}, "--statement-timeout"),
        (RunOptions(lock_timeout=3e6), {}, "--lock-timeout"),
        (RunOptions(lease_seconds=3e6), {}, "--lease-seconds"),
        (RunOptions(lease_seconds=float("nan")), {}, "--lease-seconds"),
        (RunOptions(max_rows_per_second=float("nan")), {}, "--max-rows-per-second"),
        (RunOptions(max_rows_per_second=float("inf")), {}, "--max-rows-per-second"),
        # Declared in the migration with the wrong type: named as its field too.
        (RunOptions(), {"workers": "2"}, "workers="),
        (RunOptions(), {"workers": True}, "workers="),
        (RunOptions(), {"max_rows_per_second": "fast"}, "max_rows_per_second="),
        (RunOptions(), {"statement_timeout": [1]}, "statement_timeout="),
    ],
)
def test_invalid_values_are_usage_errors(options, declared, complaint):
    with pytest.raises(UsageError, match=complaint):
        resolve_settings(options, backfill(**declared))


@pytest.mark.parametrize(
    ("argv", "expected"),
    [([], None), (["--synchronous-commit", "on"], True), (["--synchronous-commit", "off"], False)],
)
def test_synchronous_commit_on_the_command_line(argv: list[str], expected: bool | None) -> None:
    """Not given leaves the migration's declaration in force; on/off override it."""
    args = build_parser().parse_args(["run", "x", *argv])
    options = run_options(args, progress=False)
    assert options.synchronous_commit is expected
    resolved = resolve_settings(
        options, backfill(synchronous_commit=True)
    ).timeouts.synchronous_commit
    assert resolved is (True if expected is None else expected)


def test_synchronous_commit_is_one_of_on_and_off() -> None:
    with pytest.raises(UsageError, match="synchronous-commit"):
        build_parser().parse_args(["run", "x", "--synchronous-commit", "maybe"])


@pytest.mark.parametrize(
    ("options", "declared", "project", "spec", "zone"),
    [
        ({}, {}, {}, None, None),
        (
            {},
            {},
            {"window": "22:00-06:00", "timezone": "Europe/Berlin"},
            "22:00-06:00",
            "Europe/Berlin",
        ),
        (
            {},
            {"window": "Sat 00:00-24:00"},
            {"window": "22:00-06:00", "timezone": "Europe/Berlin"},
            "Sat 00:00-24:00",
            "Europe/Berlin",  # each key by its own precedence
        ),
        (
            {"window": "Mon-Fri 01:00-02:00", "timezone": "Asia/Tokyo"},
            {"window": "Sat 00:00-24:00", "timezone": "Europe/Berlin"},
            {"window": "22:00-06:00"},
            "Mon-Fri 01:00-02:00",
            "Asia/Tokyo",
        ),
        ({"window": "22:00-06:00"}, {}, {}, "22:00-06:00", "UTC"),  # the default zone
    ],
)
def test_window_precedence_command_line_migration_project(options, declared, project, spec, zone):
    window = resolve_settings(RunOptions(**options), backfill(**declared), project).schedule.window
    if spec is None:
        assert window is None
    else:
        assert window is not None
        assert (window.spec, window.timezone) == (spec, zone)


@pytest.mark.parametrize(
    ("options", "declared", "project", "complaint"),
    [
        (
            {"window": "Mon-Fry 22:00-06:00"},
            {},
            {},
            '--window: "Mon-Fry 22:00-06:00": unknown weekday "Fry"',
        ),
        ({}, {"window": "25:00-06:00"}, {}, 'window=: "25:00-06:00": no such time of day'),
        ({}, {}, {"window": "Mon"}, '[tool.cryptopi_batch] window: "Mon": weekdays without'),
        ({}, {}, {"window": 22}, "[tool.cryptopi_batch] window must be a string, not 22"),
        ({"timezone": "Mars/Olympus"}, {}, {}, '--timezone: unknown time zone "Mars/Olympus"'),
        (
            {},
            {"window": "22:00-06:00", "timezone": "Berlin"},
            {},
            'timezone=: unknown time zone "Berlin"',
        ),
        ({"until": "2026-12-01T06:00"}, {}, {}, '--until: "2026-12-01T06:00" has no UTC offset'),
    ],
)
def test_invalid_windows_name_where_they_came_from(options, declared, project, complaint):
    with pytest.raises(UsageError) as caught:
        resolve_settings(RunOptions(**options), backfill(**declared), project)
    assert caught.value.message.startswith(complaint)


def test_window_options_on_the_command_line() -> None:
    args = build_parser().parse_args(
        [
            "run",
            "x",
            "--window",
            "Sat 00:00-24:00",
            "--timezone",
            "Europe/Berlin",
            "--exit-outside-window",
            "--until",
            "2026-12-01T06:00+01:00",
        ]
    )
    schedule = resolve_settings(run_options(args, progress=False), backfill()).schedule
    assert schedule.window is not None
    assert str(schedule.window) == "Sat 00:00-24:00 Europe/Berlin"
    assert schedule.exit_outside_window
    assert schedule.until is not None
    assert schedule.until.isoformat() == "2026-12-01T06:00:00+01:00"


# --- health gates and budgets ---------------------------------------------------------


def test_health_defaults_are_the_documented_ones():
    health = resolve_settings(RunOptions(), backfill()).health
    assert health.max_replica_lag == 10.0
    assert health.max_transaction_age == 1800.0
    assert health.max_blocking == 1.0
    assert health.max_active_connections is None
    assert health.max_wal_rate is None
    assert health.off == frozenset()


def test_health_options_override_the_migration():
    args = build_parser().parse_args(
        [
            "run",
            "m",
            "--max-replica-lag",
            "2s",
            "--max-transaction-age",
            "5min",
            "--max-blocking",
            "500ms",
            "--max-active-connections",
            "40",
            "--check",
            "SELECT true",
            "--no-gate",
            "autovacuum",
            "--no-gate",
            "replica_lag",
            "--max-wal-rate",
            "20MB",
            "--replica-dsn",
            "postgresql://u@replica:5433/db",
        ]
    )
    declared = backfill(max_replica_lag=30, max_blocking="3s", max_wal_rate="1GB")
    health = resolve_settings(run_options(args, progress=False), declared).health
    assert health.max_replica_lag == 2.0
    assert health.max_transaction_age == 300.0
    assert health.max_blocking == 0.5
    assert health.max_active_connections == 40
    assert health.check == "SELECT true"
    assert health.off == {"autovacuum", "replica-lag"}
    assert health.max_wal_rate == 20e6
    assert health.replica_dsns == ("postgresql://u@replica:5433/db",)


def test_the_migration_declares_health_limits():
    health = resolve_settings(
        RunOptions(), backfill(max_replica_lag="30s", max_wal_rate=1024, no_gate=("check",))
    ).health
    assert health.max_replica_lag == 30.0
    assert health.max_wal_rate == 1024.0
    assert health.off == {"check"}


def test_no_gates_switches_every_gate_off():
    health = resolve_settings(RunOptions(no_gates=True), backfill()).health
    assert health.off == {
        "replica-lag",
        "transaction-age",
        "blocking",
        "active-connections",
        "autovacuum",
        "check",
    }


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_replica_lag": "10 light-years"}, "--max-replica-lag (or max_replica_lag=): not a"),
        ({"max_transaction_age": "-1s"}, "--max-transaction-age (or max_transaction_age=)"),
        ({"max_blocking": "soon"}, "--max-blocking (or max_blocking=): not a duration"),
        ({"max_active_connections": 0}, "--max-active-connections (or max_active_connections=)"),
        ({"max_wal_rate": "20 furlongs"}, "--max-wal-rate (or max_wal_rate=): not a size"),
        ({"max_wal_rate": "0MB"}, "--max-wal-rate (or max_wal_rate=) must be a size of more"),
        ({"no_gate": ("replica-lagg",)}, "--no-gate: no gate 'replica-lagg' (the gates:"),
        ({"check": "  "}, "--check (or check=) must be a query, not blank"),
        ({"replica_dsn": ("",)}, "--replica-dsn: it is blank"),
        ({"replica_dsn": ("postgresql://u:hunter2@h:99999/db",)}, "--replica-dsn: "),
    ],
)
def test_bad_health_options_are_refused_in_one_line(options, message):
    with pytest.raises(UsageError) as caught:
        resolve_settings(RunOptions(**options), backfill())
    assert caught.value.message.startswith(message), caught.value.message
    assert "hunter2" not in caught.value.message


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        ({"checks": (lambda conn: True,)}, "Backfill checks= must be a list of async functions"),
        ({"checks": "SELECT 1"}, "Backfill checks= must be a list of async functions"),
        ({"no_gate": "check"}, "Backfill no_gate= must be a list of gate names"),
    ],
)
def test_bad_health_declarations_are_refused(declared, message):
    with pytest.raises(MigrationDefinitionError, match=message):
        backfill(**declared)
