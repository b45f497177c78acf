"""The seed's whole flow on a real server: `migrate` over .sql files (the seed's own example
verbatim) and backfills, in order, each recorded once; --check, --dry-run; a failing file;
a backfill stopped and resumed; two migrate at once."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import textwrap
import threading
from pathlib import Path

import asyncpg
import pytest
from helpers import SEED_EXAMPLE, cli_argv, cli_env, query_now, run_cli, run_in_thread
from run_support import back_to_schema_version_1

ROWS = 500

BACKFILL_FLAG = '''
"""Set flag from value."""
from cryptopi_batch import Backfill

migration = Backfill(
    table="matrices.dyn_values",
    batch_size=100,
    sql="UPDATE matrices.dyn_values SET flag = value > 25, touched = touched + 1 WHERE {range}",
)
'''

BACKFILL_SCORE = '''
"""Score from confidence, slowly (a pause in each batch)."""
from cryptopi_batch import Backfill, Batch

async def score(batch: Batch) -> int:
    await batch.conn.execute("SELECT pg_sleep(SLEEP)")
    status = await batch.execute(
        "UPDATE matrices.dyn_values SET score = confidence * id, touched = touched + 10"
        " WHERE {range}")
    return int(status.split()[-1])

migration = Backfill(table="matrices.dyn_values", batch_size=50, process=score)
'''


def seed(dsn: str) -> None:
    """The seed's table without the column its example adds."""
    query_now(
        dsn,
        "CREATE SCHEMA matrices; CREATE TABLE matrices.dyn_values ("
        " id bigint PRIMARY KEY, value double precision NOT NULL,"
        " touched int NOT NULL DEFAULT 0);"
        f" INSERT INTO matrices.dyn_values SELECT g, g / 10.0 FROM generate_series(1, {ROWS}) g;"
        " ANALYZE matrices.dyn_values",
    )


def write(directory: Path, filename: str, text: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / filename).write_text(textwrap.dedent(text).lstrip("\n"))


FILES = [
    "20250301_0930_add_confidence_column.sql",
    "20250301_1000_add_flag_and_score.sql",
    "20250301_1100_index_value.sql",
    "20250301_1200_backfill_flag.py",
    "20250301_1300_backfill_score.py",
]


def flow_dir(directory: Path, sleep: float = 0.0) -> Path:
    write(directory, FILES[0], SEED_EXAMPLE)
    write(
        directory,
        FILES[1],
        """
        -- A plain file: no BEGIN/COMMIT of its own.
        ALTER TABLE matrices.dyn_values ADD COLUMN flag boolean;
        ALTER TABLE matrices.dyn_values ADD COLUMN score numeric;
        COMMENT ON COLUMN matrices.dyn_values.flag IS 'value > 25; set by a backfill';
        """,
    )
    write(
        directory,
        FILES[2],
        "CREATE INDEX CONCURRENTLY dyn_values_value_idx ON matrices.dyn_values (value);\n",
    )
    write(directory, FILES[3], BACKFILL_FLAG)
    write(directory, FILES[4], BACKFILL_SCORE.replace("SLEEP", str(sleep)))
    return directory


