"""Find migration files, resolve a name the user typed, and load a migration module."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import MigrationDefinitionError, MigrationLoadError, MigrationNotFound
from .migration import Backfill

# The stamp is ASCII digits only (\d also takes Arabic-Indic, fullwidth and other digits,
# which would sort and compare apart from the ASCII ones).
FILE_NAME = re.compile(r"^(?P<stamp>[0-9]{8}_[0-9]{4})_(?P<description>\w+)\.(?P<ext>py|sql)$")
DEFAULT_DIR = "migrations"
ENV_DIR = "CRYPTOPI_BATCH_MIGRATIONS"


@dataclass(frozen=True)
class MigrationFile:
    """A file in the migrations directory. ``name`` is the file name without extension."""

    path: Path

    @property
    def filename(self) -> str:
        return self.path.name

    @property
    def name(self) -> str:
        return self.path.stem

    @property
    def description(self) -> str:
        m = FILE_NAME.match(self.path.name)
        return m.group("description") if m else self.name

    @property
    def kind(self) -> str:
        return self.path.suffix.lstrip(".")

    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class LoadedMigration:
    file: MigrationFile
    backfill: Backfill
    description: str
    checksum: str
    direction: str = "up"  # "down": rollback's run of the migration's down=

    @property
    def name(self) -> str:
        return self.file.name if self.direction == "up" else f"{self.file.name}:down"


def shown(path: Path) -> str:
    """``path`` as messages show it: relative to the current directory when it is under it
    (``migrations/20250301_0930_x.py``), else as it is."""
    for base in (Path.cwd(), Path.cwd().resolve()):
        if path.is_relative_to(base):
            return str(path.relative_to(base))
    return str(path)


def migrations_dir(explicit: str | None = None, cwd: Path | None = None) -> Path:
    """``--migrations-dir``, else $CRYPTOPI_BATCH_MIGRATIONS, else pyproject.toml's
    ``[tool.cryptopi_batch] migrations``, else ``migrations/``."""
    base = cwd or Path.cwd()
    if explicit:
        return base / explicit
    if os.environ.get(ENV_DIR):
        return base / os.environ[ENV_DIR]
    configured = project_settings(base).get("migrations")
    if configured:
        return base / str(configured)
    return base / DEFAULT_DIR


def project_settings(cwd: Path | None = None) -> dict[str, Any]:
    """The ``[tool.cryptopi_batch]`` table of ``pyproject.toml`` in the current directory
    (``migrations``, ``window``, ``timezone``); empty without one."""
    pyproject = (cwd or Path.cwd()) / "pyproject.toml"
    if not pyproject.is_file():
        return {}
    import tomllib  # noqa: PLC0415 -- ~1.5 ms of imports, only where there is a pyproject

    try:
        tool = tomllib.loads(pyproject.read_text()).get("tool", {})
    except tomllib.TOMLDecodeError as exc:
        raise MigrationLoadError(f"{shown(pyproject)}: {exc}") from None
    table = tool.get("cryptopi_batch", {}) if isinstance(tool, dict) else {}
    return table if isinstance(table, dict) else {}


def discover(directory: Path) -> list[MigrationFile]:
    """Every migration file in ``directory``, in file-name (and so chronological) order."""
    if not directory.is_dir():
        raise MigrationNotFound(f"migrations directory not found: {shown(directory)}")
    return sorted(
        (MigrationFile(p) for p in directory.iterdir() if p.is_file() and FILE_NAME.match(p.name)),
        key=lambda f: f.filename,
    )


def misnamed(directory: Path) -> list[str]:
    """The ``.py`` and ``.sql`` files in ``directory`` whose names are not migration names
    (``YYYYMMDD_HHMM_description``), which every command leaves out; ``_*`` and dot files
    (``__init__.py``, editors' files) are not counted."""
    if not directory.is_dir():
        return []
    return sorted(
        p.name
        for p in directory.iterdir()
        if p.is_file()
        and p.suffix in (".py", ".sql")
        and not p.name.startswith(("_", "."))
        and not FILE_NAME.match(p.name)
        # A .sql migration's down, beside it (rollback runs it).
        and not FILE_NAME.match(p.name.replace(".down.sql", ".sql"))
    )


def clean_name(wanted: str) -> str:
    """The name part of what the user typed (a path to the file, a shell's completion,
    names it too). One without a letter or digit (``""``, blanks, ``.``, ``/``, ``.py``)
    is refused: the empty string is a prefix of every name, and `run "$UNSET"` must
    never run anything."""
    cleaned = Path(wanted).name.removesuffix(".py").removesuffix(".sql")
    if not any(c.isalnum() for c in cleaned):
        raise MigrationNotFound(
            f"migration name {wanted!r} names nothing: give the file name, its"
            " description, or a unique prefix of either"
        )
    return cleaned


CLOSEST = 5  # names an unknown name's message suggests, at most
LISTED = 10  # candidates an ambiguous name's message lists, at most


def resolve(files: list[MigrationFile], wanted: str) -> MigrationFile:
    """The one file that ``wanted`` names, tried in this order: its full name, its
    description part, a unique prefix of the name, of the description, then whole
    ``_``-separated words of the description (``total_cents`` names
    ``…_fill_total_cents``; ``otal`` does not). A name that matches several at the first
    step that matches any is ambiguous; one that matches none is suggested the closest
    few names, never the whole directory."""
    wanted = clean_name(wanted)
    matchers: list[Callable[[MigrationFile], bool]] = [
        lambda f: f.name == wanted,
        lambda f: f.description == wanted,
        lambda f: f.name.startswith(wanted),
        lambda f: f.description.startswith(wanted),
        lambda f: _has_words(f.description, wanted),
    ]
    for matcher in matchers:
        found = [f for f in files if matcher(f)]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise MigrationNotFound(
                f"migration name {wanted!r} is ambiguous: {_listed([f.name for f in found])}"
            )
    raise MigrationNotFound(_unknown(files, wanted))


def _has_words(description: str, wanted: str) -> bool:
    """Whether ``wanted``'s ``_``-separated words are a run of whole words of
    ``description``."""
    want, words = wanted.split("_"), description.split("_")
    if not all(want):  # `_x`, `x__y`: not words
        return False
    return any(words[i : i + len(want)] == want for i in range(len(words) - len(want) + 1))


def _listed(names: list[str]) -> str:
    if len(names) <= LISTED:
        return ", ".join(names)
    return f"{', '.join(names[:LISTED])} and {len(names) - LISTED} more"


def _unknown(files: list[MigrationFile], wanted: str) -> str:
    """The message for a name that matches no file: the closest names (by their full
    name or description), else how many there are and where."""
    import difflib  # noqa: PLC0415 -- only a name that matched nothing needs it

    directory = files[0].path.parent if files else None
    odd = [
        n
        for n in (misnamed(directory) if directory else [])
        if Path(n).stem == wanted or Path(n).stem.startswith(wanted)
    ]
    if odd:
        return (
            f"no migration named {wanted!r}; {', '.join(odd)} is not named"
            " YYYYMMDD_HHMM_description (letters, digits and _ only), so it is not a migration"
        )
    # Each file by its name, its description, and each run of as many of the
    # description's words as ``wanted`` has (`totl_cents` is close to `total_cents`).
    size = wanted.count("_") + 1
    by_key: dict[str, list[str]] = {}
    for f in files:
        words = f.description.split("_")
        runs = ("_".join(words[i : i + size]) for i in range(len(words) - size + 1))
        for key in {f.name, f.description, *runs}:
            by_key.setdefault(key, []).append(f.name)
    close: list[str] = []  # the closest first
    for key in difflib.get_close_matches(wanted, list(by_key), n=max(len(by_key), 1)):
        close.extend(name for name in by_key[key] if name not in close)
    if close:
        return f"no migration named {wanted!r}; did you mean {', '.join(close[:CLOSEST])}"
    if directory is None:
        return f"no migration named {wanted!r}: the migrations directory holds none"
    count = f"{len(files)} migration{'' if len(files) == 1 else 's'}"
    return f"no migration named {wanted!r}; `list` shows the {count} in {shown(directory)}/"


def load(file: MigrationFile) -> LoadedMigration:
    """Import a Python migration and return its ``migration`` object.

    Any failure becomes one :class:`MigrationLoadError` naming the file and line.
    """
    if file.kind != "py":
        raise MigrationLoadError(
            f"{file.filename}: plain .sql migrations are not run by `run`"
            " (a batched migration is a .py file); `migrate` applies them"
        )
    module_name = f"cryptopi_batch_migrations.{file.name}"
    spec = importlib.util.spec_from_file_location(module_name, file.path)
    if spec is None or spec.loader is None:
        raise MigrationLoadError(f"{shown(file.path)}: cannot be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise MigrationLoadError(
            f"{shown(file.path)}:{exc.lineno}: syntax error: {exc.msg}"
        ) from None
    except MigrationDefinitionError as exc:
        raise MigrationLoadError(f"{shown(file.path)}:{_line_in(exc, file.path)}: {exc}") from None
    except (Exception, SystemExit) as exc:  # SystemExit: a file that calls sys.exit()
        raise MigrationLoadError(
            f"{shown(file.path)}:{_line_in(exc, file.path)}: {type(exc).__name__}: {exc}"
        ) from None
    finally:
        sys.modules.pop(module_name, None)
    backfill = getattr(module, "migration", None)
    if not isinstance(backfill, Backfill):
        raise MigrationLoadError(
            f"{shown(file.path)}: defines no module-level `migration = Backfill(...)`"
        )
    description = (module.__doc__ or "").strip().splitlines()
    return LoadedMigration(file, backfill, description[0] if description else "", file.checksum())


def _line_in(exc: BaseException, path: Path) -> int | str:
    """The last line of ``path`` in the exception's traceback."""
    line: int | str = "?"
    for frame in traceback.extract_tb(exc.__traceback__):
        if Path(frame.filename) == path and frame.lineno is not None:
            line = frame.lineno
    return line
