"""The .sql migration reader: statements split by a lexer that knows quotes, dollar quotes
and comments; the file's own transaction control; what must run outside a transaction; the
-- down section. No server."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import SEED_EXAMPLE

from cryptopi_batch.errors import MigrationLoadError, UsageError
from cryptopi_batch.scaffold import slug
from cryptopi_batch.sqlfile import parse_sql_migration, read_sql_migration, split_statements

FUNCTION = "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $b$\nBEGIN\n RETURN 1;\nEND\n$b$"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("SELECT 1; SELECT 2", ["SELECT 1", "SELECT 2"]),
        ("SELECT ';'; SELECT 2;", ["SELECT ';'", "SELECT 2"]),
        ("SELECT 'it''s;'; SELECT 2", ["SELECT 'it''s;'", "SELECT 2"]),
        ("SELECT E'\\';' ; SELECT 2", ["SELECT E'\\';'", "SELECT 2"]),
        ('SELECT 1 AS "a;b"; SELECT 2', ['SELECT 1 AS "a;b"', "SELECT 2"]),
        ("SELECT $$;$$; SELECT 2", ["SELECT $$;$$", "SELECT 2"]),
        ("SELECT $f$ $$; $f$; SELECT 2", ["SELECT $f$ $$; $f$", "SELECT 2"]),
        ("SELECT 1 -- ; not here\n; SELECT 2", ["SELECT 1 -- ; not here", "SELECT 2"]),
        (
            "SELECT /* ; /* nested; */ ; */ 1; SELECT 2",
            ["SELECT /* ; /* nested; */ ; */ 1", "SELECT 2"],
        ),
        ("-- only a comment;\n/* and; another */", []),
        ("SELECT 1;;; ", ["SELECT 1"]),
        ("SELECT a$b FROM t; SELECT 2", ["SELECT a$b FROM t", "SELECT 2"]),
        (
            FUNCTION + ";\nSELECT f()",
            [FUNCTION, "SELECT f()"],
        ),
    ],
    ids=[
        "plain",
        "quoted",
        "doubled-quote",
        "e-string-escape",
        "identifier",
        "dollar",
        "tagged-dollar",
        "line-comment",
        "nested-block-comment",
        "comments-only",
        "empty-statements",
        "dollar-in-identifier",
        "function-body",
    ],
)
def test_split_statements(text: str, expected: list[str]) -> None:
    assert [s.text for s in split_statements(text)] == expected


def test_statements_know_their_first_line() -> None:
    statements = split_statements("\n-- head\nSELECT 1;\n\n  SELECT\n 2;")
    assert [s.line for s in statements] == [3, 5]


def test_the_seeds_example_runs_in_migrates_transaction_without_its_own() -> None:
    sql = parse_sql_migration(Path("x.sql"), SEED_EXAMPLE)
    assert sql.own_transaction
    assert not sql.outside
    assert [s.words[:2] for s in sql.statements] == [
        ["ALTER", "TABLE"],
        ["UPDATE", "MATRICES"],
        ["CREATE", "INDEX"],
        ["INSERT", "INTO"],
    ]
    assert sql.down is None


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE INDEX CONCURRENTLY i ON t (a)",
        "create unique index concurrently if not exists i on t (a)",
        "DROP INDEX CONCURRENTLY IF EXISTS i",
        "REINDEX INDEX CONCURRENTLY i",
        "REINDEX TABLE CONCURRENTLY t",
        "VACUUM (ANALYZE) t",
        "vacuum",
        "CREATE DATABASE x",
        "ALTER SYSTEM SET work_mem = '64MB'",
        "/* why */ CREATE INDEX CONCURRENTLY i ON t (a)",
    ],
)
def test_statements_that_cannot_run_in_a_transaction(statement: str) -> None:
    assert parse_sql_migration(Path("x.sql"), f"SELECT 1; {statement};").outside


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE INDEX i ON t (a)",
        "REINDEX INDEX i",
        "SELECT 'VACUUM'",
        "COMMENT ON TABLE t IS 'CREATE INDEX CONCURRENTLY'",
        "-- VACUUM\nSELECT 1",
        "ALTER TABLE t ADD COLUMN concurrently int",
    ],
)
def test_statements_that_run_in_a_transaction(statement: str) -> None:
    assert not parse_sql_migration(Path("x.sql"), f"{statement};").outside


def test_down_section_and_sibling() -> None:
    text = "ALTER TABLE t ADD COLUMN c int;\n-- down\nALTER TABLE t DROP COLUMN c;\n"
    sql = parse_sql_migration(Path("x.sql"), text)
    assert [s.text for s in sql.statements] == ["ALTER TABLE t ADD COLUMN c int"]
    assert sql.down is not None
    assert [(s.text, s.line) for s in sql.down] == [("ALTER TABLE t DROP COLUMN c", 3)]
    sibling = parse_sql_migration(Path("x.sql"), "SELECT 1;", "BEGIN; SELECT 2; COMMIT;")
    assert sibling.down is not None
    assert [s.text for s in sibling.down] == ["SELECT 2"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("SELECT 1;\nROLLBACK;", "x.sql:2: ROLLBACK in a migration file"),
        ("BEGIN; CREATE INDEX CONCURRENTLY i ON t (a); COMMIT;", "has BEGIN/COMMIT and a"),
    ],
)
def test_refused_files(text: str, message: str) -> None:
    with pytest.raises(MigrationLoadError, match=message):
        parse_sql_migration(Path("x.sql"), text)


def test_rollback_to_savepoint_is_kept() -> None:
    sql = parse_sql_migration(Path("x.sql"), "SAVEPOINT a; ROLLBACK TO SAVEPOINT a;")
    assert len(sql.statements) == 2


@pytest.mark.parametrize(
    ("description", "expected"),
    [
        ("backfill confidence", "backfill_confidence"),
        ("Add NOT NULL to dyn_values.note!", "add_not_null_to_dyn_values_note"),
        ("  --weird--  ", "weird"),
        ("Ünïcode café", "unicode_cafe"),
        ("2025 cleanup", "2025_cleanup"),
    ],
)
def test_new_slugs_a_description(description: str, expected: str) -> None:
    assert slug(description) == expected


@pytest.mark.parametrize("description", ["", "   ", "!!!", "日本"])
def test_new_refuses_a_description_without_a_letter_or_digit(description: str) -> None:
    with pytest.raises(UsageError, match="has no letter or digit"):
        slug(description)


def test_a_down_file_that_cannot_be_read_is_a_load_error_naming_it(tmp_path: Path) -> None:
    """Exit 2 with the file named, as for the migration itself (was an unexpected error)."""
    up = tmp_path / "20250301_0900_add.sql"
    up.write_text("ALTER TABLE t ADD c int;\n")
    (tmp_path / "20250301_0900_add.down.sql").write_bytes(b"ALTER TABLE t DROP c; -- \xff\n")
    with pytest.raises(MigrationLoadError, match=r"^20250301_0900_add\.down\.sql: cannot be read"):
        read_sql_migration(up)
