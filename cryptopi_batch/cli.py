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
from typing import Any, NoReturn, TypeVar

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
    def error(self, message: str) -> NoReturn:  # argparse's default exits 2 with usage spam
        raise UsageError(f"{message} (see `{self.prog} --help`)")


NAME_HELP = (
    "the migration: its file name, its description, a unique prefix of either, or whole"
    " words of its description that only it has"
)
DURATION = "D"  # a duration's metavar: seconds, or 500ms, 30s, 5min, 2h
JSON_HELP = "one JSON object per line instead of the table"


def _common_options(*, server: bool = True) -> _Parser:
    """The options every command takes (``demo`` none about a server of the user's,
    ``--dsn`` and ``--env``: it starts its own). Help text is plain: no markup."""
    common = _Parser(add_help=False, argument_default=argparse.SUPPRESS)
    if server:
        common.add_argument(
            "--dsn",
            metavar="URL",
            help="the database: a postgresql:// URL or key=value DSN"
            " (else $DATABASE_URL, else the PG* variables)",
        )
    common.add_argument(
        "--migrations-dir",
        metavar="DIR",
        help="where migration files live (else $CRYPTOPI_BATCH_MIGRATIONS, else"
        " [tool.cryptopi_batch] migrations in ./pyproject.toml, else ./migrations)",
    )
    common.add_argument(
        "--log-format",
        choices=("console", "json"),
        help="console (default): lines for people; json: one JSON object per line",
    )
    common.add_argument(
        "--traceback",
        action="store_true",
        help="show the Python traceback with an error, not only its one line",
    )
    if server:
        common.add_argument(
            "--env",
            metavar="NAME",
            help="the environment (else $CRYPTOPI_BATCH_ENV); in production, writing asks --yes",
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


def build_parser() -> argparse.ArgumentParser:  # noqa: PLR0915 -- to be split
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

    run = sub.add_parser(
        "run", parents=[common], help="run a migration, resume it, or join a run in progress"
    )
    run.add_argument("name", help=NAME_HELP)
    run.add_argument(
        "--batch-size", type=int, metavar="N", help="keys per batch at the start (at least 1)"
    )
    run.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="batches run at once by this process, one connection each (default 1)",
    )
    run.add_argument(
        "--max-rows-per-second",
        type=float,
        metavar="R",
        help="cap on the rows changed per second by this process",
    )
    run.add_argument("--sleep", metavar=DURATION, help="pause after each batch (e.g. 100ms)")
    run.add_argument(
        "--target-batch-seconds",
        metavar=DURATION,
        help="adapt the batch size so that a batch takes about this long (e.g. 2s)",
    )
    run.add_argument(
        "--lock-timeout",
        metavar=DURATION,
        help="lock_timeout of each batch transaction (default 2s; 0: off)",
    )
    run.add_argument(
        "--statement-timeout",
        metavar=DURATION,
        help="statement_timeout of each batch transaction (default 30s; 0: off)",
    )
    run.add_argument(
        "--synchronous-commit",
        choices=("on", "off"),
        help="synchronous_commit of each batch transaction (default off: see docs/running.md)",
    )
    run.add_argument(
        "--max-duration",
        metavar=DURATION,
        help="stop after this long, as after Ctrl-C (exit 3; run again to resume)",
    )
    run.add_argument(
        "--window",
        metavar="SPEC",
        help='run only in these hours, e.g. "Mon-Fri 22:00-06:00, Sat-Sun 00:00-24:00"',
    )
    run.add_argument(
        "--timezone", metavar="ZONE", help="the window's zone, e.g. Europe/Berlin (default UTC)"
    )
    run.add_argument(
        "--exit-outside-window",
        action="store_true",
        help="outside the window exit 3 at once instead of waiting (for cron)",
    )
    run.add_argument(
        "--until",
        metavar="INSTANT",
        help="stop (exit 3) by this instant, e.g. 2026-12-01T06:00+01:00",
    )
    run.add_argument("--lease-seconds", type=float, help=argparse.SUPPRESS)
    run.add_argument(
        "--no-progress", action="store_true", help="no progress bar: one log line per batch"
    )
    run.add_argument(
        "--force",
        action="store_true",
        help="resume although the migration file changed since the run started",
    )
    run.add_argument(
        "--restart",
        action="store_true",
        help="forget the run's checkpoint and start from the first key",
    )
    run.add_argument(
        "--catch-up",
        action="store_true",
        help="extend a completed run to keys inserted since it started",
    )
    run.add_argument(
        "--yes", action="store_true", help="confirm a migration declared destructive=True"
    )
    _health_options(run)

    status = sub.add_parser(
        "status", parents=[common], help="progress, rate, ETA and state of the recorded runs"
    )
    status.add_argument(
        "name", nargs="?", help=f"{NAME_HELP} (default: every run recorded in the database)"
    )
    status.add_argument("--json", action="store_true", help=JSON_HELP)
    status.add_argument(
        "--watch", action="store_true", help="refresh every 2 s until Ctrl-C (then exit 0)"
    )

    lst = sub.add_parser("list", parents=[common], help="every migration with its state")
    lst.add_argument("--json", action="store_true", help=JSON_HELP)

    for command, text in (
        ("pause", "running workers stop after their current batch"),
        ("resume", "lift a pause or a cancel, the checkpoint kept (then `run` continues)"),
        ("cancel", "stop the run; `run` refuses it until `resume` or `run --restart`"),
    ):
        sub.add_parser(command, parents=[common], help=text).add_argument("name", help=NAME_HELP)

    migrate = sub.add_parser(
        "migrate", parents=[common], help="apply every pending migration, in order"
    )
    migrate.add_argument("--to", metavar="NAME", help="stop after this migration")
    migrate.add_argument("--dry-run", action="store_true", help="list what would run")
    migrate.add_argument(
        "--check",
        action="store_true",
        dest="pending_check",  # not run's --check SQL, which migrate's backfills cannot take
        help="exit 3 if anything is pending (writes nothing)",
    )
    _take_run_options(migrate, run)

    plan = sub.add_parser("plan", parents=[common], help="what a run would do; writes nothing")
    plan.add_argument("name", help=NAME_HELP)
    plan.add_argument("--exact", action="store_true", help="count the rows (a full scan)")
    plan.add_argument(
        "--sample",
        action="store_true",
        help="time the first batch, run in a transaction rolled back",
    )
    plan.add_argument("--json", action="store_true", help=JSON_HELP)
    _take_run_options(plan, run)

    new = sub.add_parser("new", parents=[common], help="write a new migration file")
    new.add_argument("description", help="what it does, e.g. 'backfill confidence'")
    new.add_argument("--sql", action="store_true", help="a .sql file (else a backfill, .py)")
    new.add_argument("--table", help="the backfill's table (checked when a database answers)")
    new.add_argument("--key", help="its key column(s), comma-separated (default id)")

    rollback = sub.add_parser(
        "rollback", parents=[common], help="run a migration's down and unrecord it"
    )
    rollback.add_argument("name", help=NAME_HELP)
    _take_run_options(rollback, run)  # --yes among them: confirms the rollback

    demo = sub.add_parser(
        "demo",
        parents=[_common_options(server=False)],
        help="an embedded PostgreSQL of its own, a seeded table, the example migration",
    )
    demo.add_argument(
        "--rows",
        type=_positive_int,
        default=1_000_000,
        metavar="N",
        help="rows to seed (default 1,000,000)",
    )
    demo.add_argument(
        "--data-dir",
        default=".pgdata/demo",
        metavar="DIR",
        help="where the embedded cluster lives (default .pgdata/demo)",
    )
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    for choice in sub._choices_actions:  # a command's --help opens with its one line
        command_parser = sub.choices[choice.dest]
        command_parser.description = command_parser.description or choice.help
    return parser


