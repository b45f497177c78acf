"""Finding, naming and loading migration files, in a temporary directory."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from cryptopi_batch.discovery import (
    ENV_DIR,
    MigrationFile,
    discover,
    load,
    migrations_dir,
    misnamed,
    project_settings,
    resolve,
)
from cryptopi_batch.errors import MigrationLoadError, MigrationNotFound
from cryptopi_batch.migration import Backfill

VALID = '''\
"""Fill users.confidence."""
from cryptopi_batch import Backfill

migration = Backfill(table="public.users", sql="UPDATE users SET c = 1 WHERE {range}")
'''


def write(directory: Path, name: str, text: str = VALID) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def mdir(tmp_path: Path) -> Path:
    d = tmp_path / "migrations"
    d.mkdir()
    return d


@pytest.fixture
def files(mdir: Path) -> list[MigrationFile]:
    for name in (
        "20240301_1200_backfill_confidence.py",
        "20240105_0900_add_slugs.py",
        "20240105_0930_add_slug_index.sql",
        "20240401_0000_backfill_scores.py",
    ):
        write(mdir, name)
    return discover(mdir)


# --- discover ---------------------------------------------------------------------------


def test_files_are_discovered_in_name_order(files):
    assert [f.filename for f in files] == [
        "20240105_0900_add_slugs.py",
        "20240105_0930_add_slug_index.sql",
        "20240301_1200_backfill_confidence.py",
        "20240401_0000_backfill_scores.py",
    ]


def test_non_matching_names_are_ignored(mdir):
    write(mdir, "20240101_0000_ok.py")
    for other in (
        "helpers.py",
        "__init__.py",
        "2024_0000_short_stamp.py",
        "20240101_0000_notes.txt",
        "20240101_0000_bad-name.py",
        "README.md",
        "20240101_0000_ok.py~",
    ):
        write(mdir, other)
    (mdir / "20240101_0000_a_directory.py").mkdir()
    assert [f.filename for f in discover(mdir)] == ["20240101_0000_ok.py"]


def test_a_missing_directory_is_migration_not_found(tmp_path):
    with pytest.raises(MigrationNotFound, match="not found"):
        discover(tmp_path / "nope")


def test_file_name_parts(files):
    f = files[0]
    assert f.name == "20240105_0900_add_slugs"
    assert f.description == "add_slugs"
    assert f.kind == "py"
    assert files[1].kind == "sql"


# --- resolve ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wanted", "expected"),
    [
        ("20240301_1200_backfill_confidence", "20240301_1200_backfill_confidence.py"),
        ("20240301_1200_backfill_confidence.py", "20240301_1200_backfill_confidence.py"),
        ("20240105_0930_add_slug_index.sql", "20240105_0930_add_slug_index.sql"),
        ("202403", "20240301_1200_backfill_confidence.py"),  # unique prefix of the name
        ("backfill_confidence", "20240301_1200_backfill_confidence.py"),  # description
        ("backfill_c", "20240301_1200_backfill_confidence.py"),  # prefix of a description
        ("add_slugs", "20240105_0900_add_slugs.py"),  # exact beats add_slug_index's prefix
        # a path to the file, as a shell completes it
        ("migrations/20240301_1200_backfill_confidence.py", "20240301_1200_backfill_confidence.py"),
        ("./migrations/backfill_confidence", "20240301_1200_backfill_confidence.py"),
    ],
)
def test_resolve_finds_the_one_file_a_name_means(files, wanted, expected):
    assert resolve(files, wanted).filename == expected


@pytest.mark.parametrize("wanted", ["backfill", "20240105", "add_slug"])
def test_an_ambiguous_name_lists_every_candidate(files, wanted):
    with pytest.raises(MigrationNotFound, match="ambiguous") as info:
        resolve(files, wanted)
    candidates = [f.name for f in files if wanted in f.name]
    assert len(candidates) == 2
    for name in candidates:
        assert name in info.value.message


def test_an_unknown_name_suggests_the_closest_names(files):
    with pytest.raises(MigrationNotFound) as info:
        resolve(files, "backfil_confidense")
    assert info.value.message.startswith(
        "no migration named 'backfil_confidense'; did you mean 20240301_1200_backfill_confidence"
    )


def test_an_unknown_name_without_close_matches_says_where_to_look(files, mdir):
    with pytest.raises(MigrationNotFound) as info:
        resolve(files, "zzzzzzzz")
    assert info.value.message == (
        f"no migration named 'zzzzzzzz'; `list` shows the 4 migrations in {mdir}/"
    )


def test_resolve_in_an_empty_directory_says_there_are_none():
    with pytest.raises(MigrationNotFound) as info:
        resolve([], "anything")
    assert info.value.message == (
        "no migration named 'anything': the migrations directory holds none"
    )


# Whole `_`-separated words of the description, after the exact names and the prefixes.
WORDS = [
    "20250101_0000_fill_total_cents.py",
    "20250102_0000_fill_order_totals.py",
    "20250103_0000_drop_total_cache.py",
    "20250104_0000_add_user_email_index.py",
    "20250105_0000_cents_rounding.py",
]


@pytest.fixture
def worded(mdir: Path) -> list[MigrationFile]:
    for name in WORDS:
        write(mdir, name)
    return discover(mdir)


@pytest.mark.parametrize(
    ("wanted", "expected"),
    [
        ("total_cents", "20250101_0000_fill_total_cents"),  # the case
        ("order_totals", "20250102_0000_fill_order_totals"),
        ("totals", "20250102_0000_fill_order_totals"),
        ("cache", "20250103_0000_drop_total_cache"),
        ("total_cache", "20250103_0000_drop_total_cache"),
        ("user_email", "20250104_0000_add_user_email_index"),  # words in the middle
        ("email_index", "20250104_0000_add_user_email_index"),
        ("user_email_index", "20250104_0000_add_user_email_index"),
        # a prefix is tried first: `cents` begins cents_rounding's description
        ("cents", "20250105_0000_cents_rounding"),
        ("migrations/total_cents.py", "20250101_0000_fill_total_cents"),
    ],
)
def test_whole_words_of_the_description_name_the_one_migration_that_has_them(
    worded, wanted, expected
):
    assert resolve(worded, wanted).name == expected


@pytest.mark.parametrize(
    ("wanted", "candidates"),
    [
        ("total", ["20250101_0000_fill_total_cents", "20250103_0000_drop_total_cache"]),
        ("fill", ["20250101_0000_fill_total_cents", "20250102_0000_fill_order_totals"]),
    ],
)
def test_words_in_several_descriptions_are_ambiguous(worded, wanted, candidates):
    with pytest.raises(MigrationNotFound) as info:
        resolve(worded, wanted)
    assert info.value.message == (
        f"migration name {wanted!r} is ambiguous: {', '.join(candidates)}"
    )
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    ("wanted", "suggested"),
    [
        # part of a word is no word
        ("otal", ["20250101_0000_fill_total_cents", "20250103_0000_drop_total_cache"]),
        ("total_cent", ["20250101_0000_fill_total_cents"]),
        ("otal_cents", ["20250101_0000_fill_total_cents"]),
        ("ser_email", ["20250104_0000_add_user_email_index"]),
        ("_cents", ["20250101_0000_fill_total_cents"]),
        # words out of order, or not next to each other
        ("cents_total", []),
        ("user_index", ["20250104_0000_add_user_email_index"]),
    ],
)
def test_what_is_not_whole_words_is_unknown_with_the_closest_names(worded, wanted, suggested):
    with pytest.raises(MigrationNotFound) as info:
        resolve(worded, wanted)
    message = info.value.message
    assert message.startswith(f"no migration named {wanted!r}"), message
    said = message.split("did you mean ", 1)[1].split(", ") if "did you mean" in message else []
    assert set(suggested) <= set(said), message
    assert len(said) <= 5


def many(mdir: Path, count: int) -> list[MigrationFile]:
    for i in range(1, count + 1):
        write(mdir, f"20250101_00{i:02}_backfill_col_{i:02}.py")
    return discover(mdir)


def test_an_unknown_name_suggests_at_most_five_names_never_the_directory(mdir):
    files = many(mdir, 12)
    with pytest.raises(MigrationNotFound) as info:
        resolve(files, "backfil_col_1")
    said = info.value.message.split("did you mean ", 1)[1].split(", ")
    assert len(said) == 5
    assert set(said) < {f.name for f in files}


def test_an_ambiguous_name_lists_ten_candidates_and_counts_the_rest(mdir):
    files = many(mdir, 12)
    with pytest.raises(MigrationNotFound) as info:
        resolve(files, "backfill_col")
    listed = ", ".join(f.name for f in files[:10])
    assert info.value.message == (
        f"migration name 'backfill_col' is ambiguous: {listed} and 2 more"
    )


# --- load -------------------------------------------------------------------------------


def test_load_returns_the_backfill_and_the_docstrings_first_line(mdir):
    path = write(mdir, "20240101_0000_ok.py")
    loaded = load(MigrationFile(path))
    assert isinstance(loaded.backfill, Backfill)
    assert loaded.backfill.table == "public.users"
    assert loaded.description == "Fill users.confidence."
    assert loaded.name == "20240101_0000_ok"
    assert len(loaded.checksum) == 64


def test_the_checksum_follows_the_content(mdir):
    path = write(mdir, "20240101_0000_ok.py")
    before = load(MigrationFile(path)).checksum
    path.write_text(VALID + "# changed\n")
    assert load(MigrationFile(path)).checksum != before


def test_a_syntax_error_names_the_file_and_line(mdir):
    path = write(
        mdir,
        "20240101_0000_broken.py",
        """\
        from cryptopi_batch import Backfill

        migration = = Backfill(table="t", sql="UPDATE t SET x = 1 WHERE {range}")
        """,
    )
    with pytest.raises(MigrationLoadError, match="syntax error") as info:
        load(MigrationFile(path))
    assert f"{path}:3: syntax error" in info.value.message


def test_an_error_at_import_names_the_line_of_the_raise(mdir):
    path = write(
        mdir,
        "20240101_0000_raises.py",
        """\
        import os


        def helper():
            return {}["missing"]


        VALUE = helper()
        """,
    )
    with pytest.raises(MigrationLoadError) as info:
        load(MigrationFile(path))
    assert f"{path}:5: KeyError" in info.value.message


def test_a_file_without_a_migration_object_is_refused(mdir):
    path = write(mdir, "20240101_0000_empty.py", '"""Nothing here."""\nmigration = 42\n')
    with pytest.raises(MigrationLoadError, match="migration = Backfill") as info:
        load(MigrationFile(path))
    assert str(path) in info.value.message


def test_a_sql_file_does_not_load_as_a_backfill(mdir):
    path = write(mdir, "20240101_0000_schema.sql", "SELECT 1;")
    with pytest.raises(MigrationLoadError, match=r"\.sql migrations are not run by `run`"):
        load(MigrationFile(path))


@pytest.mark.parametrize(
    ("arguments", "complaint"),
    [
        ('sql="UPDATE t SET x = 1 WHERE {range}", process=work', "exactly one"),
        ("", "exactly one"),
        ('sql="UPDATE t SET x = 1"', "{range}"),
        ('sql="UPDATE t SET x = 1 WHERE {range}", batch_size=0', "batch_size"),
        ('sql="UPDATE t SET x = 1 WHERE {range}", key=()', "key="),
        ('sql="UPDATE t SET x = 1 WHERE {range}", down="DELETE FROM t"', "down="),
        ('sql="UPDATE t SET x = 1 WHERE {range}", synchronous_commit="off"', "synchronous_commit"),
        ('sql="UPDATE t SET x = 1 WHERE {range}", batch_size=True', "batch_size"),
        ('sql="UPDATE t SET x = 1 WHERE {range}", destructive="no"', "destructive="),
        ("process=lambda batch: 0", "process= must be an async function"),
        ("process=print", "process= must be an async function"),
        ("process=Backfill", "not a class"),
        ("process=work.__get__(1)", "it takes ()"),
        ('sql="UPDATE t SET x = 1 WHERE {range}", down=lambda b: 0', "down= must be an async"),
    ],
)
def test_definition_errors_name_the_file_and_line(mdir, arguments, complaint):
    path = write(
        mdir,
        "20240101_0000_bad.py",
        f"""\
        from cryptopi_batch import Backfill

        async def work(batch):
            return 0

        migration = Backfill(table="t", {arguments})
        """,
    )
    with pytest.raises(MigrationLoadError) as info:
        load(MigrationFile(path))
    assert f"{path}:6: " in info.value.message
    assert complaint in info.value.message


def test_a_multi_line_definition_error_names_the_line_of_the_call(mdir):
    path = write(
        mdir,
        "20240101_0000_bad.py",
        """\
        from cryptopi_batch import Backfill


        migration = Backfill(
            table="t",
            sql="UPDATE t SET x = 1 WHERE {range}",
            batch_size=0,
        )
        """,
    )
    with pytest.raises(MigrationLoadError, match="batch_size") as info:
        load(MigrationFile(path))
    assert f"{path}:4: " in info.value.message


def test_a_failed_load_leaves_no_module_behind(mdir):
    path = write(mdir, "20240101_0000_raises.py", "raise RuntimeError('boom')\n")
    with pytest.raises(MigrationLoadError, match="RuntimeError: boom"):
        load(MigrationFile(path))
    assert not [m for m in sys.modules if m.startswith("cryptopi_batch_migrations.")]


# --- migrations_dir ---------------------------------------------------------------------


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv(ENV_DIR, raising=False)
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n\n[tool.cryptopi_batch]\nmigrations = "db/backfills"\n'
    )
    return tmp_path


def test_explicit_directory_wins(project, monkeypatch):
    monkeypatch.setenv(ENV_DIR, "from_env")
    assert migrations_dir("cli_dir", cwd=project) == project / "cli_dir"


def test_environment_beats_pyproject(project, monkeypatch):
    monkeypatch.setenv(ENV_DIR, "from_env")
    assert migrations_dir(None, cwd=project) == project / "from_env"


def test_pyproject_beats_the_default(project):
    assert migrations_dir(None, cwd=project) == project / "db/backfills"


def test_default_is_migrations(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_DIR, raising=False)
    assert migrations_dir(None, cwd=tmp_path) == tmp_path / "migrations"
    (tmp_path / "pyproject.toml").write_text('[tool.other]\nmigrations = "no"\n')
    assert migrations_dir(None, cwd=tmp_path) == tmp_path / "migrations"


def test_an_empty_environment_variable_is_not_a_directory(project, monkeypatch):
    monkeypatch.setenv(ENV_DIR, "")
    assert migrations_dir(None, cwd=project) == project / "db/backfills"


def test_an_absolute_directory_is_taken_as_is(project, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    assert migrations_dir(str(elsewhere), cwd=project / "sub") == elsewhere


def test_a_broken_pyproject_is_a_load_error(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_DIR, raising=False)
    (tmp_path / "pyproject.toml").write_text("[tool.cryptopi_batch\n")
    with pytest.raises(MigrationLoadError, match=r"pyproject\.toml"):
        migrations_dir(None, cwd=tmp_path)


def test_files_not_named_as_migrations_are_listed_and_named_in_the_unknown_name_error(
    mdir: Path,
) -> None:
    write(mdir, "20240301_1200_backfill_confidence.py")
    for odd in (
        "20250101_0060_fix-units.py",
        "backfill.sql",
        "__init__.py",
        ".swap.py",
        "notes.txt",
    ):
        write(mdir, odd)
    assert misnamed(mdir) == ["20250101_0060_fix-units.py", "backfill.sql"]
    assert [f.filename for f in discover(mdir)] == ["20240301_1200_backfill_confidence.py"]
    with pytest.raises(MigrationNotFound, match=r"fix-units\.py is not named YYYYMMDD_HHMM"):
        resolve(discover(mdir), "20250101_0060_fix-units")


@pytest.mark.parametrize("wanted", ["", " ", "\t\n", ".", "/", "..", "./.py", ".sql", "_", "-_-"])
def test_a_name_without_a_letter_or_digit_names_nothing(files, wanted):
    with pytest.raises(MigrationNotFound) as info:
        resolve(files[:1], wanted)  # one file: every name has the empty string as prefix
    assert info.value.message == (
        f"migration name {wanted!r} names nothing: give the file name, its description,"
        " or a unique prefix of either"
    )
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    "filename",
    [
        "\u0662\u0660\u0662\u0664\u0660\u0661\u0660\u0661_\u0661\u0662\u0660\u0660_arabic.py",
        "\uff12\uff10\uff12\uff14\uff10\uff11\uff10\uff11_\uff11\uff12\uff10\uff10_fullwidth.py",
        "2024010\u0661_1200_one_arabic_digit.py",
        "20240101_120\u09e6_one_bengali_digit.py",
        "\U0001d7d0\U0001d7ce\U0001d7d0\U0001d7d220240101_1200_math_digits.py",
    ],
)
def test_a_stamp_takes_ascii_digits_only(mdir, filename):
    write(mdir, filename)
    write(mdir, "20240101_1200_ascii.py")
    assert [f.filename for f in discover(mdir)] == ["20240101_1200_ascii.py"]
    assert misnamed(mdir) == [filename]


def test_project_settings_reads_tool_cryptopi_batch(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.cryptopi_batch]\nmigrations = "db/migrations"\n'
        'window = "Mon-Fri 22:00-06:00"\ntimezone = "Europe/Berlin"\n'
    )
    assert project_settings(tmp_path) == {
        "migrations": "db/migrations",
        "window": "Mon-Fri 22:00-06:00",
        "timezone": "Europe/Berlin",
    }
    assert migrations_dir(cwd=tmp_path) == tmp_path / "db/migrations"
    (tmp_path / "pyproject.toml").write_text('[tool]\ncryptopi_batch = "x"\n')
    assert project_settings(tmp_path) == {}
    assert project_settings(tmp_path / "nowhere") == {}
