"""The environment and the confirmation a protected one needs, without a server."""

from __future__ import annotations

import pytest

from cryptopi_batch.errors import UsageError
from cryptopi_batch.safety import confirm, confirm_write, environment, protected


@pytest.mark.parametrize(
    ("given", "variable", "expected"),
    [("staging", "production", "staging"), (None, "production", "production"), (None, None, None)],
)
def test_environment_is_the_option_else_the_variable(
    monkeypatch: pytest.MonkeyPatch, given: str | None, variable: str | None, expected: str | None
) -> None:
    if variable is None:
        monkeypatch.delenv("CRYPTOPI_BATCH_ENV", raising=False)
    else:
        monkeypatch.setenv("CRYPTOPI_BATCH_ENV", variable)
    assert environment(given) == expected


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ("production", True),
        ("Production ", True),
        ("prod", True),
        ("staging", False),
        (None, False),
    ],
)
def test_protected_environments(env: str | None, expected: bool) -> None:
    assert protected(env) is expected


@pytest.mark.parametrize(
    ("yes", "tty", "answer", "goes_on"),
    [
        (True, False, "", True),
        (False, True, "y", True),
        (False, True, "YES", True),
        (False, True, "", False),
        (False, True, "n", False),
        (False, False, "y", False),  # off a terminal, nothing is asked
    ],
)
def test_confirm(
    capsys: pytest.CaptureFixture[str], yes: bool, tty: bool, answer: str, goes_on: bool
) -> None:
    asked: list[str] = []

    def ask(prompt: str) -> str:
        asked.append(prompt)
        return answer

    if goes_on:
        confirm("it will write", yes=yes, ask=ask, terminal=lambda: tty)
    else:
        with pytest.raises(UsageError, match="nothing was done"):
            confirm("it will write", yes=yes, ask=ask, terminal=lambda: tty)
    assert capsys.readouterr().err == "it will write\n"  # said first, always
    assert asked == (["Go on? [y/N] "] if tty and not yes else [])


def test_confirm_write_asks_only_in_a_protected_environment(
    capsys: pytest.CaptureFixture[str],
) -> None:
    confirm_write("staging", "run x writes", yes=False)
    assert capsys.readouterr().err == ""
    with pytest.raises(UsageError):
        confirm_write("production", "run x writes", yes=False)
    assert capsys.readouterr().err == "production: run x writes\n"
