"""A ``.sql`` migration file read as `migrate` runs it: its statements (split by a small
lexer that knows quotes, dollar quotes and comments), its own transaction control, whether
it must run outside a transaction, and its ``-- down`` section.

Pure: no server, no I/O besides reading the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import MigrationLoadError

_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\x80-\U0010ffff][\w\x80-\U0010ffff]*)?\$")
_DOWN_MARKER = re.compile(r"^--\s*down\b.*$", re.IGNORECASE | re.MULTILINE)
_WORDS = re.compile(r"[A-Za-z_]+")


@dataclass(frozen=True)
class Statement:
    """One statement of a file: its text (comments inside kept) and its first line."""

    text: str
    line: int

    @property
    def words(self) -> list[str]:
        """The statement's leading words, upper-cased, comments and literals aside."""
        return [w.upper() for w in _WORDS.findall(_code_only(self.text))[:8]]


def split_statements(text: str, first_line: int = 1) -> list[Statement]:
    """The statements of ``text``, split at the semicolons outside quotes ('…', E'…',
    "…"), dollar quotes ($$…$$, $tag$…$tag$) and comments (-- …, nested /* … */). A part
    holding only comments and blanks is no statement. Unterminated quotes or comments run
    to the end of the text (the server says what is wrong)."""
    found: list[Statement] = []
    start = i = 0
    while i < len(text):
        end = _skip(text, i)
        if end is not None:
            i = end
        elif text[i] == ";":
            _add(found, text, start, i, first_line)
            i += 1
            start = i
        else:
            i += 1
    _add(found, text, start, len(text), first_line)
    return found


def _skip(text: str, i: int) -> int | None:
    """Where the comment, quoted string or dollar quote that starts at ``i`` ends; ``None``
    if none starts there."""
    c = text[i]
    if c == "-" and text.startswith("--", i):
        end = text.find("\n", i)
        return len(text) if end < 0 else end
    if c == "/" and text.startswith("/*", i):
        return _block_comment_end(text, i)
    if c in {"'", '"'}:
        return _quote_end(text, i, c)
    if c == "$" and (m := _DOLLAR_TAG.match(text, i)) and not _in_word(text, i):
        end = text.find(m.group(0), m.end())
        return len(text) if end < 0 else end + len(m.group(0))
    return None


def _in_word(text: str, i: int) -> bool:
    """A ``$`` right after an identifier character is part of it (``a$1``), not a quote;
    ``$1`` (a parameter) never matches the tag pattern."""
    return i > 0 and (text[i - 1].isalnum() or text[i - 1] == "_")


def _block_comment_end(text: str, i: int) -> int:
    depth, i = 1, i + 2
    while i < len(text) and depth:
        if text.startswith("/*", i):
            depth, i = depth + 1, i + 2
        elif text.startswith("*/", i):
            depth, i = depth - 1, i + 2
        else:
            i += 1
    return i


def _quote_end(text: str, i: int, quote: str) -> int:
    """The index after the quote opened at ``i``; a doubled quote is one inside it, and
    in an E'…' string a backslash escapes the next character."""
    escapes = quote == "'" and i > 0 and text[i - 1] in "eE" and not _in_word(text, i - 1)
    i += 1
    while i < len(text):
        c = text[i]
        if escapes and c == "\\":
            i += 2
        elif c == quote:
            if text.startswith(quote * 2, i):
                i += 2
            else:
                return i + 1
        else:
            i += 1
    return i


def _add(found: list[Statement], text: str, start: int, end: int, first_line: int) -> None:
    part = text[start:end]
    code = _code_only(part)
    if not code.strip():
        return
    lead = len(code) - len(code.lstrip())  # the first line of code, comments before it aside
    line = first_line + text.count("\n", 0, start + lead)
    found.append(Statement(part.strip(), line))


def _code_only(text: str) -> str:
    """``text`` with its comments, quoted strings and dollar quotes blanked out."""
    out: list[str] = []
    i = 0
    while i < len(text):
        end = _skip(text, i)
        if end is None:
            out.append(text[i])
            i += 1
        else:
            out.append(" " * (end - i))  # the same length: positions stay
            i = end
    return "".join(out)