def migrate(dsn: str, directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("migrate", "--migrations-dir", str(directory), "--no-progress", *args, dsn=dsn)


def recorded(dsn: str) -> list[str]:
    return [
        r["filename"] for r in query_now(dsn, "SELECT filename FROM ops.migrations ORDER BY id")
    ]


def assert_flow_applied(dsn: str) -> None:
    assert recorded(dsn) == FILES  # in order, each once, none under another name
    kinds = query_now(dsn, "SELECT filename, kind FROM ops.migration_files ORDER BY filename")
    assert [(r["filename"], r["kind"]) for r in kinds] == [(f, f.rsplit(".", 1)[1]) for f in FILES]
    state = query_now(
        dsn,
        "SELECT count(*) FILTER (WHERE confidence = 1.0) AS confident,"
        " count(*) FILTER (WHERE flag = (value > 25)) AS flagged,"
        " count(*) FILTER (WHERE score = id) AS scored,"
        " count(*) FILTER (WHERE touched = 11) AS once FROM matrices.dyn_values",
    )[0]
    assert dict(state) == {"confident": ROWS, "flagged": ROWS, "scored": ROWS, "once": ROWS}
    valid = query_now(
        dsn,
        "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " WHERE c.relname IN ('dyn_values_value_idx', 'dyn_values_confidence_idx')"
        " ORDER BY c.relname",
    )
    assert [tuple(r) for r in valid] == [
        ("dyn_values_confidence_idx", True),
        ("dyn_values_value_idx", True),
    ]


def test_migrate_applies_sql_files_and_backfills_in_order_each_once(
    dsn: str, tmp_path: Path
) -> None:
    seed(dsn)
    directory = flow_dir(tmp_path / "migrations")
    before = migrate(dsn, directory, "--check")
    assert before.returncode == 3, before.stderr
    assert "5 migration(s) pending or unfinished" in before.stderr

    dry = migrate(dsn, directory, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == [
        "20250301_0930_add_confidence_column.sql: pending (sql)",
        "20250301_1000_add_flag_and_score.sql: pending (sql)",
        "20250301_1100_index_value.sql: pending (sql)",
        "20250301_1200_backfill_flag.py: pending (py, ~500 rows in ~5 batches)",
        "20250301_1300_backfill_score.py: pending (py, ~500 rows in ~10 batches)",
    ]
    assert query_now(dsn, "SELECT to_regnamespace('ops') IS NULL AS absent")[0]["absent"]

    done = migrate(dsn, directory)
    assert done.returncode == 0, done.stderr
    assert_flow_applied(dsn)

    again = migrate(dsn, directory)
    assert again.returncode == 0, again.stderr
    assert "nothing pending" in again.stderr
    assert_flow_applied(dsn)  # touched still 11: nothing ran twice
    after = migrate(dsn, directory, "--check")
    assert after.returncode == 0, after.stderr


def test_migrate_to_stops_after_the_named_file(dsn: str, tmp_path: Path) -> None:
    seed(dsn)
    directory = flow_dir(tmp_path / "migrations")
    result = migrate(dsn, directory, "--to", "add_flag_and_score")
    assert result.returncode == 0, result.stderr
    assert recorded(dsn) == FILES[:2]


def test_a_failing_sql_file_stops_migrate_and_leaves_nothing_of_it(
    dsn: str, tmp_path: Path
) -> None:
    seed(dsn)
    directory = tmp_path / "migrations"
    write(directory, "20250301_0900_ok.sql", "CREATE TABLE matrices.ok (id int);\n")
    write(
        directory,
        "20250301_0930_bad.sql",
        """
        BEGIN;
        ALTER TABLE matrices.dyn_values ADD COLUMN half_done int;
        UPDATE matrices.dyn_values SET half_done = 1;
        SELECT 1 / 0;
        COMMIT;
        """,
    )
    write(directory, "20250301_1000_after.sql", "CREATE TABLE matrices.after (id int);\n")
    result = migrate(dsn, directory)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "cryptopi_batch: 20250301_0930_bad.sql:4: DivisionByZeroError (22012): division by"
        " zero; rolled back, nothing of it applied, not recorded"
    )
    assert "Traceback" not in result.stderr
    assert recorded(dsn) == ["20250301_0900_ok.sql"]
    columns = query_now(
        dsn,
        "SELECT attname FROM pg_attribute WHERE attrelid = 'matrices.dyn_values'::regclass"
        " AND attname = 'half_done'",
    )
    assert columns == []
    assert query_now(dsn, "SELECT to_regclass('matrices.after') AS t")[0]["t"] is None
    check = migrate(dsn, directory, "--check")
    assert check.returncode == 3


def test_a_failed_create_index_concurrently_names_the_invalid_index(
    dsn: str, tmp_path: Path
) -> None:
    seed(dsn)
    query_now(dsn, "INSERT INTO matrices.dyn_values VALUES (100000, 1.0), (100001, 1.0)")
    directory = tmp_path / "migrations"
    write(
        directory,
        "20250301_0900_unique_value.sql",
        "CREATE UNIQUE INDEX CONCURRENTLY dyn_values_value_key ON matrices.dyn_values (value);\n",
    )
    result = migrate(dsn, directory)
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "it left index matrices.dyn_values_value_key invalid: drop it with DROP INDEX"
            " CONCURRENTLY IF EXISTS matrices.dyn_values_value_key;"
        )
    )
    assert recorded(dsn) == []


def test_a_backfill_stopped_mid_migrate_resumes_on_the_next_migrate(
    dsn: str, tmp_path: Path
) -> None:
    seed(dsn)
    directory = flow_dir(tmp_path / "migrations", sleep=0.1)
    stopped = migrate(dsn, directory, "--max-duration", "0.5s")
    assert stopped.returncode == 3, stopped.stderr
    assert recorded(dsn) == FILES[:4]
    done = query_now(
        dsn, "SELECT keys_done, status FROM ops.backfills WHERE name = $1", FILES[4][:-3]
    )
    assert 0 < done[0]["keys_done"] < ROWS
    check = migrate(dsn, directory, "--check")
    assert check.returncode == 3
    assert "20250301_1300_backfill_score (unfinished)" in check.stderr

    resumed = migrate(dsn, directory)
    assert resumed.returncode == 0, resumed.stderr
    assert_flow_applied(dsn)  # every row scored exactly once


