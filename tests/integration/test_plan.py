"""`plan NAME` on a real server: it writes nothing (the table's write counters and the ops
schema, absent or present with its rows, are as they were), and it says what a run would
do and what to look out for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from helpers import query_now, run_cli, run_in_thread
from test_flow import flow_dir, migrate, seed, write

COUNTERS = (
    "SELECT n_tup_ins, n_tup_upd, n_tup_del, n_tup_hot_upd, n_live_tup, n_dead_tup"
    " FROM pg_stat_user_tables WHERE relid = 'matrices.dyn_values'::regclass"
)
OPS_TABLES = ("migrations", "migration_files", "backfills", "backfill_batches", "backfill_workers")

TOUCH = '''
"""Touch every row."""
from cryptopi_batch import Backfill

migration = Backfill(table="matrices.dyn_values", batch_size=100,
                     sql="UPDATE matrices.dyn_values SET touched = touched + 1 WHERE {range}")
'''


def database_state(dsn: str) -> dict[str, Any]:
    """The target's write counters as the statistics have them after every session's flush,
    and every ops table's rows (None: no ops schema)."""

    async def go() -> dict[str, Any]:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("SELECT pg_stat_force_next_flush()")
            await conn.execute("SELECT pg_stat_clear_snapshot()")
            state: dict[str, Any] = {"counters": dict(await conn.fetchrow(COUNTERS) or {})}
            ops = await conn.fetchval("SELECT to_regnamespace('ops') IS NOT NULL")
            for table in OPS_TABLES:
                state[table] = (
                    [tuple(r) for r in await conn.fetch(f"SELECT * FROM ops.{table} ORDER BY 1")]
                    if ops
                    else None
                )
            return state
        finally:
            await conn.close()

    return run_in_thread(go)


def plan(dsn: str, directory: Path, *args: str) -> Any:
    result = run_cli("plan", "--migrations-dir", str(directory), *args, dsn=dsn)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout) if "--json" in args else result.stdout


@pytest.mark.parametrize("ops", ["absent", "present"])
def test_plan_writes_nothing(dsn: str, tmp_path: Path, ops: str) -> None:
    seed(dsn)
    directory = flow_dir(tmp_path / "migrations")
    write(directory, "20250302_0900_touch.py", TOUCH)
    names = ["touch"]
    if ops == "present":  # applied up to the columns backfill_flag needs; a run recorded
        assert migrate(dsn, directory, "--to", "add_flag_and_score").returncode == 0
        names.append("backfill_flag")
    before = database_state(dsn)
    assert (before["migrations"] is None) == (ops == "absent")
    for args in ((), ("--exact",), ("--json",)):
        for name in names:
            plan(dsn, directory, name, *args)
    assert database_state(dsn) == before


def test_a_sample_times_the_first_batch_and_rolls_it_back(dsn: str, tmp_path: Path) -> None:
    """A rolled-back UPDATE still counts in n_tup_upd and leaves dead rows: the sample is
    asked for (--sample), and nothing of it stays in the table."""
    seed(dsn)
    directory = tmp_path / "migrations"
    write(directory, "20250301_0900_touch.py", TOUCH)
    found = plan(dsn, directory, "touch", "--sample", "--json")
    assert found["sample_rows"] == 100
    assert found["sample_seconds"] > 0
    assert found["estimated_seconds"] == pytest.approx(found["sample_seconds"] * 5)
    assert query_now(dsn, "SELECT sum(touched) AS s FROM matrices.dyn_values")[0]["s"] == 0
    assert query_now(dsn, "SELECT to_regnamespace('ops') AS o")[0]["o"] is None


def test_plan_says_the_range_the_batches_and_the_first_batch(dsn: str, tmp_path: Path) -> None:
    seed(dsn)
    directory = tmp_path / "migrations"
    write(directory, "20250301_0900_touch.py", TOUCH)
    found = plan(dsn, directory, "touch", "--json", "--batch-size", "40")
    assert (found["first_key"], found["last_key"], found["rows"]) == (["1"], ["500"], 500)
    assert (found["batch_size"], found["batches"]) == (40, 13)
    assert found["first_batch_bounds"] == ["40"]
    assert found["first_batch_sql"] == (
        'UPDATE matrices.dyn_values SET touched = touched + 1 WHERE ("id" <= $1::text::bigint)'
    )
    assert found["explain"][0].startswith("Update on dyn_values")
    text = plan(dsn, directory, "touch", "--batch-size", "40")
    assert "  batches: 13 of 40 keys\n" in text
    assert "  sample:  not run (--sample times the first batch, rolled back)\n" in text


