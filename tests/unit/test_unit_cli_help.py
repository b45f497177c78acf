"""``--help``: every command, argument and option of the parser has a line of help in
plain text, and each command offers only the options it uses."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import pytest

from cryptopi_batch.arguments import build_parser
from cryptopi_batch.errors import UsageError


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """The parser and every subcommand's parser under it (at any depth), with its path."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*path, name))


def subcommand_lines(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str | None]]:
    """Each subcommand's name and its line in the parent's --help."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                yield choice.dest, choice.help


ALL = list(commands(build_parser()))
IDS = [" ".join(path) or "(top)" for path, _ in ALL]


def test_the_walk_finds_every_command():
    names = {path[0] for path, _ in ALL if path}
    assert {"run", "status", "list", "pause", "resume", "cancel", "demo"} <= names


@pytest.mark.parametrize(("path", "parser"), ALL, ids=IDS)
def test_every_argument_and_option_has_a_help_line(path, parser):
    missing = [
        "/".join(action.option_strings) or action.dest
        for action in parser._actions
        if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction))
        # argparse.SUPPRESS: hidden on purpose (--lease-seconds, for tests)
        and not (action.help and action.help.strip())
    ]
    assert not missing, f"{' '.join(path)}: no help for {missing}"
    for name, line in subcommand_lines(parser):
        assert line, f"{' '.join((*path, name))}: no line in the parent's --help"
        assert line.strip(), name
    if path:  # a command's --help says what it does
        assert parser.description, path


@pytest.mark.parametrize(("path", "parser"), ALL, ids=IDS)
def test_help_is_plain_text_without_markup(path, parser):
    text = parser.format_help()
    assert "``" not in text, text  # reStructuredText's literal, from a docstring
    for role in (":func:", ":class:", ":meth:"):
        assert role not in text, text


# What `demo` reads: its own options, and those of every command that main() uses for it
# (the migrations directory holds the example; the log's format; --traceback). It starts
# its own server, so takes no --dsn.
DEMO_OPTIONS = {
    "-h",
    "--help",
    "--migrations-dir",
    "--log-format",
    "--traceback",
    "--rows",
    "--data-dir",
    "--no-progress",
}


def test_demo_offers_only_the_options_it_uses():
    [demo] = [parser for path, parser in ALL if path == ("demo",)]
    offered = {s for action in demo._actions for s in action.option_strings}
    assert offered == DEMO_OPTIONS
    with pytest.raises(UsageError, match="unrecognized arguments: --dsn"):
        build_parser().parse_args(["demo", "--dsn", "postgresql://h/d"])