def _health_options(run: argparse.ArgumentParser) -> None:
    """``run``'s health gates and the WAL budget (docs/operating.md)."""
    gates = run.add_argument_group("health gates and budgets (see docs/operating.md)")
    gates.add_argument("--max-replica-lag", help="wait while a replica lags more (default 10s)")
    gates.add_argument(
        "--replica-dsn",
        action="append",
        default=[],
        help="also ask this replica for its lag (repeatable)",
    )
    gates.add_argument(
        "--max-transaction-age",
        help="wait while an older transaction holds back vacuum (default 30min)",
    )
    gates.add_argument(
        "--max-blocking",
        help="shrink batches and wait when a session waits on ours longer (default 1s)",
    )
    gates.add_argument(
        "--max-active-connections",
        type=int,
        help="wait while more sessions are active (default half of max_connections)",
    )
    gates.add_argument("--check", help="SQL returning true (go), false or a reason (wait)")
    gates.add_argument(
        "--no-gate", action="append", default=[], help="switch one gate off (repeatable)"
    )
    gates.add_argument("--no-gates", action="store_true", help="switch every health gate off")
    gates.add_argument(
        "--max-wal-rate", help="WAL bytes per second for the whole migration (e.g. 20MB)"
    )


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
        window=args.window,
        timezone=args.timezone,
        exit_outside_window=args.exit_outside_window,
        until=args.until,
        lease_seconds=args.lease_seconds,
        force=args.force,
        restart=args.restart,
        catch_up=args.catch_up,
        yes=args.yes,
        progress=progress,
        max_replica_lag=args.max_replica_lag,
        replica_dsn=tuple(args.replica_dsn),
        max_transaction_age=args.max_transaction_age,
        max_blocking=args.max_blocking,
        max_active_connections=args.max_active_connections,
        check=getattr(args, "check", None),  # migrate's --check is another option
        no_gate=tuple(args.no_gate),
        no_gates=args.no_gates,
        max_wal_rate=args.max_wal_rate,
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

    from .report import status_table  # noqa: PLC0415 -- as above

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
    if args.pending_check:
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
