"""The command line's adapters of the migration flow: ``migrate``, ``plan``, ``new`` and
``rollback`` (the commands themselves: :mod:`migrate`, :mod:`plan`, :mod:`scaffold`,
:mod:`rollback`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys

from . import logs, safety
from .arguments import migrations_directory, run_options
from .bar import ProgressBar, terminal_bar
from .db import ConnectionSettings

EXIT_OK = 0


async def migrate_command(args: argparse.Namespace, connection: ConnectionSettings) -> int:
    from . import migrate  # noqa: PLC0415 -- only this command needs it
    from .sqlrun import refused  # noqa: PLC0415 -- as migrate

    directory, options = migrations_directory(args), run_options(args, progress=False)
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
            if p.refused is not None:
                print(f"  refused here: {p.refused}")
        if not found:
            print("nothing pending", file=sys.stderr)
        return EXIT_OK
    env = safety.environment(args.env)
    if safety.protected(env):
        found = await migrate.pending(directory=directory, connection=connection, to=args.to)
        refusal = next((p.refused for p in found if p.refused is not None), None)
        if refusal is not None:  # refused before asking, as migrate would after
            raise refused(refusal)
        if found:  # nothing pending writes nothing: exit 0 without asking, as elsewhere
            names = ", ".join(p.file.filename for p in found)
            safety.confirm_write(env, f"migrate applies {names}", yes=args.yes)
    # A progress bar for each backfill, as `run` shows it; the files' lines between them.
    show_bar = not args.no_progress and args.log_format == "console"
    first = terminal_bar() if show_bar else None
    bars: list[ProgressBar] = []

    def start(name: str, done: int, total: int, rows: int) -> None:
        nonlocal first
        bar, first = first or terminal_bar(), None
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
            options=dataclasses.replace(options, progress=first is not None),
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


async def plan_command(args: argparse.Namespace, connection: ConnectionSettings) -> int:
    from . import plan  # noqa: PLC0415 -- only this command needs it

    found = await plan.plan(
        args.name,
        directory=migrations_directory(args),
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


async def new_command(args: argparse.Namespace, connection: ConnectionSettings) -> int:
    from . import scaffold  # noqa: PLC0415 -- only this command needs it
    from .discovery import shown  # noqa: PLC0415

    made = await scaffold.new_migration(
        args.description,
        directory=migrations_directory(args),
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


async def rollback_command(args: argparse.Namespace, connection: ConnectionSettings) -> int:
    from . import rollback  # noqa: PLC0415 -- only this command needs it

    env = safety.environment(args.env)

    def confirm(undo: rollback.Undo) -> None:  # asked once nothing refuses the rollback
        what = f"{undo.file.name}: rollback runs {undo.what}, then removes its ops.migrations row"
        safety.confirm(f"{env}: {what}" if safety.protected(env) else what, yes=args.yes)

    done = await rollback.rollback(
        args.name,
        directory=migrations_directory(args),
        connection=connection,
        options=run_options(args, progress=False),
        handle_signals=True,
        confirm=confirm,
    )
    rows = "" if done.rows is None else f" ({done.rows:,} rows changed)"
    logs.line(f"{done.name}: rolled back{rows}", event="rolled_back", migration=done.name)
    return EXIT_OK