def test_two_migrate_at_once_apply_every_file_once(dsn: str, tmp_path: Path) -> None:
    seed(dsn)
    directory = flow_dir(tmp_path / "migrations")
    # A slow first file, so that the second migrate finds it being applied.
    write(directory, "20250301_0000_slow.sql", "SELECT pg_sleep(1);\n")
    argv = cli_argv("migrate", "--migrations-dir", str(directory), "--no-progress")
    procs = [
        subprocess.Popen(
            argv, env=cli_env(dsn), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
    # They met: one waited for the other's lock on the slow file.
    waited = [
        err
        for _, err in outputs
        if "20250301_0000_slow.sql: another migrate is applying it; waiting" in err
    ]
    assert len(waited) == 1
    assert recorded(dsn) == ["20250301_0000_slow.sql", *FILES]
    assert_flow_applied_but_slow(dsn)


def assert_flow_applied_but_slow(dsn: str) -> None:
    query_now(dsn, "DELETE FROM ops.migrations WHERE filename = '20250301_0000_slow.sql'")
    query_now(dsn, "DELETE FROM ops.migration_files WHERE filename = '20250301_0000_slow.sql'")
    assert_flow_applied(dsn)


@pytest.fixture(autouse=True)
def _quiet_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Paths in messages are shown relative to the current directory.
    monkeypatch.chdir(tmp_path)


# --- new ------------------------------------------------------------------------------


def new(dsn: str, directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("new", "--migrations-dir", str(directory), *args, dsn=dsn)


def run(dsn: str, directory: Path, name: str) -> subprocess.CompletedProcess[str]:
    return run_cli("run", name, "--migrations-dir", str(directory), "--no-progress", dsn=dsn)


def test_new_writes_a_backfill_that_run_accepts_as_written(dsn: str, tmp_path: Path) -> None:
    seed(dsn)
    directory = tmp_path / "migrations"
    made = new(dsn, directory, "Backfill the Scores!", "--table", "matrices.dyn_values")
    assert made.returncode == 0, made.stderr
    path = Path(made.stdout.strip())
    assert path.parent == Path("migrations")  # shown relative to the current directory
    assert re.fullmatch(r"[0-9]{8}_[0-9]{4}_backfill_the_scores\.py", path.name)
    assert made.stderr == ""  # the table and key were checked
    result = run(dsn, directory, "backfill_the_scores")
    assert result.returncode == 0, result.stderr
    assert recorded(dsn) == [path.name]
    again = new(dsn, directory, "backfill the scores", "--table", "matrices.dyn_values")
    assert again.returncode == 2
    assert again.stderr == f"cryptopi_batch: {path} exists; not overwritten\n"


def test_new_without_a_table_runs_once_its_placeholders_are_filled(
    dsn: str, tmp_path: Path
) -> None:
    seed(dsn)
    directory = tmp_path / "migrations"
    made = new(dsn, directory, "touch rows")
    assert made.returncode == 0, made.stderr
    path = Path(made.stdout.strip())
    source = path.read_text()
    assert "SCHEMA.TABLE" in source
    path.write_text(source.replace("SCHEMA.TABLE", "matrices.dyn_values"))
    result = run(dsn, directory, "touch_rows")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--table", "matrices.nope"),
            "cryptopi_batch: table matrices.nope does not exist",
        ),
        (
            ("--table", "matrices.dyn_values", "--key", "value"),
            "cryptopi_batch: key (value) of matrices.dyn_values is not covered by a unique"
            " index or primary key on exactly those columns",
        ),
        (
            ("--sql", "--table", "t"),
            "cryptopi_batch: --table and --key are for a backfill (.py), not --sql",
        ),
        (("--table", "a.b.c.d"), None),
    ],
    ids=["no-table", "not-a-key", "sql-with-table", "bad-name"],
)
def test_new_refuses_a_wrong_table_or_key_and_writes_nothing(
    dsn: str, tmp_path: Path, args: tuple[str, ...], message: str | None
) -> None:
    seed(dsn)
    directory = tmp_path / "migrations"
    made = new(dsn, directory, "bad", *args)
    assert made.returncode == 2
    lines = made.stderr.splitlines()
    assert len(lines) == 1
    if message is not None:
        assert lines[0] == message
    assert not directory.exists()


