"""Arguments → settings → a command → an exit code. Nothing else lives here."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
import traceback
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, TypeVar

import anyio

from . import commands, logs, safety
from .arguments import build_parser, migrations_directory, run_options
from .db import ConnectionSettings
from .discovery import misnamed
from .errors import CryptopiBatchError, one_line

if TYPE_CHECKING:
    from .report import StatusRow

T = TypeVar("T")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STOPPED = 0, 1, 2, 3


def main(argv: Sequence[str] | None = None) -> int:
    """The console entry point; returns the process exit code."""
    args: argparse.Namespace | None = None
    connection = ConnectionSettings()
    try:
        args = build_parser().parse_args(argv)
        logs.configure(args.log_format)
        connection = ConnectionSettings.from_env(args.dsn)
        handler: Callable[[argparse.Namespace, ConnectionSettings], Awaitable[int]]
        handler = _HANDLERS[args.command]
        with _sigterm_as_sigint():
            return anyio.run(handler, args, connection, backend="asyncio")
    except CryptopiBatchError as exc:
        if args is not None and args.traceback:
            _print_traceback(connection)
        logs.error_line(one_line(connection.redact(exc.message)), exit_code=exc.exit_code)
        return exc.exit_code
    except KeyboardInterrupt:
        logs.error_line("interrupted", exit_code=EXIT_STOPPED)
        return EXIT_STOPPED
    except Exception as exc:
        if args is not None and args.traceback:
            _print_traceback(connection)
        text = one_line(connection.redact(f"{type(exc).__name__}: {exc}"))
        logs.error_line(
            f"unexpected error: {text} (--traceback shows where)", exit_code=EXIT_FAILED
        )
        return EXIT_FAILED


def _print_traceback(connection: ConnectionSettings) -> None:
    """The traceback being handled, with every password of ``connection`` redacted (an
    exception's message may quote the DSN)."""
    print(connection.redact(traceback.format_exc()), file=sys.stderr, end="")


@contextlib.contextmanager
def _sigterm_as_sigint() -> Iterator[None]:
    """SIGTERM stops a command as SIGINT does (exit 3; an open transaction rolls back), also
    while a run is still connecting and setting up, before its own handler (finish the
    batch, then stop) takes over. Python lets only the main thread set handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        # SIGINT's handler, asyncio's (which cancels the command) or Python's; a process
        # started in the background by a shell has SIGINT ignored, and SIGTERM must still
        # stop it.
        on_sigint = signal.getsignal(signal.SIGINT)
        if callable(on_sigint):
            on_sigint(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


async def _run(args: argparse.Namespace, connection: ConnectionSettings) -> int:
    safety.confirm_write(safety.environment(args.env), f"run {args.name} writes", yes=args.yes)
    bar = None
    if not args.no_progress and args.log_format == "console":
        from .bar import terminal_bar  # noqa: PLC0415 -- here, as report and cli_flow: a run's start is timed

        bar = terminal_bar()
    show_bar = bar is not None
    if bar is not None:
        # The bar carries the per-batch numbers; the log keeps warnings and the summary,
        # printed above the bar by its console.
        logs.configure(args.log_format, level=logging.WARNING, console=bar.console)
    options = run_options(args, progress=show_bar)
    try:
        result = await commands.run(
            args.name,
            directory=migrations_directory(args),
            connection=connection,
            options=options,
            handle_signals=True,
            on_start=(
                (lambda done, total, rows: bar.start(args.name, done, total, rows)) if bar else None
            ),
            on_progress=bar.advance if bar else None,
        )
    finally:
        if bar is not None:
            bar.stop()
    if result.already_completed:
        logs.line(
            f"{result.name}: already completed; nothing to do",
            event="run_already_completed",
            migration=result.name,
        )
    elif result.outcome is not None:
        o = result.outcome
        # The run's numbers as ops.backfills has them; a resumed run also says what it did now.
        t, now = o.total, o.progress
        batches = "batch" if t.batches == 1 else "batches"
        resumed = f" ({now.rows:,} now)" if (now.rows, now.batches) != (t.rows, t.batches) else ""
        logs.line(
            f"{result.name}: completed: {t.rows:,} rows changed in"
            f" {t.batches:,} {batches}{resumed}, {o.seconds:.1f} s",
            event="run_summary",
            migration=result.name,
            rows=t.rows,
            batches=t.batches,
            rows_now=now.rows,
            batches_now=now.batches,
            seconds=round(o.seconds, 3),
        )
    return EXIT_OK


async def _status(args: argparse.Namespace, connection: ConnectionSettings) -> int:
    directory = migrations_directory(args) if args.name is not None else None
    if args.watch:
        return await _watch(args, connection, directory)
    return _show(args, await commands.status(args.name, directory=directory, connection=connection))


WATCH_EVERY = 2.0  # seconds between two refreshes of `status --watch`


async def _watch(
    args: argparse.Namespace, connection: ConnectionSettings, directory: Path | None
) -> int:
    """``status --watch``: the table redrawn in place on a terminal (printed anew each time
    elsewhere, or as JSON lines with --json) every WATCH_EVERY seconds; SIGINT or SIGTERM
    ends it with exit 0: watching changes nothing, so stopping it is not an interruption."""
    from rich.live import Live  # noqa: PLC0415 -- rich costs ~25 ms; only --watch uses it

    from .report import status_table, table_console  # noqa: PLC0415 -- as above

    console = table_console()
    live = (
        Live(console=console, auto_refresh=False) if console.is_terminal and not args.json else None
    )
    async with anyio.create_task_group() as tg:

        async def until_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(until_signal)
        try:
            if live is not None:
                live.start()
            while True:
                rows = await commands.status(args.name, directory=directory, connection=connection)
                if live is not None:
                    live.update(status_table(rows, console.width), refresh=True)
                else:
                    _show(args, rows)
                    sys.stdout.flush()
                await anyio.sleep(WATCH_EVERY)
        finally:
            if live is not None:
                live.stop()
    return EXIT_OK


async def _list(args: argparse.Namespace, connection: ConnectionSettings) -> int:
    directory = migrations_directory(args)
    code = _show(args, await commands.list_migrations(directory=directory, connection=connection))
    odd = misnamed(directory)
    if odd:
        logs.line(
            f"cryptopi_batch: left out, not named YYYYMMDD_HHMM_description: {', '.join(odd)}",
            event="files_left_out",
            level="warning",
            files=odd,
        )
    return code


def _show(args: argparse.Namespace, rows: list[StatusRow]) -> int:
    from .report import print_json, print_table, table_console  # noqa: PLC0415 -- as _run's

    if args.json:
        print_json(rows, sys.stdout)
    else:
        print_table(rows, table_console())
    return EXIT_OK


async def _control(args: argparse.Namespace, connection: ConnectionSettings) -> int:
    result = await commands.control(
        args.command, args.name, directory=migrations_directory(args), connection=connection
    )
    # Exit 0: the run is where the command asks (now or already); a command that cannot
    # act raised UsageError (exit 2). docs/cli.md has the table.
    logs.line(
        result.line,
        event="control",
        command=args.command,
        migration=result.name,
        before=str(result.before),
        status=str(result.status),
    )
    return EXIT_OK


async def _demo(args: argparse.Namespace, connection: ConnectionSettings) -> int:
    from rich.console import Console  # noqa: PLC0415 -- rich costs ~25 ms; demo output only

    from . import demo  # noqa: PLC0415 -- the embedded server is only needed here

    # The embedded server's package and the example migration first: without them, no
    # server is started nor table seeded.
    demo.require_embedded()
    commands.find_migration(migrations_directory(args), "backfill_confidence")
    console = Console(stderr=True)
    console.print(f"Starting an embedded PostgreSQL in {args.data_dir} …")
    cluster = await anyio.to_thread.run_sync(demo.start_cluster, Path(args.data_dir))
    try:
        dsn = cluster.dsn()
        demo_conn = ConnectionSettings(dsn=dsn)
        console.print(f"Seeding matrices.dyn_values with {args.rows:,} rows …")
        await demo.seed(dsn, args.rows)
        run_args = build_parser().parse_args(
            [
                "run",
                "backfill_confidence",
                "--restart",
                *(["--no-progress"] if args.no_progress else []),
            ]
        )
        run_args.migrations_dir = args.migrations_dir
        run_args.log_format = args.log_format
        code = await _run(run_args, demo_conn)
        from .report import print_table, table_console  # noqa: PLC0415 -- as _show's

        print_table(
            await commands.status(None, directory=None, connection=demo_conn), table_console()
        )
        return code
    finally:
        await anyio.to_thread.run_sync(cluster.stop)


async def _flow(args: argparse.Namespace, connection: ConnectionSettings) -> int:
    """``migrate``, ``plan``, ``new``, ``rollback``: :mod:`cli_flow`, imported when used."""
    from . import cli_flow  # noqa: PLC0415 -- as _run's bar

    handlers: dict[str, Callable[[argparse.Namespace, ConnectionSettings], Awaitable[int]]] = {
        "migrate": cli_flow.migrate_command,
        "plan": cli_flow.plan_command,
        "new": cli_flow.new_command,
        "rollback": cli_flow.rollback_command,
    }
    return await handlers[args.command](args, connection)


_HANDLERS: dict[str, Callable[[argparse.Namespace, ConnectionSettings], Awaitable[int]]] = {
    "run": _run,
    "status": _status,
    "list": _list,
    "demo": _demo,
    "pause": _control,
    "resume": _control,
    "cancel": _control,
    "migrate": _flow,
    "plan": _flow,
    "new": _flow,
    "rollback": _flow,
}
