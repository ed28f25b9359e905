"""What ``pip install meshp2p`` gets: every package and data file, in a real wheel."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def packages_in_tree() -> set[str]:
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "meshp2p").rglob("__init__.py")
    }
    return found | {"meshp2p_cli"}


def test_pyproject_lists_every_package() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert set(config["tool"]["setuptools"]["packages"]) == packages_in_tree()


def test_the_wheel_holds_every_module_and_data_file(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("meshp2p-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / "meshp2p").rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert modules <= names, sorted(modules - names)
    data = {"meshp2p/py.typed", "meshp2p/catalog.json", "meshp2p_cli/main.py"}
    data |= {p.relative_to(ROOT).as_posix() for p in (ROOT / "meshp2p/api/console").iterdir()}
    assert data <= names, sorted(data - names)
