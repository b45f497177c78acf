"""Key shapes and the SQL they render.

A key is one column or several (compared as a row). Bounds travel as PostgreSQL's text form
of each column (``text[]`` in the ops tables) and are cast back to the column's type in the
predicate, so the ops tables hold any key type and bounds are always bound parameters.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass

Bound = tuple[str, ...]
"""A key value: one text-form value per key column."""

_RANGE = re.compile(r"\{range(?::(?P<alias>[A-Za-z_][A-Za-z0-9_]*))?\}")


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_qualified(name: str) -> str:
    """Quote ``schema.table`` (or ``table``) part by part."""
    return ".".join(quote_ident(part) for part in split_qualified(name))


# One identifier: quoted ("" inside stands for "), or a bare word up to a dot.
_IDENT = re.compile(r'\s*(?:"((?:[^"]|"")+)"|([^".\s]+))\s*')
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def split_qualified(name: str) -> tuple[str, ...]:
    """``schema.table`` or ``table`` as PostgreSQL reads it: a quoted part is taken as
    written (dots and all), a bare one is folded to lower case (ASCII letters only, as
    PostgreSQL folds identifiers)."""
    parts: list[str] = []
    pos = 0
    while True:
        m = _IDENT.match(name, pos)
        if m is None:
            raise ValueError(f"not a table name: {name!r}")
        quoted, bare = m.groups()
        parts.append(
            quoted.replace('""', '"') if quoted is not None else bare.translate(_ASCII_LOWER)
        )
        pos = m.end()
        if pos == len(name):
            break
        if name[pos] != ".":
            raise ValueError(f"not a table name: {name!r}")
        pos += 1
    if not 1 <= len(parts) <= 2:
        raise ValueError(f"not a table name: {name!r}")
    return tuple(parts)


@dataclass(frozen=True)
class KeyColumn:
    name: str
    type: str  # as format_type() spells it, e.g. "bigint", "uuid", "text"


@dataclass(frozen=True)
class KeySpec:
    """The key of a batched table: its columns in index order, with their types."""

    columns: tuple[KeyColumn, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def width(self) -> int:
        return len(self.columns)

    def row(self, alias: str | None = None) -> str:
        prefix = f"{quote_ident(alias)}." if alias else ""
        cols = [prefix + quote_ident(c.name) for c in self.columns]
        return cols[0] if len(cols) == 1 else "(" + ", ".join(cols) + ")"

    def params(self, first: int) -> str:
        """Placeholders ``$first…`` cast from text to each column's type."""
        return self.cast([f"${first + i}::text" for i in range(self.width)])

    def cast(self, texts: Sequence[str]) -> str:
        """A key value from SQL expressions of its columns' text forms (bound parameters,
        or the elements of a ``text[]`` bound in the ops tables)."""
        cols = [f"{t}::{c.type}" for t, c in zip(texts, self.columns, strict=True)]
        return cols[0] if len(cols) == 1 else "(" + ", ".join(cols) + ")"

    def elements(self, array: str) -> list[str]:
        """The text forms of a bound held in the ``text[]`` expression ``array``."""
        return [f"{array}[{i + 1}]" for i in range(self.width)]

    def text_values(self, alias: str, *, raw: bool = False) -> str:
        """The key of a row as ``ARRAY[col::text, …]`` (``raw``: of ``select_list``'s
        ``k0, k1, …`` columns)."""
        names = [f"k{i}" if raw else quote_ident(c.name) for i, c in enumerate(self.columns)]
        return "ARRAY[" + ", ".join(f"{quote_ident(alias)}.{n}::text" for n in names) + "]"

    def select_list(self, alias: str) -> str:
        """The key columns as ``alias.col AS k0, …``. Output names differ from the columns'
        own, so an ORDER BY on the columns cannot bind to a text-cast output column."""
        return ", ".join(
            f"{quote_ident(alias)}.{quote_ident(c.name)} AS k{i}"
            for i, c in enumerate(self.columns)
        )

    def predicate(self, *, lower: bool, first: int, alias: str | None = None) -> str:
        """``key > lower AND key <= upper`` over parameters ``$first…`` (or only the upper
        bound when ``lower`` is false)."""
        upper = self.params(first + (self.width if lower else 0))
        return self.between(self.params(first) if lower else None, upper, alias)

    def between(self, lower: str | None, upper: str, alias: str | None = None) -> str:
        """``key > lower AND key <= upper`` for key values ``lower`` (``None``: from the
        start) and ``upper`` as :meth:`cast` renders them."""
        row = self.row(alias)
        if lower is None:
            return f"{row} <= {upper}"
        return f"{row} > {lower} AND {row} <= {upper}"

    def order_by(self, alias: str, *, descending: bool = False) -> str:
        way = " DESC" if descending else ""
        return ", ".join(f"{quote_ident(alias)}.{quote_ident(c.name)}{way}" for c in self.columns)


@dataclass(frozen=True)
class KeyRange:
    """A batch's keys: after ``lower`` (exclusive; ``None`` for the start) up to ``upper``."""

    lower: Bound | None
    upper: Bound

    def params(self) -> list[str]:
        return [*(self.lower or ()), *self.upper]


def render_range(query: str, key: KeySpec, rng: KeyRange, nargs: int) -> tuple[str, list[str]]:
    """Expand ``{range}`` / ``{range:alias}`` into the key predicate.

    The bounds become parameters numbered after the caller's own ``nargs`` arguments, so a
    query may mix its own ``$1…`` with ``{range}``. Returns the SQL and the bound values.
    """
    if not _RANGE.search(query):
        return query, []

    def repl(m: re.Match[str]) -> str:
        return (
            "("
            + key.predicate(lower=rng.lower is not None, first=nargs + 1, alias=m.group("alias"))
            + ")"
        )

    return _RANGE.sub(repl, query), rng.params()


def has_range(query: str) -> bool:
    return bool(_RANGE.search(query))


def as_bound(values: Sequence[str] | None) -> Bound | None:
    return None if values is None else tuple(values)