def test_new_sql_writes_a_file_migrate_applies_with_a_down_section(
    dsn: str, tmp_path: Path
) -> None:
    seed(dsn)
    directory = tmp_path / "migrations"
    made = new(dsn, directory, "add a column", "--sql")
    assert made.returncode == 0, made.stderr
    path = Path(made.stdout.strip())
    assert path.suffix == ".sql"
    text = path.read_text().replace(
        "\n\n\n-- down\n",
        "\nALTER TABLE matrices.dyn_values ADD COLUMN extra int;\n\n-- down\n"
        "ALTER TABLE matrices.dyn_values DROP COLUMN extra;\n",
    )
    path.write_text(text)
    assert migrate(dsn, directory).returncode == 0
    assert recorded(dsn) == [path.name]
    assert query_now(dsn, "SELECT extra FROM matrices.dyn_values LIMIT 1") == [(None,)]


# --- rollback -------------------------------------------------------------------------

DOUBLE = '''
"""Double every value; halving undoes it."""
from cryptopi_batch import Backfill, Batch

async def halve(batch: Batch) -> int:
    await batch.conn.execute("SELECT pg_sleep(SLEEP)")
    status = await batch.execute("UPDATE matrices.dyn_values SET value = value / 2 WHERE {range}")
    return int(status.split()[-1])

migration = Backfill(
    table="matrices.dyn_values",
    batch_size=50,
    sql="UPDATE matrices.dyn_values SET value = value * 2 WHERE {range}",
    down=DOWN,
)
'''


def values(dsn: str) -> list[tuple[int, float]]:
    return [
        tuple(r) for r in query_now(dsn, "SELECT id, value FROM matrices.dyn_values ORDER BY id")
    ]


def rollback(dsn: str, directory: Path, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("rollback", name, "--migrations-dir", str(directory), *args, dsn=dsn)


@pytest.mark.parametrize(
    "down", ['"UPDATE matrices.dyn_values SET value = value / 2 WHERE {range}"', "halve"]
)
def test_rollback_restores_the_earlier_values_and_unrecords_the_file(
    dsn: str, tmp_path: Path, down: str
) -> None:
    seed(dsn)
    directory = tmp_path / "migrations"
    write(directory, "20250301_0900_double.py", DOUBLE.replace("DOWN", down).replace("SLEEP", "0"))
    earlier = values(dsn)
    assert migrate(dsn, directory).returncode == 0
    assert values(dsn) == [(i, v * 2) for i, v in earlier]

    result = rollback(dsn, directory, "double", "--yes")
    assert result.returncode == 0, result.stderr
    assert values(dsn) == earlier
    assert recorded(dsn) == []
    assert query_now(dsn, "SELECT count(*) FROM ops.migration_files")[0][0] == 0
    assert query_now(dsn, "SELECT count(*) FROM ops.backfills")[0][0] == 0
    assert result.stderr.splitlines()[0] == (
        "20250301_0900_double: rollback runs its down= "
        + ("SQL" if down.startswith('"') else "process")
        + " over matrices.dyn_values in batches of 50, then removes its ops.migrations row"
    )
    # Applied again by the next migrate, undone again by the next rollback.
    assert migrate(dsn, directory).returncode == 0
    assert values(dsn) == [(i, v * 2) for i, v in earlier]
    assert rollback(dsn, directory, "double", "--yes").returncode == 0
    assert values(dsn) == earlier


def test_a_rollback_stopped_resumes_and_undoes_every_row_once(dsn: str, tmp_path: Path) -> None:
    seed(dsn)
    directory = tmp_path / "migrations"
    write(
        directory,
        "20250301_0900_double.py",
        DOUBLE.replace("DOWN", "halve").replace("SLEEP", "0.1"),
    )
    earlier = values(dsn)
    assert migrate(dsn, directory).returncode == 0
    stopped = rollback(dsn, directory, "double", "--yes", "--max-duration", "0.5s")
    assert stopped.returncode == 3, stopped.stderr
    down = query_now(
        dsn,
        "SELECT keys_done, direction FROM ops.backfills WHERE name = $1",
        "20250301_0900_double:down",
    )
    assert down[0]["direction"] == "down"
    assert 0 < down[0]["keys_done"] < ROWS
    assert recorded(dsn) == ["20250301_0900_double.py"]  # still applied until undone
    resumed = rollback(dsn, directory, "double", "--yes")
    assert resumed.returncode == 0, resumed.stderr
    assert values(dsn) == earlier
    assert recorded(dsn) == []


@pytest.mark.parametrize(
    ("filename", "source", "message"),
    [
        (
            "20250301_0900_double.py",
            DOUBLE.replace("    down=DOWN,\n", ""),
            "cryptopi_batch: 20250301_0900_double was declared irreversible: its Backfill has"
            " no down=",
        ),
        (
            "20250301_0900_double.sql",
            "UPDATE matrices.dyn_values SET value = value * 2;\n",
            "cryptopi_batch: 20250301_0900_double was declared irreversible:"
            " migrations/20250301_0900_double.sql has no -- down section and there is no"
            " 20250301_0900_double.down.sql",
        ),
    ],
    ids=["py", "sql"],
)
def test_rollback_without_down_is_refused(
    dsn: str, tmp_path: Path, filename: str, source: str, message: str
) -> None:
    seed(dsn)
    directory = tmp_path / "migrations"
    write(directory, filename, source)
    assert migrate(dsn, directory).returncode == 0
    doubled = values(dsn)
    result = rollback(dsn, directory, "double", "--yes")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [message]
    assert values(dsn) == doubled
    assert recorded(dsn) == [filename]


def test_rollback_needs_a_confirmation(dsn: str, tmp_path: Path) -> None:
    seed(dsn)
    directory = tmp_path / "migrations"
    write(
        directory, "20250301_0900_double.py", DOUBLE.replace("DOWN", "halve").replace("SLEEP", "0")
    )
    assert migrate(dsn, directory).returncode == 0
    doubled = values(dsn)
    result = rollback(dsn, directory, "double")  # stdin is not a terminal
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "cryptopi_batch: not confirmed: pass --yes (or answer on a terminal); nothing was done"
    )
    assert values(dsn) == doubled
    assert recorded(dsn) == ["20250301_0900_double.py"]


