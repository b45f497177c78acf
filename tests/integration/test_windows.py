"""Off-peak windows on real runs: no batch starts past the window's end, the run waits
(shown once in ``status``) and goes on at the next opening; ``--exit-outside-window`` and
a past ``--until`` exit 3 having written nothing; a pause while waiting stops at once.

The windows are built from the current UTC time with second resolution (every day, so a
test near midnight needs nothing special).
"""

from __future__ import annotations

import functools
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
import structlog
from helpers import connect, seed_table
from run_support import assert_completed, backfill, run, touching_process, write_migration

from cryptopi_batch import commands
from cryptopi_batch.db import ConnectionSettings
from cryptopi_batch.errors import Stopped

pytestmark = pytest.mark.anyio

TABLE = "matrices.dyn_values"
ROWS = 500  # 10 batches of 50

# Each batch notes when it started (committed with it) and takes about half a second.
SLOW = touching_process(
    "Touch every row once, slowly, noting when each batch started.",
    "INSERT INTO public.batch_starts VALUES (clock_timestamp()); SELECT pg_sleep(0.5)",
)


def clock(at: datetime) -> str:
    """As a window's normalised text shows it: seconds only when not 0."""
    return at.strftime("%H:%M:%S" if at.second else "%H:%M")


def span(start: datetime, end: datetime) -> str:
    return f"{clock(start)}-{clock(end)}"


async def _prepare(conn, tmp_path: Path) -> str:
    await seed_table(conn, TABLE, ROWS)
    await conn.execute("CREATE TABLE public.batch_starts (at timestamptz NOT NULL)")
    return write_migration(tmp_path, "slow_touch", SLOW)


async def _status(dsn: str, tmp_path: Path, name: str) -> commands.StatusRow:
    (row,) = await commands.status(name, directory=tmp_path, connection=ConnectionSettings(dsn=dsn))
    return row


async def test_a_closing_window_lets_batches_in_flight_commit_waits_then_goes_on(dsn, tmp_path):
    conn = await connect(dsn)
    try:
        name = await _prepare(conn, tmp_path)
        now = datetime.now(UTC).replace(microsecond=0)
        end = now + timedelta(seconds=5)
        opens = now + timedelta(seconds=12)
        window = (
            f"{span(now - timedelta(seconds=60), end)}, {span(opens, opens + timedelta(minutes=5))}"
        )
        waiting: list[commands.StatusRow] = []

        async def watch() -> None:
            while not waiting:
                if await conn.fetchval("SELECT to_regclass('ops.backfills')"):
                    row = await _status(dsn, tmp_path, name)
                    if row.status == "waiting":
                        waiting.append(row)
                await anyio.sleep(0.2)

        with anyio.fail_after(40):
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                result = await run(dsn, tmp_path, name, window=window)
                tg.cancel_scope.cancel()
        assert result.outcome is not None
        await assert_completed(conn, name, TABLE, ROWS)

        starts = [r["at"] for r in await conn.fetch("SELECT at FROM public.batch_starts")]
        assert len(starts) == 10
        # Some batches in the first window, the rest after the opening; none between.
        assert any(s < end for s in starts)
        assert any(s >= opens for s in starts)
        assert not [s for s in starts if end <= s < opens]
        # A batch that started in the first window also committed in it.
        finished = await conn.fetch(
            "SELECT finished_at FROM ops.backfill_batches WHERE backfill = $1", name
        )
        assert not [f for f in finished if end < f["finished_at"] < opens]

        # While it waited, status said so, once for the run, with the next opening.
        assert waiting, "status never said waiting"
        row = waiting[0]
        assert (
            row.waiting_reason == f"outside window, opens {clock(opens)} UTC ({opens:%a %Y-%m-%d})"
        )
        assert row.next_window_at == opens.isoformat()
        assert row.window is not None
        assert row.window.endswith(" UTC")
        stored = await backfill(conn, name)
        assert stored["window_timezone"] == "UTC"
        assert stored["waiting_reason"] is None  # cleared when batches went on
    finally:
        await conn.close()


async def _nothing_written(conn) -> None:
    assert await conn.fetchval("SELECT to_regclass('ops.backfills')") is None
    assert await conn.fetchval(f"SELECT count(*) FROM {TABLE} WHERE touched > 0") == 0
    assert await conn.fetchval("SELECT count(*) FROM public.batch_starts") == 0


async def test_exit_outside_window_outside_exits_3_writing_nothing(dsn, tmp_path):
    conn = await connect(dsn)
    try:
        name = await _prepare(conn, tmp_path)
        later = datetime.now(UTC) + timedelta(hours=1)
        window = span(later, later + timedelta(hours=1))
        with pytest.raises(Stopped) as stopped:
            await run(dsn, tmp_path, name, window=window, timezone="UTC", exit_outside_window=True)
        assert stopped.value.exit_code == 3
        assert stopped.value.message.startswith(
            f"{name}: outside the window {window} UTC; it opens"
        )
        assert stopped.value.message.endswith("; nothing was written")
        await _nothing_written(conn)
    finally:
        await conn.close()


