"""pause, resume and cancel: said from another connection, obeyed after the batch in flight."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from helpers import connect, seed_table
from run_support import (
    assert_completed,
    backfill,
    run,
    write_migration,
)

from cryptopi_batch import commands
from cryptopi_batch.db import ConnectionSettings
from cryptopi_batch.errors import RunCancelled, Stopped, UsageError

pytestmark = pytest.mark.anyio

TABLE = "matrices.dyn_values"
ROWS = 600

# Each batch sleeps, so a control command lands while batches are still to come.
SLOW = f'''
    """Touch every row once, slowly."""
    from cryptopi_batch import Backfill

    migration = Backfill(
        table="{TABLE}", key="id", batch_size=50,
        sql="UPDATE {TABLE} SET touched = touched + 1"
            " WHERE {{range}} AND (SELECT pg_sleep(0.05)) IS NOT NULL",
    )
'''


async def _control(dsn: str, directory: Path, command: str, name: str) -> commands.ControlResult:
    return await commands.control(
        command, name, directory=directory, connection=ConnectionSettings(dsn=dsn)
    )


# What the runner's stop line tells the user to do next, after each command.
_ADVICE = {
    "pause": "`resume {name}` lifts the pause, then `run` continues",
    "cancel": (
        "`resume {name}` takes it up again from its checkpoint, `run --restart` starts it over"
    ),
}


async def _run_until_stopped(dsn: str, directory: Path, name: str, command: str) -> int:
    """Start a run, say ``command`` once two batches committed; returns batches done then.
    The run stops saying what to do next."""
    conn = await connect(dsn)
    said_at = -1
    try:
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:

                async def say_when_running() -> None:
                    nonlocal said_at
                    while True:
                        done = (
                            await conn.fetchval(
                                "SELECT batches_done FROM ops.backfills WHERE name = $1", name
                            )
                            if await conn.fetchval("SELECT to_regclass('ops.backfills')")
                            else None
                        )
                        if done is not None and done >= 2:
                            await _control(dsn, directory, command, name)
                            said_at = int(done)
                            return
                        await anyio.sleep(0.01)

                tg.start_soon(say_when_running)
                with pytest.raises(Stopped) as stopped:
                    await run(dsn, directory, name)
        assert stopped.value.message.endswith(_ADVICE[command].format(name=name))
    finally:
        await conn.close()
    return said_at


async def test_pause_stops_after_the_batch_in_flight_and_resume_lets_run_finish(dsn, tmp_path):
    conn = await connect(dsn)
    try:
        await seed_table(conn, TABLE, ROWS)
        name = write_migration(tmp_path, "slow_touch", SLOW)
        said_at = await _run_until_stopped(dsn, tmp_path, name, "pause")

        row = await backfill(conn, name)
        assert row["status"] == "paused"
        # The batch running when the pause was said may commit; no batch after it.
        assert said_at <= row["batches_done"] <= said_at + 1
        assert row["batches_done"] * 50 < ROWS
        # Nothing is held: a range claimed ahead went back as 'pending'.
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM ops.backfill_batches WHERE backfill = $1"
                " AND status = 'running'",
                name,
            )
            == 0
        )
        # The checkpoint and the table agree: the rows touched are those of done batches.
        assert await conn.fetchval(f"SELECT max(touched) FROM {TABLE}") == 1
        assert await conn.fetchval(
            f"SELECT count(*) FROM {TABLE} WHERE touched = 1"
        ) == await conn.fetchval(
            "SELECT sum(keys) FROM ops.backfill_batches WHERE backfill = $1 AND status = 'done'",
            name,
        )

        with pytest.raises(Stopped, match="paused"):  # a paused run does not start
            await run(dsn, tmp_path, name)
        result = await _control(dsn, tmp_path, "resume", name)
        assert result.changed
        assert result.status == "running"
        await run(dsn, tmp_path, name)
        await assert_completed(conn, name, TABLE, ROWS)
    finally:
        await conn.close()


async def test_cancel_stops_the_run_and_restart_starts_it_over(dsn, tmp_path):
    conn = await connect(dsn)
    try:
        await seed_table(conn, TABLE, ROWS)
        name = write_migration(tmp_path, "slow_touch", SLOW)
        await _run_until_stopped(dsn, tmp_path, name, "cancel")
        assert (await backfill(conn, name))["status"] == "cancelled"
        with pytest.raises(RunCancelled) as refused:
            await run(dsn, tmp_path, name)
        assert refused.value.exit_code == 2
        assert (await backfill(conn, name))["status"] == "cancelled"

        await conn.execute(f"UPDATE {TABLE} SET touched = 0")
        await run(dsn, tmp_path, name, restart=True)
        await assert_completed(conn, name, TABLE, ROWS)
    finally:
        await conn.close()


async def test_resume_of_a_cancelled_run_keeps_its_checkpoint_and_run_finishes_it(dsn, tmp_path):
    """The way back from a cancel, besides --restart: `resume` sets the run running again
    with every counter as it was; `run` then does only the batches left, each row once."""
    conn = await connect(dsn)
    try:
        await seed_table(conn, TABLE, ROWS)
        name = write_migration(tmp_path, "slow_touch", SLOW)
        await _run_until_stopped(dsn, tmp_path, name, "cancel")
        cancelled = await backfill(conn, name)
        assert cancelled["status"] == "cancelled"
        assert 0 < cancelled["batches_done"] < ROWS // 50

        result = await _control(dsn, tmp_path, "resume", name)
        assert (result.before, result.status, result.changed) == ("cancelled", "running", True)
        assert result.line == (
            f"{name}: resumed with its checkpoint kept"
            f" ({cancelled['keys_done']:,} keys done); `run {name}` continues it"
        )
        resumed = await backfill(conn, name)
        assert resumed["status"] == "running"
        for column in ("batches_done", "keys_done", "rows_processed", "frontier", "end_key"):
            assert resumed[column] == cancelled[column], column

        finished = await run(dsn, tmp_path, name)
        assert finished.outcome is not None
        # Only the batches left were run: those done before the cancel were not redone.
        assert finished.outcome.progress.batches == ROWS // 50 - cancelled["batches_done"]
        assert finished.outcome.progress.rows == ROWS - cancelled["rows_processed"]
        await assert_completed(conn, name, TABLE, ROWS)  # every row touched exactly once
    finally:
        await conn.close()


@pytest.mark.parametrize("command", ["pause", "resume", "cancel"])
async def test_control_of_a_migration_that_never_ran_is_refused(dsn, tmp_path, command):
    conn = await connect(dsn)
    try:
        await seed_table(conn, TABLE, 100)
        other = write_migration(tmp_path, "other", SLOW, stamp="20260101_0001")
        name = write_migration(tmp_path, "slow_touch", SLOW)
        refusal = f"{name} has not started; there is nothing to {command}"
        # Before the ops schema exists, and beside another migration's run.
        with pytest.raises(UsageError) as before_schema:
            await _control(dsn, tmp_path, command, name)
        assert before_schema.value.message == refusal
        await run(dsn, tmp_path, other)
        with pytest.raises(UsageError) as beside_a_run:
            await _control(dsn, tmp_path, command, name)
        assert beside_a_run.value.message == refusal
        assert beside_a_run.value.exit_code == 2
        assert await conn.fetchval("SELECT count(*) FROM ops.backfills WHERE name = $1", name) == 0
    finally:
        await conn.close()


@pytest.mark.parametrize("command", ["pause", "resume", "cancel"])
async def test_a_migration_the_seeds_tooling_recorded_is_completed_before_any_run_of_ours(
    dsn, tmp_path, command
):
    """ops.migrations made and filled by the seed's tooling, no ops schema of ours yet:
    `status` says completed, as `list` does, and pause/resume/cancel say so (not "has not
    started"); nothing of ours is created."""
    conn = await connect(dsn)
    try:
        name = write_migration(tmp_path, "slow_touch", SLOW)
        await conn.execute(
            "CREATE SCHEMA ops; CREATE TABLE ops.migrations (id serial PRIMARY KEY,"
            " filename text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        await conn.execute("INSERT INTO ops.migrations (filename) VALUES ($1)", f"{name}.py")
        rows = await commands.status(
            name, directory=tmp_path, connection=ConnectionSettings(dsn=dsn)
        )
        assert [r.status for r in rows] == ["completed"]
        with pytest.raises(UsageError) as refused:
            await _control(dsn, tmp_path, command, name)
        assert refused.value.message == f"{name} has completed; there is nothing to {command}"
        assert await conn.fetchval("SELECT to_regclass('ops.backfills')") is None
    finally:
        await conn.close()


@pytest.mark.parametrize("command", ["pause", "resume", "cancel"])
async def test_control_of_a_completed_migration_is_refused_and_changes_nothing(
    dsn, tmp_path, command
):
    conn = await connect(dsn)
    try:
        await seed_table(conn, TABLE, 100)
        name = write_migration(tmp_path, "slow_touch", SLOW)
        await run(dsn, tmp_path, name)
        completed = await backfill(conn, name)
        with pytest.raises(UsageError) as refused:
            await _control(dsn, tmp_path, command, name)
        assert refused.value.exit_code == 2
        assert refused.value.message == f"{name} has completed; there is nothing to {command}"
        after = await backfill(conn, name)
        assert (after["status"], after["updated_at"]) == ("completed", completed["updated_at"])
    finally:
        await conn.close()


async def test_pause_twice_and_cancel_twice_say_so_and_change_nothing_more(dsn, tmp_path):
    conn = await connect(dsn)
    try:
        await seed_table(conn, TABLE, ROWS)
        name = write_migration(tmp_path, "slow_touch", SLOW)
        await _run_until_stopped(dsn, tmp_path, name, "pause")
        paused = await backfill(conn, name)
        again = await _control(dsn, tmp_path, "pause", name)
        assert (again.changed, again.status, again.line) == (
            False,
            "paused",
            f"{name} is already paused",
        )
        assert (await backfill(conn, name))["updated_at"] == paused["updated_at"]

        cancel = await _control(dsn, tmp_path, "cancel", name)
        assert (cancel.before, cancel.status) == ("paused", "cancelled")
        twice = await _control(dsn, tmp_path, "cancel", name)
        assert (twice.changed, twice.line) == (False, f"{name} is already cancelled")
        with pytest.raises(UsageError) as not_paused:  # a cancelled run is not paused
            await _control(dsn, tmp_path, "pause", name)
        assert not_paused.value.message.startswith(
            f"{name} was cancelled; there is nothing to pause"
        )
        assert (await backfill(conn, name))["status"] == "cancelled"
    finally:
        await conn.close()


async def test_a_run_another_runner_failed_stops_and_keeps_that_error(dsn, tmp_path):
    """Another runner's failure (its error in ops.backfills, the run 'failed') stops this
    runner after its current batch, as a pause does, and its commits do not wipe the error:
    `status` goes on showing why the run failed."""
    conn = await connect(dsn)
    try:
        await seed_table(conn, TABLE, ROWS)
        name = write_migration(tmp_path, "slow_touch", SLOW)
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:

                async def fail_it_elsewhere() -> None:
                    while not (  # noqa: ASYNC110 -- polls the database
                        await conn.fetchval("SELECT to_regclass('ops.backfills')")
                        and await conn.fetchval(
                            "SELECT EXISTS (SELECT FROM ops.backfills WHERE batches_done >= 2)"
                        )
                    ):
                        await anyio.sleep(0.01)
                    await conn.execute(
                        "UPDATE ops.backfills SET status = 'failed',"
                        " last_error = 'E1: from another runner'"
                    )

                tg.start_soon(fail_it_elsewhere)
                with pytest.raises(Stopped, match="migration failed"):
                    await run(dsn, tmp_path, name)

        row = await backfill(conn, name)
        assert (row["status"], row["last_error"]) == ("failed", "E1: from another runner")
        assert row["batches_done"] * 50 < ROWS
        assert (
            await conn.fetchval(
                "SELECT count(*) FROM ops.backfill_batches WHERE backfill = $1"
                " AND status = 'running'",
                name,
            )
            == 0
        )
        await run(dsn, tmp_path, name)  # `run` resumes a failed run
        await assert_completed(conn, name, TABLE, ROWS)
    finally:
        await conn.close()