def test_a_rollback_of_a_file_never_applied_is_refused_before_asking(
    dsn: str, tmp_path: Path
) -> None:
    """Nothing to roll back: said at once (exit 2), not after a confirmation asked for."""
    seed(dsn)
    directory = tmp_path / "migrations"
    write(
        directory, "20250301_0900_double.py", DOUBLE.replace("DOWN", "halve").replace("SLEEP", "0")
    )
    result = rollback(dsn, directory, "double")  # no --yes, stdin not a terminal
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "cryptopi_batch: 20250301_0900_double is not applied; nothing to roll back"
    ]


@pytest.mark.parametrize("where", ["section", "sibling"])
def test_rollback_of_a_sql_file_runs_its_down(dsn: str, tmp_path: Path, where: str) -> None:
    seed(dsn)
    directory = tmp_path / "migrations"
    up = "BEGIN;\nALTER TABLE matrices.dyn_values ADD COLUMN extra int;\nCOMMIT;\n"
    down = "ALTER TABLE matrices.dyn_values DROP COLUMN extra;\n"
    if where == "section":
        write(directory, "20250301_0900_extra.sql", up + "-- down\n" + down)
    else:
        write(directory, "20250301_0900_extra.sql", up)
        write(directory, "20250301_0900_extra.down.sql", down)
    assert migrate(dsn, directory).returncode == 0
    assert recorded(dsn) == ["20250301_0900_extra.sql"]
    result = rollback(dsn, directory, "extra", "--yes")
    assert result.returncode == 0, result.stderr
    assert recorded(dsn) == []
    column = query_now(
        dsn,
        "SELECT 1 FROM pg_attribute WHERE attrelid = 'matrices.dyn_values'::regclass"
        " AND attname = 'extra' AND NOT attisdropped",
    )
    assert column == []
    assert migrate(dsn, directory).returncode == 0  # applies it again
    assert recorded(dsn) == ["20250301_0900_extra.sql"]


# --- list -----------------------------------------------------------------------------


