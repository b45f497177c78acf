"""cryptopi_batch: batched, resumable, throttled data migrations for PostgreSQL."""

from __future__ import annotations

# Nothing is imported here, not even typing (~5 ms): see _HOME below.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from .errors import BatchFailed, CouldNotStart, CryptopiBatchError, Stopped
    from .migration import Backfill, Batch

__all__ = [
    "Backfill",
    "Batch",
    "BatchFailed",
    "CouldNotStart",
    "CryptopiBatchError",
    "Stopped",
]

# Imported when first asked for (PEP 562), not with the package: `python -m cryptopi_batch`
# imports the package before its __main__, whose first lines set the signal handlers that
# make a Ctrl-C during start-up exit 3 rather than print a traceback.
_HOME = {
    "Backfill": "migration",
    "Batch": "migration",
    "BatchFailed": "errors",
    "CouldNotStart": "errors",
    "CryptopiBatchError": "errors",
    "Stopped": "errors",
}


def __getattr__(name: str) -> object:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import errors, migration  # noqa: PLC0415 -- see above

    value = getattr(migration if _HOME[name] == "migration" else errors, name)
    globals()[name] = value
    return value
