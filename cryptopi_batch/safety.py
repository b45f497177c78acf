"""The environment a command runs against (``--env``, ``$CRYPTOPI_BATCH_ENV``) and the
confirmation that writing to a protected one (production) needs: ``--yes``, or a yes typed
on a terminal."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from .errors import UsageError

ENV_VAR = "CRYPTOPI_BATCH_ENV"
PROTECTED = frozenset({"production", "prod"})


def environment(given: str | None) -> str | None:
    """``--env``, else ``$CRYPTOPI_BATCH_ENV``, else none."""
    return given or os.environ.get(ENV_VAR) or None


def protected(env: str | None) -> bool:
    return env is not None and env.strip().lower() in PROTECTED


def confirm(
    what: str,
    *,
    yes: bool,
    ask: Callable[[str], str] = input,
    terminal: Callable[[], bool] | None = None,
) -> None:
    """Print ``what`` will happen; go on with ``yes``, or once a terminal's user answers
    yes; else :class:`UsageError` (exit 2), nothing done."""
    print(what, file=sys.stderr)
    if yes:
        return
    if not (terminal or _stdin_is_terminal)():
        raise UsageError("not confirmed: pass --yes (or answer on a terminal); nothing was done")
    if ask("Go on? [y/N] ").strip().lower() not in ("y", "yes"):
        raise UsageError("not confirmed; nothing was done")


def _stdin_is_terminal() -> bool:
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):  # no stdin, or a closed one
        return False


def confirm_write(env: str | None, what: str, *, yes: bool) -> None:
    """In a protected environment, a command that writes is confirmed first."""
    if protected(env):
        assert env is not None
        confirm(f"{env.strip()}: {what}", yes=yes)