def test_list_shows_kind_and_state_and_flags_changed_and_missing_files(
    dsn: str, tmp_path: Path
) -> None:
    seed(dsn)
    directory = flow_dir(tmp_path / "migrations")
    write(directory, "20250301_1000_add_flag_and_score.down.sql", "SELECT 1;\n")  # not odd
    assert migrate(dsn, directory, "--to", "backfill_flag").returncode == 0
    query_now(dsn, "INSERT INTO ops.migrations (filename) VALUES ('20240101_0000_gone.sql')")
    changed = directory / FILES[1]
    changed.write_text(changed.read_text() + "-- an edit after it was applied\n")

    result = run_cli("list", "--json", "--migrations-dir", str(directory), dsn=dsn)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # the .down.sql is not "left out"
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    seen = [(r["name"], r["kind"], r["status"], r["flag"]) for r in rows]
    assert seen == [
        ("20250301_0930_add_confidence_column", "sql", "completed", None),
        ("20250301_1000_add_flag_and_score", "sql", "completed", "changed after it was applied"),
        ("20250301_1100_index_value", "sql", "completed", None),
        ("20250301_1200_backfill_flag", "py", "completed", None),
        ("20250301_1300_backfill_score", "py", "pending", None),
        (
            "20240101_0000_gone",
            "sql",
            "completed",
            "recorded in ops.migrations; no such file in the directory",
        ),
    ]
    assert all(r["applied_at"] for r in rows if r["status"] == "completed")
    assert rows[4]["applied_at"] is None

    table = run_cli("list", "--migrations-dir", str(directory), dsn=dsn, env={"COLUMNS": "200"})
    assert table.returncode == 0, table.stderr
    [line] = [x for x in table.stdout.splitlines() if "add_flag_and_score" in x]
    assert line.split()[1:3] == ["sql", "completed"]
    assert line.rstrip().endswith("changed after it was applied")


def test_migrate_loads_each_backfill_once(dsn: str, tmp_path: Path) -> None:
    """The file is loaded to be checked before anything is written, and that load is the
    one that runs: its module's own code runs once."""
    seed(dsn)
    directory = tmp_path / "migrations"
    loads = tmp_path / "loads.txt"
    write(
        directory,
        "20250301_1000_touch.py",
        f"""
        from pathlib import Path
        from cryptopi_batch import Backfill

        with Path({str(loads)!r}).open("a") as f:
            f.write("loaded\\n")
        migration = Backfill(
            table="matrices.dyn_values", batch_size=100,
            sql="UPDATE matrices.dyn_values SET touched = touched + 1 WHERE {{range}}")
        """,
    )
    done = migrate(dsn, directory)
    assert done.returncode == 0, done.stderr
    assert loads.read_text().splitlines() == ["loaded"]
    assert (
        query_now(dsn, "SELECT count(*) AS n FROM matrices.dyn_values WHERE touched = 1")[0]["n"]
        == ROWS
    )


