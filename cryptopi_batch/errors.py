"""The one error family of cryptopi_batch.

Every error a user can see is a :class:`CryptopiBatchError`. Each class's docstring is its
default message and ``exit_code`` is what the CLI exits with (see docs/cli.md).
"""

from __future__ import annotations

import functools
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


@functools.cache
def _libraries() -> frozenset[Path]:
    """Where the standard library and installed packages live: asked only when an error is
    described (sysconfig costs every command's start ~1-2 ms otherwise)."""
    import sysconfig  # noqa: PLC0415 -- see above

    paths = sysconfig.get_paths()
    keys = ("stdlib", "platstdlib", "purelib", "platlib")
    return frozenset(Path(p).resolve() for key in keys if (p := paths.get(key)))


def one_line(text: str) -> str:
    """``text`` on one line: PostgreSQL's errors carry their DETAIL and HINT on lines of
    their own; here they follow the message after ``; ``."""
    return "; ".join(part for part in (line.strip() for line in text.splitlines()) if part)


def describe(exc: BaseException) -> str:
    """``exc`` on one line as the user sees it: its type, its SQLSTATE if PostgreSQL's, its
    text, and where it was raised when that is in the user's code (a migration's
    ``process=``), e.g. ``KeyError: 'customr' (20250601_1200_x.py, line 12)``."""
    state = getattr(exc, "sqlstate", None)
    text = str(exc).strip() or type(exc).__name__
    head = f"{type(exc).__name__} ({state}): {text}" if state else f"{type(exc).__name__}: {text}"
    where = origin(exc)
    return f"{head} ({where})" if where else head


def origin(exc: BaseException) -> str | None:
    """``file, line N`` of the innermost frame of ``exc``'s traceback that is the user's:
    not in this package, the standard library or an installed package (asyncpg, anyio);
    ``None`` if there is none, e.g. for a migration's SQL."""
    found = None
    tb = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if _users(filename):
            found = f"{Path(filename).name}, line {tb.tb_lineno}"
        tb = tb.tb_next
    return found


def _users(filename: str) -> bool:
    if filename.startswith("<"):  # <frozen …>, <string>: not a file to show
        return False
    if filename.endswith((".pyx", ".pxd")):  # a compiled library's (asyncpg's protocol)
        return False
    path = Path(filename).resolve()
    if path.is_relative_to(_PACKAGE) or any(path.is_relative_to(p) for p in _libraries()):
        return False
    return not {"site-packages", "dist-packages"} & set(path.parts)


class CryptopiBatchError(Exception):
    """cryptopi_batch failed."""

    exit_code = 1

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class CouldNotStart(CryptopiBatchError):
    """The run could not start; nothing was written."""

    exit_code = 2


class UsageError(CouldNotStart):
    """Bad usage."""


class MigrationNotFound(CouldNotStart):
    """No migration matches that name."""


class MigrationLoadError(CouldNotStart):
    """A migration file does not load."""


class MigrationDefinitionError(CouldNotStart, ValueError):
    """A migration is defined wrongly."""


class ConnectionFailed(CouldNotStart):
    """Could not connect to PostgreSQL."""


class TargetInvalid(CouldNotStart):
    """The migration's table or key cannot be batched."""


class PermissionDenied(CouldNotStart):
    """Permission denied."""


class SourceChanged(CouldNotStart):
    """The migration's source changed since its run started; rerun with --force to resume."""


class RunCancelled(CouldNotStart):
    """The run was cancelled; rerun with --restart to start it again."""


class BatchFailed(CryptopiBatchError):
    """A batch failed; the checkpoint is kept and `run` resumes."""

    exit_code = 1


class Stopped(CryptopiBatchError):
    """Stopped before completion; `run` resumes."""

    exit_code = 3


class LeaseLost(CryptopiBatchError):
    """This worker no longer owns the batch: another worker took it over."""


class MissingDependency(CouldNotStart):
    """A command needs a package that is not installed."""


class MigrationFailed(CryptopiBatchError):
    """A migration file failed; `migrate` stopped there and did not record it."""

    exit_code = 1


class Pending(CryptopiBatchError):
    """`migrate --check`: migrations are pending or unfinished."""

    exit_code = 3