# Statements PostgreSQL refuses inside a transaction block (their leading words).
_NO_TRANSACTION: tuple[tuple[str, ...], ...] = (
    ("VACUUM",),
    ("CREATE", "DATABASE"),
    ("DROP", "DATABASE"),
    ("ALTER", "SYSTEM"),
    ("CREATE", "TABLESPACE"),
    ("DROP", "TABLESPACE"),
    ("REINDEX", "DATABASE"),
    ("REINDEX", "SYSTEM"),
)
_CONCURRENTLY = (("CREATE", "INDEX"), ("CREATE", "UNIQUE"), ("DROP", "INDEX"), ("REINDEX",))
_BEGIN = (("BEGIN",), ("START", "TRANSACTION"))
_COMMIT = (("COMMIT",), ("END",))
_ABORT = (("ROLLBACK",), ("ABORT",))


def _starts(words: list[str], forms: tuple[tuple[str, ...], ...]) -> bool:
    return any(tuple(words[: len(f)]) == f for f in forms)


def outside_form(statement: Statement) -> str | None:
    """The leading words for which PostgreSQL refuses ``statement`` inside a transaction
    block (``CREATE INDEX CONCURRENTLY``, ``VACUUM``, ``ALTER SYSTEM``, …); ``None`` if it
    does not."""
    words = statement.words
    form = next((f for f in _NO_TRANSACTION if tuple(words[: len(f)]) == f), None)
    if form is not None:
        return " ".join(form)
    if _starts(words, _CONCURRENTLY) and "CONCURRENTLY" in words:
        return " ".join(words[: words.index("CONCURRENTLY") + 1])
    return None


def outside_transaction(statement: Statement) -> bool:
    """Whether PostgreSQL refuses ``statement`` inside a transaction block."""
    return outside_form(statement) is not None


def concurrently(statement: Statement) -> bool:
    """An index built or dropped CONCURRENTLY: one that fails may leave an invalid index."""
    return _starts(statement.words, _CONCURRENTLY) and "CONCURRENTLY" in statement.words


@dataclass(frozen=True)
class SqlMigration:
    """A ``.sql`` migration as `migrate` runs it."""

    path: Path
    statements: tuple[Statement, ...]  # its own BEGIN/COMMIT left out
    own_transaction: bool  # it had BEGIN … COMMIT of its own
    outside: bool  # runs statement by statement, each in its own transaction
    down: tuple[Statement, ...] | None  # the -- down section (or the .down.sql file)
    down_path: Path | None = None  # the file the down statements' lines count in


def parse_sql_migration(
    path: Path, text: str, down_text: str | None = None, down_path: Path | None = None
) -> SqlMigration:
    """Read a ``.sql`` migration: the part before a line ``-- down`` is applied by
    `migrate`, the part after it (or ``down_text``, a sibling ``….down.sql``) by
    `rollback`. A file's own ``BEGIN``/``COMMIT`` are left out (migrate's transaction
    takes their place); a ``ROLLBACK`` is refused, as is ``BEGIN`` in a file that must run
    outside a transaction."""
    marker = _DOWN_MARKER.search(text)
    up_text = text if marker is None else text[: marker.start()]
    if marker is not None:
        down_text = text[marker.end() :]
        down_line = text.count("\n", 0, marker.end()) + 1
        down_path = path
    else:
        down_line = 1
    up, own = _body(path, split_statements(up_text))
    down = None
    if down_text is not None:
        down_statements, _ = _body(path, split_statements(down_text, down_line))
        down = tuple(down_statements) or None
    outside = any(outside_transaction(s) for s in up)
    if outside and own:
        raise MigrationLoadError(
            f"{path.name}: has BEGIN/COMMIT and a statement that cannot run in a"
            " transaction block (e.g. CREATE INDEX CONCURRENTLY); put it in a file of its own"
        )
    return SqlMigration(path, tuple(up), own, outside, down, down_path if down else None)


def _body(path: Path, statements: list[Statement]) -> tuple[list[Statement], bool]:
    body: list[Statement] = []
    own = False
    for s in statements:
        if _starts(s.words, _BEGIN) or _starts(s.words, _COMMIT):
            own = True
        elif _starts(s.words, _ABORT) and "TO" not in s.words:
            raise MigrationLoadError(
                f"{path.name}:{s.line}: ROLLBACK in a migration file: migrate rolls a failing"
                " file back by itself"
            )
        else:
            body.append(s)
    return body, own


def read_sql_migration(path: Path) -> SqlMigration:
    """:func:`parse_sql_migration` of the file at ``path``, with its sibling
    ``<name>.down.sql`` when the file has no ``-- down`` section."""
    sibling = path.with_name(path.stem + ".down.sql")
    if sibling.is_file():
        return parse_sql_migration(path, _read(path), _read(sibling), sibling)
    return parse_sql_migration(path, _read(path))


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MigrationLoadError(f"{path.name}: cannot be read: {exc}") from None