def test_dry_run_lists_a_backfill_of_a_table_a_pending_file_creates(
    dsn: str, tmp_path: Path
) -> None:
    """DDL then its backfill, both pending: the table does not exist yet, so the dry run
    lists the backfill without an estimate (exit 0), and writes nothing."""
    directory = tmp_path / "migrations"
    write(
        directory,
        "20250301_0900_create_scores.sql",
        "CREATE TABLE public.scores (id bigint PRIMARY KEY, score int);\n",
    )
    write(
        directory,
        "20250301_1000_backfill_scores.py",
        """
        from cryptopi_batch import Backfill

        migration = Backfill(table="public.scores", batch_size=100,
                             sql="UPDATE public.scores SET score = 0 WHERE {range}")
        """,
    )
    dry = migrate(dsn, directory, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == [
        "20250301_0900_create_scores.sql: pending (sql)",
        "20250301_1000_backfill_scores.py: pending (py)",
    ]
    assert query_now(dsn, "SELECT to_regclass('public.scores') IS NULL AS absent")[0]["absent"]
    assert query_now(dsn, "SELECT to_regnamespace('ops') IS NULL AS absent")[0]["absent"]


# --- production -----------------------------------------------------------------------

PRODUCTION = {"CRYPTOPI_BATCH_ENV": "production"}


def test_production_writes_only_with_yes(dsn: str, tmp_path: Path) -> None:
    seed(dsn)
    directory = tmp_path / "migrations"
    write(directory, "20250301_0900_extra.sql", "ALTER TABLE matrices.dyn_values ADD extra int;\n")
    write(
        directory,
        "20250301_1000_double.py",
        DOUBLE.replace("DOWN", "halve").replace("SLEEP", "0"),
    )
    base = ("--migrations-dir", str(directory), "--no-progress")
    # Reading needs no confirmation.
    check = run_cli("migrate", "--check", *base, dsn=dsn, env=PRODUCTION)
    assert check.returncode == 3
    dry = run_cli("migrate", "--dry-run", *base, dsn=dsn, env=PRODUCTION)
    assert dry.returncode == 0, dry.stderr

    refused = run_cli("migrate", *base, dsn=dsn, env=PRODUCTION)
    assert refused.returncode == 2
    assert refused.stderr.splitlines() == [
        "production: migrate applies 20250301_0900_extra.sql, 20250301_1000_double.py",
        "cryptopi_batch: not confirmed: pass --yes (or answer on a terminal); nothing was done",
    ]
    ran = run_cli("run", "double", *base, dsn=dsn, env=PRODUCTION)
    assert ran.returncode == 2
    assert ran.stderr.splitlines()[0] == "production: run double writes"
    option = run_cli("migrate", *base, "--env", "production", dsn=dsn)
    assert option.returncode == 2
    assert query_now(dsn, "SELECT to_regclass('ops.migrations') AS t")[0]["t"] is None

    applied = run_cli("migrate", *base, "--yes", dsn=dsn, env=PRODUCTION)
    assert applied.returncode == 0, applied.stderr
    assert recorded(dsn) == ["20250301_0900_extra.sql", "20250301_1000_double.py"]
    # Run again with nothing pending: nothing to confirm, a no-op (exit 0).
    noop = run_cli("migrate", *base, dsn=dsn, env=PRODUCTION)
    assert noop.returncode == 0, noop.stderr
    assert "nothing pending" in noop.stderr
    assert recorded(dsn) == ["20250301_0900_extra.sql", "20250301_1000_double.py"]

    undone = run_cli("rollback", "double", *base, "--yes", dsn=dsn, env=PRODUCTION)
    assert undone.returncode == 0, undone.stderr
    assert undone.stderr.splitlines()[0] == (
        "production: 20250301_1000_double: rollback runs its down= process over"
        " matrices.dyn_values in batches of 50, then removes its ops.migrations row"
    )


# --- lock timeouts --------------------------------------------------------------------


def test_ddl_waits_at_most_its_lock_timeout_and_is_tried_again(dsn: str, tmp_path: Path) -> None:
    """A session holds the table (an open transaction that read it) for a while: the
    file's ALTER TABLE gives up after --lock-timeout instead of queueing the application
    behind it, and is tried again with back-off until it goes through."""
    seed(dsn)
    directory = tmp_path / "migrations"
    write(directory, "20250301_0900_extra.sql", "ALTER TABLE matrices.dyn_values ADD extra int;\n")
    held = threading.Event()

    async def hold() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            async with conn.transaction():
                await conn.execute("SELECT count(*) FROM matrices.dyn_values")
                held.set()
                await asyncio.sleep(1.2)
        finally:
            await conn.close()

    holder = threading.Thread(target=lambda: asyncio.run(hold()))
    holder.start()
    try:
        assert held.wait(30)
        result = migrate(dsn, directory, "--lock-timeout", "100ms")
    finally:
        holder.join()
    assert result.returncode == 0, result.stderr
    assert "20250301_0900_extra.sql: lock timeout; trying again in 0.5 s" in result.stderr
    assert recorded(dsn) == ["20250301_0900_extra.sql"]


# --- bad input ------------------------------------------------------------------------

BAD_FILES = {
    "rollback in a file": (
        "20250302_0900_bad.sql",
        "UPDATE matrices.dyn_values SET value = 0;\nROLLBACK;\n",
        (),
        "cryptopi_batch: 20250302_0900_bad.sql:2: ROLLBACK in a migration file: migrate rolls"
        " a failing file back by itself",
    ),
    "begin with concurrently": (
        "20250302_0900_bad.sql",
        "BEGIN;\nCREATE INDEX CONCURRENTLY i ON matrices.dyn_values (value);\nCOMMIT;\n",
        (),
        "cryptopi_batch: 20250302_0900_bad.sql: has BEGIN/COMMIT and a statement that cannot"
        " run in a transaction block (e.g. CREATE INDEX CONCURRENTLY); put it in a file of its"
        " own",
    ),
    "backfill that does not load": (
        "20250302_0900_bad.py",
        "from cryptopi_batch import Backfill\nmigration = Backfill(table=\n",
        (),
        None,
    ),
    "destructive without yes": (
        "20250302_0900_bad.py",
        BACKFILL_FLAG.replace("batch_size=100,", "batch_size=100, destructive=True,"),
        (),
        "cryptopi_batch: 20250302_0900_bad is destructive; pass --yes to run it",
    ),
    "unknown --to": (
        None,
        "",
        ("--to", "nosuch"),
        None,
    ),
    "bad --lock-timeout": (
        None,
        "",
        ("--lock-timeout", "5parsecs"),
        "cryptopi_batch: --lock-timeout: not a duration: '5parsecs' (try 500ms, 30s, 5min, 2h)",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_migrate_refuses_what_cannot_run_before_writing_anything(
    dsn: str, tmp_path: Path, case: str
) -> None:
    """A pending file that cannot run refuses the whole migrate before its first file is
    applied: exit 2, one line, no ops schema, the earlier files not applied."""
    filename, source, args, message = BAD_FILES[case]
    seed(dsn)
    directory = tmp_path / "migrations"
    write(directory, "20250301_0900_first.sql", "ALTER TABLE matrices.dyn_values ADD flag bool;\n")
    if filename is not None:
        write(directory, filename, source)
    result = migrate(dsn, directory, *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    if message is not None:
        assert lines[0] == message
    assert query_now(dsn, "SELECT to_regnamespace('ops') IS NULL AS none")[0]["none"]
    assert query_now(dsn, "SELECT count(*) FROM pg_attribute WHERE attname = 'flag'")[0][0] == 0


def test_migrate_on_a_read_only_session_exits_2(dsn: str, tmp_path: Path) -> None:
    seed(dsn)
    directory = flow_dir(tmp_path / "migrations")
    database = query_now(dsn, "SELECT current_database() AS d")[0]["d"]
    query_now(dsn, f'ALTER DATABASE "{database}" SET default_transaction_read_only = on;')
    result = migrate(dsn, directory)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "cryptopi_batch: the session is read-only: default_transaction_read_only is on (for"
        " the role, the database or the server), and a run must write; turn it off for the"
        " role that runs migrations"
    ]


def test_migrate_shows_each_backfill_with_a_progress_bar_on_a_terminal(
    dsn: str, tmp_path: Path
) -> None:
    seed(dsn)
    directory = flow_dir(tmp_path / "migrations")
    result = run_cli(
        "migrate",
        "--migrations-dir",
        str(directory),
        dsn=dsn,
        env={"TTY_COMPATIBLE": "1", "COLUMNS": "120"},
    )
    assert result.returncode == 0, result.stderr
    assert "batch_committed" not in result.stderr  # the bar carries the batches
    assert "500/500 keys" in result.stderr
    for line in (
        "20250301_1200_backfill_flag: completed: 500 rows changed in 5 batches",
        "20250301_1300_backfill_score: completed: 500 rows changed in 10 batches",
    ):
        assert line in result.stderr
    assert_flow_applied(dsn)


def test_rollback_of_a_sql_file_on_an_ops_schema_of_version_1(dsn: str, tmp_path: Path) -> None:
    """An ops schema from before ops.migration_files: the file's ops.migrations row goes,
    nothing else is asked of it."""
    seed(dsn)
    directory = tmp_path / "migrations"
    write(
        directory,
        "20250301_0900_extra.sql",
        "ALTER TABLE matrices.dyn_values ADD extra int;\n-- down\n"
        "ALTER TABLE matrices.dyn_values DROP COLUMN extra;\n",
    )
    assert migrate(dsn, directory).returncode == 0

    async def to_version_1() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await back_to_schema_version_1(conn)
        finally:
            await conn.close()

    run_in_thread(to_version_1)
    result = rollback(dsn, directory, "extra", "--yes")
    assert result.returncode == 0, result.stderr
    assert recorded(dsn) == []


@pytest.mark.parametrize(
    "insert",
    [
        "INSERT INTO ops.migrations (filename) VALUES ('20250301_self.sql');",
        "SAVEPOINT s; INSERT INTO ops.migrations (filename) VALUES ('20250301_self.sql');"
        " RELEASE SAVEPOINT s;",
        "DO $$BEGIN INSERT INTO ops.migrations (filename) VALUES ('20250301_self.sql');"
        " EXCEPTION WHEN unique_violation THEN NULL; END$$;",
        "INSERT INTO ops.migrations (filename) VALUES ('20250301_0900_self.sql');",
    ],
    ids=["plain", "savepoint", "do-block", "its-own-name"],
)
def test_a_file_that_records_itself_is_recorded_once(dsn: str, tmp_path: Path, insert: str) -> None:
    seed(dsn)
    directory = tmp_path / "migrations"
    write(directory, "20250301_0800_before.sql", "SELECT 1;\n")
    assert migrate(dsn, directory).returncode == 0
    write(directory, "20250301_0900_self.sql", f"BEGIN;\nSELECT 1;\n{insert}\nCOMMIT;\n")
    result = migrate(dsn, directory)
    assert result.returncode == 0, result.stderr
    assert recorded(dsn) == ["20250301_0800_before.sql", "20250301_0900_self.sql"]
