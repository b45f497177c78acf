"""The command line's arguments: every command, its arguments and options with their help,
and ``run``'s options as :class:`settings.RunOptions`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from .discovery import migrations_dir
from .errors import UsageError
from .settings import RunOptions


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse's default exits 2 with usage spam
        raise UsageError(f"{message} (see `{self.prog} --help`)")


if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[_Parser]


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


def build_parser() -> argparse.ArgumentParser:
    """The command line: every command, its arguments and options, each with its help."""
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
    run = _add_run(sub, common)
    _add_views(sub, common)
    _add_flow(sub, common, run)
    _add_demo(sub)
    for choice in sub._choices_actions:  # a command's --help opens with its one line
        command_parser = sub.choices[choice.dest]
        command_parser.description = command_parser.description or choice.help
    return parser


def _add_run(sub: Subparsers, common: _Parser) -> argparse.ArgumentParser:
    """``run`` and its options (which ``migrate``, ``plan`` and ``rollback`` take too)."""
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
        help="cap on the rows changed per second by the whole migration, all runners together",
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
    return run


def _add_views(sub: Subparsers, common: _Parser) -> None:
    """``status``, ``list``, and the control commands."""
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


def _add_flow(sub: Subparsers, common: _Parser, run: argparse.ArgumentParser) -> None:
    """``migrate``, ``plan``, ``new`` and ``rollback``."""
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


def _add_demo(sub: Subparsers) -> None:
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


def migrations_directory(args: argparse.Namespace) -> Path:
    """The migrations directory the command line names (else the environment's, the
    project's, or ./migrations)."""
    return migrations_dir(args.migrations_dir)