async def test_until_in_the_past_exits_3_before_any_batch(dsn, tmp_path):
    conn = await connect(dsn)
    try:
        name = await _prepare(conn, tmp_path)
        with pytest.raises(Stopped) as stopped:
            await run(dsn, tmp_path, name, until="2026-01-01T06:00+01:00")
        assert stopped.value.exit_code == 3
        assert stopped.value.message == (
            f"{name}: --until 2026-01-01T06:00:00+01:00 has passed; nothing was written"
        )
        await _nothing_written(conn)
    finally:
        await conn.close()


async def test_until_stops_before_a_batch_that_would_end_after_it(dsn, tmp_path):
    conn = await connect(dsn)
    try:
        name = await _prepare(conn, tmp_path)
        until = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=4)
        with anyio.fail_after(30), pytest.raises(Stopped) as stopped:
            await run(dsn, tmp_path, name, until=until.isoformat())
        assert stopped.value.exit_code == 3
        assert f"--until {until.isoformat()} reached; `run` resumes" in stopped.value.message
        starts = [r["at"] for r in await conn.fetch("SELECT at FROM public.batch_starts")]
        assert starts
        assert max(starts) < until
        finished = await conn.fetchval(
            "SELECT max(finished_at) FROM ops.backfill_batches WHERE backfill = $1", name
        )
        assert finished < until
        assert (await backfill(conn, name))["batches_done"] < 10  # resumable
    finally:
        await conn.close()


async def test_a_pause_while_waiting_stops_at_once(dsn, tmp_path):
    conn = await connect(dsn)
    try:
        name = await _prepare(conn, tmp_path)
        later = datetime.now(UTC) + timedelta(minutes=30)
        window = span(later, later + timedelta(minutes=5))
        paused_at = 0.0

        async def pause_when_waiting() -> None:
            nonlocal paused_at
            while True:
                if await conn.fetchval("SELECT to_regclass('ops.backfills')"):
                    row = await _status(dsn, tmp_path, name)
                    if row.status == "waiting":
                        break
                await anyio.sleep(0.1)
            await commands.control(
                "pause", name, directory=tmp_path, connection=ConnectionSettings(dsn=dsn)
            )
            paused_at = time.monotonic()

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(pause_when_waiting)
                with pytest.raises(Stopped) as stopped:
                    await run(dsn, tmp_path, name, window=window)
        assert time.monotonic() - paused_at < 5  # not at the opening, half an hour away
        assert stopped.value.message.startswith(f"{name}: migration paused")
        row = await backfill(conn, name)
        assert row["status"] == "paused"
        assert row["batches_done"] == 0
        assert await conn.fetchval(f"SELECT count(*) FROM {TABLE} WHERE touched > 0") == 0
    finally:
        await conn.close()


async def test_a_runner_with_another_window_is_told_and_keeps_its_own(dsn, tmp_path):
    conn = await connect(dsn)
    try:
        name = await _prepare(conn, tmp_path)
        with pytest.raises(Stopped):  # the row, with its window, and no batch
            await run(dsn, tmp_path, name, window="Sat 00:00-24:00", max_duration=0)
        row = await backfill(conn, name)
        assert (row["window_spec"], row["window_timezone"]) == ("Sat 00:00-24:00", "UTC")
        with structlog.testing.capture_logs() as logs, pytest.raises(Stopped):
            await run(
                dsn, tmp_path, name, window="Sun 00:00-24:00", timezone="Asia/Tokyo", max_duration=0
            )
        assert [e for e in logs if e["event"] == "window_differs"] == [
            {
                "event": "window_differs",
                "log_level": "warning",
                "stored": "Sat 00:00-24:00 UTC",
                "used": "Sun 00:00-24:00 Asia/Tokyo",
            }
        ]
        row = await backfill(conn, name)
        assert (row["window_spec"], row["window_timezone"]) == ("Sun 00:00-24:00", "Asia/Tokyo")
    finally:
        await conn.close()


async def test_several_runners_waiting_show_once_and_each_keeps_its_reason(dsn, tmp_path):
    conn = await connect(dsn)
    try:
        name = await _prepare(conn, tmp_path)
        later = datetime.now(UTC) + timedelta(minutes=30)
        window = span(later, later + timedelta(minutes=5))

        async def both_wait() -> None:
            while True:
                if await conn.fetchval("SELECT to_regclass('ops.backfills')"):
                    reasons = await conn.fetch(
                        "SELECT waiting_reason FROM ops.backfill_workers"
                        " WHERE backfill = $1 AND stopped_at IS NULL",
                        name,
                    )
                    if len(reasons) == 2 and all(r["waiting_reason"] for r in reasons):
                        break
                await anyio.sleep(0.1)
            rows = await commands.status(
                None, directory=None, connection=ConnectionSettings(dsn=dsn)
            )
            assert [(r.name, r.status, r.live_workers) for r in rows] == [(name, "waiting", 2)]
            await commands.control(
                "pause", name, directory=tmp_path, connection=ConnectionSettings(dsn=dsn)
            )

        stops: list[Stopped] = []

        async def runner() -> None:
            try:
                await run(dsn, tmp_path, name, window=window)
            except Stopped as exc:
                stops.append(exc)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(both_wait)
                tg.start_soon(runner)
                tg.start_soon(runner)
        assert len(stops) == 2
        assert (await backfill(conn, name))["batches_done"] == 0
    finally:
        await conn.close()


