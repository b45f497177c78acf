"""errors.describe: the one line of an error, with where the user's code raised it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cryptopi_batch.errors import describe


def raised(func: object) -> BaseException:
    try:
        func()  # type: ignore[operator]
    except Exception as exc:
        return exc
    raise AssertionError("did not raise")


def in_migration(tmp_path: Path) -> BaseException:
    path = tmp_path / "20250601_1200_x.py"
    path.write_text("def fill():\n    row = {}\n    return row['customr']\n")
    code = compile(path.read_text(), str(path), "exec")
    scope: dict[str, object] = {}
    exec(code, scope)
    return raised(scope["fill"])


def test_a_users_error_names_its_file_and_line(tmp_path: Path) -> None:
    assert describe(in_migration(tmp_path)) == "KeyError: 'customr' (20250601_1200_x.py, line 3)"


def test_an_error_in_the_standard_library_names_the_users_line_that_called_it() -> None:
    line = 0

    def parse() -> None:
        nonlocal line
        line = parse.__code__.co_firstlineno + 3
        json.loads("{")

    text = describe(raised(parse))
    assert text.startswith("JSONDecodeError: Expecting property name")
    assert text.endswith(f"(test_unit_errors.py, line {line})")


class UndefinedColumnError(Exception):
    sqlstate = "42703"


@pytest.mark.parametrize(
    ("exc", "text"),
    [
        (ValueError("bad"), "ValueError: bad"),
        (
            UndefinedColumnError('column "id" does not exist'),
            'UndefinedColumnError (42703): column "id" does not exist',
        ),
        (RuntimeError(), "RuntimeError: RuntimeError"),
    ],
)
def test_an_error_without_a_traceback_has_no_place(exc: BaseException, text: str) -> None:
    assert describe(exc) == text


def test_a_frame_of_a_compiled_library_is_not_the_users() -> None:
    """asyncpg raises a server's error from its Cython protocol, whose frames name a
    relative .pyx file: never shown as where the user's code failed (the caller's frame,
    here this test's, is)."""
    code = compile("raise ValueError('division by zero')", "asyncpg/protocol/protocol.pyx", "exec")
    with pytest.raises(ValueError, match="division by zero") as caught:
        exec(code)
    text = describe(caught.value)
    assert text.startswith("ValueError: division by zero (test_unit_errors.py, line ")
    assert "protocol.pyx" not in text
