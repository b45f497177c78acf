"""cryptopi_batch: batched, resumable, throttled data migrations for PostgreSQL."""

from .errors import (
    BatchFailed,
    CouldNotStart,
    CryptopiBatchError,
    Stopped,
)
from .migration import Backfill, Batch

__all__ = [
    "Backfill",
    "Batch",
    "BatchFailed",
    "CouldNotStart",
    "CryptopiBatchError",
    "Stopped",
]
