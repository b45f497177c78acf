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
    """Installed as files, store reads its SQL from beside itself; from a zip (a zipapp),
    through importlib.resources."""
    archive = tmp_path / "packaged.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in PACKAGE.rglob("*"):
            if f.is_file() and "__pycache__" not in f.parts:
                z.write(f, f.relative_to(ROOT))
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); from cryptopi_batch import schema, store;"
        " assert store.__file__.startswith(sys.argv[1]), store.__file__;"
        " print(len(store._queries()), [v for v, _ in schema._version_files()])"
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
