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
    "cancel": "`run --restart` starts it again",
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


async def test_cancel_stops_for_good_until_restart(dsn, tmp_path):
    conn = await connect(dsn)
    try:
        await seed_table(conn, TABLE, ROWS)
        name = write_migration(tmp_path, "slow_touch", SLOW)
        await _run_until_stopped(dsn, tmp_path, name, "cancel")
        assert (await backfill(conn, name))["status"] == "cancelled"
        with pytest.raises(RunCancelled) as refused:
            await run(dsn, tmp_path, name)
        assert refused.value.exit_code == 2
        # resume does not lift a cancel
        assert not (await _control(dsn, tmp_path, "resume", name)).changed

        await conn.execute(f"UPDATE {TABLE} SET touched = 0")
        await run(dsn, tmp_path, name, restart=True)
        await assert_completed(conn, name, TABLE, ROWS)
    finally:
        await conn.close()


async def test_control_of_a_migration_that_never_ran_is_refused(dsn, tmp_path):
    name = write_migration(tmp_path, "slow_touch", SLOW)
    with pytest.raises(UsageError, match="has not started"):
        await _control(dsn, tmp_path, "pause", name)


async def test_pausing_a_completed_migration_changes_nothing(dsn, tmp_path):
    conn = await connect(dsn)
    try:
        await seed_table(conn, TABLE, 100)
        name = write_migration(tmp_path, "slow_touch", SLOW)
        await run(dsn, tmp_path, name)
        result = await _control(dsn, tmp_path, "pause", name)
        assert not result.changed
        assert result.status == "completed"
        assert (await backfill(conn, name))["status"] == "completed"
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
