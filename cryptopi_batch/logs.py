"""Logging set-up for the command line: the library logs, only the application configures."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

import structlog

if TYPE_CHECKING:
    from rich.console import Console


_json = False  # as configured: the CLI's own lines follow the log's format


def line(text: str, *, event: str, level: str = "info", **fields: Any) -> None:
    """One line of the command's own on stderr (a summary, an error): ``text`` as it is, or
    with ``--log-format json`` an event like the log's, ``text`` in its ``message``."""
    if not _json:
        print(text, file=sys.stderr)
        return
    stamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    record = {"event": event, "level": level, "message": text, **fields, "timestamp": stamp}
    print(json.dumps(record), file=sys.stderr)


def error_line(message: str, *, exit_code: int) -> None:
    """The CLI's one line for an error it exits with: ``cryptopi_batch: message``, or an
    ``error`` event with the message and the exit code."""
    line(f"cryptopi_batch: {message}", event="error", level="error", exit_code=exit_code)


class _ConsoleLogger:
    """Writes each event through a rich console: while a progress bar is shown, rich prints
    the line above the bar, so a line never lands on the bar's own."""

    def __init__(self, console: Console) -> None:
        self._console = console

    def msg(self, message: str) -> None:
        from rich.text import Text  # noqa: PLC0415 -- rich is loaded already, by the bar

        self._console.print(Text.from_ansi(message), soft_wrap=True)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


def configure(
    fmt: str = "console",
    *,
    level: int = logging.INFO,
    stream: TextIO | None = None,
    console: Console | None = None,
) -> None:
    """Structured events to stderr: aligned console lines, or one JSON object per line.
    With ``console`` (the progress bar's), events are printed through it."""
    global _json  # noqa: PLW0603 -- the application's one logging set-up, as structlog's
    _json = fmt == "json"
    out = stream or sys.stderr
    # An interrupted connect leaves asyncpg futures whose errors asyncio reports when they
    # are collected ("Future exception was never retrieved"): noise after a Ctrl-C, never
    # an error of the run's. The command's own outcome is reported on its own line.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    renderer: structlog.typing.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        colors = console.is_terminal if console is not None else out.isatty()
        renderer = structlog.dev.ConsoleRenderer(colors=colors)
    factory: Any = structlog.PrintLoggerFactory(out)
    if console is not None:
        factory = lambda *_: _ConsoleLogger(console)  # noqa: E731 -- the factory is a callable
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )
