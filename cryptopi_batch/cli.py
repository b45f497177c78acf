"""Arguments → settings → a command → an exit code. Nothing else lives here."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import anyio

from . import commands, logs, safety
from .db import ConnectionSettings
from .discovery import migrations_dir, misnamed
from .errors import CryptopiBatchError, UsageError, one_line
from .report import ProgressBar, StatusRow, print_json, print_table, table_console
from .settings import RunOptions

T = TypeVar("T")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_STOPPED = 0, 1, 2, 3


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse's default exits 2 with usage spam
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _common_options() -> _Parser:
    common = _Parser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument("--dsn", help="PostgreSQL URL (else $DATABASE_URL, else PG* variables)")
    common.add_argument("--migrations-dir", help="where migration files live")
    common.add_argument("--log-format", choices=("console", "json"))
    common.add_argument("--traceback", action="store_true", help="show tracebacks on errors")
    common.add_argument(
        "--env", help="the environment (else $CRYPTOPI_BATCH_ENV); production asks --yes"
    )
    return common


class _Version(argparse.Action):
    """``--version``, read from the installed metadata only when asked (importlib.metadata
    costs several ms of imports every other start would pay)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        import importlib.metadata  # noqa: PLC0415 -- see above

        print(f"{parser.prog} {importlib.metadata.version('cryptopi_batch')}")
        parser.exit()


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    # The common options are accepted before or after the command's name. They default
    # only at the top level, on actions of their own (set_defaults changes the actions it
    # finds, and parents share theirs): a subcommand's default would overwrite what was
    # said before the command.
    common = _common_options()
    parser = _Parser(
        prog="cryptopi_batch",
        parents=[_common_options()],
        description="Batched, resumable, throttled data migrations for PostgreSQL.",
    )
    parser.set_defaults(
        dsn=None, migrations_dir=None, log_format="console", traceback=False, env=None
    )
    parser.add_argument(
        "--version", action=_Version, nargs=0, help="show the installed version and exit"
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", parents=[common], help="run a migration, or resume it")
    run.add_argument("name")
    run.add_argument("--batch-size", type=int)
    run.add_argument("--workers", type=int)
    run.add_argument("--max-rows-per-second", type=float)
    run.add_argument("--sleep", help="pause between batches (e.g. 100ms)")
    run.add_argument("--target-batch-seconds", help="adapt the batch size toward this")
    run.add_argument("--lock-timeout", help="per batch transaction (default 2s)")
    run.add_argument("--statement-timeout", help="per batch transaction (default 30s)")
    run.add_argument(
        "--synchronous-commit",
        choices=("on", "off"),
        help="per batch transaction (default off: see docs/running.md)",
    )
    run.add_argument("--max-duration", help="stop (exit 3) after this long")
    run.add_argument("--lease-seconds", type=float, help=argparse.SUPPRESS)
    run.add_argument("--no-progress", action="store_true")
    run.add_argument("--force", action="store_true", help="resume although the source changed")
    run.add_argument("--restart", action="store_true", help="forget the checkpoint; start over")
    run.add_argument(
        "--catch-up",
        action="store_true",
        help="extend a completed run to keys inserted since it started",
    )
    run.add_argument("--yes", action="store_true", help="confirm a destructive migration")

    status = sub.add_parser("status", parents=[common], help="progress, rate, ETA, state")
    status.add_argument("name", nargs="?")
    status.add_argument("--json", action="store_true")

    lst = sub.add_parser("list", parents=[common], help="every migration with its state")
    lst.add_argument("--json", action="store_true")

    for command, text in (
        ("pause", "running workers stop after their current batch"),
        ("resume", "lift a pause (a stopped run continues with `run`)"),
        ("cancel", "stop for good; `run` refuses it until --restart"),
    ):
        sub.add_parser(command, parents=[common], help=text).add_argument("name")

    migrate = sub.add_parser(
        "migrate", parents=[common], help="apply every pending migration, in order"
    )
    migrate.add_argument("--to", metavar="NAME", help="stop after this migration")
    migrate.add_argument("--dry-run", action="store_true", help="list what would run")
    migrate.add_argument(
        "--check", action="store_true", help="exit 3 if anything is pending (writes nothing)"
    )
    _take_run_options(migrate, run)

    plan = sub.add_parser("plan", parents=[common], help="what a run would do; writes nothing")
    plan.add_argument("name")
    plan.add_argument("--exact", action="store_true", help="count the rows (a full scan)")
    plan.add_argument(
        "--sample",
        action="store_true",
        help="time the first batch, run in a transaction rolled back",
    )
    plan.add_argument("--json", action="store_true")
    _take_run_options(plan, run)

    new = sub.add_parser("new", parents=[common], help="write a new migration file")
    new.add_argument("description", help="what it does, e.g. 'backfill confidence'")
    new.add_argument("--sql", action="store_true", help="a .sql file (else a backfill, .py)")
    new.add_argument("--table", help="the backfill's table (checked when a database answers)")
    new.add_argument("--key", help="its key column(s), comma-separated (default id)")

    rollback = sub.add_parser(
        "rollback", parents=[common], help="run a migration's down and unrecord it"
    )
    rollback.add_argument("name")
    _take_run_options(rollback, run)  # --yes among them: confirms the rollback

    demo = sub.add_parser("demo", parents=[common], help="embedded PostgreSQL demo")
    demo.add_argument("--rows", type=_positive_int, default=1_000_000)
    demo.add_argument("--data-dir", default=".pgdata/demo")
    demo.add_argument("--no-progress", action="store_true")
    return parser


def _take_run_options(parser: argparse.ArgumentParser, run: argparse.ArgumentParser) -> None:
    """Every option of ``run`` that ``parser`` lacks: a command that runs backfills takes
    them all (argparse's own ``parents=`` would take run's NAME and -h too)."""
    for action in run._actions:
        strings = action.option_strings
        if strings and not any(s in parser._option_string_actions for s in strings):
            parser._add_action(action)


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


def _directory(args: argparse.Namespace) -> Path:
    return migrations_dir(args.migrations_dir)


def run_options(args: argparse.Namespace, *, progress: bool) -> RunOptions:
    """``run``'s command-line options (``None``: not given, the migration's say applies)."""
    return RunOptions(
        batch_size=args.batch_size,
        workers=args.workers,
        max_rows_per_second=args.max_rows_per_second,
        sleep=args.sleep,
        target_batch_seconds=args.target_batch_seconds,
        lock_timeout=args.lock_timeout,
        statement_timeout=args.statement_timeout,
        synchronous_commit=(
            None if args.synchronous_commit is None else args.synchronous_commit == "on"
        ),
        max_duration=args.max_duration,
        lease_seconds=args.lease_seconds,
        force=args.force,
        restart=args.restart,
        catch_up=args.catch_up,
        yes=args.yes,
        progress=progress,
    )


async def _run(args: argparse.Namespace, connection: ConnectionSettings) -> int:
    safety.confirm_write(safety.environment(args.env), f"run {args.name} writes", yes=args.yes)
    bar = _progress_bar() if not args.no_progress and args.log_format == "console" else None
    show_bar = bar is not None
    if bar is not None:
        # The bar carries the per-batch numbers; the log keeps warnings and the summary,
        # printed above the bar by its console.
        logs.configure(args.log_format, level=logging.WARNING, console=bar.console)
    options = run_options(args, progress=show_bar)
    try:
        result = await commands.run(
            args.name,
            directory=_directory(args),
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


def _progress_bar() -> ProgressBar | None:
    """A bar on stderr if rich takes stderr for a terminal. rich costs ~25 ms of imports, so
    it is not asked when it cannot say yes: it does only for TTY_COMPATIBLE=1, a non-empty
    FORCE_COLOR, or a stderr that is a tty."""
    try:
        tty = sys.stderr.isatty()
    except (AttributeError, ValueError):  # no stream, or a closed one: rich says no too
        tty = False
    if not (tty or os.environ.get("TTY_COMPATIBLE") == "1" or os.environ.get("FORCE_COLOR")):
        return None
    from rich.console import Console  # noqa: PLC0415 -- only a bar on a terminal needs rich

    console = Console(stderr=True)
    return ProgressBar(console) if console.is_terminal else None


async def _status(args: argparse.Namespace, connection: ConnectionSettings) -> int:
    directory = _directory(args) if args.name is not None else None
    return _show(args, await commands.status(args.name, directory=directory, connection=connection))


async def _list(args: argparse.Namespace, connection: ConnectionSettings) -> int:
    directory = _directory(args)
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
    if args.json:
        print_json(rows, sys.stdout)
    else:
        print_table(rows, table_console())
    return EXIT_OK


async def _control(args: argparse.Namespace, connection: ConnectionSettings) -> int:
    result = await commands.control(
        args.command, args.name, directory=_directory(args), connection=connection
    )
    verb = {"pause": "paused", "resume": "resumed", "cancel": "cancelled"}[args.command]
    if result.changed:
        print(f"{result.name}: {verb}", file=sys.stderr)
    else:
        print(f"{result.name}: {result.status}; not {verb}", file=sys.stderr)
    return EXIT_OK


async def _demo(args: argparse.Namespace, connection: ConnectionSettings) -> int:
    from rich.console import Console  # noqa: PLC0415 -- rich costs ~25 ms; demo output only

    from . import demo  # noqa: PLC0415 -- the embedded server is only needed here

    # The embedded server's package and the example migration first: without them, no
    # server is started nor table seeded.
    demo.require_embedded()
    commands.find_migration(_directory(args), "backfill_confidence")
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
        print_table(
            await commands.status(None, directory=None, connection=demo_conn), table_console()
        )
        return code
    finally:
        await anyio.to_thread.run_sync(cluster.stop)


async def _migrate(args: argparse.Namespace, connection: ConnectionSettings) -> int:
    from . import migrate  # noqa: PLC0415 -- only this command needs it

    directory, options = _directory(args), run_options(args, progress=False)
    if args.check:
        await migrate.check(directory=directory, connection=connection, to=args.to)
        print("nothing pending", file=sys.stderr)
        return EXIT_OK
    if args.dry_run:
        found = await migrate.pending(
            directory=directory, connection=connection, to=args.to, options=options, estimate=True
        )
        for p in found:
            more = "" if p.rows is None else f", ~{p.rows:,} rows in ~{p.batches:,} batches"
            print(f"{p.file.filename}: {p.state} ({p.file.kind}{more})")
        if not found:
            print("nothing pending", file=sys.stderr)
        return EXIT_OK
    env = safety.environment(args.env)
    if safety.protected(env):
        found = await migrate.pending(directory=directory, connection=connection, to=args.to)
        names = ", ".join(p.file.filename for p in found) or "nothing"
        safety.confirm_write(env, f"migrate applies {names}", yes=args.yes)
    # A progress bar for each backfill, as `run` shows it; the files' lines between them.
    show_bar = not args.no_progress and args.log_format == "console"
    first = _progress_bar() if show_bar else None
    bars: list[ProgressBar] = []

    def start(name: str, done: int, total: int, rows: int) -> None:
        nonlocal first
        bar, first = first or _progress_bar(), None
        if bar is not None:
            bars.append(bar)
            logs.configure(args.log_format, level=logging.WARNING, console=bar.console)
            bar.start(name, done, total, rows)

    def end_bars() -> None:
        if bars:
            while bars:
                bars.pop().stop()
            logs.configure(args.log_format)

    def applied(a: migrate.Applied) -> None:
        end_bars()
        logs.line(f"{a.name}: {a.how}", event="migration_applied", migration=a.name, kind=a.kind)

    try:
        done = await migrate.migrate(
            directory=directory,
            connection=connection,
            options=run_options(args, progress=first is not None),
            to=args.to,
            handle_signals=True,
            on_applied=applied,
            on_start=start,
            on_progress=lambda p: bars[-1].advance(p) if bars else None,
        )
    finally:
        end_bars()
    if not done:
        logs.line("nothing pending", event="migrate_nothing_pending")
    return EXIT_OK


async def _plan(args: argparse.Namespace, connection: ConnectionSettings) -> int:
    from . import plan  # noqa: PLC0415 -- only this command needs it

    found = await plan.plan(
        args.name,
        directory=_directory(args),
        connection=connection,
        options=run_options(args, progress=False),
        exact=args.exact,
        sample=args.sample,
    )
    if args.json:
        json.dump(found.as_json(), sys.stdout, indent=2, default=str)
        print()
    else:
        print("\n".join(plan.plan_lines(found)))
    return EXIT_OK


async def _new(args: argparse.Namespace, connection: ConnectionSettings) -> int:
    from . import scaffold  # noqa: PLC0415 -- only this command needs it
    from .discovery import shown  # noqa: PLC0415

    made = await scaffold.new_migration(
        args.description,
        directory=_directory(args),
        connection=connection,
        sql=args.sql,
        table=args.table,
        key=args.key,
    )
    print(shown(made.path))
    if args.table is not None and not made.key_checked:
        print(
            "cryptopi_batch: no database answered: --table and --key not checked", file=sys.stderr
        )
    return EXIT_OK


async def _rollback(args: argparse.Namespace, connection: ConnectionSettings) -> int:
    from . import rollback  # noqa: PLC0415 -- only this command needs it

    directory = _directory(args)
    undo, _ = rollback.plan_undo(directory, args.name)  # irreversible: refused before asking
    what = f"{undo.file.name}: rollback runs {undo.what}, then removes its ops.migrations row"
    env = safety.environment(args.env)
    safety.confirm(f"{env}: {what}" if safety.protected(env) else what, yes=args.yes)
    done = await rollback.rollback(
        args.name,
        directory=directory,
        connection=connection,
        options=run_options(args, progress=False),
        handle_signals=True,
    )
    rows = "" if done.rows is None else f" ({done.rows:,} rows changed)"
    logs.line(f"{done.name}: rolled back{rows}", event="rolled_back", migration=done.name)
    return EXIT_OK


_HANDLERS: dict[str, Callable[[argparse.Namespace, ConnectionSettings], Awaitable[int]]] = {
    "run": _run,
    "status": _status,
    "list": _list,
    "demo": _demo,
    "pause": _control,
    "resume": _control,
    "cancel": _control,
    "migrate": _migrate,
    "plan": _plan,
    "new": _new,
    "rollback": _rollback,
}
