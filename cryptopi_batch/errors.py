"""The one error family of cryptopi_batch.

Every error a user can see is a :class:`CryptopiBatchError`. Each class's docstring is its
default message and ``exit_code`` is what the CLI exits with (see docs/cli.md).
"""

from __future__ import annotations


def one_line(text: str) -> str:
    """``text`` on one line: PostgreSQL's errors carry their DETAIL and HINT on lines of
    their own; here they follow the message after ``; ``."""
    return "; ".join(part for part in (line.strip() for line in text.splitlines()) if part)


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