WARNINGS = {
    "trigger": (
        "CREATE FUNCTION matrices.noop() RETURNS trigger LANGUAGE plpgsql AS"
        " $$BEGIN RETURN NEW; END$$;"
        " CREATE TRIGGER audit BEFORE UPDATE ON matrices.dyn_values"
        " FOR EACH ROW EXECUTE FUNCTION matrices.noop()",
        TOUCH,
        "triggers on matrices.dyn_values fire for every row: audit",
    ),
    "foreign key": (
        "CREATE TABLE matrices.notes (id bigint PRIMARY KEY REFERENCES matrices.dyn_values (id))",
        TOUCH,
        "foreign keys checked on matrices.dyn_values's changes:"
        " notes_id_fkey (from matrices.notes)",
    ),
    "no replica identity": (
        "ALTER TABLE matrices.dyn_values DROP CONSTRAINT dyn_values_pkey;"
        " CREATE UNIQUE INDEX dyn_values_id ON matrices.dyn_values (id);"
        " CREATE PUBLICATION everything FOR TABLE matrices.dyn_values",
        TOUCH,
        [
            'the first batch cannot run: cannot update table "dyn_values" because it does not'
            " have a replica identity and publishes updates; HINT:  To enable updating the"
            " table, set REPLICA IDENTITY using ALTER TABLE.",
            "matrices.dyn_values is published (everything) without a replica identity: its"
            " UPDATEs and DELETEs fail (ALTER TABLE … REPLICA IDENTITY)",
        ],
    ),
    "no usable index": (
        "SELECT 1",
        TOUCH.replace("WHERE {range}", "WHERE {range} OR touched < 0"),
        "the batch's plan can use no index on (id): every batch reads all of"
        " matrices.dyn_values; does the SQL bound the key with {range} on its own table?",
    ),
}


@pytest.mark.parametrize("case", list(WARNINGS))
def test_plan_warns(dsn: str, tmp_path: Path, case: str) -> None:
    setup, source, warning = WARNINGS[case]
    seed(dsn)
    query_now(dsn, setup + ";")
    directory = tmp_path / "migrations"
    write(directory, "20250301_0900_touch.py", source)
    found = plan(dsn, directory, "touch", "--json")
    assert found["warnings"] == (warning if isinstance(warning, list) else [warning])


def test_plan_warns_of_a_batch_near_the_statement_timeout(dsn: str, tmp_path: Path) -> None:
    seed(dsn)
    directory = tmp_path / "migrations"
    slow = """
from cryptopi_batch import Backfill, Batch

async def slow(batch: Batch) -> int:
    await batch.conn.execute("SELECT pg_sleep(0.6)")
    return 0

migration = Backfill(table="matrices.dyn_values", process=slow)
"""
    write(directory, "20250301_0900_slow.py", slow)
    found = plan(dsn, directory, "slow", "--json", "--sample", "--statement-timeout", "1s")
    assert found["first_batch_sql"] is None  # process=: its SQL is its own
    assert len(found["warnings"]) == 1
    assert found["warnings"][0].startswith("the sampled batch took 0.")
    assert found["warnings"][0].endswith(
        "s, near the statement timeout (1 s): a smaller --batch-size, or a longer"
        " --statement-timeout"
    )


UNKNOWN = "cryptopi_batch: no migration named 'nosuch'; did you mean 20250301_0900_touch"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("plan", "nosuch"),
            UNKNOWN,
        ),
        (
            ("plan", "schema"),
            "cryptopi_batch: 20250301_0800_schema.sql: plan plans a backfill (.py); a .sql file"
            " runs once in one transaction (`migrate --dry-run` lists it)",
        ),
        (
            ("plan", "touch", "--batch-size", "0"),
            "cryptopi_batch: --batch-size (or batch_size=) must be a whole number from 1 to"
            " 2,147,483,647, not 0",
        ),
        (
            ("rollback", "nosuch", "--yes"),
            UNKNOWN,
        ),
        (
            ("rollback", "touch", "--yes"),
            "cryptopi_batch: 20250301_0900_touch was declared irreversible: its Backfill has no"
            " down=",
        ),
        (
            ("new", "!!!"),
            "cryptopi_batch: description '!!!' has no letter or digit to name the file with",
        ),
        (
            ("new", "touch scores", "--key", ","),
            "cryptopi_batch: --key: no column named (e.g. --key id, or --key tenant_id,id)",
        ),
    ],
    ids=[
        "plan-unknown",
        "plan-sql",
        "plan-batch-size",
        "rollback-unknown",
        "rollback-no-down",
        "new-blank",
        "new-no-key",
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    dsn: str, tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    seed(dsn)
    directory = tmp_path / "migrations"
    write(directory, "20250301_0800_schema.sql", "SELECT 1;\n")
    write(directory, "20250301_0900_touch.py", TOUCH)
    before = sorted(p.name for p in directory.iterdir())
    result = run_cli(*args, "--migrations-dir", str(directory), dsn=dsn)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [message]
    assert query_now(dsn, "SELECT to_regnamespace('ops') AS o")[0]["o"] is None
    assert sorted(p.name for p in directory.iterdir()) == before
