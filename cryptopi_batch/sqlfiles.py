"""The package's SQL files, and the named blocks of ``sql/queries.sql`` (``-- name --``
headers), loaded once and handed out by name."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

_BLOCK = re.compile(r"^-- (\w+) --$", re.MULTILINE)


@functools.cache
def sql_dir() -> Traversable:
    """The package's SQL files: beside this module when installed as files (the usual
    case, without the ~3 ms of imports importlib.resources costs), else (a zip) through
    importlib.resources."""
    beside = Path(__file__).with_name("sql")
    if beside.is_dir():
        return beside
    from importlib import resources  # noqa: PLC0415 -- see above

    return resources.files("cryptopi_batch").joinpath("sql")


@functools.cache
def _queries() -> dict[str, str]:
    text = sql_dir().joinpath("queries.sql").read_text(encoding="utf-8")
    parts = _BLOCK.split(text)
    return {parts[i]: parts[i + 1].strip() for i in range(1, len(parts), 2)}


def query(name: str) -> str:
    """The named block of ``sql/queries.sql``."""
    return _queries()[name]
