"""The SQL text of the ops queries and of the range lookups, checked without a database."""

from __future__ import annotations

import ast
import re
from importlib import resources
from pathlib import Path

import pytest

import cryptopi_batch
from cryptopi_batch import sqlfiles
from cryptopi_batch.keys import KeyColumn, KeyRange, KeySpec
from cryptopi_batch.keysql import RangeQueries
from cryptopi_batch.target import Target

PACKAGE = Path(cryptopi_batch.__file__).parent
QUERIES = resources.files("cryptopi_batch").joinpath("sql/queries.sql").read_text()
BLOCK = re.compile(r"^-- (\w+) --$", re.MULTILINE)
# query("name"): the way the package names a block.
USE = re.compile(r"""\bquery\(\s*"(\w+)"\s*\)""")


def placeholders(sql: str) -> set[int]:
    return {int(n) for n in re.findall(r"\$(\d+)", sql)}


def used_names() -> set[str]:
    names: set[str] = set()
    for path in PACKAGE.glob("*.py"):
        for m in USE.finditer(path.read_text()):
            names.add(m.group(1))
    return names


def test_block_names_are_unique():
    """A second block of the same name would silently replace the first."""
    names = BLOCK.findall(QUERIES)
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


def test_every_block_has_sql():
    for name in BLOCK.findall(QUERIES):
        body = "\n".join(
            line for line in sqlfiles.query(name).splitlines() if not line.lstrip().startswith("--")
        )
        assert body.strip(), f"block {name} holds no SQL"


def test_every_query_the_package_names_exists():
    names = used_names()
    assert len(names) > 10  # the scan finds the package's queries at all
    missing = sorted(n for n in names if n not in BLOCK.findall(QUERIES))
    assert not missing


def test_a_block_is_loaded_without_its_header_or_the_next_block():
    names = BLOCK.findall(QUERIES)
    for name in names:
        text = sqlfiles.query(name)
        assert not BLOCK.search(text)
        assert text == text.strip()


def test_an_unknown_query_name_is_a_key_error():
    with pytest.raises(KeyError):
        sqlfiles.query("no_such_query")


# --- RangeQueries -----------------------------------------------------------------------

SINGLE = Target("public.users", KeySpec((KeyColumn("id", "bigint"),)), estimate=100)
COMPOSITE = Target(
    'app."Order Lines"',
    KeySpec(
        (KeyColumn("order_id", "bigint"), KeyColumn('line"no', "integer"), KeyColumn("sku", "text"))
    ),
    estimate=-1,
)


@pytest.mark.parametrize("target", [SINGLE, COMPOSITE], ids=["single", "composite"])
def test_range_queries_number_their_parameters_as_nth_and_count_bind_them(target):
    """asyncpg refuses a statement whose $n do not match the arguments: each lookup's
    placeholders are exactly $1…$len(args) of the call that runs it."""
    q = RangeQueries(target)
    w = target.key.width
    after = KeyRange(tuple("a" * w), tuple("b" * w))
    start = KeyRange(None, tuple("b" * w))
    assert placeholders(q.nth_after) == set(range(1, len(after.params()) + 2))  # + offset
    assert placeholders(q.nth_from_start) == set(range(1, len(start.params()) + 2))
    # The handing-out statements take fixed arguments, whatever the key (store.claim and
    # store.checkpoint): the bounds they compare are read from the ops rows.
    assert placeholders(q.claim_next) == set(range(1, 5))
    assert placeholders(q.checkpoint) == set(range(1, 14))


@pytest.mark.parametrize("target", [SINGLE, COMPOSITE], ids=["single", "composite"])
def test_range_queries_read_the_quoted_table_in_key_order(target):
    q = RangeQueries(target)
    for sql in (q.nth_after, q.nth_from_start, q.claim_next, q.checkpoint):
        assert target.quoted in sql
    for sql in (q.nth_after, q.nth_from_start):
        assert "ORDER BY" in sql
        assert "LIMIT 1" in sql
        assert "DESC" not in sql


def test_composite_identifiers_are_quoted():
    q = RangeQueries(COMPOSITE)
    assert '"app"."Order Lines"' in q.nth_after
    assert '"line""no"' in q.nth_after


# Where SQL text may be written: the ops store and its named blocks' loader, the ops
# schema, and the statements built from a migration's key. transactions.py sends
# transaction control (BEGIN, COMMIT, ROLLBACK, SET LOCAL) and nothing else.
SQL_HOMES = {"store.py", "opsstore.py", "sqlfiles.py", "schema.py", "keysql.py", "keys.py"}
TRANSACTION_CONTROL = {"BEGIN", "COMMIT", "ROLLBACK", "SET"}
SQL_TEXT = re.compile(
    r"^\s*(SELECT|INSERT|UPDATE|DELETE|WITH|CREATE|ALTER|DROP|TRUNCATE|LOCK|ANALYZE|VACUUM"
    r"|EXPLAIN|SET|BEGIN|COMMIT|ROLLBACK)\s+\S"
)


def sql_literals(path: Path) -> list[tuple[int, str]]:
    """The string literals of ``path`` that read as SQL statements (docstrings aside)."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
    }
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
            and (m := SQL_TEXT.match(node.value))
        ):
            if path.name == "transactions.py" and m.group(1) in TRANSACTION_CONTROL:
                continue
            found.append((node.lineno, node.value[:50]))
    return found


def test_no_sql_text_outside_the_store_the_schema_and_the_key_renderer():
    stray = {
        path.name: found
        for path in sorted(PACKAGE.glob("*.py"))
        if path.name not in SQL_HOMES and (found := sql_literals(path))
    }
    assert stray == {}
    # The scan finds SQL where it is: it is not blind.
    assert sql_literals(PACKAGE / "keysql.py")
