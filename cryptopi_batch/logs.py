"""Logging set-up for the command line: the library logs, only the application configures."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog


def configure(
    fmt: str = "console", *, level: int = logging.INFO, stream: TextIO | None = None
) -> None:
    """Structured events to stderr: aligned console lines, or one JSON object per line."""
    out = stream or sys.stderr
    # An interrupted connect leaves asyncpg futures whose errors asyncio reports when they
    # are collected ("Future exception was never retrieved"): noise after a Ctrl-C, never
    # an error of the run's. The command's own outcome is reported on its own line.
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    renderer: structlog.typing.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