async def test_a_runner_that_joins_a_waiting_run_and_works_ends_its_waiting(dsn, tmp_path):
    conn = await connect(dsn)
    try:
        name = await _prepare(conn, tmp_path)
        now = datetime.now(UTC)
        closed = span(now + timedelta(minutes=30), now + timedelta(minutes=35))
        seen: list[str] = []

        async def status_is(state: str) -> None:
            while True:
                if (
                    await conn.fetchval("SELECT to_regclass('ops.backfills')")
                    and (await _status(dsn, tmp_path, name)).status == state
                ):
                    return
                await anyio.sleep(0.1)

        async def runner(**options: object) -> None:
            with pytest.raises(Stopped):
                await run(dsn, tmp_path, name, **options)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(functools.partial(runner, window=closed))
                await status_is("waiting")
                tg.start_soon(runner)  # any time: it works, so the run is not waiting (its start
                # clears the run's reason, its first beat writes its own: none)
                await status_is("running")
                reasons = await conn.fetch(
                    "SELECT waiting_reason FROM ops.backfill_workers"
                    " WHERE backfill = $1 AND stopped_at IS NULL ORDER BY started_at",
                    name,
                )
                seen = [r["waiting_reason"] is not None for r in reasons]
                await commands.control(
                    "pause", name, directory=tmp_path, connection=ConnectionSettings(dsn=dsn)
                )
        assert seen == [True, False]  # the first still waits; the run does not
    finally:
        await conn.close()


async def test_the_eta_of_a_steady_run_is_within_20_percent_of_its_finish(dsn, tmp_path):
    conn = await connect(dsn)
    try:
        await seed_table(conn, TABLE, 1000)
        await conn.execute("CREATE TABLE public.batch_starts (at timestamptz NOT NULL)")
        name = write_migration(tmp_path, "slow_touch", SLOW)  # 20 batches of about 0.5 s
        samples: list[tuple[float, float, float]] = []  # (when, percent, eta)

        async def sample() -> None:
            while True:
                if await conn.fetchval("SELECT to_regclass('ops.backfills')"):
                    row = await _status(dsn, tmp_path, name)
                    if row.status == "running" and row.percent and row.eta_seconds is not None:
                        samples.append((time.monotonic(), row.percent, row.eta_seconds))
                await anyio.sleep(0.5)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(sample)
                await run(dsn, tmp_path, name)
                finished = time.monotonic()
                tg.cancel_scope.cancel()
        # From 10 % progress on, while at least 2 s are left (the status's own second of
        # staleness would dominate after that): the predicted finish within ±20 % of the
        # time that was actually left.
        judged = [(t, eta) for t, percent, eta in samples if percent >= 10 and finished - t >= 2]
        assert len(judged) >= 5, samples
        errors = [abs(t + eta - finished) / (finished - t) for t, eta in judged]
        assert max(errors) <= 0.2, (errors, samples, finished)
    finally:
        await conn.close()


async def test_exit_outside_window_at_the_close_exits_3_after_the_batches_in_flight(dsn, tmp_path):
    conn = await connect(dsn)
    try:
        name = await _prepare(conn, tmp_path)
        now = datetime.now(UTC).replace(microsecond=0)
        end = now + timedelta(seconds=3)
        window = span(now - timedelta(seconds=60), end)
        with anyio.fail_after(30), pytest.raises(Stopped) as stopped:
            await run(dsn, tmp_path, name, window=window, exit_outside_window=True)
        assert stopped.value.exit_code == 3
        assert stopped.value.message.startswith(
            f"{name}: outside the window {window} UTC; it opens"
        )
        assert stopped.value.message.endswith("; `run` resumes")
        starts = [r["at"] for r in await conn.fetch("SELECT at FROM public.batch_starts")]
        assert starts
        assert max(starts) < end
        row = await backfill(conn, name)
        assert 0 < row["batches_done"] < 10
        assert (
            await conn.fetchval(f"SELECT count(*) FROM {TABLE} WHERE touched > 0")
            == (row["keys_done"])
        )
    finally:
        await conn.close()


async def test_a_paced_run_rate_counts_its_pauses(dsn, tmp_path):
    """The recent rate of a run that sleeps 1 s after each 50-key batch is 50 keys/s: from
    the first batch's commit to the last's (not from the first claim, which leaves a pause
    out and made it 60 here)."""
    conn = await connect(dsn)
    try:
        await seed_table(conn, TABLE, 300)
        name = write_migration(
            tmp_path,
            "touch",
            touching_process("Touch every row once.", "SELECT 1", batch_size=50),
        )
        await run(dsn, tmp_path, name, sleep="1s")
        row = await _status(dsn, tmp_path, name)
        assert row.keys_per_second is not None
        assert 45 <= row.keys_per_second <= 52, row
    finally:
        await conn.close()
