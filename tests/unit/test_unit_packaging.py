"""The wheel carries every data file the package reads at run time.

An editable install reads them from the checkout whatever pyproject.toml declares, so only a
check of the declaration catches a file left out of the wheel (as ``sql/versions/*.sql``
once was: an installed package could not create its ops schema).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "cryptopi_batch"


def test_package_data_declares_every_data_file() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["cryptopi_batch"]
    declared = {p for pattern in patterns for p in PACKAGE.glob(pattern) if p.is_file()}
    data = {p for p in PACKAGE.rglob("*") if p.is_file()
            and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts}
    assert data, "no data files found: the package layout changed"
    assert data <= declared, f"left out of the wheel: {sorted(map(str, data - declared))}"
