"""`{range}` rendering and table-name quoting, without a database."""

from __future__ import annotations

import re

import pytest

from cryptopi_batch.keys import (
    KeyColumn,
    KeyRange,
    KeySpec,
    quote_qualified,
    render_range,
    split_qualified,
)

ID = KeySpec((KeyColumn("id", "bigint"),))
COMPOSITE = KeySpec((KeyColumn("tenant", "integer"), KeyColumn("slug", "text")))
PLACEHOLDER = re.compile(r"\$(\d+)")


def placeholders(sql: str) -> list[int]:
    return [int(n) for n in PLACEHOLDER.findall(sql)]


def test_range_renders_lower_and_upper_bounds_after_the_callers_own_args():
    sql, params = render_range(
        "UPDATE t SET x = $1 WHERE {range}", ID, KeyRange(("5",), ("10",)), nargs=1
    )
    assert sql == (
        'UPDATE t SET x = $1 WHERE ("id" > $2::text::bigint AND "id" <= $3::text::bigint)'
    )
    # $2 is the exclusive lower bound, $3 the inclusive upper: the values in that order.
    assert params == ["5", "10"]


@pytest.mark.parametrize("nargs", [0, 1, 3])
def test_bound_placeholders_follow_the_callers_args_and_match_the_values(nargs):
    own = " AND ".join(f"c{i} = ${i}" for i in range(1, nargs + 1)) or "true"
    sql, params = render_range(
        f"DELETE FROM t WHERE {own} AND {{range}}",
        COMPOSITE,
        KeyRange(("1", "a"), ("2", "b")),
        nargs=nargs,
    )
    assert placeholders(sql) == list(range(1, nargs + 1 + len(params)))
    assert params == ["1", "a", "2", "b"]


def test_first_batch_has_only_the_upper_bound():
    sql, params = render_range(
        "UPDATE t SET x = 1 WHERE {range}", ID, KeyRange(None, ("10",)), nargs=0
    )
    assert sql == 'UPDATE t SET x = 1 WHERE ("id" <= $1::text::bigint)'
    assert ">" not in sql
    assert params == ["10"]


def test_alias_qualifies_every_key_column():
    sql, _ = render_range(
        "SELECT 1 FROM t AS o WHERE {range:o}", COMPOSITE, KeyRange(("1", "a"), ("2", "b")), nargs=0
    )
    assert '("o"."tenant", "o"."slug") > ($1::text::integer, $2::text::text)' in sql
    assert '("o"."tenant", "o"."slug") <= ($3::text::integer, $4::text::text)' in sql


def test_composite_keys_compare_as_rows_cast_per_column():
    sql, params = render_range("{range}", COMPOSITE, KeyRange(None, ("7", "z")), nargs=2)
    assert sql == '(("tenant", "slug") <= ($3::text::integer, $4::text::text))'
    assert params == ["7", "z"]


def test_identifiers_are_quoted_with_embedded_quotes_doubled():
    key = KeySpec((KeyColumn('weird"name', "uuid"),))
    sql, _ = render_range("{range:My Alias}", key, KeyRange(("a",), ("b",)), nargs=0)
    # `My Alias` is not an identifier the placeholder accepts: left alone, not injected.
    assert sql == "{range:My Alias}"
    sql, _ = render_range("{range}", key, KeyRange(("a",), ("b",)), nargs=0)
    assert '"weird""name" > $1::text::uuid' in sql
    assert '"weird""name" <= $2::text::uuid' in sql


def test_a_query_without_range_is_unchanged_and_binds_nothing():
    query = "UPDATE t SET x = $1 WHERE y = '{other}'"
    assert render_range(query, ID, KeyRange(("1",), ("2",)), nargs=1) == (query, [])


def test_two_ranges_in_one_query_reuse_the_same_parameters():
    sql, params = render_range(
        "UPDATE t SET x = (SELECT max(y) FROM t s WHERE {range:s}) WHERE {range}",
        ID,
        KeyRange(("1",), ("9",)),
        nargs=0,
    )
    assert sql.count("$1::text::bigint") == 2
    assert sql.count("$2::text::bigint") == 2
    assert set(placeholders(sql)) == {1, 2}
    assert params == ["1", "9"]
    assert '"s"."id" > $1' in sql
    assert 'WHERE ("id" > $1' in sql


@pytest.mark.parametrize(
    ("name", "quoted"),
    [
        ("users", '"users"'),
        ("public.users", '"public"."users"'),
        (" public . users ", '"public"."users"'),
        ('"Mixed Case"', '"Mixed Case"'),
        ('app."Orders"', '"app"."Orders"'),
        ("select", '"select"'),
        ("Public.Users", '"public"."users"'),  # bare names fold to lower case, as in SQL
        ('"my.schema"."t.x"', '"my.schema"."t.x"'),  # quoted dots are part of the name
        ('"a""b".c', '"a""b"."c"'),
    ],
)
def test_quote_qualified(name, quoted):
    assert quote_qualified(name) == quoted


@pytest.mark.parametrize(
    "name", ["", " ", "a.b.c", "a.", ".b", '""', "a..b", '"open', '"a".b.c', 'a"b', '"a"b']
)
def test_split_qualified_refuses_what_is_not_a_table_name(name):
    with pytest.raises(ValueError, match="not a table name"):
        split_qualified(name)


def test_split_qualified_returns_schema_and_table():
    assert split_qualified("s.t") == ("s", "t")
    assert split_qualified("t") == ("t",)
    assert split_qualified('"my.schema"."T"') == ("my.schema", "T")
    assert split_qualified("ÄBC.Tab") == ("Äbc", "tab")  # only ASCII letters fold
